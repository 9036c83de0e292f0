"""Trains the NER head on CoNLL data: frozen BERT, LoRA adapters, or full fine-tuning.

Frozen (default, as macanv users ran it on small GPUs): the encoder runs once over every window,
its chosen layers are cached in memory (and on disk, keyed by backbone, data and layers), so each
epoch costs only the head. `--adapter_rank R` keeps BERT's weights frozen but trains low-rank
adapters on its dense kernels together with the head (the checkpoint holds head + adapters; the
exporter merges them). `--fine_tune` trains all of BERT and the head together.
`--context mixed` trains on documents' sliding windows as well as on single sentences, so the
model tags both ways (`Featurizer.predict_documents` / `predict_words`).
Dev is scored in both modes every epoch; the best epoch (mean of the two entity F1s) is kept, and
the final scores are recomputed with the exported inference graph
(`bert_ner.head.build_inference_graph`, adapters merged) on the saved checkpoint, so they are the
figures a served model reproduces.
"""

import dataclasses
import functools
import hashlib
import json
import logging
import math
import random
import time
from pathlib import Path

import numpy as np
import tensorflow as tf2
import tensorflow.compat.v1 as tf
from tqdm import tqdm

from bert_ner import atomic, backbone, conll, model_base, modeling
from bert_ner import checkpoint as ckpt
from bert_ner import head as ner_head
from bert_ner import labels as label_maps
from bert_ner.featurizer import Featurizer
from bert_ner.metrics import seqeval_scores

HEAD_SCOPES = ("rnn_layer/", "project/", "crf_loss/")
ADAPTER_SUFFIXES = ("/" + modeling.ADAPTER_DOWN, "/" + modeling.ADAPTER_UP)
FEATURE_CACHE = backbone.CACHE_ROOT / "features"
CONTEXTS = ("sentence", "mixed")
MODES = ("sentence", "document")  # how dev is tagged: sentence by sentence, or whole documents


@dataclasses.dataclass
class Example:
  """One model row: sub-token ids and their training label ids."""

  input_ids: list[int]
  label_ids: list[int]


def is_head_variable(var):
  """True for the NER head's variables (macanv scopes), False for BERT's."""
  return var.op.name.startswith(HEAD_SCOPES)


def is_adapter_variable(var):
  """True for the LoRA adapters beside BERT's kernels."""
  return var.op.name.endswith(ADAPTER_SUFFIXES)


def document_words(document):
  """A document (list of Sentences) as one word sequence with its tags."""
  return ([w for s in document for w in s.words], [t for s in document for t in s.tags])


def make_examples(featurizer, documents, context, document_stride=0):
  """Training rows: each sentence's windows, plus (context "mixed") each document's windows.

  Document windows are the featurizer's sliding windows over the whole document, as a document
  is tagged, but with overlap `2 * document_stride`: tagging needs the overlap (each word is read
  where it has context on both sides), training does not: at stride 0 the document windows of
  CoNLL-2003 train hold 257k sub-tokens instead of 432k at the default stride.
  """
  examples = [
    Example(list(window.input_ids), label_ids)
    for document in documents
    for sentence in document
    for window, label_ids in featurizer.label_ids(sentence.words, sentence.tags)
  ]
  if context == "mixed":
    windowing = Featurizer(
      featurizer.vocab_path,
      featurizer.do_lower_case,
      featurizer.max_seq_length,
      featurizer.id2label,
      document_stride,
    )
    examples += [
      Example(list(window.input_ids), label_ids)
      for document in documents
      for window, label_ids in windowing.label_ids(*document_words(document))
    ]
  return examples


def length_batches(lengths, batch_size, shuffle, rng):
  """Index batches of similar lengths (little padding); shuffled batch order when training."""
  order = np.argsort(lengths, kind="stable")
  if shuffle:
    # Sort within random chunks only, so batches differ from epoch to epoch.
    order = np.array(rng.sample(range(len(lengths)), len(lengths)))
    chunks = [order[i : i + batch_size * 50] for i in range(0, len(order), batch_size * 50)]
    order = np.concatenate([c[np.argsort(np.asarray(lengths)[c], kind="stable")] for c in chunks])
  batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
  if shuffle:
    rng.shuffle(batches)
  return batches


def pad(rows):
  """Pads a list of 1-D int sequences to the longest with zeros: [B, T] int32."""
  out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, row in enumerate(rows):
    out[i, : len(row)] = row
  return out


def pad_features(rows):
  """Pads [T_i, F] feature blocks to [B, max T, F] float32."""
  out = np.zeros((len(rows), max(len(r) for r in rows), rows[0].shape[1]), np.float32)
  for i, row in enumerate(rows):
    out[i, : len(row)] = row
  return out


class FeatureCache:
  """Encoder features ([T, F] float16 per row) for a list of rows, on disk under a content key.

  `feature_layers` index the hidden states [embeddings, layer 0, ..., layer L-1]; negative
  indices are the encoder's top layers as in `ner_config.feature_layers`.
  """

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
      return [flat[offsets[i] : offsets[i + 1]] for i in range(len(rows))]
    blocks = self._encode(rows, batch_size, desc)
    offsets = np.cumsum([0] + [len(b) for b in blocks])
    self.cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic.open_file(path, "wb") as f:
      np.savez(f, flat=np.concatenate(blocks), offsets=offsets)
    return blocks

  def _encode(self, rows, batch_size, desc):
    """Runs frozen BERT over rows in length-sorted batches; float16 [T_i, F] per row."""
    graph = tf.Graph()
    with graph.as_default():
      input_ids = tf.placeholder(tf.int32, [None, None], "input_ids")
      input_mask = tf.placeholder(tf.int32, [None, None], "input_mask")
      bert = modeling.BertModel(
        modeling.BertConfig.from_json_file(self.bert_config_path),
        is_training=False,
        input_ids=input_ids,
        input_mask=input_mask,
      )
      features = ner_head.concat_features(
        [bert.embedding_output] + bert.all_encoder_layers, self.feature_layers
      )
      with tf.Session(graph=graph) as sess:
        ckpt.restore(sess, [self.init_checkpoint])
        blocks = [None] * len(rows)
        lengths = [len(r) for r in rows]
        for batch in tqdm(
          length_batches(lengths, batch_size, False, None), desc=desc, unit="batch"
        ):
          ids = pad([rows[i] for i in batch])
          out = sess.run(features, {input_ids: ids, input_mask: (ids > 0).astype(np.int32)})
          for j, i in enumerate(batch):
            blocks[i] = out[j, : lengths[i]].astype(np.float16)
    return blocks


def lengths_mask(ids):
  """input_mask [B, T] int32 from zero-padded id rows ([PAD] is id 0 in BERT vocabularies)."""
  return (ids != 0).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class Bound:
  """The values a numeric setting allows; `check_config` refuses others before any work starts
  (a run with --batch_size 0 once encoded for 91 s and grew past 2 GB first)."""

  low: float
  high: float = math.inf
  low_open: bool = False  # low itself is not allowed
  high_open: bool = False

  def allows(self, value):
    """Whether `value` is a finite number within the bound."""
    above = value > self.low if self.low_open else value >= self.low
    below = value < self.high if self.high_open else value <= self.high
    return math.isfinite(value) and above and below

  def __str__(self):
    if self.high == math.inf:
      number = "a finite number " if isinstance(self.low, float) else ""
      return f"{number}{'>' if self.low_open else '>='} {self.low}"
    return (
      f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
    )


def setting(default, help_text, bound=None, **flag):
  """A TrainConfig field: its default, the `Bound` of its values if any, and for its `--flag` the
  help and any argparse extras (`choices`, `aliases`)."""
  metadata = {"help": help_text, **flag}
  if bound is not None:
    metadata["bound"] = bound
  return dataclasses.field(default=default, metadata=metadata)


POSITIVE = Bound(1)
RATE = Bound(0.0, low_open=True)


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
  """Trainer settings; `python -m train` has a flag for each field, named, typed, defaulted and
  explained by it (train/__main__.py)."""

  train: str = setting(str(conll.DEFAULT_DIR / "train.txt"), "CoNLL training file")
  dev: str = setting(str(conll.DEFAULT_DIR / "dev.txt"), "CoNLL dev file (model selection)")
  out: str = dataclasses.field(metadata={"help": "checkpoint dir to write (replaced atomically)"})
  backbone: str = setting(
    "",
    "Google-format BERT dir (bert_config.json, vocab.txt, bert_model.ckpt*); default: the "
    "pinned all-MiniLM-L6-v2",
  )
  head: str = setting(
    "bilstm",
    "layers between BERT's features and the CRF (dense: the linear projection only)",
    choices=ner_head.HEADS,
  )
  lstm_size: int = setting(128, "LSTM units per direction (bilstm head)", POSITIVE)
  hidden_size: int = setting(
    128, "tanh layer between the BiLSTM and the logits (bilstm head)", POSITIVE
  )
  feature_layers: list[int] = dataclasses.field(
    default_factory=lambda: [-4, -3, -2, -1],
    metadata={
      "help": "encoder layers concatenated as features, comma-separated (-1 = top); a leading "
      "minus needs the = form, --feature_layers=-4,-3 (argparse reads -4,-3 as a flag)"
    },
  )
  # [CLS] + a sub-token + [SEP] at least; BERT checkpoints have at most 512 positions.
  max_seq_length: int = setting(
    128, "sub-tokens per window, [CLS] and [SEP] included", Bound(3, 512)
  )
  dropout: float = setting(
    0.5, "dropout rate on the features while training", Bound(0.0, 1.0, high_open=True)
  )
  epochs: int = setting(12, "training epochs (the best on dev is kept)", POSITIVE)
  batch_size: int = setting(64, "training rows per step", POSITIVE)
  learning_rate: float = setting(1e-3, "head learning rate", RATE)
  bert_learning_rate: float = setting(5e-5, "BERT learning rate with --fine_tune", RATE)
  fine_tune: bool = setting(False, "train BERT too (slow on a CPU)", aliases=("--fine-tune",))
  adapter_rank: int = setting(
    0,
    "train LoRA adapters of this rank on BERT's dense kernels (BERT's weights stay frozen); "
    "0 = none",
    Bound(0),
  )
  adapter_alpha: float = setting(
    8.0, "LoRA alpha: adapters add (alpha / rank) * A B to a kernel", RATE
  )
  adapter_learning_rate: float = setting(1e-3, "adapters' learning rate", RATE)
  adapter_first_layer: int = setting(
    0,
    "adapters on encoder layers from this one up (0 = all); the frozen layers below run once "
    "and are cached",
  )
  context: str = setting(
    "sentence",
    "training rows: sentences, or (mixed) documents' sliding windows as well",
    choices=CONTEXTS,
  )
  document_stride: int = setting(
    0,
    "with --context mixed: training document windows overlap by twice this many sub-tokens "
    "(tagging uses the featurizer's default)",
    Bound(0),
  )
  head_only: bool = setting(
    False,
    "save only the head (+ adapters) and a manifest naming the pinned backbone (the layout of "
    "models/default)",
  )
  max_train_sentences: int = setting(
    0, "use only the first N training sentences (0 = all; a few make a quick smoke run)", Bound(0)
  )
  # "" writes no summaries; the CLI's default is <out>.tensorboard.
  logdir: str = setting("", "TensorBoard dir (default: <out>.tensorboard)")
  cache_dir: str = setting(str(FEATURE_CACHE), "encoder feature cache")
  seed: int = setting(
    13, "random seed of initialisation, dropout and batch order", Bound(0, 2**32 - 1)
  )


def backbone_dir(config):
  """The Google-format BERT dir to start from (default: the pinned MiniLM, converted once)."""
  if config.backbone:
    return Path(config.backbone)
  return backbone.ensure_converted(
    backbone.locate_default_backbone(), backbone.DEFAULT_BACKBONE["sha256"]
  )


def load_data(config, featurizer_factory):
  """Reads CoNLL train/dev documents, the label list from train's entity types, the featurizer."""
  train = conll.read_documents(config.train)
  dev = conll.read_documents(config.dev)
  for name, documents in (("train", train), ("dev", dev)):
    if not documents or documents[0][0].tags is None:
      raise ValueError(f"{name} file {getattr(config, name)} has no labelled sentences")
  if config.max_train_sentences:
    train = conll.first_sentences(train, config.max_train_sentences)
  types = sorted({tag[2:] for d in train for s in d for tag in s.tags if tag != "O"})
  if not types:  # the model would learn to answer O to everything
    raise ValueError(f"train file {config.train} has no entities: every tag is O")
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


def predict_dev(featurizer, documents, run_fn):
  """Predicted tags of every dev sentence per mode: tagged alone, and within its document."""
  words = [[s.words for s in document] for document in documents]
  return {
    "sentence": featurizer.predict_words([w for d in words for w in d], run_fn),
    "document": [t for d in featurizer.predict_documents(words, run_fn) for t in d],
  }


def score_dev(documents, predicted):
  """seqeval scores per mode of `predict_dev`'s tags."""
  gold = [s.tags for document in documents for s in document]
  return {mode: seqeval_scores(gold, tags) for mode, tags in predicted.items()}


def selection_f1(scores):
  """What picks the best epoch: the mean entity F1 of sentence and document mode."""
  return float(np.mean([scores[mode]["f1"] for mode in MODES]))


def minimize(loss, variables, learning_rate, clip_norm=5.0):
  """Adam step on `variables` with global-norm gradient clipping."""
  grads = tf.gradients(loss, variables)
  grads, _ = tf.clip_by_global_norm(grads, clip_norm)
  return tf.train.AdamOptimizer(learning_rate).apply_gradients(zip(grads, variables))


@dataclasses.dataclass
class BertFiles:
  """The Google-format BERT training starts from."""

  config: str
  vocab: str
  checkpoint: str


@dataclasses.dataclass
class Context:
  """What every training mode needs: settings, data, label map, featurizer, summary writer."""

  config: TrainConfig
  ner_config: ckpt.NerConfig
  bert: BertFiles
  featurizer: Featurizer
  train: list  # documents: lists of conll.Sentence
  dev: list
  id2label: list[str]
  writer: object = None

  def model_dir(self, init_checkpoints=None):
    """ModelDir of the model being trained, restored from the backbone unless told otherwise."""
    return ckpt.ModelDir(
      self.bert.config,
      self.bert.vocab,
      self.ner_config,
      self.id2label,
      init_checkpoints or [self.bert.checkpoint],
    )


@dataclasses.dataclass
class TrainingGraph:
  """A training graph in its session, as the epoch loop drives it, whatever the mode.

  `train_feed(batch)` maps example indices and `dev_feed(input_ids, input_mask)` dev rows to the
  graph's inputs; `kept` are the variables whose values the best epoch keeps.
  """

  sess: object
  loss: object
  train_op: object
  pred_label: object  # of the inference branch (no dropout)
  train_feed: object
  dev_feed: object
  kept: list

  def train_step(self, batch):
    """One update on example indices; the batch's loss."""
    loss, _ = self.sess.run([self.loss, self.train_op], self.train_feed(batch))
    return loss

  def run_dev(self, input_ids, input_mask):
    """pred_label of the current weights."""
    return self.sess.run(self.pred_label, self.dev_feed(input_ids, input_mask))

  def snapshot(self):
    """Current values of the kept variables by name."""
    return dict(zip([v.op.name for v in self.kept], self.sess.run(self.kept)))


def start_session(graph, restored=(), checkpoint=None):
  """A session of `graph` (the default graph) with fresh variables, `restored` ones read from
  `checkpoint`."""
  sess = tf.Session(graph=graph)
  sess.run(tf.global_variables_initializer())
  if restored:
    ckpt.restore(sess, [checkpoint], var_list=restored)
  return sess


def fit_epochs(ctx, examples, model):
  """The epoch loop all modes share: train, score dev both ways, keep the best epoch's weights.

  `model` is a TrainingGraph: its `train_step(batch) -> loss` runs one update on example
  indices, `run_dev(ids, mask) -> pred_label` predicts with the current weights, `snapshot() ->
  {name: array}` copies them.
  """
  config = ctx.config
  rng = random.Random(config.seed)
  best, history, step = None, [], 0
  for epoch in range(1, config.epochs + 1):
    started, losses = time.time(), []
    batches = length_batches([len(e.input_ids) for e in examples], config.batch_size, True, rng)
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
  return best, history


def fit(ctx, examples, model):
  """fit_epochs, then the TrainingGraph's session closed."""
  try:  # Not `with sess`: that would make the graph default and break eager summaries.
    return fit_epochs(ctx, examples, model)
  finally:
    model.sess.close()


def dev_windows(featurizer, documents):
  """Every distinct dev row of both modes (sentence windows and document windows)."""
  rows = {
    tuple(w.input_ids) for d in documents for s in d for w in featurizer.encode_words(s.words)
  }
  rows |= {
    tuple(w.input_ids)
    for d in documents
    for w in featurizer.encode_words([word for s in d for word in s.words])
  }
  return sorted(rows)


class CachedInputs:
  """Inputs of a graph over cached encoder outputs: the values of the examples and the dev rows,
  the graph's placeholders (`values` [B, T, F], `lengths` [B], `label_ids` [B, T]) and feeds."""

  def __init__(self, ctx, examples, layers, name):
    """Encodes (once, then from the cache) the examples and every dev row at `layers`."""
    cache = FeatureCache(ctx.config.cache_dir, ctx.bert.config, ctx.bert.checkpoint, layers)
    self.examples = examples
    self.train_values = cache.features([e.input_ids for e in examples], 64, "encode train")
    dev_rows = dev_windows(ctx.featurizer, ctx.dev)
    self.dev_values = dict(
      zip(dev_rows, cache.features([list(r) for r in dev_rows], 64, "encode dev"))
    )
    self.name = name
    self.values = self.lengths = self.label_ids = None  # placeholders, made by `branches`

  def branches(self, top):
    """Placeholders in the default graph and `top(values, lengths, is_training=, label_ids=)`
    over them twice: (training NerHead, inference NerHead), the second reusing the variables."""
    width = self.train_values[0].shape[1]
    self.values = tf.placeholder(tf.float32, [None, None, width], self.name)
    self.lengths = tf.placeholder(tf.int32, [None], "lengths")
    self.label_ids = tf.placeholder(tf.int32, [None, None], "label_ids")
    trained = top(self.values, self.lengths, is_training=True, label_ids=self.label_ids)
    with tf.variable_scope(tf.get_variable_scope(), reuse=True):
      inferred = top(self.values, self.lengths, is_training=False)
    return trained, inferred

  def training_graph(self, sess, trained, train_op, inferred, kept):
    """The TrainingGraph of `branches`' heads, fed from the cache."""
    return TrainingGraph(
      sess, trained.loss, train_op, inferred.pred_label, self.train_feed, self.dev_feed, kept
    )

  def train_feed(self, batch):
    """The examples' cached values, lengths and label ids."""
    examples = [self.examples[i] for i in batch]
    return {
      self.values: pad_features([self.train_values[i] for i in batch]),
      self.lengths: [len(e.input_ids) for e in examples],
      self.label_ids: pad([e.label_ids for e in examples]),
    }

  def dev_feed(self, input_ids, input_mask):
    """Dev rows' values, looked up by their ids in the cache."""
    rows = [tuple(ids[:n]) for ids, n in zip(input_ids.tolist(), input_mask.sum(1))]
    return {
      self.values: pad_features([self.dev_values[r] for r in rows]),
      self.lengths: [len(r) for r in rows],
    }


def decayed_train_op(config, loss, variables, learning_rate, head_variables, num_examples):
  """Adam on `variables` at `learning_rate` decaying linearly to zero over training (as
  google-research/bert does, gradients clipped at norm 1), and on the head at its own rate."""
  global_step = tf.train.get_or_create_global_step()
  steps_per_epoch = -(-num_examples // config.batch_size)
  rate = tf.train.polynomial_decay(learning_rate, global_step, steps_per_epoch * config.epochs, 0.0)
  return tf.group(
    minimize(loss, variables, rate, clip_norm=1.0),
    minimize(loss, head_variables, config.learning_rate),
    global_step.assign_add(1),
  )


def train_frozen(ctx):
  """Trains only the head on cached encoder features; returns (best head weights, history)."""
  config = ctx.config
  examples = make_examples(ctx.featurizer, ctx.train, config.context, config.document_stride)
  inputs = CachedInputs(ctx, examples, ctx.ner_config.feature_layers, "features")
  head = functools.partial(
    ner_head.build_ner_head, ner_config=ctx.ner_config, num_labels=len(ctx.id2label)
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


def train_fine_tuned(ctx):
  """Trains BERT and the head together; returns (best weights of all variables, history)."""
  config = ctx.config
  examples = make_examples(ctx.featurizer, ctx.train, config.context, config.document_stride)
  graph = tf.Graph()
  with graph.as_default():
    tf.set_random_seed(config.seed)
    input_ids = tf.placeholder(tf.int32, [None, None], "input_ids")
    input_mask = tf.placeholder(tf.int32, [None, None], "input_mask")
    label_ids = tf.placeholder(tf.int32, [None, None], "label_ids")
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
      len(ctx.id2label),
      True,
      label_ids,
    )
    with tf.variable_scope(tf.get_variable_scope(), reuse=True):
      inferred = ner_head.build_inference_graph(ctx.model_dir(), input_ids, input_mask)
    variables = tf.trainable_variables()
    bert_variables = [v for v in variables if not is_head_variable(v)]
    head_variables = [v for v in variables if is_head_variable(v)]
    train_op = decayed_train_op(
      config, trained.loss, bert_variables, config.bert_learning_rate, head_variables, len(examples)
    )
    sess = start_session(graph, bert_variables, ctx.bert.checkpoint)

  def train_feed(batch):
    """The examples' ids, mask and label ids."""
    ids = pad([examples[i].input_ids for i in batch])
    return {
      input_ids: ids,
      input_mask: lengths_mask(ids),
      label_ids: pad([examples[i].label_ids for i in batch]),
    }

  return fit(
    ctx,
    examples,
    TrainingGraph(
      sess,
      trained.loss,
      train_op,
      inferred,
      train_feed,
      lambda ids, mask: {input_ids: ids, input_mask: mask},
      variables,
    ),
  )


def adapted_top(ctx, bert_config, states, lengths, is_training, label_ids=None):
  """The adapted encoder layers over cached `states` [B, T, H] (the input of the first adapted
  layer) and the head over the feature layers: NerHead."""
  adapters = ctx.ner_config.adapters()
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
  by_layer = {first - 1: states, **{first + i: out for i, out in enumerate(outputs)}}
  features = tf.concat(
    [by_layer[layer % num_layers] for layer in ctx.ner_config.feature_layers], axis=-1
  )
  return ner_head.build_ner_head(
    features, lengths, ctx.ner_config, len(ctx.id2label), is_training, label_ids
  )


def train_adapters(ctx):
  """Trains the head with LoRA adapters on BERT's layers from `adapter_first_layer` up; returns
  (best weights of head and adapters, history).

  The frozen layers below never change, so their output (the adapted layers' input) is computed
  once and cached like the frozen head's features: an epoch runs only the adapted layers, forward
  and backward.
  """
  config = ctx.config
  bert_config = modeling.BertConfig.from_json_file(ctx.bert.config)
  first, num_layers = config.adapter_first_layer, bert_config.num_hidden_layers
  if not 0 <= first < num_layers:
    raise ValueError(f"--adapter_first_layer must be in 0..{num_layers - 1}, got {first}")
  below = sorted(
    {layer % num_layers for layer in ctx.ner_config.feature_layers}
    - set(range(first - 1, num_layers))
  )
  if below:
    raise ValueError(
      f"feature layers {below} lie below the adapted layers' input (layer "
      f"{first - 1}): raise them or lower --adapter_first_layer"
    )
  examples = make_examples(ctx.featurizer, ctx.train, config.context, config.document_stride)
  # Hidden state `first` of [embeddings, layer 0, ...], counted from the top.
  inputs = CachedInputs(ctx, examples, [first - num_layers - 1], "states")
  graph = tf.Graph()
  with graph.as_default():
    tf.set_random_seed(config.seed)
    trained, inferred = inputs.branches(functools.partial(adapted_top, ctx, bert_config))
    variables = tf.trainable_variables()
    adapter_variables = [v for v in variables if is_adapter_variable(v)]
    head_variables = [v for v in variables if is_head_variable(v)]
    base_variables = [v for v in variables if v not in adapter_variables + head_variables]
    train_op = decayed_train_op(
      config,
      trained.loss,
      adapter_variables,
      config.adapter_learning_rate,
      head_variables,
      len(examples),
    )
    sess = start_session(graph, base_variables, ctx.bert.checkpoint)
  kept = adapter_variables + head_variables
  return fit(ctx, examples, inputs.training_graph(sess, trained, train_op, inferred, kept))


def save_best(ctx, best):
  """Writes the best weights as a checkpoint dir (head + adapters with --head_only).

  Returns its checkpoint prefix and, with adapters, the dev sentences' tags of the full BERT
  graph with the adapters unmerged (what the merged, served graph must reproduce).
  """
  config = ctx.config
  graph = tf.Graph()
  with graph.as_default():
    input_ids = tf.placeholder(tf.int32, [None, None], "input_ids")
    input_mask = tf.placeholder(tf.int32, [None, None], "input_mask")
    pred_label = ner_head.build_inference_graph(
      ctx.model_dir(), input_ids, input_mask, with_adapters=True
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
          lambda ids, mask: sess.run(pred_label, {input_ids: ids, input_mask: mask}),
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


def score_saved(ctx, prefix):
  """Dev tags of both modes through the served graph of the saved checkpoint (adapters merged)."""
  init_checkpoints = [prefix] + ([ctx.bert.checkpoint] if ctx.config.head_only else [])
  model_dir = ctx.model_dir(init_checkpoints)
  graph = tf.Graph()
  with graph.as_default():
    input_ids = tf.placeholder(tf.int32, [None, None], "input_ids")
    input_mask = tf.placeholder(tf.int32, [None, None], "input_mask")
    pred_label = ner_head.build_inference_graph(model_dir, input_ids, input_mask)
    with tf.Session(graph=graph) as sess:
      ckpt.restore_model(sess, model_dir)
      return predict_dev(
        ctx.featurizer,
        ctx.dev,
        lambda ids, mask: sess.run(pred_label, {input_ids: ids, input_mask: mask}),
      )


def merge_agreement(adapter_tags, merged_tags):
  """How many dev words the adapter graph and the merged graph tag differently."""
  pairs = [(a, b) for s, t in zip(adapter_tags, merged_tags) for a, b in zip(s, t)]
  return {"words": len(pairs), "differing": sum(a != b for a, b in pairs)}


def write_json_atomic(path, data):
  """Writes JSON so that a reader never sees half of it."""
  atomic.write_text(path, json.dumps(data, indent=1) + "\n")


def bert_files(config):
  """The config, vocab and checkpoint of the BERT to start from."""
  bert_dir = backbone_dir(config)
  state_file = bert_dir / ckpt.CHECKPOINT_STATE
  return BertFiles(
    str(bert_dir / ckpt.BERT_CONFIG),
    str(bert_dir / ckpt.VOCAB),
    ckpt.latest_checkpoint(str(bert_dir))
    if state_file.is_file()
    else str(bert_dir / backbone.CHECKPOINT_NAME),
  )


def mode_name(config):
  """The training mode: frozen, adapters or fine-tune."""
  return "fine-tune" if config.fine_tune else "adapters" if config.adapter_rank else "frozen"


def check_config(config):
  """Clear errors for values out of their fields' bounds and for settings that do not go together;
  cheap (no file is read), so the CLI runs it before anything else."""
  if not config.out:
    raise ValueError("--out must name the checkpoint dir to write, got ''")
  for field in dataclasses.fields(config):
    bound, value = field.metadata.get("bound"), getattr(config, field.name)
    if bound is not None and not bound.allows(value):
      raise ValueError(f"--{field.name} must be {bound}, got {value}")
  if config.head_only and config.backbone:
    raise ValueError("--head_only needs the pinned default backbone: its manifest names it")
  if config.head_only and config.fine_tune:
    raise ValueError("--head_only cannot hold a fine-tuned BERT: drop one of the two flags")
  if config.fine_tune and config.adapter_rank:
    raise ValueError(
      "--adapter_rank trains adapters on a frozen BERT; --fine_tune trains all "
      "of it: drop one of the two flags"
    )
  if config.context not in CONTEXTS:
    raise ValueError(f"--context must be one of {CONTEXTS}, got {config.context!r}")


def run(config, command=""):
  """Trains, selects the best dev epoch, saves the checkpoint dir and returns the report."""
  check_config(config)
  started = time.time()
  bert = bert_files(config)
  ner_config = ckpt.NerConfig(
    head=config.head,
    lstm_size=config.lstm_size,
    hidden_size=config.hidden_size,
    feature_layers=list(config.feature_layers),
    do_lower_case=not ckpt.vocab_is_cased(bert.vocab),
    max_seq_length=config.max_seq_length,
    dropout=config.dropout,
    adapter_rank=config.adapter_rank,
    adapter_alpha=config.adapter_alpha if config.adapter_rank else 0.0,
    adapter_first_layer=config.adapter_first_layer if config.adapter_rank else 0,
  )
  train, dev, id2label, featurizer = load_data(
    config,
    lambda id2label: Featurizer(
      bert.vocab, ner_config.do_lower_case, ner_config.max_seq_length, id2label
    ),
  )
  logging.info("train %d documents, dev %d, labels %s", len(train), len(dev), id2label)
  ctx = Context(
    config, ner_config, bert, featurizer, train, dev, id2label, summary_writer(config.logdir)
  )
  fit = {"frozen": train_frozen, "adapters": train_adapters, "fine-tune": train_fine_tuned}
  best, history = fit[mode_name(config)](ctx)
  train_seconds = round(time.time() - started, 1)
  prefix, adapter_tags = save_best(ctx, best)
  predicted = score_saved(ctx, prefix)
  scores = score_dev(dev, predicted)
  report = {
    "command": command,
    "mode": mode_name(config),
    "context": config.context,
    "best_epoch": best["epoch"],
    "dev": scores["sentence"],
    "dev_document": scores["document"],
    "history": history,
    "train_sentences": sum(len(d) for d in train),
    "train_documents": len(train),
    "dev_sentences": sum(len(d) for d in dev),
    "dev_documents": len(dev),
    "train_seconds": train_seconds,
    "total_seconds": round(time.time() - started, 1),
    "config": dataclasses.asdict(config),
  }
  if config.adapter_rank:
    report["merge_check"] = merge_agreement(adapter_tags, predicted["sentence"])
    logging.info(
      "dev words tagged differently by the adapter graph and the merged graph: "
      "%(differing)d of %(words)d",
      report["merge_check"],
    )
  write_json_atomic(Path(config.out) / model_base.TRAIN_REPORT, report)
  if config.head_only:
    write_json_atomic(
      Path(config.out) / ckpt.MANIFEST,
      {
        "backbone": backbone.DEFAULT_BACKBONE,
        "train_command": command,
        "mode": report["mode"],
        "context": config.context,
        "dev": {k: scores["sentence"][k] for k in ("precision", "recall", "f1", "per_type")},
        "dev_document": {
          k: scores["document"][k] for k in ("precision", "recall", "f1", "per_type")
        },
        "best_epoch": best["epoch"],
        "train_seconds": train_seconds,
      },
    )
  return report
