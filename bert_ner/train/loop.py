"""The epoch loop every training mode shares: train, tag dev both ways, keep the best epoch.

Dev is tagged sentence by sentence and as whole documents every epoch; the epoch with the best
mean of the two entity F1s is kept.
"""

import dataclasses
import logging
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
FeedDict = dict[Any, Any]  # placeholder -> value, as Session.run takes it
Tags = list[list[str]]  # one tag list a sentence
RunFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (input_ids, input_mask) -> pred_label


@dataclasses.dataclass
class TrainingGraph:
  """A training graph in its session, as the epoch loop drives it, whatever the mode.

  `train_feed(batch)` maps example indices and `dev_feed(input_ids, input_mask)` dev rows to the
  graph's inputs; `kept` are the variables whose values the best epoch keeps.
  """

  sess: tf.Session
  loss: tf.Tensor
  train_op: tf.Operation
  pred_label: tf.Tensor  # of the inference branch (no dropout)
  train_feed: Callable[[np.ndarray], FeedDict]
  dev_feed: Callable[[np.ndarray, np.ndarray], FeedDict]
  kept: list[tf.Variable]

  def train_step(self, batch: np.ndarray) -> np.float32:
    """One update on example indices; the batch's loss."""
    loss, _ = self.sess.run([self.loss, self.train_op], self.train_feed(batch))
    return loss

  def run_dev(self, input_ids: np.ndarray, input_mask: np.ndarray) -> np.ndarray:
    """pred_label of the current weights."""
    return self.sess.run(self.pred_label, self.dev_feed(input_ids, input_mask))

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
  """Predicted tags of every dev sentence per mode: tagged alone, and within its document."""
  words = [[s.words for s in document] for document in documents]
  return {
    "sentence": featurizer.predict_words([w for d in words for w in d], run_fn),
    "document": [t for d in featurizer.predict_documents(words, run_fn) for t in d],
  }


def score_dev(documents: list[Document], predicted: dict[str, Tags]) -> dict[str, dict[str, Any]]:
  """seqeval scores per mode of `predict_dev`'s tags."""
  gold = [s.tags for document in documents for s in document]
  return {mode: seqeval_scores(gold, tags) for mode, tags in predicted.items()}


def selection_f1(scores: dict[str, dict[str, Any]]) -> float:
  """What picks the best epoch: the mean entity F1 of sentence and document mode."""
  return float(np.mean([scores[mode]["f1"] for mode in MODES]))


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
        **{f"dev_f1_{mode}": scores[mode]["f1"] for mode in MODES},
        "seconds": round(time.time() - started, 1),
      }
    )
    logging.info(
      "epoch %d: loss %.4f dev F1 sentence %.2f document %.2f (%.0f s)",
      epoch,
      np.mean(losses),
      scores["sentence"]["f1"],
      scores["document"]["f1"],
      time.time() - started,
    )
    if best is None or history[-1]["dev_f1"] > best["dev_f1"]:
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
