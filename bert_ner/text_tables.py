"""Per-code-point tables that let core TensorFlow ops reproduce the featurizer's tokenizer.

The text signature (`bert_ner.text_graph`) tokenizes inside the served graph, and the stock
TF Serving image has no TF Text and no Unicode normalization, case mapping or character classes.
So the export asks the featurizer's own tokenizer what it does with each of the 1,112,064 code
points and ships the answers as constants: the graph then looks characters up instead of
re-deriving Unicode rules (whose tables would differ from HF `tokenizers`' anyway).

Every table is a `RangeTable`: code points are cut into runs of equal value, stored as the run
starts (sorted) and each run's value; a lookup is one `searchsorted` and one gather. Runs keep the
tables small (a few thousand entries) although unassigned and private-use code points, which the
normalizer drops, fill most of the code space.

The normalizer works character by character (cleaning, CJK spacing, NFD then dropping nonspacing
marks, lower-casing), so one character's output does not depend on its neighbours; the
differential tests check the result against the featurizer on real and generated text.
"""

import dataclasses
import functools

import numpy as np
import numpy.typing as npt
from tokenizers import Tokenizer

IntArray = npt.NDArray[np.int32]

NUM_CODE_POINTS = 0x110000
SURROGATES = range(0xD800, 0xE000)  # never produced by UTF-8 decoding
# `normalize` values below 0; a value >= 0 is a row of `TextTables.replacements`.
KEEP, DROP = -1, -2
# `char_class` values: how the pre-tokenizer treats a normalized character.
OTHER, SPACE, PUNCT = 0, 1, 2
# `case` bits: Python's str.isupper / islower / isdigit of an original character, what
# `bert_ner.word_shape` asks of each character of a word.
UPPER, LOWER, DIGIT = 1, 2, 4
# Code points that go through the normalizer one call at a time instead of in the joined string
# (the separator itself).
_SEPARATOR = "|"


@dataclasses.dataclass(frozen=True)
class RangeTable:
  """A value per code point as runs: `values[i]` holds from `starts[i]` up to `starts[i + 1]`."""

  starts: IntArray  # [R], starts[0] == 0, increasing
  values: IntArray  # [R]

  @classmethod
  def from_values(cls, per_code_point: npt.ArrayLike) -> "RangeTable":
    """Run-length encodes one value per code point (an array of NUM_CODE_POINTS ints)."""
    values = np.asarray(per_code_point, np.int32)
    changes = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate([[0], changes]).astype(np.int32)
    return cls(starts, values[starts])

  def lookup(self, code_points: npt.ArrayLike) -> IntArray:
    """The values of `code_points` (numpy; the graph does the same with tf.searchsorted)."""
    index = np.searchsorted(self.starts, np.asarray(code_points), side="right") - 1
    return self.values[index]


@dataclasses.dataclass(frozen=True)
class TextTables:
  """What the featurizer's tokenizer does with each code point, as the text graph reads it.

  `normalize`: KEEP (the character itself), DROP (removed: control, format, unassigned and
    private-use characters, U+FFFD, nonspacing marks when accents are stripped), or a row of
    `replacements` (its normalized characters: lower case, accents stripped, spaces put around
    CJK ideographs), `replacement_lengths` of them.
  `char_class`: OTHER, SPACE (splits words, dropped) or PUNCT (a word of its own), for the
    normalized characters as the pre-tokenizer sees them.
  `is_space`: Python's `str.isspace` of the original characters, where a word's end stops
    (`featurizer._words_of` widens a word over dropped characters up to whitespace).
  `case`: UPPER | LOWER | DIGIT bits of the original characters (`bert_ner.word_shape`). They
    come from the exporting Python's Unicode database; a client on another Python version can
    differ only on characters added to Unicode in between.
  """

  normalize: RangeTable
  replacements: IntArray  # [E, M] code points, 0-padded
  replacement_lengths: IntArray  # [E]
  char_class: RangeTable
  is_space: RangeTable
  case: RangeTable


def _code_points() -> list[int]:
  """Every code point a UTF-8 string can hold."""
  return [c for c in range(NUM_CODE_POINTS) if c not in SURROGATES]


def _fill_surrogates(values: IntArray) -> IntArray:
  """Gives the surrogates their predecessor's value so they add no runs."""
  values[SURROGATES.start : SURROGATES.stop] = values[SURROGATES.start - 1]
  return values


def _fill_gaps(values: IntArray) -> IntArray:
  """Replaces each -1 (a don't-care) with the value before it, so don't-cares add no runs."""
  known = np.flatnonzero(values >= 0)
  return values[known[np.maximum(np.searchsorted(known, np.arange(len(values)), "right") - 1, 0)]]


def _case_bits(code_points: list[int]) -> IntArray:
  """UPPER | LOWER | DIGIT per code point (0 for the surrogates, filled by the caller)."""
  bits = np.zeros(NUM_CODE_POINTS, np.int32)
  for c in code_points:
    ch = chr(c)
    bits[c] = UPPER * ch.isupper() | LOWER * ch.islower() | DIGIT * ch.isdigit()
  return bits


def _normalized(tokenizer: Tokenizer, code_points: list[int]) -> list[str]:
  """The normalizer's output for each code point alone.

  One call on all characters joined by a separator instead of a million calls; the separator is
  a character the normalizer keeps and produces from nothing else, and is done on its own.
  """
  normalizer = tokenizer.normalizer
  assert normalizer is not None
  joined = _SEPARATOR.join(chr(c) for c in code_points if chr(c) != _SEPARATOR)
  parts = iter(normalizer.normalize_str(joined).split(_SEPARATOR))
  out = [
    normalizer.normalize_str(_SEPARATOR) if chr(c) == _SEPARATOR else next(parts)
    for c in code_points
  ]
  if next(parts, None) is not None:
    raise AssertionError("the normalizer split or merged characters: tables would be wrong")
  return out


def _char_classes(tokenizer: Tokenizer, code_points: list[int]) -> IntArray:
  """OTHER / SPACE / PUNCT per code point, from the pre-tokenizer on `a<c>a<c>a...`.

  Between two 'a's a whitespace character is covered by no piece, punctuation is a piece of its
  own, and anything else is glued into a piece with its neighbours.
  """
  pre_tokenizer = tokenizer.pre_tokenizer
  assert pre_tokenizer is not None
  text = "a" + "a".join(chr(c) for c in code_points) + "a"
  classes = np.full(len(text), SPACE, np.int32)
  for _, (start, end) in pre_tokenizer.pre_tokenize_str(text):
    classes[start:end] = PUNCT if end - start == 1 and text[start] != "a" else OTHER
  return classes[1::2]  # the characters sit at the odd positions


def build(tokenizer: Tokenizer) -> TextTables:
  """The tables of a featurizer's HF tokenizer (`Featurizer._tokenizer`).

  They depend only on its normalizer and pre-tokenizer settings (not on the vocabulary), so they
  are built once per process for each (a few seconds).
  """
  assert tokenizer.normalizer is not None and tokenizer.pre_tokenizer is not None
  return _build(tokenizer.normalizer.__getstate__(), tokenizer.pre_tokenizer.__getstate__())


@functools.lru_cache(maxsize=4)
def _build(normalizer_state: bytes, pre_tokenizer_state: bytes) -> TextTables:
  """`build` for a tokenizer given by its (JSON) normalizer and pre-tokenizer settings."""
  tokenizer = Tokenizer.from_str(
    '{"version": "1.0", "model": {"type": "WordLevel", "vocab": {}, "unk_token": "?"},'
    f'"normalizer": {normalizer_state.decode()}, "pre_tokenizer": {pre_tokenizer_state.decode()}}}'
  )
  code_points = _code_points()
  normalized = _normalized(tokenizer, code_points)
  normalize = np.full(NUM_CODE_POINTS, KEEP, np.int32)
  isolated: set[int] = set()
  rows: list[list[int]] = []
  for c, out in zip(code_points, normalized):
    if len(out) > 2 and out[0] == out[-1] == " " and " " not in out[1:-1]:
      # A CJK ideograph padded with spaces: isolated like punctuation, which needs no table row
      # per ideograph (tens of thousands of them).
      out = out[1:-1]
      isolated.update(map(ord, out))
    if out == chr(c):
      continue
    if not out:
      normalize[c] = DROP
    else:
      normalize[c] = len(rows)
      rows.append([ord(ch) for ch in out])
  width = max((len(r) for r in rows), default=1)
  replacements = np.zeros((max(len(rows), 1), width), np.int32)
  for i, row in enumerate(rows):
    replacements[i, : len(row)] = row
  lengths = np.array([len(r) for r in rows] or [0], np.int32)
  # Classes only for the characters normalization can output; the rest take their neighbour's.
  produced = sorted(
    {c for c in code_points if normalize[c] == KEEP} | set(replacements[lengths > 0].flat) - {0}
  )
  char_class = np.full(NUM_CODE_POINTS, -1, np.int32)
  char_class[produced] = _char_classes(tokenizer, produced)
  char_class[sorted(isolated)] = PUNCT
  is_space = np.zeros(NUM_CODE_POINTS, np.int32)
  is_space[[c for c in code_points if chr(c).isspace()]] = 1
  return TextTables(
    normalize=RangeTable.from_values(_fill_surrogates(normalize)),
    replacements=replacements,
    replacement_lengths=lengths,
    char_class=RangeTable.from_values(_fill_gaps(char_class)),
    is_space=RangeTable.from_values(_fill_surrogates(is_space)),
    case=RangeTable.from_values(_fill_surrogates(_case_bits(code_points))),
  )
