"""The featurizer in core TensorFlow ops: raw text in, entities with offsets and scores out.

This is `bert_ner.featurizer`'s free-text path (`Featurizer.predict_texts`) rebuilt inside the
served graph, so that TF Serving's stock image, which has no TF Text, takes text from any
language. Every step mirrors the Python function named in its docstring, and the differential
tests hold the two equal (sub-tokens, word offsets, windows, entities); nothing here is a second
opinion about tokenization. What core TF lacks (normalization, character classes) comes from
`bert_ner.text_tables`, precomputed at export from the featurizer's own tokenizer.

Tensors are flat with a row id beside them (N characters, M normalized characters in words,
W words, S sub-tokens, K windows of the whole batch); each function says its shapes. Indices are
int32 and global (into the flat tensors); offsets become relative to their text only in the
outputs.
"""

from typing import NamedTuple

import numpy as np
import tensorflow.compat.v1 as tf

from bert_ner import crf, labels, model_base, text_tables, word_shape
from bert_ner import featurizer as featurizer_lib

# Characters one text (row) may hold: bounds a request's work and memory; a longer row fails the
# run with InvalidArgument naming the limit (docs/TEXT_SIGNATURE.md).
MAX_TEXT_CHARS = 20_000
REPLACEMENT_CHAR = 0xFFFD  # what an invalid UTF-8 sequence decodes to (then dropped as control)


class Chars(NamedTuple):
  """The batch's decoded text: N code points, flat."""

  code_points: tf.Tensor  # [N] int32
  row: tf.Tensor  # [N] int32, the text each belongs to
  row_starts: tf.Tensor  # [B] int32, index of each text's first character
  row_ends: tf.Tensor  # [B] int32


class Words(NamedTuple):
  """Basic-tokenizer words (`featurizer.Word`) of the batch and their normalized characters."""

  row: tf.Tensor  # [W] int32
  start: tf.Tensor  # [W] int32, offset into the flat characters
  end: tf.Tensor  # [W] int32, exclusive, widened as `featurizer._words_of` does
  char_strings: tf.Tensor  # [M] string, each normalized character of every word, UTF-8
  char_word: tf.Tensor  # [M] int32, the word of each normalized character
  first_char: tf.Tensor  # [W] int32, index into char_strings
  num_chars: tf.Tensor  # [W] int32


class SubTokens(NamedTuple):
  """WordPiece sub-tokens of the batch in text order."""

  ids: tf.Tensor  # [S] int32 vocabulary ids
  word: tf.Tensor  # [S] int32, the word each belongs to


class Windows(NamedTuple):
  """Model rows: [CLS] sub-tokens lo..hi-1 [SEP] of one text, as `featurizer._windows`."""

  row: tf.Tensor  # [K] int32, the text
  lo: tf.Tensor  # [K] int32, first sub-token (global)
  hi: tf.Tensor  # [K] int32, one past the last
  first: tf.Tensor  # [K] bool, the text's first window (no cut on its left)
  last: tf.Tensor  # [K] bool, the text's last window
  input_ids: tf.Tensor  # [K, T] int32
  input_mask: tf.Tensor  # [K, T] int32
  word_shape: tf.Tensor  # [K, T] int32, the word's `bert_ner.word_shape` id, 0 off sub-tokens


def _lookup(table, code_points):
  """RangeTable.lookup as graph ops: one searchsorted over the run starts, one gather."""
  starts = tf.constant(table.starts)
  index = tf.searchsorted(starts, code_points, side="right") - 1
  return tf.gather(tf.constant(table.values), index)


def _previous(values, first):
  """values shifted right by one: out[i] = values[i - 1], out[0] = first (empty stays empty)."""
  return tf.concat([[first], values], axis=0)[:-1]


def _next(values, last):
  """values shifted left by one: out[i] = values[i + 1], out[-1] = last (empty stays empty)."""
  return tf.concat([values, [last]], axis=0)[1:]


def decode(texts):
  """UTF-8 texts [B] -> Chars; an invalid byte sequence becomes U+FFFD (as Python's
  `bytes.decode("utf-8", "replace")`), which the normalizer then drops like a control character.

  A text over MAX_TEXT_CHARS characters fails the run with InvalidArgument naming the limit.
  """
  ragged = tf.strings.unicode_decode(
    texts, "UTF-8", errors="replace", replacement_char=REPLACEMENT_CHAR
  )
  lengths = tf.cast(ragged.row_lengths(), tf.int32)  # [B]
  longest = tf.reduce_max(tf.concat([lengths, [0]], 0))
  check = tf.debugging.Assert(
    longest <= MAX_TEXT_CHARS,
    [
      tf.strings.format(
        "text has {} characters, over the limit of %d per text: split it" % MAX_TEXT_CHARS,
        [longest],
      )
    ],
  )
  with tf.control_dependencies([check]):
    code_points = tf.identity(ragged.flat_values)
  row_ends = tf.cumsum(lengths)
  return Chars(
    code_points=code_points,
    row=tf.cast(ragged.value_rowids(), tf.int32),
    row_starts=row_ends - lengths,
    row_ends=row_ends,
  )


def basic_words(chars, tables):
  """Chars -> Words: BERT's basic tokenizer as HF `tokenizers` runs it (BertNormalizer, then
  BertPreTokenizer), with each word's offsets as `featurizer._words_of` gives them.

  Each character becomes 0 (dropped), 1 or a few normalized characters (its table row); a word is
  a run of normalized characters between whitespace, or one punctuation character (or CJK
  ideograph). A word's offsets span the original characters its normalized characters came
  from, its end then widened over following characters up to whitespace or the next word.
  """
  cps = chars.code_points  # [N]
  num_chars = tf.shape(cps)[0]
  kind = _lookup(tables.normalize, cps)  # [N]
  row_index = tf.maximum(kind, 0)
  replaced = tf.gather(tf.constant(tables.replacements), row_index)  # [N, R]
  width = tables.replacements.shape[1]
  kept = tf.concat([cps[:, None], tf.zeros([num_chars, width - 1], tf.int32)], axis=1)
  outputs = tf.where_v2(tf.equal(kind, text_tables.KEEP)[:, None], kept, replaced)  # [N, R]
  counts = tf.where_v2(
    tf.equal(kind, text_tables.KEEP),
    1,
    tf.where_v2(
      tf.equal(kind, text_tables.DROP),
      0,
      tf.gather(tf.constant(tables.replacement_lengths), row_index),
    ),
  )  # [N]
  present = tf.range(width)[None, :] < counts[:, None]  # [N, R]
  norm = tf.boolean_mask(outputs, present)  # [N2] normalized code points
  source = tf.boolean_mask(tf.tile(tf.range(num_chars)[:, None], [1, width]), present)  # [N2]
  norm_row = tf.gather(chars.row, source)
  char_class = _lookup(tables.char_class, norm)  # [N2]
  # A word starts at a non-space character that begins its text, follows a space or
  # punctuation, or is punctuation itself.
  previous_class = _previous(char_class, text_tables.SPACE)
  in_word = tf.not_equal(char_class, text_tables.SPACE)
  starts = in_word & (
    tf.not_equal(norm_row, _previous(norm_row, -1))
    | tf.equal(previous_class, text_tables.SPACE)
    | tf.equal(char_class, text_tables.PUNCT)
    | tf.equal(previous_class, text_tables.PUNCT)
  )
  word_chars = tf.cast(tf.where(in_word)[:, 0], tf.int32)  # [M] indices into N2
  char_source = tf.gather(source, word_chars)  # [M]
  char_starts = tf.gather(starts, word_chars)
  char_word = tf.cumsum(tf.cast(char_starts, tf.int32)) - 1  # [M]
  first_char = tf.cast(tf.where(char_starts)[:, 0], tf.int32)  # [W]
  num_word_chars = tf.shape(word_chars)[0]
  next_first = _next(first_char, num_word_chars)
  row = tf.gather(chars.row, tf.gather(char_source, first_char))  # [W]
  start = tf.gather(char_source, first_char)
  end = tf.gather(char_source, next_first - 1) + 1
  return Words(
    row=row,
    start=start,
    end=_widen(chars, tables, row, start, end),
    char_strings=tf.strings.unicode_encode(tf.gather(norm, word_chars)[:, None], "UTF-8"),
    char_word=char_word,
    first_char=first_char,
    num_chars=next_first - first_char,
  )


def _widen(chars, tables, row, start, end):
  """Word ends widened over the characters the normalizer dropped after them, up to whitespace
  (Python's `str.isspace`), the next word or the end of the text (`featurizer._words_of`)."""
  # row, start, end: [W]
  limit = tf.where_v2(
    tf.equal(_next(row, -1), row), _next(start, 0), tf.gather(chars.row_ends, row)
  )
  spaces = tf.cast(tf.where(_lookup(tables.is_space, chars.code_points) > 0)[:, 0], tf.int32)
  after = tf.searchsorted(spaces, end, side="left")
  first_space = tf.gather(tf.concat([spaces, [np.iinfo(np.int32).max]], 0), after)
  return tf.where_v2(end < limit, tf.minimum(limit, first_space), end)


def _has(flags, bit):
  """[X] bool: the `text_tables.case` flags hold `bit`."""
  return tf.not_equal(tf.bitwise.bitwise_and(flags, bit), 0)


def word_shapes(chars, words, tables):
  """Words -> [W] int32 `bert_ner.word_shape` ids, as `word_shape.text_shapes` gives them: words
  that touch form a token, each word shaped by its token's core, each line of a text a sentence.

  For example "(Reuters) U.S. officials" -> "(" OTHER+first, "Reuters" Capitalized+first,
  ")" OTHER+first, "U" "." "S" ALLCAPS, the last "." OTHER, "officials" lower.
  """
  flags = _lookup(tables.case, chars.code_points)  # [N]
  num_words = tf.shape(words.start)[0]
  new_row = tf.not_equal(words.row, _previous(words.row, -1))
  token = (
    tf.cumsum(tf.cast(new_row | tf.not_equal(words.start, _previous(words.end, -1)), tf.int32)) - 1
  )  # [W], the token of each word
  spans = tf.ragged.range(words.start, words.end)  # [W, (characters)]
  char_index = spans.flat_values  # [C], the characters of the words
  char_token = tf.gather(token, tf.cast(spans.value_rowids(), tf.int32))  # [C]
  char_flags = tf.gather(flags, char_index)
  core = tf.not_equal(char_flags, 0)
  core_index = tf.boolean_mask(char_index, core)
  core_token = tf.boolean_mask(char_token, core)
  # Per token ([W] rows, the first `tokens` used): its core's [start, end), empty if none.
  has_core = tf.math.unsorted_segment_max(tf.ones_like(core_token), core_token, num_words) > 0
  core_start = tf.math.unsorted_segment_min(core_index, core_token, num_words)
  core_end = tf.math.unsorted_segment_max(core_index, core_token, num_words) + 1

  def any_char(hit):
    """[C] bool -> [tokens] bool: some character of the token (only core characters have
    flags, so some character of its core)."""
    return tf.math.unsorted_segment_max(tf.cast(hit, tf.int32), char_token, num_words) > 0

  is_upper = _has(char_flags, text_tables.UPPER)
  upper = any_char(is_upper)
  lower = any_char(_has(char_flags, text_tables.LOWER))
  digit = any_char(_has(char_flags, text_tables.DIGIT))
  upper_after_first = any_char(
    is_upper & tf.not_equal(char_index, tf.gather(core_start, char_token))
  )
  first_upper = has_core & _has(
    tf.gather(tf.concat([flags, [0]], 0), tf.where_v2(has_core, core_start, tf.size(flags))),
    text_tables.UPPER,
  )
  token_base = tf.where_v2(
    lower & ~upper,
    word_shape.LOWER,
    tf.where_v2(
      first_upper & ~upper_after_first,
      word_shape.CAPITALIZED,
      tf.where_v2(
        upper & ~lower,
        word_shape.ALLCAPS,
        tf.where_v2(
          upper & lower, word_shape.MIXED, tf.where_v2(digit, word_shape.DIGITS, word_shape.OTHER)
        ),
      ),
    ),
  )  # [tokens]
  in_core = (
    tf.gather(has_core, token)
    & (words.start < tf.gather(core_end, token))
    & (words.end > tf.gather(core_start, token))
  )
  base = tf.where_v2(in_core, tf.gather(token_base, token), word_shape.OTHER)
  # Two words of a text share a line when no "\n" lies between their starts.
  newlines = tf.cumsum(tf.cast(tf.equal(chars.code_points, ord("\n")), tf.int32), exclusive=True)
  line = tf.gather(newlines, words.start)  # [W]
  line_start = new_row | tf.not_equal(line, _previous(line, -1))
  sentence = tf.cumsum(tf.cast(line_start, tf.int32)) - 1  # [W]
  first = tf.equal(token, tf.gather(tf.boolean_mask(token, line_start), sentence))

  def any_word(hit):
    """[W] bool -> [W] bool: some word of the word's sentence."""
    per_sentence = tf.math.unsorted_segment_max(tf.cast(hit, tf.int32), sentence, num_words)
    return tf.gather(per_sentence, sentence) > 0

  # A line's tokens hold exactly its words' characters.
  caps = any_word(tf.gather(upper, token)) & ~any_word(tf.gather(lower, token))
  return (
    base
    + word_shape.FIRST_WORD * tf.cast(first, tf.int32)
    + word_shape.CAPS_SENTENCE * tf.cast(caps, tf.int32)
  )


def vocab_table(vocab):
  """A static hash table: sub-token string -> id (the featurizer's vocab dict), -1 if absent."""
  keys = tf.constant(list(vocab), tf.string)
  values = tf.constant(list(vocab.values()), tf.int32)
  return tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(keys, values), -1)


def longest_piece(vocab):
  """Characters in the longest vocabulary entry (without `##`): the longest match WordPiece
  can find, so the number of candidate lengths the graph tries."""
  return max((len(t[2:]) if t.startswith("##") else len(t) for t in vocab), default=1)


def wordpiece(words, table, max_piece_chars, unk_id):
  """Words -> SubTokens: WordPiece's greedy longest-match-first with `##` continuations, a word
  that cannot be spelt (or has over MAX_INPUT_CHARS_PER_WORD characters) one [UNK].

  For example "unaffable" -> ["un", "##aff", "##able"]: from each position of a word the longest
  vocabulary entry wins, then matching goes on after it. Every candidate (position, length) is
  looked up at once; the walk from piece to piece is a loop with one step per piece.
  """
  strings = words.char_strings  # [M]
  num_chars = tf.shape(strings)[0]
  position = tf.range(num_chars)
  word_end = tf.gather(words.first_char + words.num_chars, words.char_word)  # [M]
  at_word_start = tf.equal(position, tf.gather(words.first_char, words.char_word))
  best_length = tf.zeros([num_chars], tf.int32)
  best_id = tf.zeros([num_chars], tf.int32)
  candidate = tf.fill([num_chars], "")
  for length in range(1, max_piece_chars + 1):
    last = position + length - 1
    candidate = tf.strings.join([candidate, tf.gather(strings, tf.minimum(last, num_chars - 1))])
    key = tf.where_v2(at_word_start, candidate, tf.strings.join(["##", candidate]))
    found = table.lookup(key)
    hit = (last < word_end) & (found >= 0)
    best_length = tf.where_v2(hit, length, best_length)
    best_id = tf.where_v2(hit, found, best_id)
  spellable = words.num_chars <= featurizer_lib.MAX_INPUT_CHARS_PER_WORD  # [W]
  piece_start, spelt = _greedy_walk(words, best_length, spellable)  # [M], [W] bool
  ok = tf.gather(spelt, words.char_word)
  is_piece = tf.where_v2(ok, piece_start, at_word_start)
  pieces = tf.cast(tf.where(is_piece)[:, 0], tf.int32)
  return SubTokens(
    ids=tf.gather(tf.where_v2(ok, best_id, unk_id), pieces),
    word=tf.gather(words.char_word, pieces),
  )


def _greedy_walk(words, best_length, spellable):
  """(piece starts [M] bool, spelt [W] bool): where the pieces of each word start, and whether
  the word was spelt to its end (False where no entry matched at a piece start, or where
  `spellable` was False to begin with). best_length: [M] longest match at each character."""
  num_chars = tf.shape(best_length)[0]
  end = words.first_char + words.num_chars  # [W]

  def step(position, ok, marks):
    active = ok & (position < end)
    length = tf.gather(best_length, tf.minimum(position, num_chars - 1))
    stuck = active & tf.equal(length, 0)
    moving = active & ~stuck
    moved = tf.boolean_mask(position, moving)
    marks = marks + tf.scatter_nd(moved[:, None], tf.ones_like(moved), [num_chars])
    return tf.where_v2(moving, position + length, position), ok & ~stuck, marks

  _, ok, marks = tf.while_loop(
    lambda position, ok, marks: tf.reduce_any(ok & (position < end)),
    step,
    (words.first_char, spellable, tf.zeros([num_chars], tf.int32)),
    back_prop=False,
  )
  return marks > 0, ok


def window_spans(tokens, words, num_rows, capacity, overlap):
  """[lo, hi) sub-token spans of each text's windows: `featurizer._window_spans` for all texts
  at once, one loop step per window. Returns (row, lo, hi), each [K], in text then window order.
  """
  num_tokens = tf.shape(tokens.ids)[0]
  token_row = tf.gather(words.row, tokens.word)  # [S]
  begins = tf.not_equal(tokens.word, _previous(tokens.word, -1))  # [S]
  begin_at = tf.cast(tf.where(begins)[:, 0], tf.int32)  # sorted word starts
  rows = tf.range(num_rows)
  row_lo = tf.searchsorted(token_row, rows, side="left")  # [B]
  row_hi = tf.searchsorted(token_row, rows, side="right")

  def prev_start(p):
    """The nearest word start <= p (p inside a text, which always starts with a word)."""
    return tf.gather(begin_at, tf.searchsorted(begin_at, p, side="right") - 1)

  def next_start(p, row_end):
    """The nearest word start >= p, or the text's end."""
    index = tf.searchsorted(begin_at, p, side="left")
    found = tf.gather(tf.concat([begin_at, [num_tokens]], 0), index)
    return tf.minimum(found, row_end)

  def step(lo, spans):
    active = lo + capacity < row_hi
    hi = lo + capacity
    word_start = prev_start(tf.minimum(hi, num_tokens - 1))
    fits = (word_start > lo) & (next_start(hi, row_hi) - word_start <= capacity)
    hi = tf.where_v2(fits, word_start, hi)
    back = tf.where_v2(
      hi - overlap > lo, prev_start(tf.clip_by_value(hi - overlap, 0, num_tokens - 1)), lo
    )
    new_lo = tf.where_v2(back > lo, back, tf.minimum(next_start(lo + 1, row_hi), hi))
    found = tf.stack([tf.boolean_mask(t, active) for t in (rows, lo, hi)], axis=1)
    return tf.where_v2(active, new_lo, lo), tf.concat([spans, found], 0)

  lo, spans = tf.while_loop(
    lambda lo, spans: tf.reduce_any(lo + capacity < row_hi),
    step,
    (row_lo, tf.zeros([0, 3], tf.int32)),
    shape_invariants=(row_lo.shape, tf.TensorShape([None, 3])),
    back_prop=False,
  )
  nonempty = row_hi > row_lo
  last = tf.stack([tf.boolean_mask(t, nonempty) for t in (rows, lo, row_hi)], axis=1)
  spans = tf.concat([spans, last], 0)
  # Text, then window order (a window of a text starts after the one before it).
  order = tf.argsort(spans[:, 0] * (num_tokens + 1) + spans[:, 1], stable=True)
  row, lo, hi = tf.unstack(tf.gather(spans, order), axis=1)
  return row, lo, hi, tf.equal(lo, tf.gather(row_lo, row)), tf.equal(hi, tf.gather(row_hi, row))


def windows(tokens, words, shapes, num_rows, max_seq_length, stride, cls_id, sep_id):
  """SubTokens -> Windows: [CLS] piece ids [SEP] rows padded with 0 (`featurizer._windows`),
  with each piece's word shape (`shapes`: [W] from `word_shapes`)."""
  row, lo, hi, first, last = window_spans(tokens, words, num_rows, max_seq_length - 2, 2 * stride)
  length = hi - lo + 2  # [K] with [CLS] and [SEP]
  width = tf.maximum(tf.reduce_max(tf.concat([length, [0]], 0)), 2)
  position = tf.range(width)[None, :]  # [1, T]
  token = lo[:, None] + position - 1  # [K, T]
  inside = (position >= 1) & (position < length[:, None] - 1)
  num_tokens = tf.shape(tokens.ids)[0]
  source = tf.where_v2(inside, token, num_tokens)  # [K, T], num_tokens off the sub-tokens
  piece = tf.gather(tf.concat([tokens.ids, [0]], 0), source)
  shape = tf.gather(tf.concat([tf.gather(shapes, tokens.word), [word_shape.NONE]], 0), source)
  input_ids = tf.where_v2(
    tf.equal(position, 0),
    cls_id,
    tf.where_v2(tf.equal(position, length[:, None] - 1), sep_id, piece),
  )
  input_mask = tf.cast(position < length[:, None], tf.int32)
  return Windows(row, lo, hi, first, last, input_ids * input_mask, input_mask, shape)


class LabelKinds(NamedTuple):
  """What each label id means to tag restoration, from id2label (`featurizer.word_tags`)."""

  prefix: np.ndarray  # [L] int32: OUTSIDE, BEGIN, INSIDE, CONTINUATION (X) or SPECIAL
  type: np.ndarray  # [L] int32 index into `types`, -1 for none
  types: list[str]


OUTSIDE, BEGIN, INSIDE, CONTINUATION, SPECIAL = range(5)


def label_kinds(id2label):
  """LabelKinds of a label list: B-/I- tags with their type, X, [CLS]/[SEP]; anything else
  (O, and tags the entity rules do not read, such as S- or E-) is OUTSIDE."""
  types = labels.entity_types(id2label)
  prefix, type_index = [], []
  for tag in id2label:
    if tag.startswith(("B-", "I-")):
      prefix.append(BEGIN if tag[0] == "B" else INSIDE)
      type_index.append(types.index(tag[2:]))
      continue
    prefix.append(
      {
        featurizer_lib.X: CONTINUATION,
        featurizer_lib.CLS: SPECIAL,
        featurizer_lib.SEP: SPECIAL,
      }.get(tag, OUTSIDE)
    )
    type_index.append(-1)
  return LabelKinds(np.array(prefix, np.int32), np.array(type_index, np.int32), types)


class WordReading(NamedTuple):
  """For each word, the window and position it is read from (`featurizer.word_tags`)."""

  window: tf.Tensor  # [W] int32
  position: tf.Tensor  # [W] int32


def read_positions(tokens, words, wins, max_seq_length):
  """Where each word is read: among the windows holding its first sub-token, the one where it
  lies farthest from a cut (a text's own ends are no cut); on a tie, the earlier window."""
  num_words = tf.shape(words.row)[0]
  width = tf.shape(wins.input_ids)[1]
  position = tf.range(width)[None, :]  # [1, T]
  length = wins.hi - wins.lo  # [K] sub-tokens without [CLS] and [SEP]
  inside = (position >= 1) & (position <= length[:, None])  # [K, T]
  token = tf.where_v2(inside, wins.lo[:, None] + position - 1, -1)  # [K, T], -1 outside
  padded_word = tf.concat([[-1], tokens.word], 0)  # index + 1: -1 reads as no word
  word = tf.gather(padded_word, token + 1)
  previous = tf.gather(padded_word, tf.maximum(token, 0))  # the sub-token before (-1 at 0)
  begins = inside & tf.not_equal(word, previous)
  left = tf.where_v2(wins.first[:, None], max_seq_length, position - 1)
  right = tf.where_v2(wins.last[:, None], max_seq_length, length[:, None] - position)
  score = tf.minimum(left, right)  # [K, T]
  candidates = tf.cast(tf.where(begins), tf.int32)  # [C, 2] (window, position)
  cand_word = tf.gather_nd(word, candidates)
  cand_score = tf.gather_nd(score, candidates)
  best = tf.math.unsorted_segment_max(cand_score, cand_word, num_words)
  is_best = tf.equal(cand_score, tf.gather(best, cand_word))
  # Candidates are in window order, so the smallest flat index is the earliest window.
  flat = candidates[:, 0] * width + candidates[:, 1]
  chosen = tf.math.unsorted_segment_min(
    tf.boolean_mask(flat, is_best), tf.boolean_mask(cand_word, is_best), num_words
  )
  return WordReading(chosen // width, chosen % width)


class Tags(NamedTuple):
  """Each word's restored tag: prefix OUTSIDE, BEGIN or INSIDE, and the entity type index."""

  prefix: tf.Tensor  # [W] int32
  type: tf.Tensor  # [W] int32


def word_tags(words, wins, reading, pred_label, unk_id, kinds):
  """The labels read for each word -> Tags, as `featurizer.word_tags(..., x_continues=True)`.

  X, [CLS] or [SEP] on a word start reads as O, except that an X continues the entity of the
  word before it (in the same text); a word spelt [UNK] never continues an entity (its X or I-
  reads as O).
  """
  label = tf.gather_nd(pred_label, tf.stack([reading.window, reading.position], 1))  # [W]
  piece = tf.gather_nd(wins.input_ids, tf.stack([reading.window, reading.position], 1))
  prefix = tf.gather(tf.constant(kinds.prefix), label)
  kind = tf.gather(tf.constant(kinds.type), label)
  unk = tf.equal(piece, unk_id)
  prefix = tf.where_v2(
    (unk & (tf.equal(prefix, CONTINUATION) | tf.equal(prefix, INSIDE))) | tf.equal(prefix, SPECIAL),
    OUTSIDE,
    prefix,
  )
  # An X takes the tag of the nearest word before it that is no X, in its own text: I- of that
  # word's type if it is in an entity, else O.
  num_words = tf.shape(prefix)[0]
  is_x = tf.equal(prefix, CONTINUATION)
  not_x = tf.cast(tf.where(~is_x)[:, 0], tf.int32)
  source = tf.gather(
    tf.concat([[-1], not_x], 0), tf.searchsorted(not_x, tf.range(num_words), side="right")
  )  # [W], -1 when none
  has_source = (source >= 0) & tf.equal(tf.gather(words.row, tf.maximum(source, 0)), words.row)
  source_prefix = tf.where_v2(has_source, tf.gather(prefix, tf.maximum(source, 0)), OUTSIDE)
  continues = tf.equal(source_prefix, BEGIN) | tf.equal(source_prefix, INSIDE)
  prefix = tf.where_v2(is_x, tf.where_v2(continues, INSIDE, OUTSIDE), prefix)
  kind = tf.where_v2(is_x, tf.gather(kind, tf.maximum(source, 0)), kind)
  return Tags(prefix, kind)


class Spans(NamedTuple):
  """The batch's entities in text order: first and last word of each."""

  first: tf.Tensor  # [E] int32
  last: tf.Tensor  # [E] int32


def entity_spans(chars, words, tags):
  """Tags -> Spans, as `featurizer.entities`: a B- or I- word opens an entity unless it is an
  I- of the type of the entity open on the word before it, with no line break between them."""
  in_entity = tf.equal(tags.prefix, BEGIN) | tf.equal(tags.prefix, INSIDE)  # [W]
  is_newline = tf.cast(tf.equal(chars.code_points, ord("\n")), tf.int32)
  newlines_before = tf.concat([[0], tf.cumsum(is_newline)], 0)  # [N + 1]
  line_break = tf.gather(newlines_before, words.start) > tf.gather(
    newlines_before, _previous(words.end, 0)
  )
  continues = (
    tf.equal(tags.prefix, INSIDE)
    & _previous(in_entity, False)
    & tf.equal(_previous(words.row, -1), words.row)
    & tf.equal(_previous(tags.type, -1), tags.type)
    & ~line_break
  )
  opens = in_entity & ~continues
  closes = in_entity & ~_next(continues, False)
  return Spans(tf.cast(tf.where(opens)[:, 0], tf.int32), tf.cast(tf.where(closes)[:, 0], tf.int32))


def span_scores(tokens, wins, reading, spans, head, alpha, beta, log_norm):
  """[E] float32: the CRF's probability that the sub-tokens of each entity carry the labels the
  best path gave them, in the window its first word is read from (up to that window's end).

  Exact, from the forward-backward scores: alpha at the first sub-token, the path's own scores
  between, beta at the last, over the partition function.
  """
  window = tf.gather(reading.window, spans.first)  # [E]
  first = tf.gather(reading.position, spans.first)
  last_token = tf.searchsorted(tokens.word, spans.last, side="right") - 1  # global sub-token
  last_token = tf.minimum(last_token, tf.gather(wins.hi, window) - 1)
  last = last_token - tf.gather(wins.lo, window) + 1  # position in the window
  path = head.pred_label  # [K, T]
  num_labels = tf.shape(head.transitions)[0]
  steps = tf.gather(tf.reshape(head.transitions, [-1]), _previous_column(path) * num_labels + path)
  unary = tf.gather(head.logits, path, batch_dims=2)  # [K, T]
  along = tf.cumsum(tf.concat([tf.zeros_like(unary[:, :1]), (steps + unary)[:, 1:]], 1), axis=1)

  def at(position):
    """[E, 2] (window, position) indices."""
    return tf.stack([window, position], 1)

  log_p = (
    tf.gather_nd(alpha, tf.stack([window, first, tf.gather_nd(path, at(first))], 1))
    + tf.gather_nd(along, at(last))
    - tf.gather_nd(along, at(first))
    + tf.gather_nd(beta, tf.stack([window, last, tf.gather_nd(path, at(last))], 1))
    - tf.gather(log_norm, window)
  )
  return tf.minimum(tf.exp(log_p), 1.0)


def _previous_column(values):
  """[K, T] -> values shifted one column right (column 0 repeats column 0; never read)."""
  return tf.concat([values[:, :1], values[:, :-1]], axis=1)


# Output padding: values no entity can have (documented in docs/TEXT_SIGNATURE.md).
PAD_TYPE, PAD_TEXT, PAD_OFFSET, PAD_SCORE = "", "", -1, -1.0


def _dense(values, row, rank, num_rows, width, pad):
  """Scatters per-entity values [E] into [B, width] rows, the rest `pad`."""
  shape = tf.stack([num_rows, width])
  base = tf.fill(shape, tf.constant(pad, values.dtype))
  return tf.tensor_scatter_nd_update(base, tf.stack([row, rank], 1), values)


def build(model_dir, texts, build_head):
  """Text [B] -> the text signature's outputs (a dict of tensors, names from model_base).

  `build_head(input_ids, input_mask, word_shape)` builds the model on the windows (sharing the
  variables of the ids signature) and returns its NerHead; `word_shape` is the windows' in-graph
  word shapes for a model that takes them, else None.
  """
  featurizer = model_dir.featurizer()
  tables = text_tables.build(featurizer._tokenizer)
  vocab = featurizer.vocab
  unk_id, cls_id, sep_id = (
    vocab[t] for t in (featurizer_lib.UNK, featurizer_lib.CLS, featurizer_lib.SEP)
  )
  num_rows = tf.shape(texts)[0]
  chars = decode(texts)
  words = basic_words(chars, tables)
  tokens = wordpiece(words, vocab_table(vocab), longest_piece(vocab), unk_id)
  shapes = word_shapes(chars, words, tables)
  wins = windows(
    tokens, words, shapes, num_rows, featurizer.max_seq_length, featurizer.stride, cls_id, sep_id
  )
  head = build_head(
    wins.input_ids, wins.input_mask, wins.word_shape if featurizer.word_shape else None
  )
  alpha, beta, log_norm = crf.crf_forward_backward(head.logits, head.lengths, head.transitions)
  reading = read_positions(tokens, words, wins, featurizer.max_seq_length)
  kinds = label_kinds(model_dir.id2label)
  tags = word_tags(words, wins, reading, head.pred_label, unk_id, kinds)
  spans = entity_spans(chars, words, tags)
  scores = span_scores(tokens, wins, reading, spans, head, alpha, beta, log_norm)
  row = tf.gather(words.row, spans.first)
  row_start = tf.gather(chars.row_starts, row)
  start = tf.gather(words.start, spans.first)
  end = tf.gather(words.end, spans.last)
  text = tf.strings.unicode_encode(
    tf.gather(chars.code_points, tf.ragged.range(start, end)), "UTF-8"
  )
  kind = tf.gather(tf.constant(kinds.types or [""], tf.string), tf.gather(tags.type, spans.first))
  counts = tf.math.unsorted_segment_sum(tf.ones_like(row), row, num_rows)  # [B]
  rank = tf.range(tf.shape(row)[0]) - tf.gather(tf.cumsum(counts, exclusive=True), row)
  width = tf.reduce_max(tf.concat([counts, [0]], 0))

  def dense(values, pad):
    """[E] -> [B, width], padded."""
    return _dense(values, row, rank, num_rows, width, pad)

  return {
    model_base.ENTITY_TYPE: dense(kind, PAD_TYPE),
    model_base.ENTITY_START: dense(start - row_start, PAD_OFFSET),
    model_base.ENTITY_END: dense(end - row_start, PAD_OFFSET),
    model_base.ENTITY_TEXT: dense(text, PAD_TEXT),
    model_base.ENTITY_SCORE: dense(scores, PAD_SCORE),
    model_base.NUM_ENTITIES: counts,
  }
