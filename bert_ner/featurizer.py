"""Featurizer: text or CoNLL words -> BERT input windows, model predictions -> word tags, entities.

No TensorFlow here: clients import this module and must start fast (numpy + HF `tokenizers`).

Tokenization is google-research/bert's `FullTokenizer` (BasicTokenizer + WordpieceTokenizer) run
by HF `tokenizers`, with character offsets into the original text. It agrees token for token with
google's `tokenization.py` on CoNLL-2003 and on accented, CJK, RTL, emoji, control-character and
long-word text (see tests/test_featurizer.py). A sweep over every code point finds only these
divergences, all from `tokenizers` using older Unicode tables than Python's `unicodedata`:
private-use characters (dropped here, kept as [UNK] by google); characters assigned or
re-categorised in recent Unicode versions (new combining marks, punctuation and format
characters; CJK U+2B820..U+2B91F); a word-final capital sigma lower-cases to σ here, ς in Python.

Words:
- Free text (`encode_text`): a word is a basic-tokenizer unit (`Müller`, `'`, `s`), with offsets.
- CoNLL input (`encode_words`): a word is a CoNLL token; one may hold several basic tokens
  (`all-rounder` -> `all - rounder`), all but the first sub-token of the word are continuations
  (label `X`, as macanv/google tokenize each word). A word whose characters are all dropped by the
  normalizer (control or format characters only) has no sub-token: it is tagged "O".

Windows: a row holds at most `max_seq_length` sub-tokens including [CLS] and [SEP]. Longer input
is cut at word starts into windows that overlap by at least `2 * stride` sub-tokens (when words
allow), so a word gets about `stride` sub-tokens of context on each side; each word is read from
the window where it lies farthest from a cut. Nothing is truncated: a single word longer than a
window is, as a last resort, cut inside the word (its later pieces start the next window as
continuations, and the word is read where it begins).
"""

import dataclasses
import itertools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Self, TypeVar, cast

import numpy as np
import numpy.typing as npt
from tokenizers import Encoding, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from bert_ner import labels, model_base, ner_schema, word_shape

StrPath = str | os.PathLike[str]  # a file name as open() takes it
IntArray = npt.NDArray[np.int32]
# Label ids of one row: a numpy row of a model's output, or a list.
LabelRow = Sequence[int] | npt.NDArray[np.integer]
# (input_ids, input_mask) of one padded batch -> label ids [B, >= T] (TF Serving may pad wider);
# for a featurizer built with `word_shape=True`: (input_ids, input_mask, word_shape).
RunFn = Callable[..., npt.ArrayLike]
T = TypeVar("T")

VOCAB_FILE = "vocab.txt"
CLS, SEP, UNK = "[CLS]", "[SEP]", "[UNK]"
X = labels.X_LABEL
# google's WordpieceTokenizer default: a longer basic token becomes a single [UNK].
MAX_INPUT_CHARS_PER_WORD = 200


@dataclasses.dataclass(frozen=True)
class Word:
  """A basic-tokenizer unit of free text and its [start, end) character offsets in that text."""

  text: str
  start: int
  end: int


@dataclasses.dataclass(frozen=True)
class Window:
  """One model row: `input_ids` = [CLS] sub-tokens [SEP], and per position the word it begins.

  `word_ids[i]` is the index of the word whose first sub-token is at position i, or -1 for
  [CLS], [SEP] and continuation pieces; `num_words` counts the words of the whole input the row
  was cut from. `word_shape[i]` is the `bert_ner.word_shape` id of the word position i belongs to
  (every piece of a word carries it), 0 for [CLS] and [SEP]; empty means all 0.
  """

  input_ids: list[int]
  word_ids: list[int]
  num_words: int
  word_shape: list[int] = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class Entity:
  """A tagged span of text: entity type and [start, end) character offsets; `score`, the CRF's
  probability of the span's labels, where the text signature gave one (it does not take part in
  comparisons: the same span found by both paths is the same entity)."""

  type: str
  text: str
  start: int
  end: int
  score: float | None = dataclasses.field(default=None, compare=False)


def load_vocab(vocab_path: StrPath) -> dict[str, int]:
  """Reads vocab.txt like google's `load_vocab`: stripped lines, first occurrence keeps its id."""
  vocab: dict[str, int] = {}
  with open(vocab_path, encoding="utf-8") as f:
    for line in f:
      vocab.setdefault(line.strip(), len(vocab))
  return vocab


def pad_batch(windows: Sequence[Window], with_word_shape: bool = False) -> tuple[IntArray, ...]:
  """Stacks windows into int32 (input_ids, input_mask) arrays padded to the longest row, and
  with `with_word_shape` their word_shape as a third array (0 in the padding)."""
  width = max((len(w.input_ids) for w in windows), default=0)
  input_ids = np.zeros((len(windows), width), np.int32)
  input_mask = np.zeros((len(windows), width), np.int32)
  shapes = np.zeros((len(windows), width), np.int32)
  for row, window in enumerate(windows):
    input_ids[row, : len(window.input_ids)] = window.input_ids
    input_mask[row, : len(window.input_ids)] = 1
    shapes[row, : len(window.word_shape)] = window.word_shape
  return (input_ids, input_mask, shapes) if with_word_shape else (input_ids, input_mask)


def entities(text: str, words: Sequence[Word], tags: Sequence[str]) -> list[Entity]:
  """Entity spans from word tags; IOB1 and IOB2 alike, an I- without a B- opens an entity.

  An `X` tag continues the open entity (a free-text word the model saw as a word piece). An
  entity never continues over a line break: the lines of a document are its sentences.
  """
  if len(words) != len(tags):
    raise ValueError(f"{len(words)} words but {len(tags)} tags")
  spans: list[list] = []  # [type, first word, last word]
  for i, tag in enumerate(tags):
    is_open = (
      bool(spans) and spans[-1][2] == i - 1 and "\n" not in text[words[i - 1].end : words[i].start]
    )
    if tag == X and is_open:
      spans[-1][2] = i
    elif tag.startswith("I-") and is_open and spans[-1][0] == tag[2:]:
      spans[-1][2] = i
    elif tag.startswith(("B-", "I-")):
      spans.append([tag[2:], i, i])
  return [
    Entity(kind, text[words[first].start : words[last].end], words[first].start, words[last].end)
    for kind, first, last in spans
  ]


def text_entities(texts: Sequence[str], outputs: Mapping[str, Any]) -> list[list[Entity]]:
  """The text signature's outputs for `texts` -> each text's entities, with scores.

  `outputs` maps the output names of `model_base.TEXT_OUTPUTS` to arrays or nested lists (gRPC
  gives bytes, REST str); rows may be wider than their entities (padding, also from TF
  Serving's merged batches). ValueError names what does not fit: a row count, an offset outside
  the text, an entity text that is not the text at its offsets.
  """
  counts = outputs[model_base.NUM_ENTITIES]
  if len(counts) != len(texts):
    raise ValueError(f"{len(counts)} rows of entities for {len(texts)} texts")
  result = []
  for row, (text, count) in enumerate(zip(texts, counts)):
    found = []
    for i in range(int(count)):
      kind, span_text = (
        _as_str(outputs[key][row][i]) for key in (model_base.ENTITY_TYPE, model_base.ENTITY_TEXT)
      )
      start, end = (int(outputs[key][row][i]) for key in model_base.ENTITY_OFFSETS)
      if not 0 <= start < end <= len(text) or text[start:end] != span_text:
        raise ValueError(
          f"entity {span_text[:40]!r} at [{start}:{end}] does not match text {row} "
          f"({len(text)} characters)"
        )
      found.append(
        Entity(kind, span_text, start, end, float(outputs[model_base.ENTITY_SCORE][row][i]))
      )
    result.append(found)
  return result


def _as_str(value: object) -> str:
  """A string output value: str from JSON, bytes (UTF-8) from a TensorProto."""
  return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _build_tokenizer(vocab: dict[str, int], do_lower_case: bool) -> Tokenizer:
  """HF tokenizer doing google's BasicTokenizer + WordpieceTokenizer (accents go with case)."""
  tokenizer = Tokenizer(
    WordPiece(vocab, unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)
  )
  # google strips accents only when lower-casing.
  tokenizer.normalizer = normalizers.BertNormalizer(
    clean_text=True, handle_chinese_chars=True, strip_accents=do_lower_case, lowercase=do_lower_case
  )
  tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  return tokenizer


def _words_of(text: str, encoding: Encoding) -> tuple[list[Word], list[int]]:
  """Words of free text with the word index of each sub-token of its encoding.

  A word spans its sub-tokens' offsets, widened over following characters the normalizer
  dropped (a trailing combining accent, a zero-width space) up to whitespace or the next word.
  """
  starts: list[int] = []
  ends: list[int] = []
  token_words: list[int] = []
  previous = None
  for word_id, (start, end) in zip(encoding.word_ids, encoding.offsets):
    if word_id != previous:
      starts.append(start)
      ends.append(end)
      previous = word_id
    ends[-1] = end
    token_words.append(len(starts) - 1)
  words = []
  for i, (start, end) in enumerate(zip(starts, ends)):
    limit = starts[i + 1] if i + 1 < len(starts) else len(text)
    while end < limit and not text[end].isspace():
      end += 1
    words.append(Word(text[start:end], start, end))
  return words, token_words


def text_shapes(text: str, words: Sequence[Word]) -> list[int]:
  """Word shape ids of free-text words (`word_shape.text_shapes`)."""
  return word_shape.text_shapes(text, [(w.start, w.end) for w in words])


def _window_spans(begins: Sequence[int], capacity: int, overlap: int) -> list[tuple[int, int]]:
  """[lo, hi) sub-token spans of the windows: cut at word starts, neighbours share >= `overlap`."""
  n = len(begins)
  if n <= capacity:
    return [(0, n)]
  # next_start[p] / prev_start[p]: the nearest position >= p / <= p where a word begins.
  next_start = [n] * (n + 1)
  for p in range(n - 1, -1, -1):
    next_start[p] = p if begins[p] >= 0 else next_start[p + 1]
  prev_start = [0] * n
  for p in range(1, n):
    prev_start[p] = p if begins[p] >= 0 else prev_start[p - 1]
  spans = []
  lo = 0
  while lo + capacity < n:
    hi = lo + capacity
    word_start = prev_start[hi]
    # Cut before the word that does not fit, unless it fits no window anyway (last resort).
    if word_start > lo and next_start[hi] - word_start <= capacity:
      hi = word_start
    spans.append((lo, hi))
    # Next window: from the last word start that shares `overlap` sub-tokens with this one, or
    # failing one after lo, from the next word start (mid-word, as a last resort).
    back = prev_start[hi - overlap] if hi - overlap > lo else lo
    lo = back if back > lo else min(next_start[lo + 1], hi)
  spans.append((lo, n))
  return spans


def _split(items: list[T], sizes: Iterable[int]) -> list[list[T]]:
  """Cuts a flat list into consecutive parts of the given sizes."""
  bounds = list(itertools.accumulate(sizes, initial=0))
  return [items[lo:hi] for lo, hi in zip(bounds, bounds[1:])]


class Featurizer:
  """Turns text or CoNLL words into BERT rows and the model's label ids back into tags."""

  def __init__(
    self,
    vocab_path: StrPath,
    do_lower_case: bool,
    max_seq_length: int = 128,
    id2label: Iterable[str] | None = None,
    stride: int | None = None,
    word_shape: bool = False,
  ) -> None:
    """`word_shape`: the model takes the optional word_shape input, so run functions get it as
    a third argument (the windows always carry it)."""
    if max_seq_length < 3:
      raise ValueError(
        f"max_seq_length must be >= 3 ([CLS] + a sub-token + [SEP]), got {max_seq_length}"
      )
    capacity = max_seq_length - 2
    if stride is None:
      stride = min(max_seq_length // 4, (capacity - 1) // 2)
    if not 0 <= 2 * stride < capacity:
      raise ValueError(
        f"stride {stride} leaves no room: need 0 <= 2 * stride < max_seq_length - 2 = {capacity}"
      )
    self.vocab_path = vocab_path
    self.vocab = load_vocab(vocab_path)
    missing = [t for t in (CLS, SEP, UNK) if t not in self.vocab]
    if missing:
      raise ValueError(f"{vocab_path} lacks {missing}")
    self.do_lower_case = do_lower_case
    self.max_seq_length = max_seq_length
    self.stride = stride
    self.id2label = None if id2label is None else list(id2label)
    self.word_shape = word_shape
    # For a repeated "O" (macanv leaves id 0 unused) the highest id wins: the real one.
    self._label2id = {label: i for i, label in enumerate(self.id2label or [])}
    self._tokenizer = _build_tokenizer(self.vocab, do_lower_case)

  @classmethod
  def from_dir(cls, path: StrPath) -> Self:
    """Builds the featurizer of a checkpoint dir or an export's `assets.extra/`."""
    config = ner_schema.read(ner_schema.path_in(path), ner_schema.FEATURIZER_FIELDS).config
    return cls(
      os.path.join(path, VOCAB_FILE),
      config.do_lower_case,
      config.max_seq_length,
      labels.load_label_map(path),
      word_shape=config.word_shape_dim > 0,
    )

  pad_batch = staticmethod(pad_batch)
  entities = staticmethod(entities)

  def encode_text(self, text: str) -> tuple[list[Word], list[Window]]:
    """Free text -> (words, windows)."""
    return self._encode_text(text, self._tokenizer.encode(text, add_special_tokens=False))

  def encode_words(
    self, words: Sequence[str], sentence_lengths: Iterable[int] | None = None
  ) -> list[Window]:
    """Pre-split words (a CoNLL sentence, or with `sentence_lengths` consecutive sentences of a
    document) -> windows; word_ids index `words`."""
    encoding = self._tokenizer.encode(words, is_pretokenized=True, add_special_tokens=False)
    shapes = word_shape.document_shapes(word_shape.split_lengths(words, sentence_lengths))
    # Without special tokens every sub-token has a word: no None in word_ids.
    return self._windows(encoding.ids, cast(list[int], encoding.word_ids), len(words), shapes)

  def label_ids(
    self,
    words: Sequence[str],
    tags: Sequence[str],
    sentence_lengths: Iterable[int] | None = None,
  ) -> list[tuple[Window, list[int]]]:
    """Training rows: (Window, label ids) with the tag on first sub-tokens, X, [CLS], [SEP]."""
    if len(words) != len(tags):
      raise ValueError(f"{len(words)} words but {len(tags)} tags")
    tag_ids = [self._label_id(tag) for tag in tags]
    x_id, cls_id, sep_id = self._label_id(X), self._label_id(CLS), self._label_id(SEP)
    rows = []
    for window in self.encode_words(words, sentence_lengths):
      ids = [x_id if w < 0 else tag_ids[w] for w in window.word_ids]
      ids[0], ids[-1] = cls_id, sep_id
      rows.append((window, ids))
    return rows

  def word_tags(
    self, windows: Sequence[Window], pred_rows: Sequence[LabelRow], x_continues: bool = False
  ) -> list[str]:
    """One tag per word from the label ids predicted for its windows (one input's windows).

    A word is read from the window where it has the most context on its nearer side (the
    input's own ends count as unlimited context); on a tie the earlier window wins, so the
    reading of a word never depends on the windows that follow it.
    X, [CLS] or [SEP] predicted on a word start read as "O"; with `x_continues` (free text) an
    X continues the previous word's entity instead. A word the vocabulary cannot spell ([UNK]:
    an emoji, a flag) never continues an entity: its X or I- reads as "O".
    """
    if len(windows) != len(pred_rows):
      raise ValueError(f"{len(windows)} windows but {len(pred_rows)} prediction rows")
    if not windows:
      return []
    id2label = self._labels()
    best_score = [-1] * windows[0].num_words
    best_id: list[int | None] = [None] * windows[0].num_words
    is_unk = [False] * windows[0].num_words
    unk_id = self.vocab[UNK]
    last = len(windows) - 1
    for k, (window, row) in enumerate(zip(windows, pred_rows)):
      n = len(window.input_ids) - 2
      for i, word in enumerate(window.word_ids):
        if word < 0:
          continue
        # Context on each side within this window; the input's own ends are no cut.
        left = i - 1 if k > 0 else self.max_seq_length
        right = n - i if k < last else self.max_seq_length
        if min(left, right) > best_score[word]:
          best_score[word] = min(left, right)
          best_id[word] = int(row[i])
          is_unk[word] = window.input_ids[i] == unk_id
    tags: list[str] = []
    for label_id, unk in zip(best_id, is_unk):
      tag = "O" if label_id is None else id2label[label_id]
      if unk and (tag == X or tag.startswith("I-")):
        tag = "O"
      if tag in (X, CLS, SEP):
        continues = x_continues and tag == X and tags and tags[-1].startswith(("B-", "I-"))
        tag = "I-" + tags[-1][2:] if continues else "O"
      tags.append(tag)
    return tags

  def predict_words(
    self,
    sentences: Sequence[Sequence[str]],
    run_fn: RunFn,
    batch_size: int = 64,
    sentence_lengths: Sequence[Sequence[int] | None] | None = None,
  ) -> list[list[str]]:
    """Tags for pre-split sentences, running all their windows through `run_fn` in batches.

    `sentence_lengths[i]` (optional) splits input i into consecutive sentences for the word
    shapes (`predict_documents`); by default each input is one sentence.
    """
    encodings = self._tokenizer.encode_batch(
      [list(s) for s in sentences], is_pretokenized=True, add_special_tokens=False
    )
    if sentence_lengths is None:
      sentence_lengths = [None] * len(sentences)
    per_input = [
      self._windows(  # as in encode_words
        e.ids,
        cast(list[int], e.word_ids),
        len(s),
        word_shape.document_shapes(word_shape.split_lengths(s, lengths)),
      )
      for e, s, lengths in zip(encodings, sentences, sentence_lengths)
    ]
    rows = self._run(per_input, run_fn, batch_size)
    return [
      self.word_tags(windows, list(itertools.islice(rows, len(windows)))) for windows in per_input
    ]

  def predict_texts(
    self, texts: Sequence[str], run_fn: RunFn, batch_size: int = 64
  ) -> list[list[Entity]]:
    """Entities of free texts, running all their windows through `run_fn` in batches."""
    encodings = self._tokenizer.encode_batch(list(texts), add_special_tokens=False)
    encoded = [self._encode_text(t, e) for t, e in zip(texts, encodings)]
    rows = self._run([windows for _, windows in encoded], run_fn, batch_size)
    results = []
    for text, (words, windows) in zip(texts, encoded):
      tags = self.word_tags(windows, list(itertools.islice(rows, len(windows))), x_continues=True)
      results.append(entities(text, words, tags))
    return results

  def predict_documents(
    self, documents: Sequence[Sequence[Sequence[str]]], run_fn: RunFn, batch_size: int = 64
  ) -> list[list[list[str]]]:
    """Tags for documents (lists of pre-split sentences): each is windowed as one word sequence,
    so a sentence's words see the neighbouring sentences; tags come back per sentence."""
    flat = [[word for sentence in document for word in sentence] for document in documents]
    lengths = [[len(sentence) for sentence in document] for document in documents]
    tagged = self.predict_words(flat, run_fn, batch_size, lengths)
    return [
      _split(tags, [len(sentence) for sentence in document])
      for tags, document in zip(tagged, documents)
    ]

  def predict_text_documents(
    self, documents: Sequence[Sequence[str]], run_fn: RunFn, batch_size: int = 64
  ) -> list[list[list[Entity]]]:
    """Entities of each line of documents (lists of lines), a document windowed as one text.

    Offsets are within each line, as `predict_texts` gives them for the lines one by one.
    """
    encoded = []
    for lines in documents:
      words_per_line: list[list[Word]] = []
      ids: list[int] = []
      token_words: list[int] = []
      shapes: list[int] = []
      for line, encoding in zip(
        lines, self._tokenizer.encode_batch(list(lines), add_special_tokens=False)
      ):
        words, line_token_words = _words_of(line, encoding)
        offset = sum(len(w) for w in words_per_line)
        ids += encoding.ids
        token_words += [offset + w for w in line_token_words]
        words_per_line.append(words)
        shapes += text_shapes(line, words)
      num_words = sum(len(w) for w in words_per_line)
      encoded.append((words_per_line, self._windows(ids, token_words, num_words, shapes)))
    rows = self._run([windows for _, windows in encoded], run_fn, batch_size)
    results = []
    for lines, (words_per_line, windows) in zip(documents, encoded):
      tags = self.word_tags(windows, list(itertools.islice(rows, len(windows))), x_continues=True)
      per_line = _split(tags, [len(words) for words in words_per_line])
      results.append(
        [
          entities(line, words, line_tags)
          for line, words, line_tags in zip(lines, words_per_line, per_line)
        ]
      )
    return results

  def _encode_text(self, text: str, encoding: Encoding) -> tuple[list[Word], list[Window]]:
    """(words, windows) of free text from its encoding."""
    words, token_words = _words_of(text, encoding)
    shapes = text_shapes(text, words)
    return words, self._windows(encoding.ids, token_words, len(words), shapes)

  def _windows(
    self,
    ids: list[int],
    token_words: Sequence[int],
    num_words: int,
    word_shapes: Sequence[int] | None = None,
  ) -> list[Window]:
    """Cuts one input's sub-tokens (with the word of each) into [CLS] ... [SEP] windows;
    `word_shapes` (one id per word, default all 0) become each sub-token's word_shape."""
    if num_words == 0:
      return []
    begins = [w if p == 0 or w != token_words[p - 1] else -1 for p, w in enumerate(token_words)]
    token_shapes = [word_shapes[w] for w in token_words] if word_shapes else [0] * len(ids)
    cls_id, sep_id = self.vocab[CLS], self.vocab[SEP]
    return [
      Window(
        [cls_id] + ids[lo:hi] + [sep_id],
        [-1] + begins[lo:hi] + [-1],
        num_words,
        [word_shape.NONE] + token_shapes[lo:hi] + [word_shape.NONE],
      )
      for lo, hi in _window_spans(begins, self.max_seq_length - 2, 2 * self.stride)
    ]

  def _run(
    self, per_input: Sequence[Sequence[Window]], run_fn: RunFn, batch_size: int
  ) -> Iterator[npt.NDArray[np.integer]]:
    """Runs every window through run_fn, shortest first, batches padded to their longest row;
    run_fn may return rows wider than it was given (TF Serving's merged width).

    Returns an iterator over the prediction rows in the order of the inputs' windows.
    """
    windows = [w for input_windows in per_input for w in input_windows]
    order = sorted(range(len(windows)), key=lambda i: len(windows[i].input_ids))
    rows: list[npt.NDArray[np.integer]] = [None] * len(windows)  # type: ignore[list-item]  # all set below
    for begin in range(0, len(order), batch_size):
      chunk = order[begin : begin + batch_size]
      arrays = pad_batch([windows[i] for i in chunk], self.word_shape)
      input_ids = arrays[0]
      pred = np.asarray(run_fn(*arrays))
      # TF Serving's batching returns a request the merged batch's width (its rows padded to the
      # longest request): wider is fine, only the request's own positions are read.
      if pred.ndim != 2 or len(pred) != len(input_ids) or pred.shape[1] < input_ids.shape[1]:
        raise ValueError(f"run_fn returned shape {pred.shape} for input shape {input_ids.shape}")
      for i, row in zip(chunk, pred[:, : input_ids.shape[1]]):
        rows[i] = row
    return iter(rows)

  def _labels(self) -> list[str]:
    """id2label, or a clear error for a featurizer built without one."""
    if self.id2label is None:
      raise ValueError("this Featurizer has no id2label: pass one or use Featurizer.from_dir")
    return self.id2label

  def _label_id(self, label: str) -> int:
    """Id of a label; a clear error when the label map lacks it."""
    self._labels()
    if label not in self._label2id:
      raise ValueError(f"label {label!r} is not in the label map {self.id2label}")
    return self._label2id[label]
