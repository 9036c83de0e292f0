"""What a run leaves: the best epoch's checkpoint dir, its dev scores through the served graph,
the report (`train_report.json`) and, for a head-only dir, the manifest."""

import dataclasses
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow.compat.v1 as tf

from bert_ner import atomic, backbone, model_base
from bert_ner import checkpoint as ckpt
from bert_ner import head as ner_head
from bert_ner.train.config import TrainConfig
from bert_ner.train.data import Context, Document
from bert_ner.train.graphs import is_adapter_variable, is_head_variable
from bert_ner.train.loop import NO_SHAPE, Tags, predict_dev

SCORE_FIELDS = ("precision", "recall", "f1", "per_type")  # of each mode, in the manifest


def run_graph(
  sess: tf.Session,
  pred_label: tf.Tensor,
  input_ids: tf.Tensor,
  input_mask: tf.Tensor,
  word_shape: tf.Tensor,
  ids: np.ndarray,
  mask: np.ndarray,
  shapes: np.ndarray | None = None,
) -> np.ndarray:
  """pred_label of one batch in an inference graph, word shapes fed when given."""
  feed = {input_ids: ids, input_mask: mask}
  if shapes is not None:
    feed[word_shape] = shapes
  return sess.run(pred_label, feed)


def save_best(ctx: Context, best: dict[str, Any]) -> tuple[str, Tags | None]:
  """Writes the best weights as a checkpoint dir (head + adapters with --head_only).

  Returns its checkpoint prefix and, with adapters, the dev sentences' tags of the full BERT
  graph with the adapters unmerged (what the merged, served graph must reproduce).
  """
  config = ctx.config
  graph = tf.Graph()
  with graph.as_default():
    input_ids, input_mask = ner_head.input_placeholders()
    word_shape = ner_head.word_shape_input(input_ids)
    pred_label = ner_head.build_inference_graph(
      ctx.model_dir(), input_ids, input_mask, with_adapters=True, word_shape=word_shape
    )
    variables = tf.global_variables()
    with tf.Session(graph=graph) as sess:
      from_checkpoint = [v for v in variables if v.op.name not in best["weights"]]
      if from_checkpoint:
        ckpt.restore(sess, [ctx.bert.checkpoint], var_list=from_checkpoint)
      for var in variables:
        if var.op.name in best["weights"]:
          var.load(best["weights"][var.op.name], sess)
      adapter_tags = None
      if config.adapter_rank:
        adapter_tags = ctx.featurizer.predict_words(
          [s.words for d in ctx.dev for s in d],
          functools.partial(run_graph, sess, pred_label, input_ids, input_mask, word_shape),
        )
      saved = variables
      if config.head_only:
        saved = [v for v in variables if is_head_variable(v) or is_adapter_variable(v)]
      prefix = ckpt.save_checkpoint_dir(
        sess,
        config.out,
        best["step"],
        ctx.bert.config,
        ctx.bert.vocab,
        ctx.id2label,
        ctx.ner_config,
        var_list=saved,
      )
  return prefix, adapter_tags


def score_saved(ctx: Context, prefix: str) -> dict[str, Tags]:
  """Dev tags of both modes through the served graph of the saved checkpoint (adapters merged)."""
  init_checkpoints = [prefix] + ([ctx.bert.checkpoint] if ctx.config.head_only else [])
  model_dir = ctx.model_dir(init_checkpoints)
  graph = tf.Graph()
  with graph.as_default():
    input_ids, input_mask = ner_head.input_placeholders()
    word_shape = ner_head.word_shape_input(input_ids)
    pred_label = ner_head.build_inference_graph(
      model_dir, input_ids, input_mask, word_shape=word_shape
    )
    with tf.Session(graph=graph) as sess:
      ckpt.restore_model(sess, model_dir)
      return predict_dev(
        ctx.featurizer,
        ctx.dev,
        functools.partial(run_graph, sess, pred_label, input_ids, input_mask, word_shape),
      )


def merge_agreement(adapter_tags: Tags, merged_tags: Tags) -> dict[str, int]:
  """How many dev words the adapter graph and the merged graph tag differently."""
  pairs = [(a, b) for s, t in zip(adapter_tags, merged_tags) for a, b in zip(s, t)]
  return {"words": len(pairs), "differing": sum(a != b for a, b in pairs)}


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
  """Writes JSON so that a reader never sees half of it."""
  atomic.write_text(path, json.dumps(data, indent=1) + "\n")


@dataclasses.dataclass
class Outcome:
  """What a run measured, for the report and the manifest."""

  mode: str
  best: dict[str, Any]  # loop.fit's best epoch
  history: list[dict[str, Any]]
  scores: dict[str, dict[str, Any]]  # dev scores per mode, of the saved model
  train_seconds: float
  total_seconds: float


def train_report(
  config: TrainConfig,
  command: str,
  outcome: Outcome,
  train: list[Document],
  dev: list[Document],
) -> dict[str, Any]:
  """The report a run writes as `train_report.json` and returns."""
  return {
    "command": command,
    "mode": outcome.mode,
    "context": config.context,
    "context_loss": config.context_loss,
    "best_epoch": outcome.best["epoch"],
    "dev": outcome.scores["sentence"],
    "dev_document": outcome.scores["document"],
    **without_shapes(outcome.scores, lambda scores: scores),
    "history": outcome.history,
    "train_sentences": sum(len(d) for d in train),
    "train_documents": len(train),
    "dev_sentences": sum(len(d) for d in dev),
    "dev_documents": len(dev),
    "train_seconds": outcome.train_seconds,
    "total_seconds": outcome.total_seconds,
    "config": dataclasses.asdict(config),
  }


def without_shapes(
  scores: dict[str, dict[str, Any]], pick: Callable[[dict[str, Any]], dict[str, Any]]
) -> dict[str, dict[str, Any]]:
  """`{"dev_without_word_shape": pick(its scores)}` for a model with word shapes, else {}."""
  return {"dev_without_word_shape": pick(scores[NO_SHAPE])} if NO_SHAPE in scores else {}


def manifest(config: TrainConfig, command: str, outcome: Outcome) -> dict[str, Any]:
  """A head-only dir's `manifest.json`: the pinned backbone it needs and how it scored."""
  return {
    "backbone": backbone.DEFAULT_BACKBONE,
    "train_command": command,
    "mode": outcome.mode,
    "context": config.context,
    "dev": {k: outcome.scores["sentence"][k] for k in SCORE_FIELDS},
    "dev_document": {k: outcome.scores["document"][k] for k in SCORE_FIELDS},
    **without_shapes(outcome.scores, lambda scores: {k: scores[k] for k in SCORE_FIELDS}),
    "best_epoch": outcome.best["epoch"],
    "train_seconds": outcome.train_seconds,
  }


def write_outputs(config: TrainConfig, report: dict[str, Any], head_manifest: dict | None) -> None:
  """The report, and the manifest if any, into the checkpoint dir."""
  write_json_atomic(Path(config.out) / model_base.TRAIN_REPORT, report)
  if head_manifest is not None:
    write_json_atomic(Path(config.out) / ckpt.MANIFEST, head_manifest)
