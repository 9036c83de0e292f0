"""What training reads: the BERT to start from, the CoNLL documents, their model rows (examples),
and how rows are batched and padded."""

import bisect
import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from bert_ner import backbone, conll
from bert_ner import checkpoint as ckpt
from bert_ner import labels as label_maps
from bert_ner.featurizer import Featurizer
from bert_ner.train.config import TrainConfig

Document = list[conll.Sentence]


@dataclasses.dataclass
class Example:
  """One model row: sub-token ids, their training label ids and word shape ids."""

  input_ids: list[int]
  label_ids: list[int]
  word_shape: list[int] = dataclasses.field(default_factory=list)


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
  train: list[Document]
  dev: list[Document]
  id2label: list[str]
  writer: Any = None  # a tf.summary writer, or None for no summaries

  def model_dir(self, init_checkpoints: list[str] | None = None) -> ckpt.ModelDir:
    """ModelDir of the model being trained, restored from the backbone unless told otherwise."""
    return ckpt.ModelDir(
      self.bert.config,
      self.bert.vocab,
      self.ner_config,
      self.id2label,
      init_checkpoints or [self.bert.checkpoint],
    )


def backbone_dir(config: TrainConfig) -> Path:
  """The Google-format BERT dir to start from (default: the pinned MiniLM, converted once)."""
  if config.backbone:
    return Path(config.backbone)
  return backbone.ensure_converted(
    backbone.locate_default_backbone(), backbone.DEFAULT_BACKBONE["sha256"]
  )


def bert_files(config: TrainConfig) -> BertFiles:
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


def load_data(
  config: TrainConfig, featurizer_factory: Callable[[list[str]], Featurizer]
) -> tuple[list[Document], list[Document], list[str], Featurizer]:
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


def gold_tags(sentence: conll.Sentence) -> list[str]:
  """A training sentence's tags: `load_data` accepts labelled files only, and a CoNLL file has a
  tag column on every sentence or on none."""
  return cast(list[str], sentence.tags)


def document_words(document: Document) -> tuple[list[str], list[str]]:
  """A document (list of Sentences) as one word sequence with its tags."""
  return ([w for s in document for w in s.words], [t for s in document for t in gold_tags(s)])


def make_examples(
  featurizer: Featurizer,
  documents: list[Document],
  context: str,
  document_stride: int = 0,
  centred_fraction: float = 0.4,
  seed: int = 0,
  context_loss: str = "all",
) -> list[Example]:
  """Training rows: each sentence's windows, plus (context "mixed") each document's windows or
  (context "centred") a sampled part of the sentences centred in their document's context, their
  context words labelled (context_loss "all") or not (`labels.UNOBSERVED_LABEL`, "sentence").

  Document windows are the featurizer's sliding windows over the whole document, as a document
  is tagged, but with overlap `2 * document_stride`: tagging needs the overlap (each word is read
  where it has context on both sides), training does not: at stride 0 the document windows of
  CoNLL-2003 train hold 257k sub-tokens instead of 432k at the default stride.
  """
  examples = [
    Example(list(window.input_ids), label_ids, list(window.word_shape))
    for document in documents
    for sentence in document
    for window, label_ids in featurizer.label_ids(sentence.words, gold_tags(sentence))
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
      Example(list(window.input_ids), label_ids, list(window.word_shape))
      for document in documents
      for window, label_ids in windowing.label_ids(
        *document_words(document), [len(s.words) for s in document]
      )
    ]
  elif context == "centred":
    examples += centred_examples(
      featurizer, documents, centred_fraction, random.Random(seed), context_loss == "all"
    )
  return examples


def training_examples(ctx: Context) -> list[Example]:
  """The training rows a run's settings ask for (`make_examples`)."""
  config = ctx.config
  return make_examples(
    ctx.featurizer,
    ctx.train,
    config.context,
    config.document_stride,
    config.centred_fraction,
    config.seed,
    config.context_loss,
  )


def centred_examples(
  featurizer: Featurizer,
  documents: list[Document],
  fraction: float,
  rng: random.Random,
  label_context: bool = True,
) -> list[Example]:
  """Rows that each hold one sampled sentence (a `fraction` of them) with its document's
  neighbouring words filling the window on both sides, cut at word starts; the context words are
  labelled, or with `label_context` False carry `labels.UNOBSERVED_LABEL` (the loss then teaches
  the sentence's tags only, as FLERT's does).

  A document is tagged in sliding windows where each word is read with about a quarter window or
  more of context on its nearer side; fixed document windows train few words that way, these
  rows train every sampled sentence so. Sentences longer than a window, and documents of one
  sentence, give no row.

  Example: a 20 sub-token sentence in a 128 window gets up to 53 sub-tokens of the words before
  it (fewer if a word would straddle the cut) and whole words after it up to the window's end;
  near a document's start, the words after it fill what the start lacks.
  """
  capacity = featurizer.max_seq_length - 2
  # The whole document as one row: its sub-tokens, labels and shapes as a document is tagged.
  whole = Featurizer(
    featurizer.vocab_path, featurizer.do_lower_case, 2**31, featurizer.id2label, stride=0
  )
  examples = []
  for document in documents:
    if len(document) < 2:
      continue
    picked = [k for k in range(len(document)) if rng.random() < fraction]
    if not picked:
      continue
    [(window, label_ids)] = whole.label_ids(
      *document_words(document), [len(s.words) for s in document]
    )
    cls_id, sep_id = window.input_ids[0], window.input_ids[-1]
    cls_label, sep_label = label_ids[0], label_ids[-1]
    ids, labels, shapes = window.input_ids[1:-1], label_ids[1:-1], window.word_shape[1:-1]
    begins = window.word_ids[1:-1]
    # start[w]: the sub-token position where word w begins; a word without sub-tokens (only
    # characters the normalizer drops) starts where the next word does, the end at len(ids).
    start = [len(ids)] * (window.num_words + 1)
    for p, w in enumerate(begins):
      if w >= 0:
        start[w] = p
    for w in reversed(range(window.num_words)):
      start[w] = min(start[w], start[w + 1])
    word_starts = [p for p, w in enumerate(begins) if w >= 0] + [len(ids)]
    first_word = list(itertools.accumulate((len(s.words) for s in document), initial=0))
    for k in picked:
      first, end = start[first_word[k]], start[first_word[k + 1]]  # the sentence's sub-tokens
      free = capacity - (end - first)
      if free < 0 or end == first:
        continue
      # Half the room before the sentence (more when little follows it), snapped forward to a
      # word start; then whole words after it as far as the window allows.
      left = min(first, max(free // 2, free - (len(ids) - end)))
      lo = word_starts[bisect.bisect_left(word_starts, first - left)]
      hi = word_starts[bisect.bisect_right(word_starts, lo + capacity) - 1]
      taught = labels[lo:hi]
      if not label_context:
        taught = [
          label if first <= p < end else label_maps.UNOBSERVED_LABEL
          for p, label in enumerate(taught, lo)
        ]
      examples.append(
        Example(
          [cls_id] + ids[lo:hi] + [sep_id],
          [cls_label] + taught + [sep_label],
          [window.word_shape[0]] + shapes[lo:hi] + [window.word_shape[-1]],
        )
      )
  return examples


def dev_windows(featurizer: Featurizer, documents: list[Document]) -> list[tuple[int, ...]]:
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


def length_batches(
  lengths: Sequence[int], batch_size: int, rng: random.Random | None = None
) -> list[np.ndarray]:
  """Index batches of similar lengths (little padding); with `rng` (training), shuffled batches
  that differ from epoch to epoch, in length order without."""
  order = np.argsort(lengths, kind="stable")
  if rng is None:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
  # Sort within random chunks only, so batches differ from epoch to epoch.
  order = np.array(rng.sample(range(len(lengths)), len(lengths)))
  chunks = [order[i : i + batch_size * 50] for i in range(0, len(order), batch_size * 50)]
  order = np.concatenate([c[np.argsort(np.asarray(lengths)[c], kind="stable")] for c in chunks])
  batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
  rng.shuffle(batches)
  return batches


def pad(rows: Sequence[Sequence[int]]) -> np.ndarray:
  """Pads a list of 1-D int sequences to the longest with zeros: [B, T] int32."""
  out = np.zeros((len(rows), max(len(r) for r in rows)), np.int32)
  for i, row in enumerate(rows):
    out[i, : len(row)] = row
  return out


def pad_shapes(
  shapes: Sequence[Sequence[int]], id_rows: Sequence[Sequence[int]] | np.ndarray
) -> np.ndarray:
  """Word shape rows padded like `pad(id_rows)` (or like the padded ids themselves): [B, T]
  int32, a row without shapes all 0."""
  out = np.zeros((len(id_rows), max(len(r) for r in id_rows)), np.int32)
  for i, row in enumerate(shapes):
    out[i, : len(row)] = row
  return out


def pad_features(rows: Sequence[np.ndarray]) -> np.ndarray:
  """Pads [T_i, F] feature blocks to [B, max T, F] float32."""
  out = np.zeros((len(rows), max(len(r) for r in rows), rows[0].shape[1]), np.float32)
  for i, row in enumerate(rows):
    out[i, : len(row)] = row
  return out


def lengths_mask(ids: np.ndarray) -> np.ndarray:
  """input_mask [B, T] int32 from zero-padded id rows ([PAD] is id 0 in BERT vocabularies)."""
  return (ids != 0).astype(np.int32)
