"""CoNLL reading and writing: column layouts, -DOCSTART-, IOB1 -> IOB2, errors with file:line."""

import collections
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bert_ner import conll
from bert_ner.conll import ConllError, Sentence, iob1_to_iob2, read_conll


def _write(tmp_path, text, name="data.txt"):
  """A file holding text; returns its path."""
  path = tmp_path / name
  path.write_text(text, encoding="utf-8")
  return path


@pytest.mark.slow  # 1.9 s measured (reads train.txt)
def test_reads_conll2003_dev_and_train(conll_dev_path, conll_train_path):
  dev, train = read_conll(conll_dev_path), read_conll(conll_train_path)
  assert (len(dev), sum(len(s.words) for s in dev)) == (3250, 51362)
  assert (len(train), sum(len(s.words) for s in train)) == (14041, 203621)
  assert dev[0] == Sentence(
    [
      "CRICKET",
      "-",
      "LEICESTERSHIRE",
      "TAKE",
      "OVER",
      "AT",
      "TOP",
      "AFTER",
      "INNINGS",
      "VICTORY",
      ".",
    ],
    ["O", "O", "B-ORG", "O", "O", "O", "O", "O", "O", "O", "O"],
  )
  starts = collections.Counter(t[2:] for s in train for t in s.tags if t.startswith("B-"))
  assert starts == {"LOC": 7140, "PER": 6600, "ORG": 6321, "MISC": 3438}
  # The files are IOB2 already: conversion leaves them as they are.
  assert all(iob1_to_iob2(s.tags) == s.tags for s in dev)


@pytest.mark.slow  # runs pytest in a subprocess
@pytest.mark.parametrize("ci", ["true", ""])
def test_missing_data_fails_in_ci_and_skips_with_directions_elsewhere(tmp_path, ci):
  repo = Path(__file__).resolve().parents[1]
  env = dict(os.environ, CI=ci, CONLL2003_DIR=str(tmp_path / "absent"))
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "pytest",
      "-q",
      "-rs",
      "-p",
      "no:cacheprovider",
      "tests/test_conll.py::test_reads_conll2003_dev_and_train",
    ],
    cwd=repo,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  where = f"not found at {tmp_path / 'absent' / 'dev.txt'}: save the CoNLL-2003 English"
  if ci:
    assert result.returncode == 1 and "1 error" in result.stdout, result.stdout
    assert f"CI=true: CoNLL-2003 dev.txt {where}" in result.stdout
  else:
    assert result.returncode == 0 and "1 skipped" in result.stdout, result.stdout
    assert where in result.stdout and "or point CONLL2003_DIR at" in result.stdout


@pytest.mark.parametrize("columns", [2, 3, 4, 5])
def test_tag_is_the_last_column(tmp_path, columns):
  filler = " ".join(["NNP"] * (columns - 2))
  lines = [" ".join(filter(None, [w, filler, t])) for w, t in [("EU", "B-ORG"), ("rejects", "O")]]
  path = _write(tmp_path, "\n".join(lines) + "\n\n" + lines[1] + "\n")
  assert read_conll(path) == [
    Sentence(["EU", "rejects"], ["B-ORG", "O"]),
    Sentence(["rejects"], ["O"]),
  ]


def test_one_column_means_words_only(tmp_path):
  path = _write(tmp_path, "EU\nrejects\n\nGerman\n")
  assert read_conll(path) == [Sentence(["EU", "rejects"]), Sentence(["German"])]


def test_docstart_blank_runs_tabs_and_crlf(tmp_path):
  text = (
    "-DOCSTART- -X- -X- O\r\n\r\n\r\nEU\tNNP\tB-NP\tB-ORG\r\n  \r\n"
    "-DOCSTART- -X- -X- O\n\n\nPeter NNP B-NP B-PER  \nBlackburn NNP I-NP I-PER"
  )
  assert read_conll(_write(tmp_path, text)) == [
    Sentence(["EU"], ["B-ORG"]),
    Sentence(["Peter", "Blackburn"], ["B-PER", "I-PER"]),
  ]


def test_empty_file_has_no_sentences(tmp_path):
  assert read_conll(_write(tmp_path, "\n\n")) == []


def test_iob1_file_is_converted_to_iob2(tmp_path):
  path = _write(tmp_path, "a I-PER\nb I-PER\nc O\nd I-LOC\ne B-LOC\nf I-ORG\n")
  assert read_conll(path)[0].tags == ["B-PER", "I-PER", "O", "B-LOC", "B-LOC", "B-ORG"]


def test_iob1_to_iob2():
  assert iob1_to_iob2([]) == []
  assert iob1_to_iob2(["I-MISC", "I-PER", "B-PER", "I-PER", "O", "I-PER"]) == [
    "B-MISC",
    "B-PER",
    "B-PER",
    "I-PER",
    "O",
    "B-PER",
  ]
  iob2 = ["B-ORG", "I-ORG", "O", "B-LOC", "B-LOC", "I-LOC"]
  assert iob1_to_iob2(iob2) == iob2


def test_inconsistent_columns_name_the_line(tmp_path):
  path = _write(tmp_path, "EU NNP B-ORG\n\nrejects O\n")
  with pytest.raises(ConllError, match=f"{path}:3: 2 columns where the file has 3"):
    read_conll(path)


@pytest.mark.parametrize("tag", ["E-PER", "B_PER", "PER", "B-", "o"])
def test_bad_tags_name_the_line(tmp_path, tag):
  path = _write(tmp_path, f"EU B-ORG\nrejects {tag}\n")
  with pytest.raises(ConllError, match=f"{path}:2: last column '{tag}' is not an IOB tag"):
    read_conll(path)


def test_a_byte_order_mark_is_skipped(tmp_path):
  path = tmp_path / "bom.txt"
  path.write_bytes(b"\xef\xbb\xbf-DOCSTART- -X- O\n\nEU NNP B-ORG\n")
  assert conll.read_documents(path) == [[conll.Sentence(["EU"], ["B-ORG"])]]


def test_a_directory_or_a_file_not_utf8_is_named(tmp_path):
  with pytest.raises(conll.ConllError, match=f"^{tmp_path} is a directory"):
    conll.read_documents(tmp_path)
  path = tmp_path / "latin1.txt"
  path.write_bytes(b"EU B-ORG\ncaf\xe9 O\n")
  with pytest.raises(conll.ConllError, match=f"^{path}: not UTF-8"):
    conll.read_documents(path)
