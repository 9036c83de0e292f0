"""The epoch loop every training mode shares: train, tag dev both ways, keep the best epoch.

Dev is tagged sentence by sentence and as whole documents every epoch; the epoch with the best
mean of the two entity F1s is kept. A model with word shapes is also scored sentence by sentence
without them (what `result` alone gives): reported, and with --min_f1_without_word_shape a floor
an epoch must reach to be kept (`selection_key`).
"""

import dataclasses
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tensorflow as tf2
import tensorflow.compat.v1 as tf
from tqdm import tqdm

from bert_ner.featurizer import Featurizer
from bert_ner.metrics import seqeval_scores
from bert_ner.train.data import Context, Document, Example, length_batches

MODES = ("sentence", "document")  # how dev is tagged: sentence by sentence, or whole documents
# Also scored for a model with word shapes: sentence mode without them (`result` without extras).
NO_SHAPE = "sentence_no_shape"
FeedDict = dict[Any, Any]  # placeholder -> value, as Session.run takes it
Tags = list[list[str]]  # one tag list a sentence
# (input_ids, input_mask[, word_shape]) -> pred_label, all [B, T]
RunFn = Callable[..., np.ndarray]
# Dev rows (input_ids, input_mask, word_shape or None) -> the graph's feed.
DevFeed = Callable[[np.ndarray, np.ndarray, np.ndarray | None], FeedDict]


@dataclasses.dataclass
class TrainingGraph:
  """A training graph in its session, as the epoch loop drives it, whatever the mode.

  `train_feed(batch)` maps example indices and `dev_feed(input_ids, input_mask, word_shape)` dev
  rows to the graph's inputs; `kept` are the variables whose values the best epoch keeps. For the
  first `warmup_steps` steps `warmup_op` (the head alone) runs instead of `train_op`.
  """

  sess: tf.Session
  loss: tf.Tensor
  train_op: tf.Operation
  pred_label: tf.Tensor  # of the inference branch (no dropout)
  train_feed: Callable[[np.ndarray], FeedDict]
  dev_feed: DevFeed
  kept: list[tf.Variable]
  warmup_op: tf.Operation | None = None  # head-only update for the first `warmup_steps` steps
  warmup_steps: int = 0
  steps: int = 0  # updates run so far

  def train_step(self, batch: np.ndarray) -> np.float32:
    """One update on example indices; the batch's loss."""
    op = self.warmup_op if self.steps < self.warmup_steps else self.train_op
    loss, _ = self.sess.run([self.loss, op], self.train_feed(batch))
    self.steps += 1
    return loss

  def run_dev(
    self, input_ids: np.ndarray, input_mask: np.ndarray, word_shape: np.ndarray | None = None
  ) -> np.ndarray:
    """pred_label of the current weights (word shapes fed when given)."""
    return self.sess.run(self.pred_label, self.dev_feed(input_ids, input_mask, word_shape))

  def snapshot(self) -> dict[str, np.ndarray]:
    """Current values of the kept variables by name."""
    return dict(zip([v.op.name for v in self.kept], self.sess.run(self.kept)))


def summary_writer(logdir: str) -> Any:
  """TensorBoard writer for scalar summaries (loss, dev P/R/F1), or None."""
  return tf2.summary.create_file_writer(logdir) if logdir else None


def write_scalars(writer: Any, step: int, **values: float | np.floating[Any]) -> None:
  """Writes plain Python scalars as TensorBoard summaries (eagerly, outside the graphs)."""
  if writer is None:
    return
  with writer.as_default():
    for tag, value in values.items():
      tf2.summary.scalar(tag, float(value), step=int(step))
  writer.flush()


def predict_dev(
  featurizer: Featurizer, documents: list[Document], run_fn: RunFn
) -> dict[str, Tags]:
  """Predicted tags of every dev sentence per mode: tagged alone, and within its document; for
  a model with word shapes (run_fn takes them third) also sentence mode without them."""
  words = [[s.words for s in document] for document in documents]
  predicted = {
    "sentence": featurizer.predict_words([w for d in words for w in d], run_fn),
    "document": [t for d in featurizer.predict_documents(words, run_fn) for t in d],
  }
  if featurizer.word_shape:
    predicted[NO_SHAPE] = featurizer.predict_words(
      [w for d in words for w in d],
      lambda ids, mask, shapes: run_fn(ids, mask, np.zeros_like(shapes)),
    )
  return predicted


def score_dev(documents: list[Document], predicted: dict[str, Tags]) -> dict[str, dict[str, Any]]:
  """seqeval scores per mode of `predict_dev`'s tags."""
  gold = [s.tags for document in documents for s in document]
  return {mode: seqeval_scores(gold, tags) for mode, tags in predicted.items()}


def selection_f1(scores: dict[str, dict[str, Any]]) -> float:
  """What picks the best epoch: the mean entity F1 of sentence and document mode."""
  return float(np.mean([scores[mode]["f1"] for mode in MODES]))


def selection_key(record: dict[str, Any], floor: float) -> tuple[bool, float]:
  """What picks the best epoch from its history record: first whether its `result` path (sentence
  mode without word shapes, where measured) reaches `floor`, then `selection_f1`.

  For example, with floor 92.0 an epoch at mean 93.3 and 92.1 without shapes beats one at mean
  93.4 and 91.8 without shapes; with floor 0 the second wins.
  """
  return record.get(f"dev_f1_{NO_SHAPE}", math.inf) >= floor, record["dev_f1"]


def fit_epochs(
  ctx: Context, examples: Sequence[Example], model: TrainingGraph
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """The epoch loop all modes share: train, score dev both ways, keep the best epoch's weights.

  `model` is a TrainingGraph: its `train_step(batch) -> loss` runs one update on example
  indices, `run_dev(ids, mask) -> pred_label` predicts with the current weights, `snapshot() ->
  {name: array}` copies them. Returns the best epoch ({epoch, dev_f1, step, weights}) and every
  epoch's record for the report.
  """
  config = ctx.config
  rng = random.Random(config.seed)
  floor = config.min_f1_without_word_shape
  best: dict[str, Any] | None = None
  history: list[dict[str, Any]] = []
  step = 0
  for epoch in range(1, config.epochs + 1):
    started, losses = time.time(), []
    batches = length_batches([len(e.input_ids) for e in examples], config.batch_size, rng)
    for batch in tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch"):
      losses.append(model.train_step(batch))
      step += 1
      if step % 50 == 0:
        write_scalars(ctx.writer, step, loss=losses[-1])
    predicted = predict_dev(ctx.featurizer, ctx.dev, model.run_dev)
    scores = score_dev(ctx.dev, predicted)
    for mode in MODES:
      write_scalars(
        ctx.writer,
        step,
        **{f"dev_{mode}/{k}": scores[mode][k] for k in ("precision", "recall", "f1")},
      )
    history.append(
      {
        "epoch": epoch,
        "loss": float(np.mean(losses)),
        "dev_f1": selection_f1(scores),
        **{f"dev_f1_{mode}": scores[mode]["f1"] for mode in scores},
        "seconds": round(time.time() - started, 1),
      }
    )
    logging.info(
      "epoch %d: loss %.4f dev F1 sentence %.2f document %.2f%s (%.0f s)",
      epoch,
      np.mean(losses),
      scores["sentence"]["f1"],
      scores["document"]["f1"],
      f" sentence without word shapes {scores[NO_SHAPE]['f1']:.2f}" if NO_SHAPE in scores else "",
      time.time() - started,
    )
    if best is None or selection_key(history[-1], floor) > selection_key(
      history[best["epoch"] - 1], floor
    ):
      best = {
        "epoch": epoch,
        "dev_f1": history[-1]["dev_f1"],
        "step": step,
        "weights": model.snapshot(),
      }
  assert best is not None, "epochs >= 1 (check_config)"
  return best, history


def fit(
  ctx: Context, examples: Sequence[Example], model: TrainingGraph
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """fit_epochs, then the TrainingGraph's session closed."""
  try:  # Not `with sess`: that would make the graph default and break eager summaries.
    return fit_epochs(ctx, examples, model)
  finally:
    model.sess.close()
