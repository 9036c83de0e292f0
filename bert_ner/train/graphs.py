"""The training graph of each mode, in a session ready for the epoch loop (`loop.fit`).

Frozen: the head over cached encoder features. Adapters: LoRA adapters on the encoder layers
from `adapter_first_layer` up, over the cached input of the first of them, and the head. Fine
tune: all of BERT and the head over the input ids. Each returns (best weights, history). The
adapter and fine-tune modes may train the head alone for their first `head_warmup_steps` steps.
"""

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow.compat.v1 as tf

from bert_ner import checkpoint as ckpt
from bert_ner import head as ner_head
from bert_ner import modeling
from bert_ner.train.config import TrainConfig
from bert_ner.train.data import Context, lengths_mask, pad, pad_shapes, training_examples
from bert_ner.train.features import CachedInputs, LayerInput, LayerOutputs, layer_index
from bert_ner.train.loop import FeedDict, TrainingGraph, fit

HEAD_SCOPES = ("rnn_layer/", "project/", "crf_loss/", "word_shape/")
ADAPTER_SUFFIXES = ("/" + modeling.ADAPTER_DOWN, "/" + modeling.ADAPTER_UP)
Fitted = tuple[dict[str, Any], list[dict[str, Any]]]  # loop.fit's (best epoch, history)


def is_head_variable(var: tf.Variable) -> bool:
  """True for the NER head's variables (macanv scopes), False for BERT's."""
  return var.op.name.startswith(HEAD_SCOPES)


def is_adapter_variable(var: tf.Variable) -> bool:
  """True for the LoRA adapters beside BERT's kernels."""
  return var.op.name.endswith(ADAPTER_SUFFIXES)


def minimize(
  loss: tf.Tensor, variables: list[tf.Variable], learning_rate: Any, clip_norm: float = 5.0
) -> tf.Operation:
  """Adam step on `variables` with global-norm gradient clipping."""
  grads = tf.gradients(loss, variables)
  grads, _ = tf.clip_by_global_norm(grads, clip_norm)
  return tf.train.AdamOptimizer(learning_rate).apply_gradients(zip(grads, variables))


def decayed_train_op(
  config: TrainConfig,
  loss: tf.Tensor,
  variables: list[tf.Variable],
  learning_rate: float,
  head_variables: list[tf.Variable],
  num_examples: int,
) -> tuple[tf.Operation, tf.Operation]:
  """(train_op, warmup_op): Adam on `variables` at `learning_rate` decaying linearly to zero
  over the steps after the head's warm-up (as google-research/bert does, gradients clipped at
  norm 1) and on the head at its own rate; the warm-up op updates the head only."""
  global_step = tf.train.get_or_create_global_step()
  steps_per_epoch = -(-num_examples // config.batch_size)
  decay_steps = max(steps_per_epoch * config.epochs - config.head_warmup_steps, 1)
  rate = tf.train.polynomial_decay(learning_rate, global_step, decay_steps, 0.0)
  head_op = minimize(loss, head_variables, config.learning_rate)
  train_op = tf.group(
    minimize(loss, variables, rate, clip_norm=1.0), head_op, global_step.assign_add(1)
  )
  return train_op, head_op


def start_session(
  graph: tf.Graph, restored: Sequence[tf.Variable] = (), checkpoint: str = ""
) -> tf.Session:
  """A session of `graph` (the default graph) with fresh variables, `restored` ones read from
  `checkpoint`."""
  sess = tf.Session(graph=graph)
  sess.run(tf.global_variables_initializer())
  if restored:
    ckpt.restore(sess, [checkpoint], var_list=restored)
  return sess


def unobserved_labels(ctx: Context) -> bool:
  """Whether training rows may leave tags untaught (`--context_loss sentence`), so the loss must
  sum over them."""
  return ctx.config.context_loss != "all"


def train_frozen(ctx: Context) -> Fitted:
  """Trains only the head on cached encoder features; returns (best head weights, history)."""
  config = ctx.config
  examples = training_examples(ctx)
  features = LayerOutputs(tuple(ctx.ner_config.feature_layers))
  inputs = CachedInputs(ctx, examples, features, "features")
  head = functools.partial(
    ner_head.build_ner_head,
    ner_config=ctx.ner_config,
    id2label=ctx.id2label,
    unobserved_labels=unobserved_labels(ctx),
  )
  graph = tf.Graph()
  with graph.as_default():
    tf.set_random_seed(config.seed)
    trained, inferred = inputs.branches(head)
    head_variables = tf.trainable_variables()
    train_op = minimize(trained.loss, head_variables, config.learning_rate)
    sess = start_session(graph)
  return fit(
    ctx, examples, inputs.training_graph(sess, trained, train_op, inferred, head_variables)
  )


def train_fine_tuned(ctx: Context) -> Fitted:
  """Trains BERT and the head together; returns (best weights of all variables, history)."""
  config = ctx.config
  examples = training_examples(ctx)
  graph = tf.Graph()
  with graph.as_default():
    tf.set_random_seed(config.seed)
    input_ids, input_mask = ner_head.input_placeholders()
    label_ids = tf.placeholder(tf.int32, [None, None], "label_ids")
    word_shape = ner_head.word_shape_input(input_ids)
    bert = modeling.BertModel(
      modeling.BertConfig.from_json_file(ctx.bert.config),
      is_training=True,
      input_ids=input_ids,
      input_mask=input_mask,
    )
    trained = ner_head.build_ner_head(
      ner_head.concat_features(bert.all_encoder_layers, ctx.ner_config.feature_layers),
      tf.reduce_sum(input_mask, 1),
      ctx.ner_config,
      ctx.id2label,
      True,
      label_ids,
      word_shape,
      unobserved_labels(ctx),
    )
    with tf.variable_scope(tf.get_variable_scope(), reuse=True):
      inferred = ner_head.build_inference_graph(
        ctx.model_dir(), input_ids, input_mask, word_shape=word_shape
      )
    variables = tf.trainable_variables()
    bert_variables = [v for v in variables if not is_head_variable(v)]
    head_variables = [v for v in variables if is_head_variable(v)]
    train_op, warmup_op = decayed_train_op(
      config, trained.loss, bert_variables, config.bert_learning_rate, head_variables, len(examples)
    )
    sess = start_session(graph, bert_variables, ctx.bert.checkpoint)

  def train_feed(batch: np.ndarray) -> FeedDict:
    """The examples' ids, mask, label ids and word shapes."""
    ids = pad([examples[i].input_ids for i in batch])
    return {
      input_ids: ids,
      input_mask: lengths_mask(ids),
      label_ids: pad([examples[i].label_ids for i in batch]),
      word_shape: pad_shapes([examples[i].word_shape for i in batch], ids),
    }

  def dev_feed(ids: np.ndarray, mask: np.ndarray, shapes: np.ndarray | None = None) -> FeedDict:
    """Dev rows as they are (this graph reads ids), and their word shapes when given."""
    feed = {input_ids: ids, input_mask: mask}
    if shapes is not None:
      feed[word_shape] = shapes
    return feed

  return fit(
    ctx,
    examples,
    TrainingGraph(
      sess,
      trained.loss,
      train_op,
      inferred,
      train_feed,
      dev_feed,
      variables,
      warmup_op,
      config.head_warmup_steps,
    ),
  )


def adapted_features(
  bert_config: modeling.BertConfig,
  adapters: modeling.Adapters,
  feature_layers: Sequence[int],
  states: tf.Tensor,
  lengths: tf.Tensor,
  is_training: bool,
) -> tf.Tensor:
  """The encoder layers from `adapters.first_layer` up, adapted, over `states` [B, T, H] (their
  input, `LayerInput(first_layer)`), and the features `feature_layers` pick from their outputs:
  [B, T, H * len(feature_layers)], the served graph's features of the merged model."""
  first, num_layers = adapters.first_layer, bert_config.num_hidden_layers
  mask = tf.sequence_mask(lengths, tf.shape(states)[1], tf.int32)  # [B, T]
  with tf.variable_scope("bert/encoder"):
    outputs = modeling.transformer_model(
      bert_config,
      states,
      mask,
      bert_config.hidden_dropout_prob if is_training else 0.0,
      bert_config.attention_probs_dropout_prob if is_training else 0.0,
      adapters,
      first,
    )
  # Layer outputs by position: the adapted layers', and below them their input, the output of
  # layer first - 1 (the embeddings when first is 0, which no feature layer names).
  by_layer = {first - 1: states, **{first + i: out for i, out in enumerate(outputs)}}
  return tf.concat([by_layer[layer_index(layer, num_layers)] for layer in feature_layers], axis=-1)


def adapted_top(
  ctx: Context,
  bert_config: modeling.BertConfig,
  states: tf.Tensor,
  lengths: tf.Tensor,
  is_training: bool,
  label_ids: tf.Tensor | None = None,
  word_shape: tf.Tensor | None = None,
) -> ner_head.NerHead:
  """The adapted encoder layers over cached `states` [B, T, H] (the input of the first adapted
  layer) and the head over the feature layers: NerHead."""
  adapters = ctx.ner_config.adapters()
  assert adapters is not None, "adapter mode has adapter_rank > 0 (mode_name)"
  features = adapted_features(
    bert_config, adapters, ctx.ner_config.feature_layers, states, lengths, is_training
  )
  return ner_head.build_ner_head(
    features,
    lengths,
    ctx.ner_config,
    ctx.id2label,
    is_training,
    label_ids,
    word_shape,
    unobserved_labels(ctx),
  )


def check_adapted_layers(feature_layers: Sequence[int], first: int, num_layers: int) -> None:
  """Adapters from layer `first` up fit the encoder, and every feature layer is one the adapted
  graph computes (an adapted layer's output, or their input)."""
  if not 0 <= first < num_layers:
    raise ValueError(f"--adapter_first_layer must be in 0..{num_layers - 1}, got {first}")
  below = sorted(
    {layer_index(layer, num_layers) for layer in feature_layers} - set(range(first - 1, num_layers))
  )
  if below:
    raise ValueError(
      f"feature layers {below} lie below the adapted layers' input (layer "
      f"{first - 1}): raise them or lower --adapter_first_layer"
    )


def train_adapters(ctx: Context) -> Fitted:
  """Trains the head with LoRA adapters on BERT's layers from `adapter_first_layer` up; returns
  (best weights of head and adapters, history).

  The frozen layers below never change, so their output (the adapted layers' input) is computed
  once and cached like the frozen head's features: an epoch runs only the adapted layers, forward
  and backward.
  """
  config = ctx.config
  bert_config = modeling.BertConfig.from_json_file(ctx.bert.config)
  first = config.adapter_first_layer
  check_adapted_layers(ctx.ner_config.feature_layers, first, bert_config.num_hidden_layers)
  examples = training_examples(ctx)
  inputs = CachedInputs(ctx, examples, LayerInput(first), "states")
  graph = tf.Graph()
  with graph.as_default():
    tf.set_random_seed(config.seed)
    trained, inferred = inputs.branches(functools.partial(adapted_top, ctx, bert_config))
    variables = tf.trainable_variables()
    adapter_variables = [v for v in variables if is_adapter_variable(v)]
    head_variables = [v for v in variables if is_head_variable(v)]
    base_variables = [v for v in variables if v not in adapter_variables + head_variables]
    train_op, warmup_op = decayed_train_op(
      config,
      trained.loss,
      adapter_variables,
      config.adapter_learning_rate,
      head_variables,
      len(examples),
    )
    sess = start_session(graph, base_variables, ctx.bert.checkpoint)
  kept = adapter_variables + head_variables
  return fit(
    ctx,
    examples,
    inputs.training_graph(
      sess, trained, train_op, inferred, kept, warmup_op, config.head_warmup_steps
    ),
  )
