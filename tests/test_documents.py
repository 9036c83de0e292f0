"""Document context: CoNLL documents, documents tagged as one word sequence, clients' --document."""

import numpy as np
import pytest

from bert_ner import backbone, conll
from bert_ner.clients import common
from bert_ner.featurizer import Entity, Featurizer
from e2e_support import LABELS

VOCAB = backbone.locate_default_backbone() / "vocab.txt"


def _tokens(featurizer, ids):
  """Vocab strings of token ids."""
  inverse = {i: t for t, i in featurizer.vocab.items()}
  return [inverse[i] for i in ids]


def test_read_documents_splits_at_docstart(tmp_path):
  path = tmp_path / "docs.txt"
  path.write_text(
    "-DOCSTART- O\n\nEU B-ORG\nsays O\n\nPeter B-PER\n\n-DOCSTART- O\n\n"
    "Paris B-LOC\n-DOCSTART- O\nRome B-LOC\n"
  )
  documents = conll.read_documents(path)
  assert [[s.words for s in d] for d in documents] == [
    [["EU", "says"], ["Peter"]],
    [["Paris"]],
    [["Rome"]],
  ]
  assert conll.read_conll(path) == [s for d in documents for s in d]
  plain = tmp_path / "plain.txt"
  plain.write_text("a O\n\nb O\n")
  assert len(conll.read_documents(plain)) == 1  # no -DOCSTART-: one document


def test_documents_are_windowed_across_sentences_and_split_back(conll_dev_path):
  featurizer = Featurizer(VOCAB, True, max_seq_length=32, id2label=LABELS)
  documents = conll.read_documents(conll_dev_path)[:6]
  gold = {}  # a fake model answering each document window's gold label ids
  for document in documents:
    words = [w for s in document for w in s.words]
    tags = [t for s in document for t in s.tags]
    for window, ids in featurizer.label_ids(words, tags):
      gold[tuple(window.input_ids)] = ids
  rows = []

  def run_fn(input_ids, input_mask):
    out = np.zeros_like(input_ids)
    for row, (ids, length) in enumerate(zip(input_ids, input_mask.sum(1))):
      rows.append(tuple(ids[:length].tolist()))
      out[row, :length] = gold[rows[-1]]
    return out

  tagged = featurizer.predict_documents([[s.words for s in d] for d in documents], run_fn)
  assert tagged == [[s.tags for s in d] for d in documents]
  # Windows run over sentence ends, up to the full width.
  assert max(len(r) for r in rows) == 32
  first = documents[0]
  ends = np.cumsum([len(s.words) for s in first])[:-1]  # index of each later sentence's start
  windows = featurizer.encode_words([w for s in first for w in s.words])
  starts = [[i for i in w.word_ids if i >= 0] for w in windows]  # the words each window begins
  assert any(s[0] < end <= s[-1] for s in starts if s for end in ends)


@pytest.fixture(scope="module")
def featurizer():
  return Featurizer(VOCAB, True, id2label=LABELS)


def test_text_documents_give_entities_per_line_with_line_offsets(featurizer):
  labels = {"eu": "B-ORG", "paris": "B-LOC", "new": "B-LOC", "york": "I-LOC"}

  def run_fn(input_ids, input_mask):
    return np.array(
      [
        [LABELS.index(labels.get(t, "O")) for t in _tokens(featurizer, row)]
        for row in input_ids.tolist()
      ],
      np.int32,
    )

  lines = ["EU rejects it.", "Talks in Paris and New York"]
  assert featurizer.predict_text_documents([lines, [], ["", "EU"]], run_fn) == [
    [
      [Entity("ORG", "EU", 0, 2)],
      [Entity("LOC", "Paris", 9, 14), Entity("LOC", "New York", 19, 27)],
    ],
    [],
    [[], [Entity("ORG", "EU", 0, 2)]],
  ]
  # A model that looks at single tokens tags lines alike alone or in a document.
  assert featurizer.predict_text_documents([lines], run_fn)[0] == featurizer.predict_texts(
    lines, run_fn
  )


def test_lines_of_a_document_see_each_other(featurizer):
  person = featurizer.vocab["john"]

  def run_fn(input_ids, input_mask):
    # Tags "spoke" B-PER only in a row that also holds "john": context decides.
    spoke = featurizer.vocab["spoke"]
    out = np.zeros_like(input_ids)
    for row, ids in enumerate(input_ids):
      if person in ids:
        out[row][ids == spoke] = LABELS.index("B-PER")
    return out

  lines = ["John arrived .", "She spoke ."]
  alone = featurizer.predict_texts(lines, run_fn)
  together = featurizer.predict_text_documents([lines], run_fn)[0]
  assert alone[1] == [] and together[1] == [Entity("PER", "spoke", 4, 9)]


class _FakeClient:
  """predict / predict_documents of a client, recording what it was asked."""

  def __init__(self):
    self.calls = []

  def predict(self, texts, batch_size):
    self.calls.append(("sentences", list(texts)))
    return [[Entity("ORG", t[:2], 0, 2)] if t.strip() else [] for t in texts]

  def predict_documents(self, documents, batch_size):
    self.calls.append(("documents", documents))
    return [[[Entity("LOC", t[:1], 0, 1)] for t in d] for d in documents]


def test_client_document_flag_groups_lines_between_blank_lines():
  client = _FakeClient()
  lines = ["EU a", "Bonn b", "", "  ", "Rome c"]
  result = common.tag_lines(client, lines, True, 64)
  assert client.calls == [("documents", [["EU a", "Bonn b"], ["Rome c"]])]
  assert [line for line, _ in result] == lines
  assert [[e.text for e in found] for _, found in result] == [["E"], ["B"], [], [], ["R"]]
  assert common.tag_lines(client, ["EU a"], False, 64) == [("EU a", [Entity("ORG", "EU", 0, 2)])]
  assert common.build_parser("x", "h:1").parse_args(["--document", "t"]).document
