"""The shipped default model: small in git, names its backbone, and tags real text correctly."""

import json
from pathlib import Path

import pytest

from bert_ner import backbone, checkpoint
from bert_ner.featurizer import Featurizer

DEFAULT = Path(__file__).resolve().parents[1] / "models" / "default"


@pytest.fixture(scope="module")
def tagger():
  """predict_texts over the default model's inference graph (backbone converted on first use)."""
  import tensorflow.compat.v1 as tf

  from bert_ner import head

  model_dir = checkpoint.resolve(DEFAULT)
  featurizer = Featurizer(model_dir.vocab_path, model_dir.ner_config.do_lower_case,
                          model_dir.ner_config.max_seq_length, model_dir.id2label)
  graph = tf.Graph()
  with graph.as_default():
    ids = tf.placeholder(tf.int32, [None, None])
    mask = tf.placeholder(tf.int32, [None, None])
    pred = head.build_inference_graph(model_dir, ids, mask)
    sess = tf.Session(graph=graph)
    checkpoint.restore_model(sess, model_dir)
  yield lambda texts: featurizer.predict_texts(texts, lambda i, m: sess.run(pred, {ids: i,
                                                                                   mask: m}))
  sess.close()


def test_manifest_names_the_pinned_backbone_and_dev_scores():
  manifest = json.loads((DEFAULT / "manifest.json").read_text())
  assert manifest["backbone"] == backbone.DEFAULT_BACKBONE
  assert manifest["train_command"].startswith("python -m train")
  assert manifest["dev"]["f1"] >= 90.0
  assert set(manifest["dev"]["per_type"]) == {"LOC", "MISC", "ORG", "PER"}


def test_head_and_adapters_only_and_small():
  import tensorflow.compat.v1 as tf

  names = [name for name, _ in tf.train.list_variables(str(DEFAULT))]
  adapters = [n for n in names if n.startswith("bert/") and n.endswith(("/lora_a", "/lora_b"))]
  assert adapters and all(n.startswith(("rnn_layer/", "project/", "crf_loss/"))
                          for n in set(names) - set(adapters))
  size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
  assert size <= 10 * 1024 * 1024, f"models/default is {size} bytes, over 10 MB"


def test_tags_the_readme_sentence(tagger):
  [found] = tagger(["EU rejects German call"])
  assert [(e.text, e.type, e.start, e.end) for e in found] == [
      ("EU", "ORG", 0, 2), ("German", "MISC", 11, 17)]


def test_tags_people_places_and_organisations(tagger):
  found = tagger(["Angela Merkel met Microsoft executives in Paris on Tuesday.",
                  "Manchester United beat Arsenal 2-1 at Old Trafford."])
  assert {(e.text, e.type) for e in found[0]} >= {("Angela Merkel", "PER"), ("Microsoft", "ORG"),
                                                  ("Paris", "LOC")}
  assert {(e.text, e.type) for e in found[1]} >= {("Manchester United", "ORG"),
                                                  ("Arsenal", "ORG")}
