"""CRF log-likelihood and Viterbi against brute-force enumeration of every tag path."""

import itertools

import numpy as np
import pytest
import tensorflow.compat.v1 as tf

from bert_ner import crf

# (batch, steps, tags) cases; lengths are drawn in [0, steps] with 1 and steps always present.
CASES = [(1, 1, 1), (2, 1, 3), (3, 2, 2), (4, 3, 4), (3, 4, 3), (5, 5, 2), (2, 5, 4)]


def path_scores(potentials, transitions, length):
  """Every tag path of the given length with its unnormalized score, by enumeration."""
  num_tags = potentials.shape[1]
  for path in itertools.product(range(num_tags), repeat=length):
    score = sum(potentials[t, tag] for t, tag in enumerate(path))
    score += sum(transitions[a, b] for a, b in zip(path[:-1], path[1:]))
    yield path, score


def random_case(rng, batch, steps, tags, scale=1.0):
  """Random potentials, transitions, lengths (covering 1 and the full length) and gold tags."""
  potentials = (rng.standard_normal((batch, steps, tags)) * scale).astype(np.float32)
  transitions = (rng.standard_normal((tags, tags)) * scale).astype(np.float32)
  lengths = rng.integers(0, steps + 1, size=batch).astype(np.int32)
  lengths[0] = 1
  lengths[-1] = steps
  gold = rng.integers(0, tags, size=(batch, steps)).astype(np.int32)
  return potentials, transitions, lengths, gold


@pytest.fixture(scope="module")
def crf_run():
  """One graph with dynamic shapes: (names, potentials, transitions, lengths, tags) -> the named
  outputs: llh, decoded, marginal (tags -1 unobserved) and its gradient by the potentials."""
  graph = tf.Graph()
  with graph.as_default():
    potentials = tf.placeholder(tf.float32, [None, None, None])
    transitions = tf.placeholder(tf.float32, [None, None])
    lengths = tf.placeholder(tf.int32, [None])
    tags = tf.placeholder(tf.int32, [None, None])
    marginal = crf.crf_marginal_log_likelihood(potentials, tags, lengths, transitions)
    outputs = {
      "llh": crf.crf_log_likelihood(potentials, tags, lengths, transitions),
      "decoded": crf.viterbi_decode(potentials, lengths, transitions),
      "marginal": marginal,
      "gradient": tf.gradients(tf.reduce_sum(marginal), [potentials])[0],
    }
  with tf.Session(graph=graph) as sess:
    yield lambda names, p, tr, ln, t: sess.run(
      [outputs[name] for name in names], {potentials: p, transitions: tr, lengths: ln, tags: t}
    )


@pytest.fixture
def crf_fn(crf_run):
  """(potentials, transitions, lengths, gold) -> (llh, decoded)."""
  return lambda *inputs: crf_run(("llh", "decoded"), *inputs)


@pytest.fixture
def marginal_fn(crf_run):
  """(potentials, transitions, lengths, tags with -1 unobserved) -> (marginal llh, its gradient
  with respect to the potentials)."""
  return lambda *inputs: crf_run(("marginal", "gradient"), *inputs)


@pytest.mark.parametrize("batch,steps,tags", CASES)
def test_log_likelihood_matches_enumeration(crf_fn, batch, steps, tags):
  rng = np.random.default_rng(batch * 100 + steps * 10 + tags)
  potentials, transitions, lengths, gold = random_case(rng, batch, steps, tags)
  llh, _ = crf_fn(potentials, transitions, lengths, gold)
  for b in range(batch):
    n = lengths[b]
    if n == 0:
      assert llh[b] == 0.0
      continue
    scores = dict(path_scores(potentials[b], transitions, n))
    log_norm = np.logaddexp.reduce(np.array(list(scores.values()), np.float64))
    np.testing.assert_allclose(llh[b], scores[tuple(gold[b, :n])] - log_norm, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 20.0])
@pytest.mark.parametrize("batch,steps,tags", CASES)
def test_viterbi_matches_enumeration(crf_fn, batch, steps, tags, scale):
  rng = np.random.default_rng(batch * 100 + steps * 10 + tags + int(scale))
  potentials, transitions, lengths, gold = random_case(rng, batch, steps, tags, scale)
  _, decoded = crf_fn(potentials, transitions, lengths, gold)
  assert decoded.dtype == np.int32 and decoded.shape == (batch, steps)
  for b in range(batch):
    n = lengths[b]
    assert not decoded[b, n:].any()
    if n:
      best = max(path_scores(potentials[b], transitions, n), key=lambda item: item[1])[0]
      assert tuple(decoded[b, :n]) == best


def test_large_potentials_are_not_squashed(crf_fn):
  # Path [1, 2] scores 30 + 20 - 3 = 47 and beats [0, 2] at 20 + 20 + 3 = 43; under tanh both
  # unaries saturate to 1 and the transitions would pick [0, 2] instead.
  potentials = np.array([[[20.0, 30.0, -20.0], [-20.0, -20.0, 20.0]]], np.float32)
  transitions = np.array([[0.0, 0.0, 3.0], [0.0, 0.0, -3.0], [0.0, 0.0, 0.0]], np.float32)
  llh, decoded = crf_fn(
    potentials, transitions, np.array([2], np.int32), np.array([[1, 2]], np.int32)
  )
  assert decoded.tolist() == [[1, 2]]
  np.testing.assert_allclose(llh[0], -np.log1p(np.exp(-4.0)), atol=1e-4)


@pytest.mark.parametrize("scale", [1.0, 20.0])
@pytest.mark.parametrize("batch,steps,tags", CASES)
def test_marginal_log_likelihood_matches_enumeration(marginal_fn, batch, steps, tags, scale):
  rng = np.random.default_rng(batch * 100 + steps * 10 + tags + int(scale) + 7)
  potentials, transitions, lengths, gold = random_case(rng, batch, steps, tags, scale)
  observed = gold.copy()
  observed[rng.random(gold.shape) < 0.5] = -1
  observed[0, 0] = -1  # a row whose only position is unobserved: probability 1
  llh, gradient = marginal_fn(potentials, transitions, lengths, observed)
  assert np.isfinite(gradient).all()
  for b in range(batch):
    n = lengths[b]
    scores = dict(path_scores(potentials[b], transitions, n))
    if n == 0:
      assert llh[b] == 0.0
      continue
    agreeing = [
      score
      for path, score in scores.items()
      if all(tag < 0 or tag == step for tag, step in zip(observed[b, :n], path))
    ]
    expected = np.logaddexp.reduce(np.array(agreeing, np.float64)) - np.logaddexp.reduce(
      np.array(list(scores.values()), np.float64)
    )
    np.testing.assert_allclose(llh[b], expected, rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.parametrize("batch,steps,tags", CASES)
def test_marginal_log_likelihood_with_every_tag_observed_is_the_log_likelihood(
  crf_fn, marginal_fn, batch, steps, tags
):
  rng = np.random.default_rng(batch * 100 + steps * 10 + tags)
  potentials, transitions, lengths, gold = random_case(rng, batch, steps, tags)
  llh, _ = crf_fn(potentials, transitions, lengths, gold)
  marginal, _ = marginal_fn(potentials, transitions, lengths, gold)
  np.testing.assert_allclose(marginal, llh, rtol=1e-5, atol=1e-5)
