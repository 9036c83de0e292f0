"""NER head over BERT features (BiLSTM or dense, then CRF) and the one inference graph.

Variable names follow macanv/BERT-BiLSTM-CRF-NER so its checkpoints load unchanged:
`rnn_layer/bidirectional_rnn/{fw,bw}/lstm_cell/{kernel,bias}`, `project/hidden/{W,b}` (bilstm
only), `project/logits/{W,b}`, `crf_loss/transitions`. Unlike macanv, logits are linear (never
tanh-squashed) and the backward LSTM reads each row reversed within its own length, so a row's
predictions do not depend on how far the batch is padded.
"""

from typing import NamedTuple, Optional

import tensorflow.compat.v1 as tf

from bert_ner import crf
from bert_ner import modeling

HEADS = ("bilstm", "dense")


class NerHead(NamedTuple):
  """Head outputs: logits [B, T, L], Viterbi pred_label [B, T] int32, mean CRF loss or None."""
  logits: tf.Tensor
  pred_label: tf.Tensor
  loss: Optional[tf.Tensor]


def concat_features(all_encoder_layers, feature_layers):
  """Concatenates the chosen encoder layers (e.g. [-4, -3, -2, -1]) along the hidden axis."""
  # all_encoder_layers: list of [B, T, H] -> [B, T, H * len(feature_layers)]
  return tf.concat([all_encoder_layers[i] for i in feature_layers], axis=-1)


def dense(inputs, num_outputs):
  """Affine map of the last axis with macanv's `W`/`b` variables in the current scope."""
  # inputs: [B, T, D] -> [B, T, num_outputs]
  weights = tf.get_variable("W", [inputs.shape[-1], num_outputs],
                            initializer=tf.glorot_uniform_initializer())
  bias = tf.get_variable("b", [num_outputs], initializer=tf.zeros_initializer())
  return tf.einsum("btd,dk->btk", inputs, weights) + bias


def lstm(inputs, num_units):
  """Runs an LSTM in tf.nn.rnn_cell.LSTMCell layout over time; returns every hidden state."""
  # inputs: [B, T, F] -> [B, T, H]
  input_size = inputs.shape[-1]
  with tf.variable_scope("lstm_cell"):
    # kernel acts on concat([x, h]): gates i, j, f, o; forget bias 1.0 added at run time.
    kernel = tf.get_variable("kernel", [input_size + num_units, 4 * num_units])
    bias = tf.get_variable("bias", [4 * num_units], initializer=tf.zeros_initializer())
  # BlockLSTM is TF's fused CPU/GPU kernel for exactly this cell (same kernel layout and gate
  # order), several times faster than a tf.scan of matmuls; it ships with TF Serving too.
  zeros = tf.zeros([tf.shape(inputs)[0], num_units], inputs.dtype)  # [B, H]
  no_peephole = tf.zeros([num_units], inputs.dtype)
  outputs = tf.raw_ops.BlockLSTM(
      seq_len_max=tf.cast(tf.shape(inputs)[1], tf.int64), x=tf.transpose(inputs, [1, 0, 2]),
      cs_prev=zeros, h_prev=zeros, w=kernel, wci=no_peephole, wcf=no_peephole,
      wco=no_peephole, b=bias, forget_bias=1.0, cell_clip=-1.0, use_peephole=False).h
  return tf.transpose(outputs, [1, 0, 2])  # [T, B, H] -> [B, T, H]


def bidirectional_lstm(inputs, lengths, num_units):
  """Forward LSTM plus a backward one over each row reversed within its length, concatenated."""
  # inputs: [B, T, F]; lengths: [B] -> [B, T, 2H]
  with tf.variable_scope("bidirectional_rnn"):
    with tf.variable_scope("fw"):
      forward = lstm(inputs, num_units)
    with tf.variable_scope("bw"):
      reversed_inputs = tf.reverse_sequence(inputs, lengths, seq_axis=1, batch_axis=0)
      backward = tf.reverse_sequence(lstm(reversed_inputs, num_units), lengths,
                                     seq_axis=1, batch_axis=0)
  return tf.concat([forward, backward], axis=-1)


def build_ner_head(features, lengths, ner_config, num_labels, is_training, label_ids=None):
  """Builds the head (`ner_config.head`: bilstm or dense) and its CRF; loss only with labels."""
  # features: [B, T, F] (static F); lengths: [B] int32; label_ids: [B, T] int32 or None
  if ner_config.head not in HEADS:
    raise ValueError(f"unknown head {ner_config.head!r}, expected one of {HEADS}")
  if features.shape[-1] is None:
    raise ValueError("features need a static last dimension (the variables' shapes depend on it)")
  lengths = tf.cast(lengths, tf.int32)
  if is_training:
    features = tf.nn.dropout(features, rate=ner_config.dropout)
  if ner_config.head == "bilstm":
    with tf.variable_scope("rnn_layer"):
      features = bidirectional_lstm(features, lengths, ner_config.lstm_size)  # [B, T, 2H]
  with tf.variable_scope("project"):
    if ner_config.head == "bilstm":
      with tf.variable_scope("hidden"):
        features = tf.tanh(dense(features, ner_config.hidden_size))  # [B, T, hidden]
    with tf.variable_scope("logits"):
      logits = dense(features, num_labels)  # [B, T, L]
  with tf.variable_scope("crf_loss"):
    transitions = tf.get_variable("transitions", [num_labels, num_labels],
                                  initializer=tf.glorot_uniform_initializer())
  pred_label = crf.viterbi_decode(logits, lengths, transitions)  # [B, T] int32
  loss = None
  if label_ids is not None:
    log_likelihood = crf.crf_log_likelihood(logits, label_ids, lengths, transitions)  # [B]
    loss = -tf.reduce_mean(log_likelihood)
  return NerHead(logits=logits, pred_label=pred_label, loss=loss)


def build_inference_graph(model_dir, input_ids, input_mask, with_adapters=False):
  """BERT (no dropout) + concatenated feature layers + head: pred_label [B, T] int32.

  `with_adapters` keeps the config's LoRA adapters as variables of their own (the trainer's
  graph); without, the served graph, into which `checkpoint.restore_model` merges them.
  """
  # model_dir: bert_ner.checkpoint.ModelDir; input_ids, input_mask: [B, T] int32
  bert_config = modeling.BertConfig.from_json_file(model_dir.bert_config_path)
  model = modeling.BertModel(config=bert_config, input_ids=input_ids, input_mask=input_mask,
                             is_training=False,
                             adapters=model_dir.ner_config.adapters() if with_adapters else None)
  features = concat_features(model.all_encoder_layers, model_dir.ner_config.feature_layers)
  lengths = tf.reduce_sum(input_mask, axis=1)  # [B]
  head = build_ner_head(features, lengths, model_dir.ner_config, len(model_dir.id2label),
                        is_training=False)
  return head.pred_label
