"""NER head over BERT features (BiLSTM or dense, then CRF) and the one inference graph.

Variable names follow macanv/BERT-BiLSTM-CRF-NER so its checkpoints load unchanged:
`rnn_layer/bidirectional_rnn/{fw,bw}/lstm_cell/{kernel,bias}`, `project/hidden/{W,b}` (bilstm
only), `project/logits/{W,b}`, `crf_loss/transitions`; a model trained with word shapes also has
`word_shape/embedding`. Unlike macanv, logits are linear (never
tanh-squashed) and the backward LSTM reads each row reversed within its own length, so a row's
predictions do not depend on how far the batch is padded.
"""

from typing import NamedTuple

import numpy as np
import tensorflow.compat.v1 as tf

from bert_ner import crf, featurizer, labels, model_base, modeling
from bert_ner import word_shape as shapes
from bert_ner.ner_schema import HEADS


class NerHead(NamedTuple):
  """Head outputs: logits [B, T, L], Viterbi pred_label [B, T] int32, mean CRF loss or None,
  the transitions [L, L] decoding used (the CRF's, IOB2-forbidden ones at FORBIDDEN_TRANSITION)
  and each row's length [B] int32."""

  logits: tf.Tensor
  pred_label: tf.Tensor
  loss: tf.Tensor | None
  transitions: tf.Tensor
  lengths: tf.Tensor


def input_placeholders():
  """The model's inputs in the default graph: `input_ids` and `input_mask`, [B, T] int32, under
  the served signature's names; the one declaration every graph of the model starts from."""
  return (
    tf.placeholder(tf.int32, [None, None], model_base.INPUT_IDS),
    tf.placeholder(tf.int32, [None, None], model_base.INPUT_MASK),
  )


def word_shape_input(input_ids):
  """The optional word_shape input: [B, T] int32, all 0 ("no information") unless fed."""
  return tf.placeholder_with_default(
    tf.zeros_like(input_ids), [None, None], name=model_base.WORD_SHAPE
  )


def concat_features(all_encoder_layers, feature_layers):
  """Concatenates the chosen encoder layers (e.g. [-4, -3, -2, -1]) along the hidden axis."""
  # all_encoder_layers: list of [B, T, H] -> [B, T, H * len(feature_layers)]
  return tf.concat([all_encoder_layers[i] for i in feature_layers], axis=-1)


def dense(inputs, num_outputs):
  """Affine map of the last axis with macanv's `W`/`b` variables in the current scope."""
  # inputs: [B, T, D] -> [B, T, num_outputs]
  weights = tf.get_variable(
    "W", [inputs.shape[-1], num_outputs], initializer=tf.glorot_uniform_initializer()
  )
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
    seq_len_max=tf.cast(tf.shape(inputs)[1], tf.int64),
    x=tf.transpose(inputs, [1, 0, 2]),
    cs_prev=zeros,
    h_prev=zeros,
    w=kernel,
    wci=no_peephole,
    wcf=no_peephole,
    wco=no_peephole,
    b=bias,
    forget_bias=1.0,
    cell_clip=-1.0,
    use_peephole=False,
  ).h
  return tf.transpose(outputs, [1, 0, 2])  # [T, B, H] -> [B, T, H]


def bidirectional_lstm(inputs, lengths, num_units):
  """Forward LSTM plus a backward one over each row reversed within its length, concatenated."""
  # inputs: [B, T, F]; lengths: [B] -> [B, T, 2H]
  with tf.variable_scope("bidirectional_rnn"):
    with tf.variable_scope("fw"):
      forward = lstm(inputs, num_units)
    with tf.variable_scope("bw"):
      reversed_inputs = tf.reverse_sequence(inputs, lengths, seq_axis=1, batch_axis=0)
      backward = tf.reverse_sequence(
        lstm(reversed_inputs, num_units), lengths, seq_axis=1, batch_axis=0
      )
  return tf.concat([forward, backward], axis=-1)


def word_shape_features(word_shape, ner_config, is_training):
  """The learned embedding of word shape ids [B, T] -> [B, T, word_shape_dim] (variable
  `word_shape/embedding`); in training whole rows are fed 0 ("not fed") with probability
  `word_shape_dropout`. Ids outside 0..24 read as 0."""
  with tf.variable_scope("word_shape"):
    table = tf.get_variable(
      "embedding",
      [shapes.NUM_IDS, ner_config.word_shape_dim],
      initializer=tf.random_normal_initializer(stddev=0.1),
    )
  ids = tf.cast(word_shape, tf.int32)  # [B, T]
  ids = tf.where_v2((ids < 0) | (ids >= shapes.NUM_IDS), tf.zeros_like(ids), ids)
  if is_training and ner_config.word_shape_dropout > 0:
    keep = tf.random.uniform([tf.shape(ids)[0], 1]) >= ner_config.word_shape_dropout  # [B, 1]
    ids = ids * tf.cast(keep, tf.int32)
  return tf.gather(table, ids)  # [B, T, word_shape_dim]


# Added to the transitions IOB2 forbids when decoding: no path through one can win, and exp() of it
# is 0 in float32, so the forward-backward marginals give such paths no mass either.
FORBIDDEN_TRANSITION = -10000.0


def build_ner_head(
  features,
  lengths,
  ner_config,
  id2label,
  is_training,
  label_ids=None,
  word_shape=None,
  unobserved_labels=False,
):
  """Builds the head (`ner_config.head`: bilstm or dense) and its CRF; loss only with labels.

  With `unobserved_labels`, label ids `labels.UNOBSERVED_LABEL` mark positions the loss does not
  teach: it is the log-probability of the observed tags, summed over the others' tags.

  Decoding (`pred_label`, and `NerHead.transitions` for the marginals) keeps to IOB2
  (`labels.forbidden_transitions`); the loss is not bound to IOB2, so training is unchanged
  by it.

  With `ner_config.word_shape_dim`, the embedding of `word_shape` ([B, T] int32, None: all 0)
  is concatenated to the (dropped-out) features before the BiLSTM.
  """
  # features: [B, T, F] (static F); lengths: [B] int32; label_ids: [B, T] int32 or None
  num_labels = len(id2label)
  if ner_config.head not in HEADS:
    raise ValueError(f"unknown head {ner_config.head!r}, expected one of {HEADS}")
  if features.shape[-1] is None:
    raise ValueError("features need a static last dimension (the variables' shapes depend on it)")
  lengths = tf.cast(lengths, tf.int32)
  if is_training:
    features = tf.nn.dropout(features, rate=ner_config.dropout)
  if ner_config.word_shape_dim:
    if word_shape is None:
      word_shape = tf.zeros(tf.shape(features)[:2], tf.int32)
    features = tf.concat(
      [features, word_shape_features(word_shape, ner_config, is_training)], axis=-1
    )  # [B, T, F + word_shape_dim]
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
    transitions = tf.get_variable(
      "transitions", [num_labels, num_labels], initializer=tf.glorot_uniform_initializer()
    )
  loss = None
  if label_ids is not None:
    likelihood = crf.crf_marginal_log_likelihood if unobserved_labels else crf.crf_log_likelihood
    log_likelihood = likelihood(logits, label_ids, lengths, transitions)  # [B]
    loss = -tf.reduce_mean(log_likelihood)
  forbidden = labels.forbidden_transitions(id2label) * np.float32(FORBIDDEN_TRANSITION)  # [L, L]
  decoding = transitions + tf.constant(forbidden)
  pred_label = crf.viterbi_decode(logits, lengths, decoding)  # [B, T] int32
  return NerHead(logits, pred_label, loss, decoding, lengths)


def _first_true(flags):
  """Index of the first True along the last axis, 0 when there is none (also when empty)."""
  # flags: [..., N] bool -> [...] int32; the appended False column keeps argmax defined at N=0.
  rank = len(flags.shape)
  padded = tf.pad(tf.cast(flags, tf.int32), [[0, 0]] * (rank - 1) + [[0, 1]])
  return tf.argmax(padded, axis=-1, output_type=tf.int32)


def _first_where(values, bad):
  """The first value (row-major) where `bad` holds and its row and position; 0s when none."""
  # values, bad: [B, T] -> three int32 scalars, for error messages.
  index = _first_true(tf.reshape(bad, [-1]))
  flat = tf.pad(tf.reshape(values, [-1]), [[0, 1]])
  width = tf.maximum(tf.shape(values)[1], 1)
  return flat[index], index // width, index % width


def _check(ok, template, *values):
  """An Assert op failing the run with InvalidArgument and a message naming the input."""
  return tf.debugging.Assert(ok, [tf.strings.format(template, values)])


def real_lengths(input_ids, input_mask, sep_id):
  """Each row's real length: its leading 1s in input_mask, cut after its first [SEP].

  TF Serving's batching pads a request to the merged batch's width with the request's FIRST
  element (batching_util.cc PadTensor), so a padded row's mask continues with 1s and its ids
  with [CLS]: the mask alone would extend the row into the padding. A row without [SEP]
  (sep_id None, or a truncated row) keeps its leading mask length.
  """
  # input_ids, input_mask: [B, T] int32 -> [B] int32
  ones = tf.cast(tf.equal(input_mask, 1), tf.int32)
  leading = tf.reduce_sum(tf.math.cumprod(ones, axis=1), axis=1)  # [B]
  if sep_id is None:
    return leading
  is_sep = tf.equal(input_ids, sep_id)
  through_sep = _first_true(is_sep) + 1
  return tf.where_v2(tf.reduce_any(is_sep, axis=1), tf.minimum(leading, through_sep), leading)


def _check_like_ids(input_ids, other, name):
  """Assert op: `other` (the input called `name`) has input_ids' shape."""
  ids_shape, other_shape = tf.shape(input_ids), tf.shape(other)
  return _check(
    tf.reduce_all(tf.equal(ids_shape, other_shape)),
    name + " shape [{},{}] does not match input_ids shape [{},{}]",
    other_shape[0],
    other_shape[1],
    ids_shape[0],
    ids_shape[1],
  )


def check_shapes(input_ids, input_mask):
  """Assert op: input_mask has input_ids' shape (checked before anything combines the two)."""
  return _check_like_ids(input_ids, input_mask, "input_mask")


def check_word_shape(input_ids, word_shape):
  """Assert op: word_shape has input_ids' shape."""
  return _check_like_ids(input_ids, word_shape, "word_shape")


def check_inputs(input_ids, input_mask, lengths, vocab_size, max_positions):
  """Request checks TF Serving cannot make itself, as Assert ops: InvalidArgument naming the
  input, the same message from TF Serving and from the embedded server."""
  # input_ids, input_mask: [B, T] int32 of one shape; lengths: [B] int32 -> list of Assert ops
  ids_shape = tf.shape(input_ids)
  # Only 0 and 1: this also bounds every mask sum by T, so no int32 overflow downstream.
  bad_mask = tf.logical_and(tf.not_equal(input_mask, 0), tf.not_equal(input_mask, 1))
  outside = tf.logical_or(input_ids < 0, input_ids >= vocab_size)
  empty = tf.equal(lengths, 0)
  return [
    _check(
      ids_shape[1] <= max_positions,
      "input_ids has length {} but the model has only %d positions" % max_positions,
      ids_shape[1],
    ),
    _check(
      tf.logical_not(tf.reduce_any(bad_mask)),
      "input_mask must hold only 0 and 1, got {} (row {}, position {})",
      *_first_where(input_mask, bad_mask),
    ),
    _check(
      tf.logical_not(tf.reduce_any(outside)),
      "input_ids contains {}, outside the vocabulary [0, %d) (row {}, position {})" % vocab_size,
      *_first_where(input_ids, outside),
    ),
    _check(
      tf.logical_not(tf.reduce_any(empty)),
      "input_mask row {} has length 0: every row needs 1 at its first position ([CLS])",
      _first_true(empty),
    ),
  ]


def build_inference_graph(model_dir, input_ids, input_mask, with_adapters=False, word_shape=None):
  """Checked inputs, BERT (no dropout) + concatenated feature layers + head: pred_label [B, T]
  int32, 0 beyond each row's real length (see `real_lengths`).

  `with_adapters` keeps the config's LoRA adapters as variables of their own (the trainer's
  graph); without, the served graph, into which `checkpoint.restore_model` merges them.
  `word_shape` ([B, T] int32, input_ids' shape) feeds a model with `word_shape_dim`; None reads
  as all 0; a model without word shapes ignores it.
  """
  return build_inference_head(
    model_dir, input_ids, input_mask, with_adapters, word_shape=word_shape
  ).pred_label


def build_inference_head(model_dir, input_ids, input_mask, with_adapters=False, word_shape=None):
  """`build_inference_graph` returning the whole NerHead (logits and transitions too)."""
  # model_dir: bert_ner.checkpoint.ModelDir; input_ids, input_mask, word_shape: [B, T] int32
  bert_config = modeling.BertConfig.from_json_file(model_dir.bert_config_path)
  sep_id = featurizer.load_vocab(model_dir.vocab_path).get(featurizer.SEP)
  with tf.name_scope("inputs"):
    with tf.control_dependencies([check_shapes(input_ids, input_mask)]):
      lengths = real_lengths(input_ids, input_mask, sep_id)  # [B]
    checks = check_inputs(
      input_ids, input_mask, lengths, bert_config.vocab_size, bert_config.max_position_embeddings
    )
    with tf.control_dependencies(checks):
      input_ids = tf.identity(input_ids)
      real_mask = tf.sequence_mask(lengths, tf.shape(input_ids)[1], dtype=tf.int32)  # [B, T]
  model = modeling.BertModel(
    config=bert_config,
    input_ids=input_ids,
    input_mask=real_mask,
    is_training=False,
    adapters=model_dir.ner_config.adapters() if with_adapters else None,
  )
  features = concat_features(model.all_encoder_layers, model_dir.ner_config.feature_layers)
  if model_dir.ner_config.word_shape_dim and word_shape is not None:
    with tf.name_scope("inputs"):
      with tf.control_dependencies([check_word_shape(input_ids, word_shape)]):
        word_shape = tf.identity(word_shape)
  return build_ner_head(
    features,
    lengths,
    model_dir.ner_config,
    model_dir.id2label,
    is_training=False,
    word_shape=word_shape,
  )
