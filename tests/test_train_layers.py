"""One layer numbering in training and serving: for any `--feature_layers`, the features the
trainer computes (frozen: its feature cache; adapters: its graph over the cached input of the
first adapted layer) are the served graph's features for the same ids."""

import json

import numpy as np
import pytest

from bert_ner import backbone, checkpoint, head, labels, modeling
from bert_ner.train import features, graphs, trainer
from bert_ner.train.config import TrainConfig
from support.bert import write_random_bert

pytestmark = pytest.mark.slow  # builds and runs a BERT graph per case (about 30 s in all)

# [CLS] ... [SEP] rows of the MiniLM vocabulary, of different lengths (padded in one batch).
ROWS = [[101, 7592, 2088, 1010, 2003, 102], [101, 2023, 102], [101, 3000, 2001, 1037, 102]]
# Layers 0, 1, 2, or -3, -2, -1 counted from the top, of the shared tiny BERT's shape but with
# weights large enough that every layer changes its input a lot (its own 0.02 leaves its layers
# within 0.02 of each other, too close to tell apart at the float16 cache's precision).
LAYERS = {"num_hidden_layers": 3, "initializer_range": 0.5}
LAYER_CHOICES = [[0], [-1], [1], [-3, 2]]
TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def bert_dir(tiny_bert_dir, tmp_path_factory):
  """Google-format BERT dir: the tiny BERT's config with LAYERS, random weights, its vocab."""
  out_dir = tmp_path_factory.mktemp("layers_bert")
  tiny = json.loads((tiny_bert_dir / "bert_config.json").read_text(encoding="utf-8"))
  config = modeling.BertConfig.from_dict({**tiny, **LAYERS})
  return write_random_bert(out_dir, config, tiny_bert_dir / "vocab.txt")


def _files(bert_dir):
  """The BERT's config and checkpoint prefix."""
  return str(bert_dir / "bert_config.json"), str(bert_dir / backbone.CHECKPOINT_NAME)


@pytest.fixture(scope="module")
def served(bert_dir):
  """feature_layers -> the served graph's [B, T, F] features of ROWS, each computed once."""
  cache = {}

  def features_of(feature_layers):
    key = tuple(feature_layers)
    if key not in cache:
      cache[key] = _served_features(bert_dir, feature_layers)
    return cache[key]

  return features_of


def _served_features(bert_dir, feature_layers):
  """[B, T, F] features the served graph (`build_inference_head`) gives its head, for ROWS."""
  import tensorflow.compat.v1 as tf

  config_path, ckpt_path = _files(bert_dir)
  ner_config = checkpoint.NerConfig(head="dense", feature_layers=feature_layers)
  model_dir = checkpoint.ModelDir(
    config_path,
    str(bert_dir / "vocab.txt"),
    ner_config,
    labels.make_label_list(["PER"]),
    [ckpt_path],
  )
  with tf.Graph().as_default(), tf.Session() as sess:
    input_ids, input_mask = head.input_placeholders()
    logits = head.build_inference_head(model_dir, input_ids, input_mask).logits
    # The dense head at inference: logits = einsum(features, W) + b.
    einsum = logits.op.inputs[0].op
    assert einsum.type == "Einsum"
    served = einsum.inputs[0]
    sess.run(tf.global_variables_initializer())
    bert = [v for v in tf.global_variables() if v.op.name.startswith("bert/")]
    checkpoint.restore(sess, [ckpt_path], var_list=bert)
    ids = np.zeros((len(ROWS), max(map(len, ROWS))), np.int32)
    for i, row in enumerate(ROWS):
      ids[i, : len(row)] = row
    return sess.run(served, {input_ids: ids, input_mask: (ids > 0).astype(np.int32)})


def _assert_same(trained, served):
  """Per row: the trainer's [T_i, F] equal the served [T, F] on the row's positions, up to the
  float16 cache's rounding (carried through the adapted layers)."""
  for i, row in enumerate(ROWS):
    np.testing.assert_allclose(
      trained[i][: len(row)], served[i, : len(row)], rtol=2e-3, atol=TOLERANCE
    )


@pytest.mark.parametrize("feature_layers", LAYER_CHOICES)
def test_frozen_training_caches_the_served_features(bert_dir, served, tmp_path, feature_layers):
  config_path, ckpt_path = _files(bert_dir)
  source = features.LayerOutputs(tuple(feature_layers))
  cache = features.FeatureCache(str(tmp_path), config_path, ckpt_path, source)
  _assert_same(cache.features(ROWS, "test"), served(feature_layers))


@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("feature_layers", LAYER_CHOICES)
def test_adapter_training_computes_the_served_features(
  bert_dir, served, tmp_path, first, feature_layers
):
  """Fresh adapters add nothing (their B is zero), so the adapted graph over the cached input of
  layer `first` gives the served graph's features of the backbone."""
  import tensorflow.compat.v1 as tf

  config_path, ckpt_path = _files(bert_dir)
  bert_config = modeling.BertConfig.from_json_file(config_path)
  cache = features.FeatureCache(str(tmp_path), config_path, ckpt_path, features.LayerInput(first))
  states = cache.features(ROWS, "test")
  with tf.Graph().as_default(), tf.Session() as sess:
    values = tf.placeholder(tf.float32, [None, None, bert_config.hidden_size])
    lengths = tf.placeholder(tf.int32, [None])
    adapters = modeling.Adapters(rank=2, scale=2.0, first_layer=first)
    computed = graphs.adapted_features(
      bert_config, adapters, feature_layers, values, lengths, is_training=False
    )
    sess.run(tf.global_variables_initializer())
    base = [v for v in tf.global_variables() if not graphs.is_adapter_variable(v)]
    checkpoint.restore(sess, [ckpt_path], var_list=base)
    width = max(map(len, ROWS))
    padded = np.stack([np.pad(s, [(0, width - len(s)), (0, 0)]) for s in states]).astype(np.float32)
    trained = sess.run(computed, {values: padded, lengths: [len(r) for r in ROWS]})
  _assert_same(trained, served(feature_layers))


def test_the_layers_differ(bert_dir):
  """The checks above can tell the layers apart."""
  import tensorflow.compat.v1 as tf

  config_path, ckpt_path = _files(bert_dir)
  with tf.Graph().as_default(), tf.Session() as sess:
    input_ids = tf.placeholder(tf.int32, [None, None])
    bert = modeling.BertModel(
      modeling.BertConfig.from_json_file(config_path), False, input_ids, tf.ones_like(input_ids)
    )
    checkpoint.restore(sess, [ckpt_path])
    states = sess.run([bert.embedding_output, *bert.all_encoder_layers], {input_ids: ROWS[:1]})
  # Any two of embeddings and layer outputs differ by far more than `_assert_same` allows.
  gaps = [np.abs(a - b).mean() for i, a in enumerate(states) for b in states[i + 1 :]]
  assert min(gaps) > 10 * TOLERANCE, gaps


def test_training_refuses_a_layer_the_encoder_lacks(bert_dir, tmp_path):
  """Before the encoder runs: the served graph could not be built from such a checkpoint."""
  conll = tmp_path / "data.txt"
  conll.write_text("John B-PER\nlives O\nhere O\n", encoding="utf-8")
  config = TrainConfig(
    train=str(conll),
    dev=str(conll),
    out=str(tmp_path / "m"),
    backbone=str(bert_dir),
    feature_layers=[-1, 3],
    cache_dir=str(tmp_path / "cache"),
  )
  with pytest.raises(ValueError, match="--feature_layers has 3; the encoder has 3 layers"):
    trainer.run(config)
