"""What training reads: the BERT to start from, the CoNLL documents, their model rows (examples),
and how rows are batched and padded."""

import dataclasses
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
  featurizer: Featurizer, documents: list[Document], context: str, document_stride: int = 0
) -> list[Example]:
  """Training rows: each sentence's windows, plus (context "mixed") each document's windows.

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
