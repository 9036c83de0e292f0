"""NER head: macanv variable names, forward pass of both heads, the LSTM's math, training."""

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from bert_ner import head
from bert_ner.checkpoint import NerConfig

FEATURES, LSTM, HIDDEN, LABELS = 6, 5, 4, 3
BILSTM_SHAPES = {
    "rnn_layer/bidirectional_rnn/fw/lstm_cell/kernel": [FEATURES + LSTM, 4 * LSTM],
    "rnn_layer/bidirectional_rnn/fw/lstm_cell/bias": [4 * LSTM],
    "rnn_layer/bidirectional_rnn/bw/lstm_cell/kernel": [FEATURES + LSTM, 4 * LSTM],
    "rnn_layer/bidirectional_rnn/bw/lstm_cell/bias": [4 * LSTM],
    "project/hidden/W": [2 * LSTM, HIDDEN],
    "project/hidden/b": [HIDDEN],
    "project/logits/W": [HIDDEN, LABELS],
    "project/logits/b": [LABELS],
    "crf_loss/transitions": [LABELS, LABELS],
}
DENSE_SHAPES = {
    "project/logits/W": [FEATURES, LABELS],
    "project/logits/b": [LABELS],
    "crf_loss/transitions": [LABELS, LABELS],
}


def config(head_name):
  """A small NerConfig for the given head."""
  return NerConfig(head=head_name, lstm_size=LSTM, hidden_size=HIDDEN, dropout=0.2)


def sigmoid(x):
  """Logistic function."""
  return 1.0 / (1.0 + np.exp(-x))


def numpy_lstm(inputs, kernel, bias):
  """Reference tf.nn.rnn_cell.LSTMCell (forget_bias 1.0) over one row: [T, F] -> [T, H]."""
  units = bias.shape[0] // 4
  c, h, outputs = np.zeros(units), np.zeros(units), []
  for x in inputs:
    i, j, f, o = np.split(np.concatenate([x, h]) @ kernel + bias, 4)
    c = sigmoid(f + 1.0) * c + sigmoid(i) * np.tanh(j)
    h = sigmoid(o) * np.tanh(c)
    outputs.append(h)
  return np.array(outputs)


@pytest.mark.parametrize("head_name,shapes", [("bilstm", BILSTM_SHAPES), ("dense", DENSE_SHAPES)])
def test_forward_pass_and_variable_names(head_name, shapes):
  rng = np.random.default_rng(0)
  with tf.Graph().as_default(), tf.Session() as sess:
    features = tf.placeholder(tf.float32, [None, None, FEATURES])
    lengths = tf.placeholder(tf.int32, [None])
    ner_head = head.build_ner_head(features, lengths, config(head_name), LABELS, False)
    assert ner_head.loss is None
    assert {v.op.name: v.shape.as_list() for v in tf.global_variables()} == shapes
    sess.run(tf.global_variables_initializer())
    for batch, steps in [(3, 7), (1, 1)]:
      row_lengths = np.minimum(np.arange(batch) + 1, steps).astype(np.int32)
      logits, pred = sess.run((ner_head.logits, ner_head.pred_label), {
          features: rng.standard_normal((batch, steps, FEATURES)), lengths: row_lengths})
      assert logits.shape == (batch, steps, LABELS) and logits.dtype == np.float32
      assert pred.shape == (batch, steps) and pred.dtype == np.int32
      assert ((pred >= 0) & (pred < LABELS)).all()
      for b, n in enumerate(row_lengths):
        assert not pred[b, n:].any()


def test_bidirectional_lstm_matches_lstm_cell_math():
  rng = np.random.default_rng(1)
  inputs = rng.standard_normal((2, 5, FEATURES)).astype(np.float32)
  row_lengths = np.array([3, 5], np.int32)
  with tf.Graph().as_default(), tf.Session() as sess:
    with tf.variable_scope("rnn_layer"):
      outputs = head.bidirectional_lstm(tf.constant(inputs), tf.constant(row_lengths), LSTM)
    sess.run([v.assign(rng.standard_normal(v.shape.as_list()) * 0.5)
              for v in tf.global_variables()])
    got, values = sess.run((outputs, {v.op.name: v for v in tf.global_variables()}))
  cell = "rnn_layer/bidirectional_rnn/{}/lstm_cell/"
  for b, n in enumerate(row_lengths):
    row = inputs[b, :n]
    forward = numpy_lstm(row, values[cell.format("fw") + "kernel"], values[cell.format("fw") + "bias"])
    backward = numpy_lstm(row[::-1], values[cell.format("bw") + "kernel"],
                          values[cell.format("bw") + "bias"])[::-1]
    np.testing.assert_allclose(got[b, :n, :LSTM], forward, atol=1e-5)
    np.testing.assert_allclose(got[b, :n, LSTM:], backward, atol=1e-5)


@pytest.mark.parametrize("head_name", ["bilstm", "dense"])
def test_training_reduces_loss(head_name):
  rng = np.random.default_rng(2)
  batch, steps = 4, 6
  row_lengths = np.array([6, 4, 2, 1], np.int32)
  inputs = rng.standard_normal((batch, steps, FEATURES)).astype(np.float32)
  gold = rng.integers(0, LABELS, (batch, steps)).astype(np.int32)
  with tf.Graph().as_default(), tf.Session() as sess:
    tf.set_random_seed(0)
    ner_head = head.build_ner_head(tf.constant(inputs), tf.constant(row_lengths),
                                   config(head_name), LABELS, True, label_ids=tf.constant(gold))
    gradients = tf.gradients(ner_head.loss, tf.trainable_variables())
    assert all(g is not None for g in gradients)
    train_op = tf.train.AdamOptimizer(0.05).minimize(ner_head.loss)
    sess.run(tf.global_variables_initializer())
    losses = [sess.run((ner_head.loss, train_op))[0] for _ in range(30)]
  assert losses[-1] < 0.7 * losses[0]


def test_concat_features_picks_layers():
  with tf.Graph().as_default(), tf.Session() as sess:
    layers = [tf.fill([1, 2, 3], float(i)) for i in range(4)]
    got = sess.run(head.concat_features(layers, [-2, -1]))
  assert got.shape == (1, 2, 6)
  assert got[0, 0].tolist() == [2.0] * 3 + [3.0] * 3


def test_unknown_head_is_rejected():
  with tf.Graph().as_default():
    with pytest.raises(ValueError, match="unknown head 'crf'"):
      head.build_ner_head(tf.zeros([1, 2, FEATURES]), tf.ones([1], tf.int32),
                          NerConfig(head="crf"), LABELS, False)
