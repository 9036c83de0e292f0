"""LoRA adapters: the merged kernels reproduce the adapter graph; training, export and merge."""

import numpy as np
import pytest

from bert_ner import checkpoint, modeling
from bert_ner.train import trainer
from support.train import train_config

pytestmark = pytest.mark.slow  # trains and exports

IDS = np.array([[101, 7327, 19164, 2446, 2655, 102], [101, 2446, 102, 0, 0, 0]], np.int32)


def _encoder_layers(tiny_bert_dir, checkpoint_path, adapters=None, merge_config=None):
  """All encoder layers' outputs on IDS: the graph with `adapters` as variables, or without
  them and with `merge_config`'s adapters merged from the checkpoint."""
  import tensorflow.compat.v1 as tf

  config = modeling.BertConfig.from_json_file(tiny_bert_dir / "bert_config.json")
  with tf.Graph().as_default(), tf.Session() as sess:
    ids = tf.constant(IDS)
    model = modeling.BertModel(config, False, ids, tf.cast(ids > 0, tf.int32), adapters=adapters)
    checkpoint.restore(sess, [str(checkpoint_path)])
    merged = []
    if merge_config is not None:
      merged = checkpoint.merge_adapters(sess, [str(checkpoint_path)], merge_config)
    return sess.run(model.all_encoder_layers), merged


def test_merged_kernels_reproduce_the_adapter_graph(tiny_bert_dir, tmp_path):
  import tensorflow.compat.v1 as tf

  config = modeling.BertConfig.from_json_file(tiny_bert_dir / "bert_config.json")
  ner_config = checkpoint.NerConfig(adapter_rank=2, adapter_alpha=5.0, adapter_first_layer=1)
  adapters = ner_config.adapters()
  assert adapters == modeling.Adapters(2, 2.5, 1)
  with tf.Graph().as_default(), tf.Session() as sess:
    ids = tf.placeholder(tf.int32, [None, None])
    modeling.BertModel(config, False, ids, tf.ones_like(ids), adapters=adapters)
    sess.run(tf.global_variables_initializer())
    base = [v for v in tf.global_variables() if not v.op.name.endswith(("lora_a", "lora_b"))]
    checkpoint.restore(sess, [str(tiny_bert_dir / "bert_model.ckpt")], var_list=base)
    ups = [v for v in tf.global_variables() if v.op.name.endswith("lora_b")]
    # Trained adapters are non-zero; fresh ones (B = 0) would hide a wrong merge.
    for var in ups:
      var.load(np.random.RandomState(0).normal(0, 0.5, var.shape.as_list()), sess)
    tf.train.Saver().save(sess, str(tmp_path / "adapted"), write_meta_graph=False)
  assert sorted(v.op.name.split("/")[2] for v in ups) == ["layer_1"] * 6

  adapted, _ = _encoder_layers(tiny_bert_dir, tmp_path / "adapted", adapters=adapters)
  merged, names = _encoder_layers(tiny_bert_dir, tmp_path / "adapted", merge_config=ner_config)
  plain, _ = _encoder_layers(tiny_bert_dir, tiny_bert_dir / "bert_model.ckpt")
  assert sorted(names) == sorted(v.op.name[: -len("lora_b")] + "kernel" for v in ups)
  np.testing.assert_allclose(merged[-1], adapted[-1], atol=1e-5)
  np.testing.assert_array_equal(merged[0], plain[0])  # layer 0 has no adapters
  assert np.abs(adapted[-1] - plain[-1]).max() > 1e-2  # the adapters do change layer 1


def test_adapters_without_rank_in_config_fail_clearly(tiny_bert_dir, tmp_path):
  test_merged_kernels_reproduce_the_adapter_graph(tiny_bert_dir, tmp_path)
  with pytest.raises(ValueError, match="adapter_rank"):
    _encoder_layers(tiny_bert_dir, tmp_path / "adapted", merge_config=checkpoint.NerConfig())


def test_adapter_training_keeps_bert_frozen_and_exports_merged(
  tiny_bert_dir, sample_files, tmp_path, capsys
):
  import tensorflow.compat.v1 as tf

  from bert_ner.export import exporter, merge

  out = tmp_path / "adapters"
  report = trainer.run(
    train_config(
      tiny_bert_dir,
      sample_files,
      out,
      epochs=2,
      adapter_rank=2,
      adapter_alpha=4.0,
      adapter_first_layer=1,
      adapter_learning_rate=1e-2,
      context="mixed",
    )
  )
  assert report["mode"] == "adapters" and set(report) >= {"dev", "dev_document"}
  assert report["merge_check"]["words"] > 0 and report["merge_check"]["differing"] == 0
  saved = dict(tf.train.list_variables(str(out)))
  lora = sorted(name for name in saved if name.endswith(("lora_a", "lora_b")))
  assert len(lora) == 12 and all("/layer_1/" in name for name in lora)
  kernel = "bert/encoder/layer_1/attention/self/query/kernel"
  original = tf.train.load_variable(str(tiny_bert_dir / "bert_model.ckpt"), kernel)
  np.testing.assert_array_equal(tf.train.load_variable(str(out), kernel), original)
  down = tf.train.load_variable(str(out), kernel[: -len("kernel")] + "lora_a")
  up = tf.train.load_variable(str(out), kernel[: -len("kernel")] + "lora_b")
  assert np.abs(up).max() > 0  # trained

  # The merged checkpoint dir: Google's and macanv's names only, kernel = W + alpha/r A B.
  assert merge.main(["--checkpoint", str(out), "--out", str(tmp_path / "merged")]) == 0
  merged = dict(tf.train.list_variables(str(tmp_path / "merged")))
  assert set(merged) == set(saved) - set(lora)
  np.testing.assert_allclose(
    tf.train.load_variable(str(tmp_path / "merged"), kernel), original + 2.0 * down @ up, atol=1e-6
  )
  assert checkpoint.resolve(tmp_path / "merged").ner_config.adapter_rank == 0

  # Both export to the same served model: the exporter merges, and verifies itself.
  kernels = []
  for source in (out, tmp_path / "merged"):
    version = exporter.export_model(str(source), tmp_path / "models", log=lambda m: None)
    variables = str(version / "variables/variables")
    assert not any("lora" in name for name, _ in tf.train.list_variables(variables))
    kernels.append(tf.train.load_variable(variables, kernel))
  np.testing.assert_allclose(kernels[0], kernels[1], atol=1e-6)
  capsys.readouterr()
  assert merge.main(["--checkpoint", str(tmp_path / "absent"), "--out", str(tmp_path / "x")]) == 2
  assert "absent" in capsys.readouterr().err
