"""Linear-chain CRF in plain TensorFlow ops: log-likelihood for training, Viterbi for prediction.

Positions are the first `sequence_lengths[b]` of each row (prefix masks); nothing beyond a row's
length contributes. Potentials are used exactly as given (never squashed), so large scores decode
the same as small ones. Batch size and sequence length are dynamic; the sequence length is >= 1.
"""

import tensorflow.compat.v1 as tf


def crf_sequence_score(potentials, tag_indices, sequence_lengths, transition_params):
  """Unnormalized score of the given tag paths: unary plus transition terms within each length."""
  # potentials: [B, T, L]; tag_indices: [B, T]; sequence_lengths: [B]; transition_params: [L, L]
  num_tags = tf.shape(potentials)[2]
  mask = tf.sequence_mask(sequence_lengths, tf.shape(potentials)[1], dtype=potentials.dtype)
  # One-hot selection ignores whatever tag values the padding holds.
  one_hot = tf.one_hot(tag_indices, num_tags, dtype=potentials.dtype)  # [B, T, L]
  unary = tf.reduce_sum(one_hot * potentials, axis=2)  # [B, T]
  # binary[b, t] = transition_params[tag[b, t], tag[b, t + 1]]
  binary = tf.einsum("bti,ij,btj->bt", one_hot[:, :-1], transition_params, one_hot[:, 1:])
  return tf.reduce_sum(unary * mask, axis=1) + tf.reduce_sum(binary * mask[:, 1:], axis=1)  # [B]


def crf_log_norm(potentials, sequence_lengths, transition_params):
  """Log partition function over all tag paths of each row (forward algorithm); 0 for length 0."""
  # potentials: [B, T, L]
  steps = tf.transpose(tf.sequence_mask(sequence_lengths, tf.shape(potentials)[1]))  # [T, B]
  inputs = tf.transpose(potentials, [1, 0, 2])  # [T, B, L]

  def forward(alpha, elems):
    """One step: alpha [B, L] holds the log-sum of path scores ending in each tag."""
    potential_t, step_t = elems  # [B, L], [B]
    advanced = (
      tf.reduce_logsumexp(alpha[:, :, None] + transition_params[None], axis=1) + potential_t
    )  # [B, L]
    return tf.where_v2(step_t[:, None], advanced, alpha)

  alpha = tf.foldl(forward, (inputs[1:], steps[1:]), initializer=inputs[0])  # [B, L]
  return tf.where_v2(
    sequence_lengths > 0, tf.reduce_logsumexp(alpha, axis=1), tf.zeros_like(alpha[:, 0])
  )  # [B]


def crf_log_likelihood(potentials, tag_indices, sequence_lengths, transition_params):
  """Log-probability of the gold tag paths under the CRF (0 for length-0 rows)."""
  # potentials: [B, T, L] float32; tag_indices: [B, T] int32; sequence_lengths: [B] int32
  return crf_sequence_score(
    potentials, tag_indices, sequence_lengths, transition_params
  ) - crf_log_norm(potentials, sequence_lengths, transition_params)  # [B]


# The potential of a tag an observed position rules out: far below any real score, yet finite, so
# the forward algorithm's sums and gradients stay free of inf - inf.
_RULED_OUT = -1e30


def crf_marginal_log_likelihood(potentials, tag_indices, sequence_lengths, transition_params):
  """Log-probability that the tag path agrees with the tags at the observed positions (tag >= 0),
  whatever it takes at the others (tag < 0); crf_log_likelihood when every tag is observed.

  This trains a sentence read with its document's words around it on the sentence's tags alone:
  the context's tags are summed over, not taught. It is the log-sum of the scores of the agreeing
  paths (a forward pass with the other tags ruled out at observed positions) minus the log-sum
  over all paths.

  Example: tags [2, -1, 0] give log(sum over y of exp(score([2, y, 0]))) - log_norm.
  """
  # potentials: [B, T, L] float32; tag_indices: [B, T] int32; sequence_lengths: [B] int32
  num_tags = tf.shape(potentials)[2]
  allowed = tf.logical_or(
    tf.less(tag_indices, 0)[:, :, None],
    tf.one_hot(tf.maximum(tag_indices, 0), num_tags, on_value=True, off_value=False),
  )  # [B, T, L]
  agreeing = tf.where_v2(allowed, potentials, tf.constant(_RULED_OUT, potentials.dtype))
  return crf_log_norm(agreeing, sequence_lengths, transition_params) - crf_log_norm(
    potentials, sequence_lengths, transition_params
  )  # [B]


def viterbi_decode(potentials, sequence_lengths, transition_params):
  """Highest-scoring tag path of each row, int32 [B, T]; positions beyond a row's length are 0."""
  # potentials: [B, T, L]; sequence_lengths: [B]; transition_params: [L, L]
  num_steps = tf.shape(potentials)[1]
  mask = tf.sequence_mask(sequence_lengths, num_steps)  # [B, T]
  inputs = tf.transpose(potentials, [1, 0, 2])  # [T, B, L]
  # Padded steps keep their score and point each tag at itself, so the argmax of the final score
  # is the best tag at position length - 1 and backtracking passes through the padding unchanged.
  identity = tf.range(tf.shape(potentials)[2])[None]  # [1, L]
  first = tf.equal(tf.range(num_steps), 0)  # [T]

  def forward(carry, elems):
    """One step: best path score ending in each tag, and the best previous tag for each tag."""
    score, _ = carry  # [B, L]
    potential_t, step_t, first_t = elems  # [B, L], [B], []
    candidates = score[:, :, None] + transition_params[None]  # [B, L_prev, L_next]
    best_prev = tf.argmax(candidates, axis=1, output_type=tf.int32)  # [B, L]
    advanced = tf.where_v2(
      first_t, potential_t, tf.reduce_max(candidates, axis=1) + potential_t
    )  # [B, L]
    keep = tf.logical_or(tf.logical_not(step_t[:, None]), first_t)  # [B, 1]
    return (tf.where_v2(step_t[:, None], advanced, score), tf.where_v2(keep, identity, best_prev))

  scores, backpointers = tf.scan(
    forward,
    (inputs, tf.transpose(mask), first),
    initializer=(tf.zeros_like(inputs[0]), tf.zeros_like(inputs[0], dtype=tf.int32)),
  )
  last_tag = tf.argmax(scores[-1], axis=1, output_type=tf.int32)  # [B]
  # next_pointers[t] = backpointers[t + 1]: the pointers that lead from tag t + 1 to tag t.
  next_pointers = tf.concat([backpointers[1:], tf.zeros_like(backpointers[:1]) + identity], 0)
  tags = tf.scan(
    lambda tag_next, pointers_t: tf.gather(pointers_t, tag_next, batch_dims=1),
    next_pointers,
    initializer=last_tag,
    reverse=True,
  )  # [T, B]
  return tf.transpose(tags) * tf.cast(mask, tf.int32)  # [B, T]


def crf_forward_backward(potentials, sequence_lengths, transition_params):
  """Forward and backward log-scores of every (position, tag), and the log partition function.

  alpha[b, t, y]: log-sum of the scores of the paths over positions 0..t that end in tag y (its
  own potential included); beta[b, t, y]: log-sum over the paths from t + 1 to the row's end
  given tag y at t (0 at the last position and beyond). So the log-probability that a row's path
  takes tags y_a..y_b on positions a..b is alpha[a, y_a] + the path's scores from a + 1 to b +
  beta[b, y_b] - log_norm, and alpha + beta - log_norm are the marginals' logs.
  """
  # potentials: [B, T, L]; sequence_lengths: [B] (>= 1) -> [B, T, L], [B, T, L], [B]
  steps = tf.transpose(tf.sequence_mask(sequence_lengths, tf.shape(potentials)[1]))  # [T, B]
  inputs = tf.transpose(potentials, [1, 0, 2])  # [T, B, L]

  def forward(alpha, elems):
    """alpha [B, L] at t - 1 -> at t; padded steps keep it."""
    potential_t, step_t = elems
    advanced = (
      tf.reduce_logsumexp(alpha[:, :, None] + transition_params[None], axis=1) + potential_t
    )
    return tf.where_v2(step_t[:, None], advanced, alpha)

  def backward(beta, elems):
    """beta [B, L] at t + 1 -> at t, from the potentials at t + 1; 0 where t + 1 is padding."""
    potential_next, step_next = elems
    advanced = tf.reduce_logsumexp(
      transition_params[None] + (potential_next + beta)[:, None, :], axis=2
    )
    return tf.where_v2(step_next[:, None], advanced, tf.zeros_like(beta))

  alphas = tf.scan(forward, (inputs[1:], steps[1:]), initializer=inputs[0])  # [T - 1, B, L]
  alphas = tf.concat([inputs[:1], alphas], 0)
  betas = tf.scan(
    backward, (inputs[1:], steps[1:]), initializer=tf.zeros_like(inputs[0]), reverse=True
  )
  betas = tf.concat([betas, tf.zeros_like(inputs[:1])], 0)
  log_norm = tf.reduce_logsumexp(alphas[-1], axis=1)  # padding carried the last real alpha
  return tf.transpose(alphas, [1, 0, 2]), tf.transpose(betas, [1, 0, 2]), log_norm
