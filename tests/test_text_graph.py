"""The in-graph tokenizer (bert_ner.text_graph) against the featurizer it copies.

Differential: for every string, the graph's words (offsets) and windows (sub-token ids, the
word each position begins and its word shape) must equal `Featurizer.encode_text`'s, on
CoNLL-2003 train and dev (sentences and whole documents, as text) and on a generated Unicode
corpus (tests/text_corpus.py).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from bert_ner import conll, text_graph, text_tables
from bert_ner.featurizer import CLS, SEP, UNK, Featurizer
from text_corpus import corpus

v1 = tf.compat.v1
pytestmark = pytest.mark.slow
VOCAB = "models/default/vocab.txt"
# Generated strings per `make test` run; `make verify-text` checks 100,000 (about 5 minutes more).
GENERATED = int(os.environ.get("TEXT_CORPUS_SIZE", "20000"))


class GraphTokenizer:
  """The text graph's tokenization steps in a session, read back per text."""

  def __init__(self, featurizer):
    self.featurizer = featurizer
    vocab = featurizer.vocab
    self.graph = tf.Graph()
    with self.graph.as_default():
      self.texts = v1.placeholder(tf.string, [None])
      chars = text_graph.decode(self.texts)
      tables = text_tables.build(featurizer._tokenizer)
      words = text_graph.basic_words(chars, tables)
      tokens = text_graph.wordpiece(
        words, text_graph.vocab_table(vocab), text_graph.longest_piece(vocab), vocab[UNK]
      )
      wins = text_graph.windows(
        tokens,
        words,
        text_graph.word_shapes(chars, words, tables),
        tf.shape(self.texts)[0],
        featurizer.max_seq_length,
        featurizer.stride,
        vocab[CLS],
        vocab[SEP],
      )
      self.fetches = dict(
        word_row=words.row,
        word_start=words.start,
        word_end=words.end,
        row_start=chars.row_starts,
        token_word=tokens.word,
        window_row=wins.row,
        lo=wins.lo,
        hi=wins.hi,
        input_ids=wins.input_ids,
        input_mask=wins.input_mask,
        word_shape=wins.word_shape,
      )
      self.session = v1.Session(graph=self.graph)
      self.session.run(v1.tables_initializer())

  def __call__(self, texts):
    """Per text: ([(start, end) of each word], [(input_ids, word_ids, word_shape) of each
    window])."""
    encoded = [t if isinstance(t, bytes) else t.encode("utf-8") for t in texts]
    out = self.session.run(self.fetches, {self.texts: encoded})
    token_word = out["token_word"]
    result = []
    for row in range(len(texts)):
      in_row = np.flatnonzero(out["word_row"] == row)
      first_word = in_row[0] if len(in_row) else 0
      offset = out["row_start"][row]
      words = [
        (int(s - offset), int(e - offset))
        for s, e in zip(out["word_start"][in_row], out["word_end"][in_row])
      ]
      windows = []
      for k in np.flatnonzero(out["window_row"] == row):
        length = int(out["input_mask"][k].sum())
        begins = [
          int(token_word[p] - first_word) if p == 0 or token_word[p - 1] != token_word[p] else -1
          for p in range(out["lo"][k], out["hi"][k])
        ]
        windows.append(
          (
            out["input_ids"][k][:length].tolist(),
            [-1, *begins, -1],
            out["word_shape"][k][:length].tolist(),
          )
        )
      result.append((words, windows))
    return result


def python_tokens(featurizer, text):
  """The featurizer's view of one text (bytes decode as Python's UTF-8 'replace' does)."""
  if isinstance(text, bytes):
    text = text.decode("utf-8", "replace")
  words, windows = featurizer.encode_text(text)
  return [(w.start, w.end) for w in words], [
    (w.input_ids, w.word_ids, w.word_shape) for w in windows
  ]


def disagreements(tokenizer, texts, batch=500):
  """The texts on which graph and featurizer differ."""
  bad = []
  for begin in range(0, len(texts), batch):
    chunk = texts[begin : begin + batch]
    for text, got in zip(chunk, tokenizer(chunk)):
      if got != python_tokens(tokenizer.featurizer, text):
        bad.append(text)
  return bad


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def tokenizer(request):
  return GraphTokenizer(Featurizer(VOCAB, do_lower_case=request.param))


@pytest.fixture(scope="module")
def short_windows():
  """Windows of 16 sub-tokens: every CoNLL document is cut many times."""
  return GraphTokenizer(Featurizer(VOCAB, do_lower_case=True, max_seq_length=16))


def conll_texts(name):
  """Every sentence and every document (lines joined by "\\n") of a CoNLL split, as text."""
  documents = conll.read_documents(conll.DEFAULT_DIR / name)
  sentences = [" ".join(s.words) for d in documents for s in d]
  return sentences + ["\n".join(" ".join(s.words) for s in d) for d in documents]


@pytest.mark.parametrize("split", ["train.txt", "dev.txt"])
def test_conll_agrees(tokenizer, short_windows, split):
  if not (conll.DEFAULT_DIR / split).is_file():
    pytest.skip(f"no {conll.DEFAULT_DIR / split}")
  texts = conll_texts(split)
  assert disagreements(tokenizer, texts) == []
  if tokenizer.featurizer.do_lower_case:  # once per split: short windows cut the same either way
    assert disagreements(short_windows, texts) == []


def test_generated_corpus_agrees(tokenizer):
  texts = corpus(GENERATED if tokenizer.featurizer.do_lower_case else GENERATED // 5)
  assert disagreements(tokenizer, texts) == []


def test_edge_cases_agree(tokenizer, short_windows):
  texts = [
    "",
    " \t\n ",
    "x",
    "\x00",
    "a" * 200,
    "a" * 201,
    "unaffable " * 30,
    "Müller's café, naïve 漢字 İstanbul",
    b"bad \xff\xfe bytes \xc3",
    "word" + "\u0301" * 5 + " next",
    "EU rejects\nGERMAN CALL\n\n  iPhone McDonald A I 1996-08-30 ,\nX",
    "ǅungla ǈ Σίσυφος ΣΊΣΥΦΟΣ ⅷ Ⅷ ² ٣ x\u0301Y\u200bZ",
    '(Reuters) U.S. officials "Germany," he said',
    "x\u0345 \u0345 Y ab\x0bCd \x1dEF\n\u0345\u0345 A",  # isspace but dropped inside a word
  ]
  assert disagreements(tokenizer, texts) == []
  assert disagreements(short_windows, texts) == []
