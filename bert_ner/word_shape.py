"""Word shape ids: the case signal an uncased encoder loses, as a small id per word (stdlib only).

The model's optional `word_shape` input ([B, T] int32, beside `input_ids`) carries one id per
sub-token: the id of the word the sub-token belongs to (first piece and continuations alike), 0
for [CLS], [SEP], padding and everywhere when the input is not fed ("no information").

A word's id, from its ORIGINAL characters (Python's per-character str predicates):

  base  1 lower        some lower-case letter, no upper-case one
        2 Capitalized  first character upper-case, no upper-case one after it
        3 ALLCAPS      upper-case, no lower-case (and not 2: `A`, `I` are Capitalized)
        4 mixed        upper- and lower-case (and not 2: `McDonald`, `iPhone`)
        5 digits       no letter with case, a digit
        6 other        punctuation, symbols, caseless scripts (CJK), empty
  id = base + 6 * (first word of its sentence) + 12 * (its sentence is all caps)   (1..24)

A sentence is all caps when none of its words' characters is lower-case and one is upper-case.
"Sentence" is a CoNLL sentence for CoNLL input (each sentence of a document keeps its own flags)
and one line of free text (split at "\\n"), whose words are shaped as CoNLL tokens (`text_shapes`).

This is the reference the in-graph text tokenizer reproduces: change nothing here without it.
"""

from collections.abc import Iterable, Sequence

NONE = 0  # no information: [CLS], [SEP], padding, input not fed
LOWER, CAPITALIZED, ALLCAPS, MIXED, DIGITS, OTHER = 1, 2, 3, 4, 5, 6
NUM_BASES = 6
FIRST_WORD = NUM_BASES  # added to the first word of a sentence
CAPS_SENTENCE = 2 * NUM_BASES  # added to every word of an all-caps sentence
NUM_IDS = 4 * NUM_BASES + 1  # 0..24: the embedding's rows


def base_shape(word: str) -> int:
  """The shape class of one word, 1..6 (see the module doc)."""
  has_upper = any(c.isupper() for c in word)
  has_lower = any(c.islower() for c in word)
  has_digit = any(c.isdigit() for c in word)
  if has_lower and not has_upper:
    return LOWER
  if word and word[0].isupper() and not any(c.isupper() for c in word[1:]):
    return CAPITALIZED
  if has_upper and not has_lower:
    return ALLCAPS
  if has_upper and has_lower:
    return MIXED
  if has_digit:
    return DIGITS
  return OTHER


def is_all_caps(words: Iterable[str]) -> bool:
  """True when no character of the words is lower-case and at least one is upper-case."""
  has_upper = False
  for word in words:
    for c in word:
      if c.islower():
        return False
      has_upper = has_upper or c.isupper()
  return has_upper


def sentence_shapes(words: Sequence[str]) -> list[int]:
  """The shape id (1..24) of each word of one sentence."""
  caps = CAPS_SENTENCE if is_all_caps(words) else 0
  return [base_shape(w) + (FIRST_WORD if i == 0 else 0) + caps for i, w in enumerate(words)]


def document_shapes(sentences: Iterable[Sequence[str]]) -> list[int]:
  """Shape ids of the words of consecutive sentences, flattened (each sentence its own flags)."""
  return [shape for sentence in sentences for shape in sentence_shapes(sentence)]


def split_lengths(items: Sequence[str], lengths: Iterable[int] | None) -> list[Sequence[str]]:
  """Consecutive parts of `items` of the given lengths (None: all of it as one part); the
  lengths must add up to len(items)."""
  if lengths is None:
    return [items]
  parts, begin = [], 0
  for length in lengths:
    if length < 0:
      raise ValueError(f"negative sentence length {length}")
    parts.append(items[begin : begin + length])
    begin += length
  if begin != len(items):
    raise ValueError(f"sentence lengths add up to {begin}, but there are {len(items)} words")
  return parts


def is_core(char: str) -> bool:
  """A character that decides a token's shape: a cased letter or a digit."""
  return char.isupper() or char.islower() or char.isdigit()


def text_shapes(text: str, spans: Sequence[tuple[int, int]]) -> list[int]:
  """Shape ids (1..24) of free-text words given as [start, end) offsets into `text`, in order.

  The model learned shapes of CoNLL tokens: whitespace-separated, punctuation split off. The
  basic tokenizer cuts free text finer ("U.S." -> "U" "." "S" ".") and leaves punctuation attached
  to its token ("(Reuters)"). So words are grouped into tokens (a word joins the one before it
  when nothing lies between them: the tokenizer's words of one whitespace-separated token touch),
  and a word is shaped by its token stripped of leading and trailing characters that are not
  `is_core` (the token's core); a word wholly outside the core is OTHER. Each line is a sentence:
  the words of its first token are its first word, and it is all caps when its words are.

  For example "(Reuters) U.S. officials" -> "(" OTHER+first, "Reuters" Capitalized+first,
  ")" OTHER+first, "U" "." "S" ALLCAPS, the last "." OTHER, "officials" lower.
  """
  tokens: list[int] = []  # token index of each word
  for i, (start, _) in enumerate(spans):
    tokens.append(tokens[-1] + (start != spans[i - 1][1]) if i else 0)
  token_spans: dict[int, tuple[int, int]] = {}
  for token, (start, end) in zip(tokens, spans):
    token_spans[token] = (token_spans.get(token, (start, end))[0], end)
  cores = {token: _core(text, *span) for token, span in token_spans.items()}
  shapes: list[int] = []
  line: list[int] = []  # word indices of the current line
  line_end = -1
  for i, (start, _) in enumerate([*spans, (len(text) + 1, 0)]):
    if start > line_end:  # the line before is complete
      caps = CAPS_SENTENCE if is_all_caps(text[a:b] for a, b in (spans[j] for j in line)) else 0
      for j in line:
        core_start, core_end, core_base = cores[tokens[j]]
        base = core_base if spans[j][0] < core_end and spans[j][1] > core_start else OTHER
        shapes.append(base + (FIRST_WORD if tokens[j] == tokens[line[0]] else 0) + caps)
      line = []
      found = text.find("\n", start)
      line_end = len(text) if found < 0 else found
    line.append(i)
  return shapes


def _core(text: str, start: int, end: int) -> tuple[int, int, int]:
  """(start, end, base shape) of a token's core; an empty span at `end` when it has none."""
  core = [j for j in range(start, end) if is_core(text[j])]
  if not core:
    return end, end, OTHER
  return core[0], core[-1] + 1, base_shape(text[core[0] : core[-1] + 1])
