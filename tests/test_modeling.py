"""BERT graph: Google variable names, dynamic batch/time, masking, dropout and config I/O."""

import json
import math

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from bert_ner import modeling


def google_variables(config):
  """google-research/bert's variable names and shapes for `config`, written out independently."""
  hidden, inner = config.hidden_size, config.intermediate_size
  variables = {
    "bert/embeddings/word_embeddings": [config.vocab_size, hidden],
    "bert/embeddings/token_type_embeddings": [config.type_vocab_size, hidden],
    "bert/embeddings/position_embeddings": [config.max_position_embeddings, hidden],
    "bert/embeddings/LayerNorm/gamma": [hidden],
    "bert/embeddings/LayerNorm/beta": [hidden],
    "bert/pooler/dense/kernel": [hidden, hidden],
    "bert/pooler/dense/bias": [hidden],
  }
  for layer in range(config.num_hidden_layers):
    prefix = "bert/encoder/layer_%d/" % layer
    for dense, shape in [
      ("attention/self/query", [hidden, hidden]),
      ("attention/self/key", [hidden, hidden]),
      ("attention/self/value", [hidden, hidden]),
      ("attention/output/dense", [hidden, hidden]),
      ("intermediate/dense", [hidden, inner]),
      ("output/dense", [inner, hidden]),
    ]:
      variables[prefix + dense + "/kernel"] = shape
      variables[prefix + dense + "/bias"] = shape[1:]
    for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
      variables[prefix + norm + "/gamma"] = [hidden]
      variables[prefix + norm + "/beta"] = [hidden]
  return variables


def run_bert(bert_dir, input_ids, input_mask, token_type_ids=None):
  """Restores `bert_dir`'s checkpoint into a fresh inference graph and runs every output."""
  config = modeling.BertConfig.from_json_file(bert_dir / "bert_config.json")
  with tf.Graph().as_default():
    ids = tf.placeholder(tf.int32, [None, None])
    mask = tf.placeholder(tf.int32, [None, None])
    feed = {ids: input_ids, mask: input_mask}
    types = None
    if token_type_ids is not None:
      types = tf.placeholder(tf.int32, [None, None])
      feed[types] = token_type_ids
    model = modeling.BertModel(config, False, ids, mask, token_type_ids=types)
    with tf.Session() as sess:
      tf.train.Saver().restore(sess, str(bert_dir / "bert_model.ckpt"))
      return sess.run(
        {
          "embedding_output": model.embedding_output,
          "all_encoder_layers": model.all_encoder_layers,
          "sequence_output": model.sequence_output,
          "pooled_output": model.pooled_output,
        },
        feed,
      )


def random_ids(rng, batch_size, seq_length):
  """Random word-piece ids [B, T] from the ordinary (non-special) part of the vocab."""
  return rng.integers(1000, 30000, size=(batch_size, seq_length)).astype(np.int32)


def test_variable_names_and_shapes_match_google(tiny_bert_dir):
  config = modeling.BertConfig.from_json_file(tiny_bert_dir / "bert_config.json")
  saved = dict(tf.train.list_variables(str(tiny_bert_dir / "bert_model.ckpt")))
  assert saved == google_variables(config)


@pytest.mark.slow  # 2.6 s measured
def test_graph_variables_match_google_for_a_base_config():
  config = modeling.BertConfig(vocab_size=28996)  # cased_L-12_H-768_A-12
  with tf.Graph().as_default():
    input_ids = tf.placeholder(tf.int32, [None, None])
    modeling.BertModel(config, True, input_ids, tf.ones_like(input_ids))
    built = {var.op.name: var.shape.as_list() for var in tf.global_variables()}
  assert built == google_variables(config)


def test_outputs_have_dynamic_batch_and_time(tiny_bert_dir):
  config = modeling.BertConfig.from_json_file(tiny_bert_dir / "bert_config.json")
  rng = np.random.default_rng(0)
  with tf.Graph().as_default():
    ids = tf.placeholder(tf.int32, [None, None])
    mask = tf.placeholder(tf.int32, [None, None])
    model = modeling.BertModel(config, False, ids, mask)
    assert model.sequence_output.shape.as_list() == [None, None, 32]
    assert model.pooled_output.shape.as_list() == [None, 32]
    with tf.Session() as sess:
      tf.train.Saver().restore(sess, str(tiny_bert_dir / "bert_model.ckpt"))
      for batch_size, seq_length in [(1, 3), (3, 11), (2, 64)]:
        input_ids = random_ids(rng, batch_size, seq_length)
        embedding, layers, sequence, pooled = sess.run(
          [
            model.embedding_output,
            model.all_encoder_layers,
            model.sequence_output,
            model.pooled_output,
          ],
          {ids: input_ids, mask: np.ones_like(input_ids)},
        )
        assert embedding.shape == sequence.shape == (batch_size, seq_length, 32)
        assert [layer.shape for layer in layers] == [(batch_size, seq_length, 32)] * 2
        np.testing.assert_array_equal(layers[-1], sequence)
        assert pooled.shape == (batch_size, 32)


def test_padding_does_not_change_real_positions(tiny_bert_dir):
  rng = np.random.default_rng(1)
  short, long = random_ids(rng, 1, 5), random_ids(rng, 1, 9)
  alone = run_bert(tiny_bert_dir, short, np.ones_like(short))
  # Row 0 is `short` padded with arbitrary (not [PAD]) ids that the mask must hide.
  batch_ids = np.concatenate([np.concatenate([short, random_ids(rng, 1, 4)], axis=1), long])
  batch_mask = np.array([[1] * 5 + [0] * 4, [1] * 9], dtype=np.int32)
  padded = run_bert(tiny_bert_dir, batch_ids, batch_mask)
  for alone_layer, padded_layer in zip(alone["all_encoder_layers"], padded["all_encoder_layers"]):
    np.testing.assert_allclose(padded_layer[:1, :5], alone_layer, atol=1e-5)
  np.testing.assert_allclose(
    padded["embedding_output"][:1, :5], alone["embedding_output"], atol=1e-6
  )
  np.testing.assert_allclose(padded["pooled_output"][:1], alone["pooled_output"], atol=1e-5)
  # The mask matters: the same row unmasked sees the extra tokens.
  unmasked = run_bert(tiny_bert_dir, batch_ids, np.ones_like(batch_ids))
  assert np.abs(unmasked["sequence_output"][0, :5] - alone["sequence_output"][0]).max() > 1e-3


def test_token_type_ids_default_to_zeros(tiny_bert_dir):
  input_ids = random_ids(np.random.default_rng(2), 2, 6)
  input_mask = np.ones_like(input_ids)
  default = run_bert(tiny_bert_dir, input_ids, input_mask)
  zeros = run_bert(tiny_bert_dir, input_ids, input_mask, np.zeros_like(input_ids))
  ones = run_bert(tiny_bert_dir, input_ids, input_mask, np.ones_like(input_ids))
  np.testing.assert_array_equal(default["sequence_output"], zeros["sequence_output"])
  assert np.abs(ones["sequence_output"] - zeros["sequence_output"]).max() > 1e-3


def test_dropout_only_when_training(tiny_bert_dir):
  config = modeling.BertConfig.from_json_file(tiny_bert_dir / "bert_config.json")
  input_ids = random_ids(np.random.default_rng(3), 2, 7)
  with tf.Graph().as_default():
    ids = tf.placeholder(tf.int32, [None, None])
    mask = tf.ones_like(ids)
    with tf.variable_scope(tf.get_variable_scope(), reuse=tf.AUTO_REUSE):
      inference = modeling.BertModel(config, False, ids, mask)
      training = modeling.BertModel(config, True, ids, mask)
    assert len(tf.global_variables()) == len(google_variables(config))
    with tf.Session() as sess:
      tf.train.Saver().restore(sess, str(tiny_bert_dir / "bert_model.ckpt"))
      outputs = [
        sess.run([inference.sequence_output, training.sequence_output], {ids: input_ids})
        for _ in range(2)
      ]
  np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
  assert np.abs(outputs[0][1] - outputs[0][0]).max() > 1e-3
  assert np.abs(outputs[0][1] - outputs[1][1]).max() > 1e-3


def test_sequence_longer_than_max_position_embeddings_fails(tiny_bert_dir):
  input_ids = random_ids(np.random.default_rng(4), 1, 65)
  with pytest.raises(tf.errors.InvalidArgumentError, match="max_position_embeddings"):
    run_bert(tiny_bert_dir, input_ids, np.ones_like(input_ids))


def test_gelu_is_the_exact_erf_form():
  points = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0], dtype=np.float32)
  with tf.Graph().as_default(), tf.Session() as sess:
    exact, approximate = sess.run(
      [modeling.gelu(tf.constant(points)), modeling.gelu_tanh(tf.constant(points))]
    )
  expected = [0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))) for x in points]
  np.testing.assert_allclose(exact, expected, atol=1e-6)
  assert np.abs(approximate - expected).max() > 1e-5
  assert modeling.get_activation("gelu") is modeling.gelu


def test_unknown_activation_is_refused():
  with pytest.raises(ValueError, match="swish"):
    modeling.get_activation("swish")


def test_config_reads_google_and_hugging_face_json(tmp_path):
  hf_json = {
    "model_type": "bert",
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "intermediate_size": 1536,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "_name_or_path": "x",
  }
  (tmp_path / "config.json").write_text(json.dumps(hf_json))
  config = modeling.BertConfig.from_json_file(tmp_path / "config.json")
  assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (384, 6, 12)
  assert config.hidden_act == "gelu" and config.layer_norm_eps == 1e-12
  written = json.loads(config.to_json_string())
  assert "model_type" not in written and written["intermediate_size"] == 1536
  assert modeling.BertConfig.from_dict(written) == config
