"""One loaded SavedModel version: session, signatures, request checks, runs, warm-up.

A merged batch runs in length groups: each group is one session run padded to its longest
request, at most PADDING_BUDGET times its real positions; outputs are trimmed per request.
"""

import asyncio
import dataclasses
import logging
import os

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from server.batching import Batcher
from server.errors import ServingError, invalid
from server.tensors import from_proto, shape_str

DEFAULT_SIGNATURE = tf.compat.v1.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
WARMUP_FILE = os.path.join('assets.extra', 'tf_serving_warmup_requests')
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit on tf_serving_warmup_requests.
PADDING_BUDGET = 1.3  # padded / real positions allowed when merged requests share a run
# BERT inputs that must come with exactly input_ids' shape.
SEQUENCE_INPUTS = ('input_mask', 'segment_ids', 'token_type_ids')


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """A signature tensor: graph tensor name, dtype and shape (None: unknown dim or rank)."""

  name: str
  dtype: tf.DType
  shape: tuple | None

  @classmethod
  def from_info(cls, info):
    """Reads a TensorInfo from the MetaGraphDef's SignatureDef."""
    shape = None if info.tensor_shape.unknown_rank else tuple(
        d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
    return cls(info.name, tf.dtypes.as_dtype(info.dtype), shape)


class Signature:
  """A SignatureDef's tensors, and whether its requests may be merged along axis 0."""

  def __init__(self, key, signature_def):
    self.key = key
    self.inputs = {a: TensorSpec.from_info(t) for a, t in sorted(signature_def.inputs.items())}
    self.outputs = {a: TensorSpec.from_info(t)
                    for a, t in sorted(signature_def.outputs.items())}
    tensors = [*self.inputs.values(), *self.outputs.values()]
    self.batchable = bool(self.inputs) and all(
        t.shape and t.shape[0] is None for t in tensors)

  def check_names(self, aliases):
    """Refuses missing or unknown input aliases with TF Serving's message."""
    sent, wanted = set(aliases), set(self.inputs)
    if sent != wanted:
      raise invalid(
          f'input size does not match signature: {len(sent)}!={len(wanted)} '
          f'len({{{",".join(sorted(sent))}}}) != len({{{",".join(sorted(wanted))}}}). '
          f'Sent extra: {{{",".join(sorted(sent - wanted))}}}. '
          f'Missing but required: {{{",".join(sorted(wanted - sent))}}}.')

  def decode(self, tensors):
    """Decodes a PredictRequest's input TensorProtos against this signature."""
    self.check_names(tensors)
    return {a: from_proto(tensors[a], self.inputs[a].dtype, a) for a in sorted(tensors)}


class Servable:
  """A SavedModel version in its own Session, serving validated and batched Predict calls."""

  def __init__(self, name, version, path, session_config, batching, executor, metrics):
    self.name, self.version, self.path = name, version, path
    self.refs = 0  # Requests holding this version; it is unloaded at 0 once replaced.
    graph = tf.Graph()
    self._session = tf.compat.v1.Session(graph=graph, config=session_config)
    try:
      meta_graph = tf.compat.v1.saved_model.loader.load(
          self._session, [tf.compat.v1.saved_model.SERVING], path)
    except BaseException:
      self._session.close()
      raise
    self.signature_defs = meta_graph.signature_def
    self._metadata = None  # GetModelMetadataResponse, built once by metadata()
    self.signatures = {k: Signature(k, v) for k, v in meta_graph.signature_def.items()}
    self.vocab_size = _table_rows(graph, 'word_embeddings') or _vocab_lines(path)
    self.max_positions = _table_rows(graph, 'position_embeddings')
    self._batcher = Batcher(self.run, batching, executor, metrics, name)

  @classmethod
  def load(cls, *args):
    """Loads and warms up a version; one whose warm-up fails is closed, never returned."""
    servable = cls(*args)
    try:
      count = servable.warm_up()
    except BaseException:
      servable._session.close()
      raise
    logging.info('Loaded %s version %d (%d warm-up requests, vocab %s, positions %s)',
                 servable.name, servable.version, count, servable.vocab_size,
                 servable.max_positions)
    return servable

  def warm_up(self):
    """Replays assets.extra/tf_serving_warmup_requests (PredictionLogs); any error fails it."""
    path = os.path.join(self.path, WARMUP_FILE)
    if not os.path.exists(path):
      return 0
    count = 0
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      log = prediction_log_pb2.PredictionLog.FromString(record)
      if log.WhichOneof('log_type') != 'predict_log':
        raise ValueError(f'unsupported warm-up log type {log.WhichOneof("log_type")}')
      count += 1
      if count > MAX_WARMUP_RECORDS:
        raise ValueError(f'more than {MAX_WARMUP_RECORDS} warm-up requests')
      request = log.predict_log.request
      signature = self.signature(request.model_spec.signature_name)
      inputs = signature.decode(request.inputs)
      self.validate(signature, inputs)
      result, = self.run(signature, [inputs])
      if isinstance(result, ServingError):
        raise result
    return count

  def signature(self, key):
    """The named signature; an empty name means serving_default, as in TF Serving."""
    key = key or DEFAULT_SIGNATURE
    if key not in self.signatures:  # predict_util.cc RunPredict
      raise ServingError(grpc.StatusCode.FAILED_PRECONDITION,
                         f'Serving signature key "{key}" not found.')
    return self.signatures[key]

  def validate(self, signature, inputs):
    """Checks inputs against the signature and the model's BERT limits before any batching."""
    signature.check_names(inputs)
    for alias, array in inputs.items():
      expected = signature.inputs[alias].shape
      if expected is not None and (len(expected) != array.ndim or any(
              d is not None and d != n for d, n in zip(expected, array.shape))):
        raise invalid(f'{alias} has shape {shape_str(array.shape)} but the signature '
                      f'expects {shape_str(-1 if d is None else d for d in expected)}')
    ids = inputs.get('input_ids')
    if ids is not None:
      for alias in SEQUENCE_INPUTS:
        if alias in inputs and inputs[alias].shape != ids.shape:
          raise invalid(f'{alias} shape {shape_str(inputs[alias].shape)} does not match '
                        f'input_ids shape {shape_str(ids.shape)}')
      outside = ids[(ids < 0) | (ids >= self.vocab_size)] if self.vocab_size else ()
      if len(outside):
        raise invalid(f'input_ids contains {outside[0]}, outside the vocabulary '
                      f'[0, {self.vocab_size})')
      if self.max_positions and ids.ndim > 1 and ids.shape[1] > self.max_positions:
        raise invalid(f'input_ids has length {ids.shape[1]} but the model has only '
                      f'{self.max_positions} positions')
    if signature.batchable and len({a.shape[0] for a in inputs.values()}) > 1:
      raise invalid('inputs have different batch sizes: ' + ', '.join(
          f'{a} {shape_str(x.shape)}' for a, x in inputs.items()))

  async def predict(self, signature, inputs):
    """Validates one request and returns its outputs, run in a merged batch (in length groups)
    if batching."""
    self.validate(signature, inputs)
    return await self._batcher.run(signature, inputs)

  def run(self, signature, requests):
    """Runs merged requests in runs of similar length; results in request order."""
    results = [None] * len(requests)
    for group in _length_groups(requests):
      for index, result in zip(group, self._run_or_isolate(signature,
                                                           [requests[i] for i in group])):
        results[index] = result
    return results

  def _run_or_isolate(self, signature, requests):
    """Runs requests as one padded run; on failure reruns each alone, so only culprits fail."""
    try:
      return self._run(signature, requests)
    except tf.errors.OpError as error:
      if len(requests) == 1:
        return [ServingError.from_op_error(error)]
      return [self._run_or_isolate(signature, [request])[0] for request in requests]

  def _run(self, signature, requests):
    """One session run over the stacked requests, split back and trimmed per request."""
    feeds = {a: _stack([r[a] for r in requests]) for a in signature.inputs}
    fetched = self._session.run({a: t.name for a, t in signature.outputs.items()},
                                {signature.inputs[a].name: v for a, v in feeds.items()})
    if len(requests) == 1:
      return [fetched]
    padded = _common_lengths(feeds.values())
    results, start = [], 0
    for request in requests:
      rows = next(iter(request.values())).shape[0]
      own = _common_lengths(request.values())
      results.append(
          {a: _trim(v[start:start + rows], own, padded) for a, v in fetched.items()})
      start += rows
    return results

  def metadata(self):
    """GetModelMetadataResponse with this version's SignatureDefMap, as TF Serving fills it.

    Built on the first call and shared by every later one: callers must not modify it.
    """
    if self._metadata is None:
      response = get_model_metadata_pb2.GetModelMetadataResponse()
      response.model_spec.name = self.name
      response.model_spec.version.value = self.version
      response.metadata['signature_def'].Pack(
          get_model_metadata_pb2.SignatureDefMap(signature_def=self.signature_defs))
      self._metadata = response
    return self._metadata

  async def close(self):
    """Stops batching and releases the session; called once no request holds this version."""
    await self._batcher.close()
    await asyncio.to_thread(self._session.close)


def _sequence_length(request):
  """A request's padded length: axis 1 of its inputs (0 for inputs without one)."""
  return max((a.shape[1] for a in request.values() if a.ndim > 1), default=0)


def _length_groups(requests, max_padding=PADDING_BUDGET):
  """Request indices grouped by length so that padding a group to its longest request costs at
  most `max_padding` times its real positions. On a CPU the model's cost follows padded
  positions, and 32 random CoNLL sentences padded together hold 2.8x their real ones."""
  groups = []
  for i in sorted(range(len(requests)), key=lambda i: _sequence_length(requests[i])):
    rows = next(iter(requests[i].values())).shape[0]
    length = _sequence_length(requests[i])  # the longest so far: requests come sorted
    if groups and (group_rows + rows) * length <= max_padding * (real + rows * length):
      groups[-1].append(i)
      group_rows, real = group_rows + rows, real + rows * length
    else:
      groups.append([i])
      group_rows, real = rows, rows * length
  return groups


def _stack(arrays):
  """Concatenates along axis 0, padding other axes to the longest with 0 (b'' for strings)."""
  if len(arrays) == 1:
    return arrays[0]
  shape = [sum(len(a) for a in arrays), *map(max, zip(*(a.shape[1:] for a in arrays)))]
  out = np.full(shape, b'' if arrays[0].dtype == object else 0, dtype=arrays[0].dtype)
  start = 0
  for a in arrays:
    out[(slice(start, start + len(a)), *(slice(0, n) for n in a.shape[1:]))] = a
    start += len(a)
  return out


def _common_lengths(arrays):
  """Maps each non-batch axis to its size where all arrays agree on it (the sequence length)."""
  sizes = {}
  for a in arrays:
    for axis, n in enumerate(a.shape[1:], 1):
      sizes.setdefault(axis, set()).add(n)
  return {axis: s.pop() for axis, s in sizes.items() if len(s) == 1}


def _trim(value, own, padded):
  """Cuts an output back to the request's own length on every axis padded for the batch."""
  return value[tuple(
      slice(0, own[d]) if d in own and d in padded and own[d] < padded[d] == value.shape[d]
      else slice(None) for d in range(value.ndim))]


def _table_rows(graph, suffix):
  """Rows of the 2-D variable (or frozen constant) whose name ends with suffix, or None."""
  for op in graph.get_operations():
    if op.name.endswith(suffix) and op.type in ('VarHandleOp', 'VariableV2', 'Const'):
      shape = (tf.TensorShape(op.get_attr('shape')) if op.type == 'VarHandleOp'
               else op.outputs[0].shape)
      if shape.rank == 2:
        return shape[0]
  return None


def _vocab_lines(path):
  """Vocabulary size from assets.extra/vocab.txt when the graph has no word_embeddings table."""
  vocab = os.path.join(path, 'assets.extra', 'vocab.txt')
  if not os.path.exists(vocab):
    return None
  with open(vocab, encoding='utf-8') as f:
    return sum(1 for _ in f)
