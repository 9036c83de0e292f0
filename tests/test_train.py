"""Trainer: a tiny random BERT trained for real on a CoNLL sample, frozen and fine-tuned."""

import json
import subprocess
import sys

import numpy as np
import pytest

from bert_ner.metrics import format_scores, seqeval_scores
from bert_ner.train import features, loop, trainer
from bert_ner.train.__main__ import main, parse_args
from support.train import train_config

pytestmark = pytest.mark.slow  # trains a model


def _predict(model_path, words):
  """pred tags for one sentence through the checkpoint dir's inference graph."""
  import tensorflow.compat.v1 as tf

  from bert_ner import checkpoint, head

  model_dir = checkpoint.resolve(model_path)
  featurizer = model_dir.featurizer()
  with tf.Graph().as_default(), tf.Session() as sess:
    ids = tf.placeholder(tf.int32, [None, None])
    mask = tf.placeholder(tf.int32, [None, None])
    pred = head.build_inference_graph(model_dir, ids, mask)
    checkpoint.restore(sess, model_dir.init_checkpoints)
    return featurizer.predict_words([words], lambda i, m: sess.run(pred, {ids: i, mask: m}))[0]


def test_frozen_training_writes_macanv_layout_and_selects_on_dev(
  tiny_bert_dir, sample_files, tmp_path
):
  out = tmp_path / "model"
  report = trainer.run(train_config(tiny_bert_dir, sample_files, out, epochs=3))
  names = {p.name for p in out.iterdir()}
  step = report["history"][report["best_epoch"] - 1]
  assert {
    "checkpoint",
    "bert_config.json",
    "vocab.txt",
    "label2id.json",
    "ner_config.json",
    "train_report.json",
  } <= names
  assert any(n.startswith("model.ckpt-") and n.endswith(".index") for n in names)
  assert report["best_epoch"] == max(report["history"], key=lambda h: h["dev_f1"])["epoch"]
  assert step["epoch"] == report["best_epoch"]
  assert set(report["dev"]) >= {"precision", "recall", "f1", "per_type"}
  label2id = json.loads((out / "label2id.json").read_text())
  assert label2id["O"] == 0 and {"X", "[CLS]", "[SEP]", "B-PER"} <= set(label2id)
  # TensorBoard scalars were written.
  assert list((tmp_path / "model.tb").glob("events.out.tfevents.*"))
  # The saved dir loads and tags words through the one inference graph.
  tags = _predict(out, ["EU", "rejects", "German", "call"])
  assert len(tags) == 4 and all(t in label2id for t in tags)


def test_second_run_reads_the_feature_cache(tiny_bert_dir, sample_files, tmp_path, monkeypatch):
  config = train_config(tiny_bert_dir, sample_files, tmp_path / "a", epochs=1)
  first = trainer.run(config)
  cached = sorted(p.name for p in (tmp_path / "a.cache").iterdir())
  assert len(cached) == 2  # train rows and dev rows

  def no_encoder(*args):
    raise AssertionError("the encoder ran although its features are cached")

  monkeypatch.setattr(features.FeatureCache, "_encode", no_encoder)
  again = trainer.run(
    train_config(
      tiny_bert_dir, sample_files, tmp_path / "b", epochs=1, cache_dir=str(tmp_path / "a.cache")
    )
  )
  assert sorted(p.name for p in (tmp_path / "a.cache").iterdir()) == cached
  assert again["history"][0]["dev_f1"] == first["history"][0]["dev_f1"]


@pytest.fixture(scope="module")
def learnable(tiny_bert_dir, sample_files, tmp_path_factory):
  """A frozen run that can learn: it trains on its dev sentences, 6 epochs at a high rate.

  The tiny BERT is random but deterministic, so the head can learn its features by heart.
  """
  _, dev_path = sample_files
  out = tmp_path_factory.mktemp("learnable") / "model"
  config = train_config(
    tiny_bert_dir,
    (dev_path, dev_path),
    out,
    epochs=6,
    learning_rate=2e-2,
    dropout=0.0,
    batch_size=4,
  )
  return config


def test_frozen_training_lowers_the_loss_and_raises_dev_f1(learnable):
  history = trainer.run(learnable)["history"]
  assert history[-1]["loss"] < 0.5 * history[0]["loss"], history
  assert max(h["dev_f1_sentence"] for h in history) > history[0]["dev_f1_sentence"] + 5, history


def test_the_best_epoch_is_saved_not_the_last(learnable, monkeypatch):
  scores = iter(range(100, 0, -1))  # dev selection says: each epoch is worse than the one before
  monkeypatch.setattr(loop, "selection_f1", lambda _: next(scores))
  report = trainer.run(learnable)
  history = report["history"]
  first, last = history[0]["dev_f1_sentence"], history[-1]["dev_f1_sentence"]
  assert report["best_epoch"] == 1
  assert last > first + 5, history  # training changed the model after epoch 1
  # The saved checkpoint, rescored through the inference graph, is epoch 1's model.
  assert abs(report["dev"]["f1"] - first) < abs(report["dev"]["f1"] - last), report["dev"]


def test_fine_tune_changes_bert_weights(tiny_bert_dir, sample_files, tmp_path):
  import tensorflow.compat.v1 as tf

  out = tmp_path / "ft"
  trainer.run(
    train_config(
      tiny_bert_dir, sample_files, out, epochs=1, fine_tune=True, bert_learning_rate=1e-3
    )
  )
  name = "bert/encoder/layer_0/attention/self/query/kernel"
  saved = tf.train.load_variable(str(out), name)
  original = tf.train.load_variable(str(tiny_bert_dir / "bert_model.ckpt"), name)
  assert saved.shape == original.shape and not np.allclose(saved, original)


@pytest.mark.parametrize(
  "mode",
  [{}, {"adapter_rank": 2}, {"fine_tune": True, "bert_learning_rate": 1e-3}],
  ids=["frozen", "adapters", "fine-tune"],
)
def test_sentence_only_loss_trains_through_the_marginal_likelihood(
  tiny_bert_dir, sample_files, tmp_path, monkeypatch, mode
):
  """Every training mode hands `--context_loss sentence` to the head: the plain likelihood,
  which would read an untaught label as no tag at all, is never built."""
  from bert_ner import crf

  def plain_likelihood(*args):
    raise AssertionError("the plain CRF likelihood was built for rows with untaught labels")

  monkeypatch.setattr(crf, "crf_log_likelihood", plain_likelihood)
  config = train_config(
    tiny_bert_dir,
    sample_files,
    tmp_path / "m",
    epochs=1,
    context="centred",
    centred_fraction=1.0,
    context_loss="sentence",
    **mode,
  )
  report = trainer.run(config)
  assert report["context_loss"] == "sentence"
  assert np.isfinite(report["history"][0]["loss"])


def test_head_only_needs_the_pinned_backbone(tiny_bert_dir, sample_files, tmp_path):
  with pytest.raises(ValueError, match="head_only"):
    trainer.run(train_config(tiny_bert_dir, sample_files, tmp_path / "h", head_only=True))


def test_seqeval_scores_match_conlleval_counts():
  gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
  pred = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "O"]]
  scores = seqeval_scores(gold, pred)
  # 2 of 3 predicted entities right, 2 of 3 gold entities found.
  assert scores["precision"] == pytest.approx(200 / 3)
  assert scores["recall"] == pytest.approx(200 / 3)
  assert format_scores(scores).splitlines()[-1] == "overall precision 66.67 recall 66.67 f1 66.67"


def test_cli_help_and_bad_input(tmp_path, capsys):
  help_run = subprocess.run(
    [sys.executable, "-m", "bert_ner.train", "--help"], capture_output=True, text=True, timeout=60
  )
  assert help_run.returncode == 0 and "--fine_tune" in help_run.stdout
  with pytest.raises(SystemExit):
    parse_args(["--out", str(tmp_path / "x"), "--feature_layers", "a,b"])
  code = main(["--out", str(tmp_path / "x"), "--train", str(tmp_path / "missing.txt")])
  assert code == 2
  assert "missing.txt" in capsys.readouterr().err
