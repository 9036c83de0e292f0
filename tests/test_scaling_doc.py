"""docs/SCALING.md's generated blocks against bench/results.json, and how the bench fills them."""

import json

import pytest

from bert_ner.bench import peers, report
from conftest import REPO_ROOT

RESULTS_JSON = REPO_ROOT / "bench" / "results.json"
SCALING_DOC = REPO_ROOT / "docs" / "SCALING.md"


def test_scaling_doc_blocks_are_what_results_json_renders():
  figures = json.loads(RESULTS_JSON.read_text(encoding="utf-8"))
  text = SCALING_DOC.read_text(encoding="utf-8")
  rendered = report.replace_blocks(text, report.scaling_blocks(figures))
  assert text == rendered, (
    "docs/SCALING.md's bench blocks differ from bench/results.json: make bench"
  )


def test_results_json_is_the_results_md_run():
  figures = json.loads(RESULTS_JSON.read_text(encoding="utf-8"))
  md = (REPO_ROOT / "bench" / "results.md").read_text(encoding="utf-8")
  assert f"(fingerprint `{figures['fingerprint']}`)" in md and figures["date"] in md


def test_replace_blocks_sets_every_body_and_keeps_the_rest():
  text = "a\n<!-- bench:x -->\nold\n<!-- /bench -->\nb\n<!-- bench:y -->\n<!-- /bench -->\n"
  assert report.replace_blocks(text, {"x": "new\n", "y": "why\n"}) == (
    "a\n<!-- bench:x -->\nnew\n<!-- /bench -->\nb\n<!-- bench:y -->\nwhy\n<!-- /bench -->\n"
  )


def test_replace_blocks_names_a_missing_or_unknown_block():
  with pytest.raises(ValueError, match=r"missing \['y'\], unknown \['z'\]"):
    report.replace_blocks(
      "<!-- bench:x -->\n<!-- /bench -->\n<!-- bench:z -->\n<!-- /bench -->", {"x": "", "y": ""}
    )


def test_replicas_cover_the_target_with_one_down():
  assert report._replicas(500, 134.4) == 5  # ceil(500 / 134) + 1
  assert report._replicas(500, 125.0) == 5  # exactly 4 carry it, one more for the outage
  assert report._replicas(116, 0.2) == 117  # a rate shown as 0 counts as 1


def test_spacy_spans_map_to_conll_tags_on_the_words_they_overlap():
  words = ["EU", "rejects", "German", "call", "in", "New", "York", "on", "Monday"]
  text = " ".join(words)
  spans = [
    (0, 2, "ORG"),
    (text.index("German"), text.index("German") + 6, "NORP"),
    (text.index("New"), text.index("York") + 4, "GPE"),
    (text.index("Monday"), len(text), "DATE"),
  ]
  assert peers.conll_tags(words, spans) == [
    "B-ORG",
    "O",
    "B-MISC",
    "O",
    "O",
    "B-LOC",
    "I-LOC",
    "O",
    "O",
  ]


def test_a_span_inside_a_word_tags_the_word_and_the_first_span_keeps_it():
  words = ["Anglo-French", "talks"]
  # spaCy splits the hyphen: two spans inside one CoNLL word; the first one tags it.
  assert peers.conll_tags(words, [(0, 5, "NORP"), (6, 12, "PERSON")]) == ["B-MISC", "O"]


def test_token_offsets_index_the_space_joined_text():
  words = ["a", "bc", "def"]
  text = " ".join(words)
  assert [text[lo:hi] for lo, hi in peers.token_offsets(words)] == words


def test_missing_peer_python_skips_both_peers_with_the_reason(tmp_path):
  found = peers.measure(tmp_path / "none" / "python", [["a"]], [], 64, 10)
  assert set(found) == {"spacy", "onnx"}
  assert all("make bench" in peer["skipped"] for peer in found.values())


def test_only_a_run_into_bench_rewrites_scaling_doc(tmp_path):
  from bert_ner.bench.__main__ import SCALING_DOC as DEFAULT_DOC
  from bert_ner.bench.__main__ import parse_args

  assert parse_args([]).scaling_doc == DEFAULT_DOC
  assert parse_args(["--out", str(tmp_path)]).scaling_doc is None
  assert parse_args(["--scaling_doc", "none"]).scaling_doc is None


def test_sentences_below_one_is_refused(capsys):
  from bert_ner.bench.__main__ import parse_args

  with pytest.raises(SystemExit):
    parse_args(["--sentences", "0"])
  assert "--sentences must be >= 1" in capsys.readouterr().err
