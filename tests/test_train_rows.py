"""Training rows with document context (`make_examples` with context "centred")."""

import random

import pytest

from bert_ner import backbone, conll
from bert_ner import word_shape as ws
from bert_ner.featurizer import Featurizer
from bert_ner.labels import UNOBSERVED_LABEL
from bert_ner.train.data import centred_examples, document_words, make_examples
from e2e_support import LABELS

# Sub-tokens (MiniLM's uncased vocab): peter blackburn | brussels 1996 - 08 - 22 |
# eu rejects german call | the european commission
DOCUMENT = [
  conll.Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
  conll.Sentence(["BRUSSELS", "1996-08-22"], ["B-LOC", "O"]),
  conll.Sentence(["EU", "rejects", "German", "call"], ["B-ORG", "O", "B-MISC", "O"]),
  conll.Sentence(["The", "European", "Commission"], ["O", "B-ORG", "I-ORG"]),
]


@pytest.fixture(scope="module")
def vocab():
  return backbone.locate_default_backbone() / "vocab.txt"


def featurizer_of(vocab, max_seq_length):
  return Featurizer(vocab, True, max_seq_length, LABELS, word_shape=True)


def tokens(featurizer, example):
  inverse = {i: t for t, i in featurizer.vocab.items()}
  return " ".join(inverse[i] for i in example.input_ids[1:-1])


def test_each_sentence_is_centred_in_whole_words_of_its_document(vocab):
  featurizer = featurizer_of(vocab, 10)  # 8 sub-tokens between [CLS] and [SEP]
  rows = centred_examples(featurizer, [DOCUMENT], 1.0, random.Random(0))
  assert [tokens(featurizer, row) for row in rows] == [
    # At the document's start the room goes after the sentence.
    "peter blackburn brussels 1996 - 08 - 22",
    # 2 free sub-tokens: one word before, one after.
    "blackburn brussels 1996 - 08 - 22 eu",
    # The 2 sub-tokens of room before would cut "1996-08-22": the words after take it.
    "eu rejects german call the european commission",
    # At the document's end the room goes before it, as far as whole words allow.
    "eu rejects german call the european commission",
  ]
  labels = [LABELS[i] for i in rows[1].label_ids]
  assert labels == ["[CLS]", "I-PER", "B-LOC", "O", "X", "X", "X", "X", "B-ORG", "[SEP]"]


def test_rows_are_the_featurizers_rows_of_their_words_with_document_shapes(vocab, conll_train_path):
  """Differential: each row equals what the featurizer makes of the same words in one window,
  and its shapes are the whole document's (a context sentence cut short keeps its own flags)."""
  featurizer = featurizer_of(vocab, 128)
  documents = conll.read_documents(conll_train_path)[:40]
  rows = iter(centred_examples(featurizer, documents, 1.0, random.Random(0)))
  checked = 0
  for document in documents:
    if len(document) < 2:
      continue
    words, tags = document_words(document)
    pieces = [featurizer.encode_words([w])[0].input_ids[1:-1] for w in words]
    shapes = ws.document_shapes([s.words for s in document])
    first = 0
    for sentence in document:
      end = first + len(sentence.words)
      if sum(len(p) for p in pieces[first:end]) > 126:  # longer than a window: no row
        first = end
        continue
      example = next(rows)
      body = example.input_ids[1:-1]
      # The word span [lo, hi) the row holds: it starts at a word and holds the sentence.
      lo = next(
        lo
        for lo in range(first, -1, -1)
        if sum(pieces[lo:end], []) == body[: sum(len(p) for p in pieces[lo:end])]
        and _span_end(pieces, lo, len(body)) >= end
      )
      hi = _span_end(pieces, lo, len(body))
      [(window, label_ids)] = featurizer.label_ids(words[lo:hi], tags[lo:hi])
      assert window.input_ids == example.input_ids
      assert label_ids == example.label_ids
      per_token = [shapes[lo + w] for w in _token_words(window)]
      assert example.word_shape == [ws.NONE, *per_token, ws.NONE]
      # Full: the document ends there or its next word would not fit.
      assert hi == len(words) or len(body) + len(pieces[hi]) > 126
      checked += 1
      first = end
  assert next(rows, None) is None
  assert checked > 300


def _span_end(pieces, lo, length):
  """The first word index where `length` sub-tokens from word `lo` end (-1 if inside a word)."""
  total, w = 0, lo
  while total < length and w < len(pieces):
    total += len(pieces[w])
    w += 1
  return w if total == length else -1


def _token_words(window):
  """The word of each sub-token between [CLS] and [SEP] of a one-window input."""
  current, out = -1, []
  for w in window.word_ids[1:-1]:
    current = w if w >= 0 else current
    out.append(current)
  return out


def test_the_sampled_share_follows_the_fraction_and_the_seed(vocab, conll_train_path):
  featurizer = featurizer_of(vocab, 128)
  documents = conll.read_documents(conll_train_path)[:200]
  every = len(centred_examples(featurizer, documents, 1.0, random.Random(0)))
  some = centred_examples(featurizer, documents, 0.4, random.Random(7))
  assert 0.35 * every < len(some) < 0.45 * every
  assert some == centred_examples(featurizer, documents, 0.4, random.Random(7))
  assert some != centred_examples(featurizer, documents, 0.4, random.Random(8))
  assert centred_examples(featurizer, documents, 0.0, random.Random(0)) == []


def test_documents_of_one_sentence_and_words_without_sub_tokens(vocab):
  featurizer = featurizer_of(vocab, 10)
  assert centred_examples(featurizer, [DOCUMENT[:1]], 1.0, random.Random(0)) == []
  # "\u200b" (a format character) has no sub-token: the sentence after it still starts right.
  document = [
    conll.Sentence(["EU", "\u200b"], ["B-ORG", "O"]),
    conll.Sentence(["\u200b", "Peter"], ["O", "B-PER"]),
  ]
  rows = centred_examples(featurizer, [document], 1.0, random.Random(0))
  assert [tokens(featurizer, row) for row in rows] == ["eu peter", "eu peter"]


def test_centred_context_adds_its_rows_to_the_sentence_rows(vocab):
  featurizer = featurizer_of(vocab, 10)
  sentences = make_examples(featurizer, [DOCUMENT], "sentence")
  centred = make_examples(featurizer, [DOCUMENT], "centred", centred_fraction=1.0, seed=0)
  assert centred == sentences + centred_examples(featurizer, [DOCUMENT], 1.0, random.Random(0))


def test_sentence_only_rows_leave_the_context_tags_untaught(vocab):
  featurizer = featurizer_of(vocab, 10)
  labelled = centred_examples(featurizer, [DOCUMENT], 1.0, random.Random(0))
  rows = centred_examples(featurizer, [DOCUMENT], 1.0, random.Random(0), label_context=False)
  assert [(r.input_ids, r.word_shape) for r in rows] == [
    (r.input_ids, r.word_shape) for r in labelled
  ]
  names = [[LABELS[i] if i != UNOBSERVED_LABEL else "-" for i in r.label_ids] for r in rows]
  assert names == [
    # peter blackburn | brussels 1996 - 08 - 22
    ["[CLS]", "B-PER", "I-PER", "-", "-", "-", "-", "-", "-", "[SEP]"],
    # blackburn | brussels 1996 - 08 - 22 | eu
    ["[CLS]", "-", "B-LOC", "O", "X", "X", "X", "X", "-", "[SEP]"],
    # eu rejects german call | the european commission
    ["[CLS]", "B-ORG", "O", "B-MISC", "O", "-", "-", "-", "[SEP]"],
    # eu rejects german call | the european commission
    ["[CLS]", "-", "-", "-", "-", "O", "B-ORG", "I-ORG", "[SEP]"],
  ]


def test_sentence_only_rows_teach_exactly_their_sentences_labels(vocab, conll_train_path):
  """Differential: the taught span of each row is the sentence's own featurizer labels, and
  everything else in the row equals the fully labelled row."""
  featurizer = featurizer_of(vocab, 128)
  documents = conll.read_documents(conll_train_path)[:40]
  labelled = centred_examples(featurizer, documents, 1.0, random.Random(0))
  rows = centred_examples(featurizer, documents, 1.0, random.Random(0), label_context=False)
  sentences = [
    s for d in documents if len(d) > 1 for s in d if len(featurizer.encode_words(s.words)) == 1
  ]
  sentences = [s for s in sentences if len(featurizer.encode_words(s.words)[0].input_ids) > 2]
  assert len(rows) == len(labelled) == len(sentences) > 300
  for row, full, sentence in zip(rows, labelled, sentences):
    assert (row.input_ids, row.word_shape) == (full.input_ids, full.word_shape)
    taught = [i for i, label in enumerate(row.label_ids) if label != UNOBSERVED_LABEL]
    inner = taught[1:-1]
    assert inner == list(range(inner[0], inner[-1] + 1))  # one span, the sentence
    [(_, own)] = featurizer.label_ids(sentence.words, sentence.tags)
    assert [row.label_ids[i] for i in taught] == own
    assert all(row.label_ids[i] == full.label_ids[i] for i in taught)


def test_context_loss_sentence_makes_sentence_only_centred_rows(vocab):
  featurizer = featurizer_of(vocab, 10)
  sentences = make_examples(featurizer, [DOCUMENT], "sentence")
  centred = make_examples(
    featurizer, [DOCUMENT], "centred", centred_fraction=1.0, seed=0, context_loss="sentence"
  )
  assert centred == sentences + centred_examples(
    featurizer, [DOCUMENT], 1.0, random.Random(0), label_context=False
  )
