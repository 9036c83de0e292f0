"""Pure logic around the text signature: range tables, reading its outputs, lines, calibration."""

import numpy as np
import pytest

from bert_ner import metrics, text_tables
from bert_ner.clients.common import above, per_line
from bert_ner.featurizer import Entity, Word, entities, text_entities


def test_range_table_runs_and_lookup():
  values = np.zeros(text_tables.NUM_CODE_POINTS, np.int32)
  values[65:91] = 1
  values[0x4E00] = 2
  table = text_tables.RangeTable.from_values(values)
  assert table.starts.tolist() == [0, 65, 91, 0x4E00, 0x4E01]
  assert table.values.tolist() == [0, 1, 0, 2, 0]
  probe = [0, 64, 65, 90, 91, 0x4DFF, 0x4E00, 0x4E01, 0x10FFFF]
  assert table.lookup(probe).tolist() == values[probe].tolist()


def outputs(rows):
  """Text signature outputs for rows of (type, text, start, end, score), padded as the graph."""
  width = max((len(r) for r in rows), default=0)

  def column(index, pad, dtype):
    return np.array([[e[index] for e in r] + [pad] * (width - len(r)) for r in rows], dtype)

  return {
    "entity_type": column(0, b"", object),
    "entity_text": column(1, b"", object),
    "entity_start": column(2, -1, np.int32),
    "entity_end": column(3, -1, np.int32),
    "entity_score": column(4, -1.0, np.float32),
    "num_entities": np.array([len(r) for r in rows], np.int32),
  }


def test_text_entities_reads_rows_up_to_their_count():
  texts = ["EU rejects German call", "nothing here"]
  got = text_entities(
    texts, outputs([[(b"ORG", b"EU", 0, 2, 0.5), (b"MISC", b"German", 11, 17, 0.9)], []])
  )
  assert got == [[Entity("ORG", "EU", 0, 2), Entity("MISC", "German", 11, 17)], []]
  assert [e.score for e in got[0]] == [0.5, pytest.approx(0.9)]


@pytest.mark.parametrize(
  "rows,texts,error",
  [
    ([[(b"ORG", b"EU", 0, 2, 0.5)]], ["EU", "x"], "1 rows of entities for 2 texts"),
    ([[(b"ORG", b"EU", 0, 3, 0.5)]], ["EU"], r"at \[0:3\] does not match text 0"),
    ([[(b"ORG", b"EV", 0, 2, 0.5)]], ["EU"], "does not match"),
    ([[(b"ORG", b"", 1, 1, 0.5)]], ["EU"], "does not match"),
    ([[(b"ORG", b"EU", -1, 2, 0.5)]], ["EU"], "does not match"),
  ],
)
def test_text_entities_refuses_an_answer_that_does_not_fit(rows, texts, error):
  with pytest.raises(ValueError, match=error):
    text_entities(texts, outputs(rows))


def test_score_takes_no_part_in_equality():
  assert Entity("ORG", "EU", 0, 2, 0.1) == Entity("ORG", "EU", 0, 2)


def test_entities_end_at_a_line_break():
  text = "New\nYork"
  words = [Word("New", 0, 3), Word("York", 4, 8)]
  assert entities(text, words, ["B-LOC", "I-LOC"]) == [
    Entity("LOC", "New", 0, 3),
    Entity("LOC", "York", 4, 8),
  ]
  assert entities("New York", [Word("New", 0, 3), Word("York", 4, 8)], ["B-LOC", "I-LOC"]) == [
    Entity("LOC", "New York", 0, 8)
  ]


def test_per_line_offsets():
  lines = ["EU rejects", "German call", ""]
  found = [Entity("ORG", "EU", 0, 2), Entity("MISC", "German", 11, 17)]
  assert per_line(lines, found) == [
    [Entity("ORG", "EU", 0, 2)],
    [Entity("MISC", "German", 0, 6)],
    [],
  ]


def test_above_keeps_scores_at_or_over_the_threshold():
  found = [Entity("A", "a", 0, 1, 0.5), Entity("B", "b", 2, 3, 0.9), Entity("C", "c", 4, 5)]
  assert [e.type for e in above(found, 0.9)] == ["B"]
  assert above(found, None) == found


def test_calibration_bins_ece_and_thresholds():
  scores = [0.05, 0.55, 0.95, 0.95, 1.0]
  correct = [False, True, True, False, True]
  report = metrics.calibration(scores, correct, bins=10)
  assert [b[:3] for b in report["bins"]] == [(0.0, 0.1, 1), (0.5, 0.6, 1), (0.9, 1.0, 3)]
  expected = (0.05 + 0.45 + 3 * abs(2 / 3 - (0.95 + 0.95 + 1.0) / 3)) / 5
  assert report["ece"] == pytest.approx(expected)
  assert report["above"][0.5] == (pytest.approx(75.0), 4)
  assert report["above"][0.99] == (100.0, 1)
  assert "ECE" in metrics.format_calibration(report)
