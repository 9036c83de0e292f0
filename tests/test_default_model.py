"""The shipped default model: small in git, names its backbone, and tags real text correctly."""

import itertools
import json
import re

import numpy as np
import pytest

from bert_ner import backbone, checkpoint
from support.export import DEFAULT_MODEL


@pytest.fixture(scope="module")
def tagger():
  """predict_texts over the default model's inference graph (backbone converted on first use)."""
  import tensorflow.compat.v1 as tf

  from bert_ner import head

  model_dir = checkpoint.resolve(DEFAULT_MODEL)
  featurizer = model_dir.featurizer()
  graph = tf.Graph()
  with graph.as_default():
    ids = tf.placeholder(tf.int32, [None, None])
    mask = tf.placeholder(tf.int32, [None, None])
    shapes = tf.placeholder(tf.int32, [None, None])
    pred = head.build_inference_graph(model_dir, ids, mask, word_shape=shapes)
    sess = tf.Session(graph=graph)
    checkpoint.restore_model(sess, model_dir)

  def run(i, m, s=None):
    """The model's run function, with the featurizer's word shapes when it takes them."""
    return sess.run(pred, {ids: i, mask: m, shapes: s if s is not None else np.zeros_like(i)})

  yield lambda texts: featurizer.predict_texts(texts, run)
  sess.close()


def test_manifest_names_the_pinned_backbone_and_dev_scores():
  manifest = json.loads((DEFAULT_MODEL / "manifest.json").read_text())
  assert manifest["backbone"] == backbone.DEFAULT_BACKBONE
  # The command as it ran when the model was trained; `python -m bert_ner.train` takes its flags.
  assert manifest["train_command"].startswith("python -m bert_ner.train ")
  assert manifest["dev"]["f1"] >= 90.0
  assert set(manifest["dev"]["per_type"]) == {"LOC", "MISC", "ORG", "PER"}


def test_head_and_adapters_only_and_small():
  import tensorflow.compat.v1 as tf

  names = [name for name, _ in tf.train.list_variables(str(DEFAULT_MODEL))]
  adapters = [n for n in names if n.startswith("bert/") and n.endswith(("/lora_a", "/lora_b"))]
  assert adapters and all(
    n.startswith(("rnn_layer/", "project/", "crf_loss/", "word_shape/"))
    for n in set(names) - set(adapters)
  )
  size = sum(p.stat().st_size for p in DEFAULT_MODEL.rglob("*") if p.is_file())
  assert size <= 10 * 1024 * 1024, f"models/default is {size} bytes, over 10 MB"


@pytest.mark.slow  # the tagger needs MiniLM
def test_tags_the_readme_sentence(tagger):
  [found] = tagger(["EU rejects German call"])
  assert [(e.text, e.type, e.start, e.end) for e in found] == [
    ("EU", "ORG", 0, 2),
    ("German", "MISC", 11, 17),
  ]


@pytest.mark.slow  # the tagger needs MiniLM
def test_tags_people_places_and_organisations(tagger):
  found = tagger(
    [
      "Angela Merkel met Microsoft executives in Paris on Tuesday.",
      "Manchester United beat Arsenal 2-1 at Old Trafford.",
    ]
  )
  assert {(e.text, e.type) for e in found[0]} >= {
    ("Angela Merkel", "PER"),
    ("Microsoft", "ORG"),
    ("Paris", "LOC"),
  }
  assert {(e.text, e.type) for e in found[1]} >= {("Manchester United", "ORG"), ("Arsenal", "ORG")}


# Real sentences whose entities the shipped model finds (test_tags_people_places_and_organisations).
KNOWN = {
  "Angela Merkel met Microsoft executives in Paris on Tuesday.": {
    ("Angela Merkel", "PER"),
    ("Microsoft", "ORG"),
    ("Paris", "LOC"),
  },
  "Manchester United beat Arsenal 2-1 at Old Trafford.": {
    ("Manchester United", "ORG"),
    ("Arsenal", "ORG"),
  },
}


@pytest.mark.slow
def test_a_long_text_keeps_the_entities_of_every_sentence(tagger):
  sentences = list(itertools.islice(itertools.cycle(KNOWN), 400))  # 3,600 words, ~60 windows
  text = " ".join(sentences)
  found = tagger([text])[0]
  start, missed = 0, []
  for sentence in sentences:
    inside = {
      (e.text, e.type) for e in found if start <= e.start and e.end <= start + len(sentence)
    }
    if not inside >= KNOWN[sentence]:
      missed.append((start, sorted(KNOWN[sentence] - inside)))
    start += len(sentence) + 1
  assert not missed, f"{len(missed)} of {len(sentences)} sentences lost entities: {missed[:5]}"


def dev_figures(manifest):
  """{mode: dev scores} the manifest states for the shipped model itself: `dev` (sentence mode),
  and a document-mode figure where the manifest has one (`dev.document`, `dev_document`...)."""
  dev = manifest["dev"]
  figures = {"sentence": dev} if "f1" in dev else {}
  stated = {
    **{f"dev.{k}": v for k, v in dev.items()},
    **{k: v for k, v in manifest.items() if k.startswith("dev")},
  }
  for key, value in stated.items():
    for mode in ("sentence", "document"):
      if mode in key and isinstance(value, dict) and "f1" in value:
        figures[mode] = value
  return figures


@pytest.fixture(scope="module")
def exported_default(tmp_path_factory):
  """models/default exported as version 1 of a fresh model base: what `make serve` serves."""
  from bert_ner.export import exporter

  base = tmp_path_factory.mktemp("default") / "bert_ner"
  exporter.export_model(str(DEFAULT_MODEL), str(base), log=lambda *_: None)
  return base


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["sentence", "document", "without_word_shape"])
def test_dev_scores_through_the_served_model_match_the_manifest(
  exported_default, conll_dev_path, capsys, mode
):
  """The manifest's dev figures, re-measured through the export; `without_word_shape` is what
  `result` gives a caller sending only input_ids and input_mask (sentence mode)."""
  from bert_ner.evaluation import __main__ as evaluation

  manifest = json.loads((DEFAULT_MODEL / "manifest.json").read_text())
  if mode == "without_word_shape":
    stated = manifest.get("dev_without_word_shape")
    if stated is None:
      pytest.skip("models/default takes no word shapes: `result` is its only ids path")
  else:
    stated = dev_figures(manifest).get(mode)
  if stated is None:
    assert mode == "document", "the manifest has no sentence-mode dev figure"
    pytest.skip("models/default/manifest.json states no document-mode dev figure")
  flags = {"document": ["--document"], "without_word_shape": ["--no_word_shape"]}.get(mode, [])
  status = evaluation.main(
    [
      "--data",
      str(conll_dev_path),
      "--transport",
      "local",
      "--model_base_path",
      str(exported_default),
      *flags,
    ]
  )
  out, err = capsys.readouterr()
  assert status == 0, err
  overall = re.fullmatch(r"overall precision (\S+) recall (\S+) f1 (\S+)", out.splitlines()[-1])
  measured = dict(zip(("precision", "recall", "f1"), map(float, overall.groups())))
  # The report prints two decimals: 0.01 allows its rounding and nothing else.
  assert all(abs(measured[k] - stated[k]) <= 0.01 for k in measured if k in stated), (
    measured,
    {k: stated.get(k) for k in measured},
  )
