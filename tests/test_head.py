"""NER head: macanv variable names, forward pass of both heads, the LSTM's math, training."""

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from bert_ner import head
from bert_ner.checkpoint import NerConfig

FEATURES, LSTM, HIDDEN, LABELS = 6, 5, 4, 3
ID2LABEL = ["O", "B-PER", "I-PER"]  # LABELS labels
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
    ner_head = head.build_ner_head(features, lengths, config(head_name), ID2LABEL, False)
    assert ner_head.loss is None
    assert {v.op.name: v.shape.as_list() for v in tf.global_variables()} == shapes
    sess.run(tf.global_variables_initializer())
    for batch, steps in [(3, 7), (1, 1)]:
      row_lengths = np.minimum(np.arange(batch) + 1, steps).astype(np.int32)
      logits, pred = sess.run(
        (ner_head.logits, ner_head.pred_label),
        {features: rng.standard_normal((batch, steps, FEATURES)), lengths: row_lengths},
      )
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
    sess.run(
      [v.assign(rng.standard_normal(v.shape.as_list()) * 0.5) for v in tf.global_variables()]
    )
    got, values = sess.run((outputs, {v.op.name: v for v in tf.global_variables()}))
  cell = "rnn_layer/bidirectional_rnn/{}/lstm_cell/"
  for b, n in enumerate(row_lengths):
    row = inputs[b, :n]
    forward = numpy_lstm(
      row, values[cell.format("fw") + "kernel"], values[cell.format("fw") + "bias"]
    )
    backward = numpy_lstm(
      row[::-1], values[cell.format("bw") + "kernel"], values[cell.format("bw") + "bias"]
    )[::-1]
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
    ner_head = head.build_ner_head(
      tf.constant(inputs),
      tf.constant(row_lengths),
      config(head_name),
      ID2LABEL,
      True,
      label_ids=tf.constant(gold),
    )
    gradients = tf.gradients(ner_head.loss, tf.trainable_variables())
    assert all(g is not None for g in gradients)
    train_op = tf.train.AdamOptimizer(0.05).minimize(ner_head.loss)
    sess.run(tf.global_variables_initializer())
    losses = [sess.run((ner_head.loss, train_op))[0] for _ in range(30)]
  assert losses[-1] < 0.7 * losses[0]


def test_unobserved_labels_make_the_loss_the_marginal_likelihood_of_the_rest():
  """With `unobserved_labels`, label -1 is not taught: the loss is the CRF's marginal
  log-likelihood of the other tags (the plain one would read -1 as no tag at all), and it
  trains."""
  from bert_ner import crf

  rng = np.random.default_rng(4)
  batch, steps = 4, 6
  row_lengths = np.array([6, 4, 2, 1], np.int32)
  inputs = rng.standard_normal((batch, steps, FEATURES)).astype(np.float32)
  gold = rng.integers(0, LABELS, (batch, steps)).astype(np.int32)
  gold[:, ::2] = -1
  with tf.Graph().as_default(), tf.Session() as sess:
    tf.set_random_seed(0)
    ner_head = head.build_ner_head(
      tf.constant(inputs),
      tf.constant(row_lengths),
      config("bilstm"),
      ID2LABEL,
      False,
      label_ids=tf.constant(gold),
      unobserved_labels=True,
    )
    (transitions,) = [v for v in tf.global_variables() if v.op.name == "crf_loss/transitions"]
    marginal = -tf.reduce_mean(
      crf.crf_marginal_log_likelihood(ner_head.logits, gold, row_lengths, transitions)
    )
    plain = -tf.reduce_mean(crf.crf_log_likelihood(ner_head.logits, gold, row_lengths, transitions))
    train_op = tf.train.AdamOptimizer(0.05).minimize(ner_head.loss)
    sess.run(tf.global_variables_initializer())
    loss, expected, unmarginalised = sess.run((ner_head.loss, marginal, plain))
    losses = [sess.run((ner_head.loss, train_op))[0] for _ in range(30)]
  assert loss == pytest.approx(expected, rel=1e-6)
  assert abs(loss - unmarginalised) > 0.1
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
      head.build_ner_head(
        tf.zeros([1, 2, FEATURES]), tf.ones([1], tf.int32), NerConfig(head="crf"), ID2LABEL, False
      )


@pytest.fixture(scope="module")
def tiny_graph(tiny_bert_dir):
  """The inference graph over the tiny random BERT with a random head: a run(ids, mask) fn."""
  from bert_ner import backbone
  from bert_ner.checkpoint import ModelDir

  model_dir = ModelDir(
    bert_config_path=str(tiny_bert_dir / "bert_config.json"),
    vocab_path=str(tiny_bert_dir / "vocab.txt"),
    ner_config=config("bilstm"),
    id2label=[str(i) for i in range(LABELS)],
    init_checkpoints=[str(tiny_bert_dir / backbone.CHECKPOINT_NAME)],
  )
  graph = tf.Graph()
  with graph.as_default():
    tf.set_random_seed(2)
    input_ids = tf.placeholder(tf.int32, [None, None])
    input_mask = tf.placeholder(tf.int32, [None, None])
    pred_label = head.build_inference_graph(model_dir, input_ids, input_mask)
    sess = tf.Session(graph=graph)
    sess.run(tf.global_variables_initializer())
    # Larger head weights than the initializers give, so predictions vary across labels.
    sess.run([v.assign(v * 8.0) for v in tf.global_variables() if not v.name.startswith("bert")])
  yield lambda ids, mask: sess.run(
    pred_label, {input_ids: np.asarray(ids, np.int32), input_mask: np.asarray(mask, np.int32)}
  )
  sess.close()


SENTENCE = [101, 7327, 19164, 2446, 2655, 102]  # [CLS] eu rejects german call [SEP]


@pytest.mark.parametrize(
  "ids_pad, mask_pad",
  [
    (101, 1),  # TF Serving's batching: the request's first element (batching_util.cc PadTensor)
    (0, 0),  # the clients' own padding
    (0, 1),  # a mask of 1s running past [SEP]
  ],
)
def test_rows_end_at_their_first_sep_whatever_the_padding(tiny_graph, ids_pad, mask_pad):
  alone = tiny_graph([SENTENCE], [[1] * 6])
  assert alone.any()  # the random head tags something, so equality below means something
  padded = tiny_graph([SENTENCE + [ids_pad] * 9], [[1] * 6 + [mask_pad] * 9])
  np.testing.assert_array_equal(padded[:, :6], alone)
  assert not padded[:, 6:].any()  # beyond the real length: label 0


def test_a_row_without_sep_keeps_its_leading_mask_length(tiny_graph):
  truncated = tiny_graph([SENTENCE[:4] + [0, 0]], [[1, 1, 1, 1, 0, 0]])
  assert not truncated[:, 4:].any()
  np.testing.assert_array_equal(truncated[:, :4], tiny_graph([SENTENCE[:4]], [[1] * 4]))


@pytest.mark.parametrize(
  "ids, mask, message",
  [
    (
      [SENTENCE],
      [[1, 2**31 - 1, 2**31 - 1, 1, 1, 1]],
      r"input_mask must hold only 0 and 1, got 2147483647 \(row 0, position 1\)",
    ),
    (
      [SENTENCE, SENTENCE],
      [[1] * 6, [1, 1, 2, 1, 1, 1]],
      r"input_mask must hold only 0 and 1, got 2 \(row 1, position 2\)",
    ),
    (
      [[101, 99999, 102]],
      [[1, 1, 1]],
      r"input_ids contains 99999, outside the vocabulary \[0, 30522\) \(row 0, position 1\)",
    ),
    ([[101, -3, 102]], [[1, 1, 1]], r"input_ids contains -3, outside"),
    ([[101, 102]], [[0, 1]], r"input_mask row 0 has length 0"),
    (np.zeros((1, 0)), np.zeros((1, 0)), r"input_mask row 0 has length 0"),
    (
      np.full((1, 65), 101),
      np.ones((1, 65)),
      r"input_ids has length 65 but the model has only 64 positions",
    ),
    ([SENTENCE], [[1] * 5], r"input_mask shape \[1,5\] does not match input_ids shape \[1,6\]"),
  ],
)
def test_bad_inputs_fail_the_run_naming_the_input(tiny_graph, ids, mask, message):
  with pytest.raises(tf.errors.InvalidArgumentError, match=message):
    tiny_graph(ids, mask)


def test_no_rows_give_no_rows(tiny_graph):
  assert tiny_graph(np.zeros((0, 4)), np.zeros((0, 4))).shape == (0, 4)


# Our label layout for two types: O, B-/I- per type, X, [CLS], [SEP].
IOB2_LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER", "X", "[CLS]", "[SEP]"]


def test_forbidden_transitions_are_iob2s():
  from bert_ner import labels

  forbidden = labels.forbidden_transitions(IOB2_LABELS)
  pairs = {(IOB2_LABELS[a], IOB2_LABELS[b]) for a, b in zip(*np.nonzero(forbidden))}
  enters = {"O", "B-PER", "I-PER", "[CLS]", "[SEP]"}  # labels I-LOC may not follow
  assert pairs == {(a, "I-LOC") for a in enters} | {
    (a.replace("PER", "LOC"), "I-PER") for a in enters
  }
  # Labels without IOB2 prefixes (a macanv map of other names) forbid nothing.
  assert not labels.forbidden_transitions(["0", "1", "2"]).any()


def valid(path):
  """Whether a label-id path keeps to IOB2: I-T only after B-T, I-T or X."""
  names = [IOB2_LABELS[i] for i in path]
  return all(
    not b.startswith("I-") or a in ("X", b, "B-" + b[2:]) for a, b in zip(names, names[1:])
  )


def test_decoding_is_the_best_iob2_path_while_the_loss_stays_the_crfs():
  """pred_label against brute force over every path of 5 steps (8^5): the best path that keeps
  to IOB2 under the learned transitions; the loss is the unconstrained CRF's."""
  import itertools

  from bert_ner import crf

  rng = np.random.default_rng(3)
  batch, steps, num_labels = 12, 5, len(IOB2_LABELS)
  row_lengths = np.array([5, 5, 5, 5, 5, 5, 4, 4, 3, 2, 1, 5], np.int32)
  inputs = rng.standard_normal((batch, steps, FEATURES)).astype(np.float32) * 3
  gold = rng.integers(0, num_labels, (batch, steps)).astype(np.int32)
  with tf.Graph().as_default(), tf.Session() as sess:
    ner_head = head.build_ner_head(
      tf.constant(inputs),
      tf.constant(row_lengths),
      NerConfig(head="dense"),
      IOB2_LABELS,
      False,
      label_ids=tf.constant(gold),
    )
    (transitions,) = [v for v in tf.global_variables() if v.op.name == "crf_loss/transitions"]
    sess.run(tf.global_variables_initializer())
    # Transitions favouring O -> I-x and B-LOC -> I-PER: the unconstrained best often breaks IOB2.
    learned = rng.standard_normal((num_labels, num_labels)).astype(np.float32)
    learned[0, [2, 4]] += 3.0
    learned[1, 4] += 3.0
    sess.run(transitions.assign(learned))
    logits, pred, loss = sess.run((ner_head.logits, ner_head.pred_label, ner_head.loss))
    plain = sess.run(-tf.reduce_mean(crf.crf_log_likelihood(logits, gold, row_lengths, learned)))
  assert loss == pytest.approx(plain, rel=1e-6)

  def score(row, path):
    return sum(logits[row, t, tag] for t, tag in enumerate(path)) + sum(
      learned[a, b] for a, b in zip(path[:-1], path[1:])
    )

  broken = 0
  for row, length in enumerate(row_lengths):
    paths = list(itertools.product(range(num_labels), repeat=int(length)))
    best = max(paths, key=lambda p: score(row, p))
    best_valid = max(filter(valid, paths), key=lambda p: score(row, p))
    broken += not valid(best)
    assert tuple(pred[row, :length]) == best_valid
    assert not pred[row, length:].any()
  assert broken >= 3  # the constraint changed the answer in several rows
