"""Checkpoint dirs: a synthetic macanv dir resolves and predicts; save/resolve round trip;
head-only dirs; safe label pickles; clear errors."""

import json
import os
import pickle
import shutil

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from bert_ner import backbone, checkpoint, head, labels
from bert_ner.checkpoint import ModelDir, NerConfig

# macanv's label list, numbered from 1 (id 0 is padding).
MACANV_LABELS = [
  "O",
  "B-PER",
  "I-PER",
  "B-ORG",
  "I-ORG",
  "B-LOC",
  "I-LOC",
  "B-MISC",
  "I-MISC",
  "X",
  "[CLS]",
  "[SEP]",
]
LSTM, HIDDEN = 8, 6
INPUT_IDS = np.array([[101, 2023, 2003, 1037, 3231, 102], [101, 7592, 102, 0, 0, 0]], np.int32)
INPUT_MASK = (INPUT_IDS > 0).astype(np.int32)


def predict(model_dir):
  """Builds the inference graph in a fresh graph, restores it and tags INPUT_IDS."""
  with tf.Graph().as_default(), tf.Session() as sess:
    input_ids = tf.placeholder(tf.int32, [None, None])
    input_mask = tf.placeholder(tf.int32, [None, None])
    pred_label = head.build_inference_graph(model_dir, input_ids, input_mask)
    checkpoint.restore(sess, model_dir.init_checkpoints)
    return sess.run(pred_label, {input_ids: INPUT_IDS, input_mask: INPUT_MASK})


@pytest.fixture(scope="module")
def macanv_dir(tiny_bert_dir, tmp_path_factory):
  """A macanv-style dir (no ner_config.json, label2id.pkl, foreign absolute state path) plus the
  predictions its graph made before saving, and a head-only checkpoint of the same head."""
  out_dir = tmp_path_factory.mktemp("macanv")
  for name in ("bert_config.json", "vocab.txt"):
    shutil.copyfile(tiny_bert_dir / name, out_dir / name)
  with open(out_dir / "label2id.pkl", "wb") as f:
    pickle.dump({label: i + 1 for i, label in enumerate(MACANV_LABELS)}, f)
  model_dir = ModelDir(
    bert_config_path=str(tiny_bert_dir / "bert_config.json"),
    vocab_path=str(tiny_bert_dir / "vocab.txt"),
    ner_config=NerConfig(lstm_size=LSTM, hidden_size=HIDDEN),
    id2label=["O"] + MACANV_LABELS,
    init_checkpoints=[str(tiny_bert_dir / backbone.CHECKPOINT_NAME)],
  )
  with tf.Graph().as_default(), tf.Session() as sess:
    tf.set_random_seed(1)
    input_ids = tf.placeholder(tf.int32, [None, None])
    input_mask = tf.placeholder(tf.int32, [None, None])
    pred_label = head.build_inference_graph(model_dir, input_ids, input_mask)
    bert_vars = tf.global_variables("bert/")
    head_vars = [v for v in tf.global_variables() if v not in bert_vars]
    global_step = tf.train.get_or_create_global_step()  # macanv checkpoints carry extras
    checkpoint.restore(sess, model_dir.init_checkpoints, var_list=bert_vars)
    sess.run(tf.variables_initializer(head_vars + [global_step]))
    # Larger head weights than the initializers give, so predictions vary across labels.
    sess.run([v.assign(v * 8.0) for v in head_vars])
    expected = sess.run(pred_label, {input_ids: INPUT_IDS, input_mask: INPUT_MASK})
    tf.train.Saver().save(
      sess, str(out_dir / "model.ckpt-7"), write_meta_graph=False, write_state=False
    )
    head_only_dir = tmp_path_factory.mktemp("head_only")
    tf.train.Saver(head_vars).save(sess, str(head_only_dir / "model.ckpt-5"), write_meta_graph=True)
  (out_dir / "checkpoint").write_text('model_checkpoint_path: "/home/macan/output/model.ckpt-7"\n')
  return out_dir, expected, head_only_dir


@pytest.mark.slow  # 1.3 s measured
def test_macanv_dir_resolves_and_predicts(macanv_dir):
  out_dir, expected, _ = macanv_dir
  model_dir = checkpoint.resolve(out_dir)
  assert model_dir.ner_config == NerConfig(
    head="bilstm",
    lstm_size=LSTM,
    hidden_size=HIDDEN,
    feature_layers=[-1],
    do_lower_case=True,
    max_seq_length=64,  # the default 128, cut to the tiny model's 64 positions
  )
  assert model_dir.id2label == ["O"] + MACANV_LABELS
  assert model_dir.init_checkpoints == [str(out_dir / "model.ckpt-7")]
  assert model_dir.bert_config_path == str(out_dir / "bert_config.json")
  pred = predict(model_dir)
  assert pred.dtype == np.int32 and pred.shape == INPUT_IDS.shape
  assert not pred[1, 3:].any()
  assert len(set(pred[0].tolist())) > 1
  np.testing.assert_array_equal(pred, expected)


@pytest.mark.slow  # 1.7 s measured
def test_save_and_resolve_round_trip(macanv_dir, tmp_path):
  source = checkpoint.resolve(macanv_dir[0])
  out_dir = tmp_path / "ours"
  for step in (3, 4):  # the second save replaces the first dir
    with tf.Graph().as_default(), tf.Session() as sess:
      head.build_inference_graph(source, tf.zeros([1, 2], tf.int32), tf.ones([1, 2], tf.int32))
      checkpoint.restore(sess, source.init_checkpoints)
      prefix = checkpoint.save_checkpoint_dir(
        sess,
        out_dir,
        step,
        source.bert_config_path,
        source.vocab_path,
        source.id2label,
        source.ner_config,
      )
  assert prefix == str(out_dir / "model.ckpt-4")
  assert sorted(os.listdir(tmp_path)) == ["ours"]
  assert sorted(os.listdir(out_dir)) == [
    "bert_config.json",
    "checkpoint",
    "label2id.json",
    "model.ckpt-4.data-00000-of-00001",
    "model.ckpt-4.index",
    "ner_config.json",
    "vocab.txt",
  ]
  model_dir = checkpoint.resolve(out_dir)
  assert model_dir.ner_config == source.ner_config
  assert model_dir.id2label == source.id2label
  assert model_dir.init_checkpoints == [prefix]
  np.testing.assert_array_equal(predict(model_dir), macanv_dir[1])


def test_head_only_dir_takes_the_backbone_from_the_manifest(macanv_dir, tiny_bert_dir, monkeypatch):
  _, expected, head_only_dir = macanv_dir
  labels.save_label_map(head_only_dir, ["O"] + MACANV_LABELS)
  config = NerConfig(lstm_size=LSTM, hidden_size=HIDDEN, max_seq_length=64)
  config.to_json_file(head_only_dir / "ner_config.json")
  (head_only_dir / "manifest.json").write_text(json.dumps({"backbone": backbone.DEFAULT_BACKBONE}))
  calls = []
  monkeypatch.setattr(backbone, "locate_default_backbone", lambda: "hf-dir")
  monkeypatch.setattr(
    backbone,
    "ensure_converted",
    lambda hf_dir, sha256: calls.append((hf_dir, sha256)) or tiny_bert_dir,
  )
  model_dir = checkpoint.resolve(head_only_dir)
  assert calls == [("hf-dir", backbone.DEFAULT_BACKBONE["sha256"])]
  assert model_dir.init_checkpoints == [
    str(head_only_dir / "model.ckpt-5"),
    str(tiny_bert_dir / backbone.CHECKPOINT_NAME),
  ]
  assert model_dir.vocab_path == str(tiny_bert_dir / "vocab.txt")
  np.testing.assert_array_equal(predict(model_dir), expected)


def test_manifest_with_another_backbone_is_refused(tmp_path):
  other = dict(backbone.DEFAULT_BACKBONE, sha256="0" * 64)
  (tmp_path / "manifest.json").write_text(json.dumps({"backbone": other}))
  with pytest.raises(ValueError, match="backbone sha256 '0000"):
    checkpoint.resolve(tmp_path)


def test_restore_lists_missing_and_mismatched_variables(macanv_dir):
  model_dir = checkpoint.resolve(macanv_dir[0])
  model_dir.ner_config.lstm_size = 4
  with tf.Graph().as_default(), tf.Session() as sess:
    head.build_inference_graph(model_dir, tf.zeros([1, 2], tf.int32), tf.ones([1, 2], tf.int32))
    tf.get_variable("extra/unsaved", [2])
    with pytest.raises(ValueError) as error:
      checkpoint.restore(sess, model_dir.init_checkpoints)
  message = str(error.value)
  assert "extra/unsaved [2]: in no checkpoint" in message
  assert "rnn_layer/bidirectional_rnn/fw/lstm_cell/kernel: graph [36, 16] vs [40, 32]" in message
  assert "bert/" not in message


def test_label_count_must_match_the_crf(macanv_dir, tmp_path):
  out_dir = tmp_path / "dir"
  shutil.copytree(macanv_dir[0], out_dir)
  with open(out_dir / "label2id.pkl", "wb") as f:
    pickle.dump({"O": 1, "B-PER": 2}, f)
  with pytest.raises(ValueError, match=r"crf_loss/transitions is \[13, 13\] but the label map"):
    checkpoint.resolve(out_dir)


class _RunsCode:
  """Pickles into a call of os.system: what a malicious label2id.pkl would hold."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


def test_malicious_label_pickle_is_refused(tmp_path):
  marker = tmp_path / "pwned"
  with open(tmp_path / "label2id.pkl", "wb") as f:
    pickle.dump({"O": 1, "B-PER": _RunsCode(marker)}, f)
  with pytest.raises(ValueError, match="refusing to load posix.system"):
    labels.load_label_map(tmp_path)
  assert not marker.exists()


@pytest.mark.parametrize("data", [["O", "B-PER"], {"O": 1.0}, {"O": True}, {1: 1}, {}, b"x"])
def test_label_pickle_must_be_a_str_to_int_dict(tmp_path, data):
  with open(tmp_path / "label2id.pkl", "wb") as f:
    pickle.dump(data, f)
  with pytest.raises(ValueError, match="label2id.pkl"):
    labels.load_label_map(tmp_path)


def test_label_list_and_json_round_trip(tmp_path):
  id2label = labels.make_label_list(["PER", "LOC", "PER", "ORG", "MISC"])
  assert id2label == [
    "O",
    "B-LOC",
    "I-LOC",
    "B-MISC",
    "I-MISC",
    "B-ORG",
    "I-ORG",
    "B-PER",
    "I-PER",
    "X",
    "[CLS]",
    "[SEP]",
  ]
  labels.save_label_map(tmp_path, id2label)
  assert labels.load_label_map(tmp_path) == id2label
  labels.save_label_map(tmp_path, ["O", "B-PER", "O"])
  assert labels.load_label_map(tmp_path) == ["O", "B-PER", "O"]
  with pytest.raises(ValueError, match="'B-PER' appears twice"):
    labels.save_label_map(tmp_path, ["B-PER", "B-PER"])


def test_dense_head_and_cased_vocab_are_inferred(tmp_path):
  (tmp_path / "vocab.txt").write_text("[PAD]\n[UNK]\nthe\nThe\n##s\n")
  with tf.Graph().as_default(), tf.Session() as sess:
    head.build_ner_head(
      tf.zeros([1, 2, 4]), tf.ones([1], tf.int32), NerConfig(head="dense"), ["O"] * 3, False
    )
    sess.run(tf.global_variables_initializer())
    tf.train.Saver().save(sess, str(tmp_path / "model.ckpt-1"), write_meta_graph=False)
  config = checkpoint.infer_ner_config(str(tmp_path / "model.ckpt-1"), tmp_path / "vocab.txt")
  assert config.head == "dense" and not config.do_lower_case


@pytest.mark.parametrize(
  "files,match",
  [
    ([], "no checkpoint in"),
    (["checkpoint"], "model.ckpt-1.index missing"),
    (["checkpoint", "model.ckpt-1.index"], "bert_config.json missing"),
    (["checkpoint", "model.ckpt-1.index", "bert_config.json"], "vocab.txt missing"),
  ],
)
def test_incomplete_dirs_are_named(tmp_path, files, match):
  for name in files:
    (tmp_path / name).write_text('model_checkpoint_path: "model.ckpt-1"\n')
  with pytest.raises(FileNotFoundError, match=match):
    checkpoint.resolve(tmp_path)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    checkpoint.resolve(tmp_path / "absent")
