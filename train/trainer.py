"""Trains the NER head on CoNLL data: frozen BERT with cached features, or full fine-tuning.

Frozen (default, as macanv users ran it on small GPUs): the encoder runs once over every window,
its chosen layers are cached in memory (and on disk, keyed by backbone, data and layers), so each
epoch costs only the head. `--fine_tune` trains BERT and the head together.
The best epoch on dev (entity F1, seqeval) is kept; the final scores are recomputed with the
exported inference graph (`bert_ner.head.build_inference_graph`) on the saved checkpoint, so they
are the figures a served model reproduces.
"""

import dataclasses
import hashlib
import json
import logging
import os
import random
import time
from pathlib import Path
from typing import List

import numpy as np
import tensorflow as tf2
import tensorflow.compat.v1 as tf
from tqdm import tqdm

from bert_ner import backbone
from bert_ner import checkpoint as ckpt
from bert_ner import conll
from bert_ner import head as ner_head
from bert_ner import labels as label_maps
from bert_ner.metrics import seqeval_scores
from bert_ner import modeling
from bert_ner.featurizer import Featurizer

HEAD_SCOPES = ("rnn_layer/", "project/", "crf_loss/")
FEATURE_CACHE = backbone.CACHE_ROOT / "features"


@dataclasses.dataclass
class Example:
  """One model row: sub-token ids, their training label ids and the sentence/window it came from."""
  input_ids: List[int]
  label_ids: List[int]
  sentence: int


def is_head_variable(var):
  """True for the NER head's variables (macanv scopes), False for BERT's."""
  return var.op.name.startswith(HEAD_SCOPES)


def make_examples(featurizer, sentences):
  """Featurizes labelled sentences into training rows (one per window)."""
  examples = []
  for index, sentence in enumerate(sentences):
    for window, label_ids in featurizer.label_ids(sentence.words, sentence.tags):
      examples.append(Example(list(window.input_ids), label_ids, index))
  return examples


def length_batches(lengths, batch_size, shuffle, rng):
  """Index batches of similar lengths (little padding); shuffled batch order when training."""
  order = np.argsort(lengths, kind="stable")
  if shuffle:
    # Sort within random chunks only, so batches differ from epoch to epoch.
    order = np.array(rng.sample(range(len(lengths)), len(lengths)))
    chunks = [order[i:i + batch_size * 50] for i in range(0, len(order), batch_size * 50)]
    order = np.concatenate([c[np.argsort(np.asarray(lengths)[c], kind="stable")] for c in chunks])
  batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
  if shuffle:
    rng.shuffle(batches)
  return batches


def pad(rows):
  """Pads a list of 1-D int sequences to the longest with zeros: [B, T] int32."""
  out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


def pad_features(rows):
  """Pads [T_i, F] feature blocks to [B, max T, F] float32."""
  out = np.zeros((len(rows), max(len(r) for r in rows), rows[0].shape[1]), np.float32)
  for i, row in enumerate(rows):
    out[i, :len(row)] = row
  return out


class FeatureCache:
  """Encoder features ([T, F] float16 per row) for a list of rows, on disk under a content key."""

  def __init__(self, cache_dir, bert_config_path, init_checkpoint, feature_layers):
    self.cache_dir = Path(cache_dir)
    self.bert_config_path = bert_config_path
    self.init_checkpoint = init_checkpoint
    self.feature_layers = list(feature_layers)

  def key(self, rows):
    """Content key: backbone variables' index, config, layers and the exact id rows."""
    digest = hashlib.sha256()
    for path in (self.bert_config_path, self.init_checkpoint + ".index"):
      digest.update(Path(path).read_bytes())
    digest.update(json.dumps(self.feature_layers).encode())
    for row in rows:
      digest.update(np.asarray(row, np.int32).tobytes() + b"|")
    return digest.hexdigest()[:20]

  def features(self, rows, batch_size, desc):
    """Per-row features, computed once (one encoder pass) and then read from disk."""
    path = self.cache_dir / f"{self.key(rows)}.npz"
    if path.is_file():
      with np.load(path) as data:
        flat, offsets = data["flat"], data["offsets"]
      return [flat[offsets[i]:offsets[i + 1]] for i in range(len(rows))]
    blocks = self._encode(rows, batch_size, desc)
    offsets = np.cumsum([0] + [len(b) for b in blocks])
    self.cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, flat=np.concatenate(blocks), offsets=offsets)
    os.replace(tmp, path)
    return blocks

  def _encode(self, rows, batch_size, desc):
    """Runs frozen BERT over rows in length-sorted batches; float16 [T_i, F] per row."""
    graph = tf.Graph()
    with graph.as_default():
      input_ids = tf.placeholder(tf.int32, [None, None], "input_ids")
      input_mask = tf.placeholder(tf.int32, [None, None], "input_mask")
      bert = modeling.BertModel(modeling.BertConfig.from_json_file(self.bert_config_path),
                                is_training=False, input_ids=input_ids, input_mask=input_mask)
      features = ner_head.concat_features(bert.all_encoder_layers, self.feature_layers)
      with tf.Session(graph=graph) as sess:
        ckpt.restore(sess, [self.init_checkpoint])
        blocks = [None] * len(rows)
        lengths = [len(r) for r in rows]
        for batch in tqdm(length_batches(lengths, batch_size, False, None), desc=desc,
                          unit="batch"):
          ids = pad([rows[i] for i in batch])
          out = sess.run(features, {input_ids: ids, input_mask: (ids > 0).astype(np.int32)})
          for j, i in enumerate(batch):
            blocks[i] = out[j, :lengths[i]].astype(np.float16)
    return blocks


def lengths_mask(ids):
  """input_mask [B, T] int32 from zero-padded id rows ([PAD] is id 0 in BERT vocabularies)."""
  return (ids != 0).astype(np.int32)


@dataclasses.dataclass
class TrainConfig:
  """Trainer settings (the CLI's flags)."""
  train: str
  dev: str
  out: str
  backbone: str = ""  # Google-format BERT dir; empty = the pinned default (MiniLM)
  head: str = "bilstm"
  lstm_size: int = 128
  hidden_size: int = 128
  feature_layers: List[int] = dataclasses.field(default_factory=lambda: [-4, -3, -2, -1])
  max_seq_length: int = 128
  dropout: float = 0.5
  epochs: int = 12
  batch_size: int = 64
  learning_rate: float = 1e-3
  bert_learning_rate: float = 5e-5
  fine_tune: bool = False
  head_only: bool = False  # write only the head variables + manifest (the shipped layout)
  max_train_sentences: int = 0  # 0 = all; small values make quick smoke runs
  logdir: str = ""
  cache_dir: str = str(FEATURE_CACHE)
  seed: int = 13


def backbone_dir(config):
  """The Google-format BERT dir to start from (default: the pinned MiniLM, converted once)."""
  if config.backbone:
    return Path(config.backbone)
  return backbone.ensure_converted(backbone.locate_default_backbone(),
                                   backbone.DEFAULT_BACKBONE["sha256"])


def load_data(config, featurizer_factory):
  """Reads CoNLL train/dev, builds the label list from train's entity types and the featurizer."""
  train = conll.read_conll(config.train)
  dev = conll.read_conll(config.dev)
  for name, sentences in (("train", train), ("dev", dev)):
    if not sentences or sentences[0].tags is None:
      raise ValueError(f"{name} file {getattr(config, name)} has no labelled sentences")
  if config.max_train_sentences:
    train = train[:config.max_train_sentences]
  types = sorted({tag[2:] for s in train for tag in s.tags if tag != "O"})
  id2label = label_maps.make_label_list(types)
  return train, dev, id2label, featurizer_factory(id2label)


def summary_writer(logdir):
  """TensorBoard writer for scalar summaries (loss, dev P/R/F1), or None."""
  return tf2.summary.create_file_writer(logdir) if logdir else None


def write_scalars(writer, step, **values):
  """Writes plain Python scalars as TensorBoard summaries (eagerly, outside the graphs)."""
  if writer is None:
    return
  with writer.as_default():
    for tag, value in values.items():
      tf2.summary.scalar(tag, float(value), step=int(step))
  writer.flush()


def evaluate_words(featurizer, sentences, run_fn):
  """seqeval scores of `run_fn` (ids, mask -> pred_label) over labelled sentences."""
  pred = featurizer.predict_words([s.words for s in sentences], run_fn)
  return seqeval_scores([s.tags for s in sentences], pred)


def minimize(loss, variables, learning_rate, clip_norm=5.0):
  """Adam step on `variables` with global-norm gradient clipping."""
  grads = tf.gradients(loss, variables)
  grads, _ = tf.clip_by_global_norm(grads, clip_norm)
  return tf.train.AdamOptimizer(learning_rate).apply_gradients(zip(grads, variables))


def fit_epochs(config, examples, train_step, run_dev, snapshot, featurizer, dev, writer):
  """The epoch loop both modes share: train, score dev, keep the best epoch's weights.

  `train_step(batch) -> loss` runs one update on example indices, `run_dev(ids, mask) ->
  pred_label` predicts with the current weights, `snapshot() -> {name: array}` copies them.
  """
  rng = random.Random(config.seed)
  best, history, step = None, [], 0
  for epoch in range(1, config.epochs + 1):
    started, losses = time.time(), []
    batches = length_batches([len(e.input_ids) for e in examples], config.batch_size, True, rng)
    for batch in tqdm(batches, desc=f"epoch {epoch}/{config.epochs}", unit="batch"):
      losses.append(train_step(batch))
      step += 1
      if step % 50 == 0:
        write_scalars(writer, step, loss=losses[-1])
    scores = evaluate_words(featurizer, dev, run_dev)
    write_scalars(writer, step, **{f"dev/{k}": scores[k] for k in ("precision", "recall", "f1")})
    history.append({"epoch": epoch, "loss": float(np.mean(losses)), "dev_f1": scores["f1"],
                    "seconds": time.time() - started})
    logging.info("epoch %d: loss %.4f dev P %.2f R %.2f F1 %.2f (%.0f s)", epoch,
                 np.mean(losses), scores["precision"], scores["recall"], scores["f1"],
                 time.time() - started)
    if best is None or scores["f1"] > best["dev_f1"]:
      best = {"epoch": epoch, "dev_f1": scores["f1"], "step": step, "weights": snapshot()}
  return best, history


def train_frozen(config, ner_config, bert_files, featurizer, train, dev, id2label, writer):
  """Trains only the head on cached encoder features; returns (best head weights, history)."""
  examples = make_examples(featurizer, train)
  cache = FeatureCache(config.cache_dir, bert_files["config"], bert_files["checkpoint"],
                       ner_config.feature_layers)
  train_features = cache.features([e.input_ids for e in examples], 64, "encode train")
  dev_rows = sorted({tuple(w.input_ids) for s in dev for w in featurizer.encode_words(s.words)})
  dev_features = dict(zip(dev_rows, cache.features([list(r) for r in dev_rows], 64,
                                                   "encode dev")))
  feature_size = train_features[0].shape[1]

  graph = tf.Graph()
  with graph.as_default():
    tf.set_random_seed(config.seed)
    features = tf.placeholder(tf.float32, [None, None, feature_size], "features")
    lengths = tf.placeholder(tf.int32, [None], "lengths")
    label_ids = tf.placeholder(tf.int32, [None, None], "label_ids")
    trained = ner_head.build_ner_head(features, lengths, ner_config, len(id2label), True,
                                      label_ids)
    with tf.variable_scope(tf.get_variable_scope(), reuse=True):
      inferred = ner_head.build_ner_head(features, lengths, ner_config, len(id2label), False)
    head_variables = tf.trainable_variables()
    train_op = minimize(trained.loss, head_variables, config.learning_rate)
    sess = tf.Session(graph=graph)
    sess.run(tf.global_variables_initializer())

  def train_step(batch):
    """One head update on cached features."""
    loss, _ = sess.run([trained.loss, train_op], {
        features: pad_features([train_features[i] for i in batch]),
        lengths: [len(examples[i].input_ids) for i in batch],
        label_ids: pad([examples[i].label_ids for i in batch])})
    return loss

  def run_dev(input_ids, input_mask):
    """pred_label for dev rows, looked up by their ids in the feature cache."""
    rows = [tuple(ids[:n]) for ids, n in zip(input_ids.tolist(), input_mask.sum(1))]
    return sess.run(inferred.pred_label, {features: pad_features([dev_features[r] for r in rows]),
                                          lengths: [len(r) for r in rows]})

  def snapshot():
    """Current head weights by variable name."""
    return dict(zip([v.op.name for v in head_variables], sess.run(head_variables)))

  try:  # Not `with sess`: that would make the graph default and break eager summaries.
    return fit_epochs(config, examples, train_step, run_dev, snapshot, featurizer, dev, writer)
  finally:
    sess.close()


def train_fine_tuned(config, ner_config, bert_files, featurizer, train, dev, id2label, writer):
  """Trains BERT and the head together; returns (best weights of all variables, history)."""
  examples = make_examples(featurizer, train)
  model_dir = ckpt.ModelDir(bert_files["config"], bert_files["vocab"], ner_config, id2label,
                            [bert_files["checkpoint"]])
  steps_per_epoch = -(-len(examples) // config.batch_size)
  graph = tf.Graph()
  with graph.as_default():
    tf.set_random_seed(config.seed)
    input_ids = tf.placeholder(tf.int32, [None, None], "input_ids")
    input_mask = tf.placeholder(tf.int32, [None, None], "input_mask")
    label_ids = tf.placeholder(tf.int32, [None, None], "label_ids")
    bert = modeling.BertModel(modeling.BertConfig.from_json_file(bert_files["config"]),
                              is_training=True, input_ids=input_ids, input_mask=input_mask)
    trained = ner_head.build_ner_head(
        ner_head.concat_features(bert.all_encoder_layers, ner_config.feature_layers),
        tf.reduce_sum(input_mask, 1), ner_config, len(id2label), True, label_ids)
    with tf.variable_scope(tf.get_variable_scope(), reuse=True):
      inferred = ner_head.build_inference_graph(model_dir, input_ids, input_mask)
    variables = tf.trainable_variables()
    bert_variables = [v for v in variables if not is_head_variable(v)]
    head_variables = [v for v in variables if is_head_variable(v)]
    global_step = tf.train.get_or_create_global_step()
    # Linear decay of BERT's rate to zero over training, as google-research/bert does.
    bert_rate = tf.train.polynomial_decay(config.bert_learning_rate, global_step,
                                          steps_per_epoch * config.epochs, 0.0)
    train_op = tf.group(minimize(trained.loss, bert_variables, bert_rate, clip_norm=1.0),
                        minimize(trained.loss, head_variables, config.learning_rate),
                        global_step.assign_add(1))
    sess = tf.Session(graph=graph)
    sess.run(tf.global_variables_initializer())
    ckpt.restore(sess, [bert_files["checkpoint"]], var_list=bert_variables)

  def train_step(batch):
    """One update of BERT and the head."""
    ids = pad([examples[i].input_ids for i in batch])
    loss, _ = sess.run([trained.loss, train_op], {
        input_ids: ids, input_mask: lengths_mask(ids),
        label_ids: pad([examples[i].label_ids for i in batch])})
    return loss

  def run_dev(ids, mask):
    """pred_label of the current weights through the inference graph."""
    return sess.run(inferred, {input_ids: ids, input_mask: mask})

  def snapshot():
    """Current weights of BERT and the head by variable name."""
    return dict(zip([v.op.name for v in variables], sess.run(variables)))

  try:  # Not `with sess`: that would make the graph default and break eager summaries.
    return fit_epochs(config, examples, train_step, run_dev, snapshot, featurizer, dev, writer)
  finally:
    sess.close()


def save_and_score(config, ner_config, bert_files, featurizer, dev, id2label, best):
  """Saves the best weights as a checkpoint dir and scores dev through the inference graph."""
  model_dir = ckpt.ModelDir(bert_files["config"], bert_files["vocab"], ner_config, id2label,
                            [bert_files["checkpoint"]])
  graph = tf.Graph()
  with graph.as_default():
    input_ids = tf.placeholder(tf.int32, [None, None], "input_ids")
    input_mask = tf.placeholder(tf.int32, [None, None], "input_mask")
    pred_label = ner_head.build_inference_graph(model_dir, input_ids, input_mask)
    variables = tf.global_variables()
    with tf.Session(graph=graph) as sess:
      from_checkpoint = [v for v in variables if v.op.name not in best["weights"]]
      if from_checkpoint:
        ckpt.restore(sess, model_dir.init_checkpoints, var_list=from_checkpoint)
      for var in variables:
        if var.op.name in best["weights"]:
          var.load(best["weights"][var.op.name], sess)
      scores = evaluate_words(featurizer, dev, lambda ids, mask: sess.run(
          pred_label, {input_ids: ids, input_mask: mask}))
      saved = [v for v in variables if is_head_variable(v)] if config.head_only else variables
      ckpt.save_checkpoint_dir(sess, config.out, best["step"], bert_files["config"],
                               bert_files["vocab"], id2label, ner_config, var_list=saved)
  return scores


def write_json_atomic(path, data):
  """Writes JSON via a temp file and rename, so a reader never sees half of it."""
  tmp = Path(f"{path}.tmp")
  tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
  os.replace(tmp, path)


def run(config, command=""):
  """Trains, selects the best dev epoch, saves the checkpoint dir and returns the report."""
  if config.head_only and config.backbone:
    raise ValueError("--head_only needs the pinned default backbone: its manifest names it")
  if config.head_only and config.fine_tune:
    raise ValueError("--head_only cannot hold a fine-tuned BERT: drop one of the two flags")
  started = time.time()
  bert_dir = backbone_dir(config)
  bert_files = {"config": str(bert_dir / ckpt.BERT_CONFIG), "vocab": str(bert_dir / ckpt.VOCAB),
                "checkpoint": ckpt.latest_checkpoint(str(bert_dir))
                if (bert_dir / ckpt.CHECKPOINT_STATE).is_file() else str(bert_dir / backbone.CHECKPOINT_NAME)}
  ner_config = ckpt.NerConfig(
      head=config.head, lstm_size=config.lstm_size, hidden_size=config.hidden_size,
      feature_layers=list(config.feature_layers),
      do_lower_case=not ckpt.vocab_is_cased(bert_files["vocab"]),
      max_seq_length=config.max_seq_length, dropout=config.dropout)
  train, dev, id2label, featurizer = load_data(config, lambda id2label: Featurizer(
      bert_files["vocab"], ner_config.do_lower_case, ner_config.max_seq_length, id2label))
  logging.info("train %d sentences, dev %d, labels %s", len(train), len(dev), id2label)
  writer = summary_writer(config.logdir)
  fit = train_fine_tuned if config.fine_tune else train_frozen
  best, history = fit(config, ner_config, bert_files, featurizer, train, dev, id2label, writer)
  scores = save_and_score(config, ner_config, bert_files, featurizer, dev, id2label, best)
  report = {
      "command": command, "mode": "fine-tune" if config.fine_tune else "frozen",
      "best_epoch": best["epoch"], "dev": scores, "history": history,
      "train_sentences": len(train), "dev_sentences": len(dev),
      "train_seconds": round(time.time() - started, 1), "config": dataclasses.asdict(config)}
  write_json_atomic(Path(config.out) / "train_report.json", report)
  if config.head_only:
    write_json_atomic(Path(config.out) / ckpt.MANIFEST, {
        "backbone": backbone.DEFAULT_BACKBONE, "train_command": command,
        "dev": {k: scores[k] for k in ("precision", "recall", "f1", "per_type")},
        "best_epoch": best["epoch"], "train_seconds": report["train_seconds"]})
  return report
