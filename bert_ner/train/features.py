"""Encoder outputs cached for training: one pass of the frozen encoder over every row, then read
from memory and disk, so that an epoch runs only what is trained.

Layers are numbered one way throughout, the served graph's (`ner_config.feature_layers`): layer
i is the output of encoder layer i of `BertModel.all_encoder_layers`, 0 the lowest, negative
counting from the top (-1 = the top layer's output). The embeddings are no layer; the adapted
layers' cached input is named by the layer it feeds (`LayerInput`).
"""

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow.compat.v1 as tf
from tqdm import tqdm

from bert_ner import atomic, modeling
from bert_ner import checkpoint as ckpt
from bert_ner import head as ner_head
from bert_ner.train.data import (
  Context,
  Example,
  dev_windows,
  length_batches,
  pad,
  pad_features,
  pad_shapes,
)
from bert_ner.train.loop import FeedDict, TrainingGraph

ENCODE_BATCH = 64  # rows per encoder run while filling the cache


def layer_index(layer: int, num_layers: int) -> int:
  """Encoder layer `layer` (negative = from the top) as its position 0..num_layers-1; a
  ValueError for a layer the encoder does not have (the served graph would not load)."""
  if not -num_layers <= layer < num_layers:
    raise ValueError(f"--feature_layers has {layer}; the encoder has {num_layers} layers")
  return layer % num_layers


@dataclasses.dataclass(frozen=True)
class LayerOutputs:
  """The outputs of encoder `layers`, concatenated: the features the served graph gives the
  head for `ner_config.feature_layers` = `layers`."""

  layers: tuple[int, ...]

  def tensor(self, bert: modeling.BertModel) -> tf.Tensor:
    """[B, T, H * len(layers)] of `bert`, by the served graph's own function."""
    return ner_head.concat_features(bert.all_encoder_layers, self.layers)


@dataclasses.dataclass(frozen=True)
class LayerInput:
  """The input of encoder layer `layer` (0..num_layers-1): the embeddings for layer 0, the
  output of layer `layer - 1` above it; what adapted layers from `layer` up start from."""

  layer: int

  def tensor(self, bert: modeling.BertModel) -> tf.Tensor:
    """[B, T, H] of `bert`."""
    if self.layer == 0:
      return bert.embedding_output
    return bert.all_encoder_layers[self.layer - 1]


Source = LayerOutputs | LayerInput


class FeatureCache:
  """Encoder outputs ([T, F] float16 per row) of a list of rows, on disk under a content key."""

  def __init__(
    self, cache_dir: str, bert_config_path: str, init_checkpoint: str, source: Source
  ) -> None:
    self.cache_dir = Path(cache_dir)
    self.bert_config_path = bert_config_path
    self.init_checkpoint = init_checkpoint
    self.source = source

  def key(self, rows: Sequence[Sequence[int]]) -> str:
    """Content key: backbone variables' index, config, what is cached and the exact id rows."""
    digest = hashlib.sha256()
    for path in (self.bert_config_path, self.init_checkpoint + ".index"):
      digest.update(Path(path).read_bytes())
    source = {type(self.source).__name__: dataclasses.asdict(self.source)}
    digest.update(json.dumps(source).encode())
    for row in rows:
      digest.update(np.asarray(row, np.int32).tobytes() + b"|")
    return digest.hexdigest()[:20]

  def features(self, rows: Sequence[Sequence[int]], desc: str) -> list[np.ndarray]:
    """Per-row outputs, computed once (one encoder pass) and then read from disk."""
    path = self.cache_dir / f"{self.key(rows)}.npz"
    if path.is_file():
      with np.load(path) as data:
        flat, offsets = data["flat"], data["offsets"]
      return [flat[offsets[i] : offsets[i + 1]] for i in range(len(rows))]
    blocks = self._encode(rows, desc)
    offsets = np.cumsum([0] + [len(b) for b in blocks])
    self.cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic.open_file(path, "wb") as f:
      np.savez(f, flat=np.concatenate(blocks), offsets=offsets)
    return blocks

  def _encode(self, rows: Sequence[Sequence[int]], desc: str) -> list[np.ndarray]:
    """Runs frozen BERT over rows in length-sorted batches; float16 [T_i, F] per row."""
    graph = tf.Graph()
    with graph.as_default():
      input_ids, input_mask = ner_head.input_placeholders()
      bert = modeling.BertModel(
        modeling.BertConfig.from_json_file(self.bert_config_path),
        is_training=False,
        input_ids=input_ids,
        input_mask=input_mask,
      )
      features = self.source.tensor(bert)
      with tf.Session(graph=graph) as sess:
        ckpt.restore(sess, [self.init_checkpoint])
        blocks: list[np.ndarray] = [np.empty(0)] * len(rows)
        lengths = [len(r) for r in rows]
        for batch in tqdm(length_batches(lengths, ENCODE_BATCH), desc=desc, unit="batch"):
          ids = pad([rows[i] for i in batch])
          out = sess.run(features, {input_ids: ids, input_mask: (ids > 0).astype(np.int32)})
          for j, i in enumerate(batch):
            blocks[i] = out[j, : lengths[i]].astype(np.float16)
    return blocks


# A graph over cached values: (values [B, T, F], lengths [B], is_training, label_ids [B, T] or
# None, word_shape [B, T]) -> its NerHead.
Top = Callable[..., ner_head.NerHead]


class CachedInputs:
  """Inputs of a graph over cached encoder outputs: the values of the examples and the dev rows,
  the graph's placeholders (`values` [B, T, F], `lengths` [B], `label_ids` [B, T], `word_shape`
  [B, T]) and feeds."""

  def __init__(self, ctx: Context, examples: list[Example], source: Source, name: str) -> None:
    """Encodes (once, then from the cache) the examples and every dev row at `source`."""
    cache = FeatureCache(ctx.config.cache_dir, ctx.bert.config, ctx.bert.checkpoint, source)
    self.examples = examples
    self.train_values = cache.features([e.input_ids for e in examples], "encode train")
    dev_rows = dev_windows(ctx.featurizer, ctx.dev)
    self.dev_values = dict(zip(dev_rows, cache.features(dev_rows, "encode dev")))
    self.name = name
    # The placeholders, made by `branches` in the graph being built.
    self.values: Any = None
    self.lengths: Any = None
    self.label_ids: Any = None
    self.word_shape: Any = None

  def branches(self, top: Top) -> tuple[ner_head.NerHead, ner_head.NerHead]:
    """Placeholders in the default graph and `top(values, lengths, is_training=, label_ids=,
    word_shape=)` over them twice: (training NerHead, inference NerHead), the second reusing the
    variables."""
    width = self.train_values[0].shape[1]
    self.values = tf.placeholder(tf.float32, [None, None, width], self.name)
    self.lengths = tf.placeholder(tf.int32, [None], "lengths")
    self.label_ids = tf.placeholder(tf.int32, [None, None], "label_ids")
    self.word_shape = tf.placeholder(tf.int32, [None, None], "word_shape")
    trained = top(
      self.values,
      self.lengths,
      is_training=True,
      label_ids=self.label_ids,
      word_shape=self.word_shape,
    )
    with tf.variable_scope(tf.get_variable_scope(), reuse=True):
      inferred = top(self.values, self.lengths, is_training=False, word_shape=self.word_shape)
    return trained, inferred

  def training_graph(
    self,
    sess: tf.Session,
    trained: ner_head.NerHead,
    train_op: tf.Operation,
    inferred: ner_head.NerHead,
    kept: list[tf.Variable],
    warmup_op: tf.Operation | None = None,
    warmup_steps: int = 0,
  ) -> TrainingGraph:
    """The TrainingGraph of `branches`' heads, fed from the cache."""
    return TrainingGraph(
      sess,
      trained.loss,
      train_op,
      inferred.pred_label,
      self.train_feed,
      self.dev_feed,
      kept,
      warmup_op,
      warmup_steps,
    )

  def train_feed(self, batch: np.ndarray) -> FeedDict:
    """The examples' cached values, lengths, label ids and word shapes."""
    examples = [self.examples[i] for i in batch]
    return {
      self.values: pad_features([self.train_values[i] for i in batch]),
      self.lengths: [len(e.input_ids) for e in examples],
      self.label_ids: pad([e.label_ids for e in examples]),
      self.word_shape: pad_shapes(
        [e.word_shape for e in examples], [e.input_ids for e in examples]
      ),
    }

  def dev_feed(
    self, input_ids: np.ndarray, input_mask: np.ndarray, word_shape: np.ndarray | None = None
  ) -> FeedDict:
    """Dev rows' values, looked up by their ids in the cache, and their word shapes (None: 0)."""
    rows = [tuple(ids[:n]) for ids, n in zip(input_ids.tolist(), input_mask.sum(1))]
    width = max(len(r) for r in rows)
    if word_shape is None:
      word_shape = np.zeros((len(rows), width), np.int32)
    return {
      self.values: pad_features([self.dev_values[r] for r in rows]),
      self.lengths: [len(r) for r in rows],
      self.word_shape: np.asarray(word_shape, np.int32)[:, :width],
    }
