"""One loaded SavedModel version: session, signatures, request checks, runs, warm-up.

A batch of requests is merged as TF Serving's BatchingSession merges it (batching_session.cc
MergeInputTensors): every input padded to the batch's largest shape with that request's first
element (pad_variable_length_inputs), rows added up to allowed_batch_sizes, outputs split by rows
only, so a request gets back the merged batch's width. For this project's exports
(assets.extra/ner_config.json: the inference graph labels every position beyond a row's real
length 0) the merged batch runs in length groups instead of one run, each group padded to its
own longest request and its outputs padded with 0 to the merged width: the same bytes as one
merged run (tests/test_tfs_batching.py) for a fraction of the padded positions.
"""

import asyncio
import dataclasses
import logging
import math
import os
import time

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from bert_ner import model_base
from bert_ner.featurizer import NER_CONFIG_FILE
from server.batching import Batcher, padded_batch_size
from server.errors import ServingError, invalid
from server.tensors import from_proto, shape_str

DEFAULT_SIGNATURE = tf.compat.v1.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY
MAX_WARMUP_RECORDS = 1000  # TF Serving's limit on tf_serving_warmup_requests.
PADDING_BUDGET = 1.3  # padded / real positions allowed when merged requests share a run
# Positions (rows x width) of one session run of an export; a longer group runs in row chunks.
# A session run cannot be stopped once started (its RunOptions timeout only ends the wait), so
# this bounds the work left running for a caller that went away, and a run's memory (attention
# grows with rows x width^2). Shipped model on 2 loaded cores: 2 x 512 or 8 x 128 take about
# 0.4-0.5 s; 64 x 128 took 5.9 s in one run and 2.9 s in eight such chunks.
MAX_RUN_POSITIONS = 1024
# Written by the exporter only: marks a graph whose outputs are 0 beyond each row's length.
NER_CONFIG = os.path.join(model_base.ASSETS_DIR, NER_CONFIG_FILE)


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """A signature tensor: graph tensor name, dtype and shape (None: unknown dim or rank)."""

  name: str
  dtype: tf.DType
  shape: tuple | None

  @classmethod
  def from_info(cls, info):
    """Reads a TensorInfo from the MetaGraphDef's SignatureDef."""
    shape = (
      None
      if info.tensor_shape.unknown_rank
      else tuple(d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
    )
    return cls(info.name, tf.dtypes.as_dtype(info.dtype), shape)


class Signature:
  """A SignatureDef's tensors, and whether its requests may be merged along axis 0."""

  def __init__(self, key, signature_def):
    self.key = key
    self.inputs = {a: TensorSpec.from_info(t) for a, t in sorted(signature_def.inputs.items())}
    self.outputs = {a: TensorSpec.from_info(t) for a, t in sorted(signature_def.outputs.items())}
    tensors = [*self.inputs.values(), *self.outputs.values()]
    self.batchable = bool(self.inputs) and all(t.shape and t.shape[0] is None for t in tensors)

  def check_names(self, aliases):
    """Refuses missing or unknown input aliases with TF Serving's message."""
    sent, wanted = set(aliases), set(self.inputs)
    if sent != wanted:
      raise invalid(
        f"input size does not match signature: {len(sent)}!={len(wanted)} "
        f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
        f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
        f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."
      )

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
        self._session, [tf.compat.v1.saved_model.SERVING], path
      )
    except BaseException:
      self._session.close()
      raise
    self.signature_defs = meta_graph.signature_def
    self._metadata = None  # GetModelMetadataResponse, built once by metadata()
    self.signatures = {k: Signature(k, v) for k, v in meta_graph.signature_def.items()}
    self._batching = batching
    self._runs_in_groups = os.path.exists(os.path.join(path, NER_CONFIG))
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
    logging.info(
      "Loaded %s version %d (%d warm-up requests)", servable.name, servable.version, count
    )
    return servable

  def warm_up(self):
    """Replays assets.extra/tf_serving_warmup_requests (PredictionLogs); any error fails it."""
    path = os.path.join(self.path, model_base.ASSETS_DIR, model_base.WARMUP_FILE)
    if not os.path.exists(path):
      return 0
    count = 0
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
      log = prediction_log_pb2.PredictionLog.FromString(record)
      if log.WhichOneof("log_type") != "predict_log":
        raise ValueError(f"unsupported warm-up log type {log.WhichOneof('log_type')}")
      count += 1
      if count > MAX_WARMUP_RECORDS:
        raise ValueError(f"more than {MAX_WARMUP_RECORDS} warm-up requests")
      request = log.predict_log.request
      signature = self.signature(request.model_spec.signature_name)
      inputs = signature.decode(request.inputs)
      self.validate(signature, inputs)
      self._batcher.task_size(signature, inputs)
      (result,) = self.run(signature, [inputs])
      if isinstance(result, ServingError):
        raise result
    return count

  def signature(self, key):
    """The named signature; an empty name means serving_default, as in TF Serving."""
    key = key or DEFAULT_SIGNATURE
    if key not in self.signatures:  # predict_util.cc RunPredict
      raise ServingError(
        grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.'
      )
    return self.signatures[key]

  def validate(self, signature, inputs):
    """Checks inputs against the signature before any batching. What the model itself requires
    (vocabulary, positions, mask values) its graph checks, for TF Serving as for this server."""
    signature.check_names(inputs)
    for alias, array in inputs.items():
      expected = signature.inputs[alias].shape
      if expected is not None and (
        len(expected) != array.ndim
        or any(d is not None and d != n for d, n in zip(expected, array.shape))
      ):
        raise invalid(
          f"{alias} has shape {shape_str(array.shape)} but the signature "
          f"expects {shape_str(-1 if d is None else d for d in expected)}"
        )

  async def predict(self, signature, inputs, timeout_s=None):
    """Validates one request and returns its outputs, run in a merged batch if batching; work
    still waiting or running after timeout_s seconds is abandoned."""
    self.validate(signature, inputs)
    return await self._batcher.run(signature, inputs, timeout_s)

  def run(self, signature, requests, deadline=None):
    """Runs a batch of requests as one TF Serving batch; their outputs (or ServingErrors) in
    order. deadline: time.monotonic() after which the run is abandoned (DEADLINE_EXCEEDED).

    A batch that fails is rerun request by request, so only the culprits fail (TF Serving fails
    every request of the batch).
    """
    try:
      if not signature.batchable:
        return [self._session_run(signature, requests[0], deadline)]
      if self._batching.enabled:
        merged, spans = _merge(requests, self._batching)
      else:  # one request, as it came
        merged, spans = requests[0], [(0, _rows(requests[0]), _rows(requests[0]))]
      if self._runs_in_groups:
        outputs = self._run_length_groups(signature, requests, merged, spans, deadline)
      else:
        outputs = self._session_run(signature, merged, deadline)
    except ServingError as error:
      if len(requests) == 1 or error.code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return [error] * len(requests)
      return [self.run(signature, [request], deadline)[0] for request in requests]
    return [{a: v[start:end] for a, v in outputs.items()} for start, end, _ in spans]

  def _run_length_groups(self, signature, requests, merged, spans, deadline):
    """The outputs of one merged run, computed in runs of requests of similar length.

    Each group's rows are the merged inputs' rows cut to the group's longest request (so still
    padded with each request's first element), and its outputs are padded with 0 to the widest
    group's: exactly the merged run's, as the graph outputs 0 beyond every row's length. A group
    over MAX_RUN_POSITIONS runs in row chunks, each checking the deadline first.
    """
    rows = len(next(iter(merged.values())))
    parts = []
    for group in _length_groups(requests):
      index = np.concatenate([np.arange(spans[i][0], spans[i][2]) for i in group])
      width = max(_sequence_length(requests[i]) for i in group)
      for chunk in np.array_split(index, math.ceil(len(index) * width / MAX_RUN_POSITIONS) or 1):
        feeds = {
          a: v[(chunk, *(slice(0, n) for n in _widest(requests[i][a] for i in group)))]
          for a, v in merged.items()
        }
        parts.append((chunk, self._session_run(signature, feeds, deadline)))
    outputs = {}
    for alias in parts[0][1]:
      values = [part[alias] for _, part in parts]
      out = np.zeros((rows, *_widest(values)), values[0].dtype)
      for (index, _), value in zip(parts, values):
        out[(index, *(slice(0, n) for n in value.shape[1:]))] = value
      outputs[alias] = out
    return outputs

  def _session_run(self, signature, feeds, deadline):
    """One session run; an OpError (a model check, the deadline) becomes a ServingError."""
    options = None
    if deadline is not None:
      remaining_ms = math.floor((deadline - time.monotonic()) * 1000)
      if remaining_ms <= 0:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
      options = tf.compat.v1.RunOptions(timeout_in_ms=remaining_ms)
    try:
      return self._session.run(
        {a: t.name for a, t in signature.outputs.items()},
        {signature.inputs[a].name: v for a, v in feeds.items()},
        options=options,
      )
    except tf.errors.OpError as error:
      raise ServingError.from_op_error(error) from None

  def metadata(self):
    """GetModelMetadataResponse with this version's SignatureDefMap, as TF Serving fills it.

    Built on the first call and shared by every later one: callers must not modify it.
    """
    if self._metadata is None:
      response = get_model_metadata_pb2.GetModelMetadataResponse()
      response.model_spec.name = self.name
      response.model_spec.version.value = self.version
      response.metadata["signature_def"].Pack(
        get_model_metadata_pb2.SignatureDefMap(signature_def=self.signature_defs)
      )
      self._metadata = response
    return self._metadata

  async def close(self):
    """Stops batching and releases the session; called once no request holds this version."""
    await self._batcher.close()
    await asyncio.to_thread(self._session.close)


def _rows(request):
  """A request's rows (axis 0 of its inputs)."""
  return len(next(iter(request.values())))


def _widest(arrays):
  """The largest size of every axis but the first over arrays of one rank."""
  return [max(sizes) for sizes in zip(*(a.shape[1:] for a in arrays))]


def _merge(requests, options):
  """BatchingSession::MergeInputTensors: the batch's inputs, each request's rows padded to the
  largest shape (pad_variable_length_inputs), then rows up to the lowest allowed batch size
  (copies of the last request's first row). Also each request's (start, end, end with padding
  rows) row span."""
  rows = [_rows(r) for r in requests]
  padding_rows = padded_batch_size(sum(rows), options.allowed_batch_sizes) - sum(rows)
  ends = np.cumsum(rows)
  spans = [(end - n, end, end) for n, end in zip(rows, ends)]
  spans[-1] = (spans[-1][0], spans[-1][1], spans[-1][2] + padding_rows)
  if len(requests) == 1 and not padding_rows:
    return requests[0], spans
  merged = {}
  for alias in requests[0]:
    arrays = [r[alias] for r in requests]
    if options.pad_variable_length_inputs:
      widest = _widest(arrays)
      arrays = [_pad_tensor(a, widest) for a in arrays]
    merged[alias] = np.concatenate(arrays + [arrays[-1][:1]] * padding_rows)
  return merged, spans


def _pad_tensor(array, sizes):
  """batching_util.cc PadTensor: pads every axis but the first up to sizes with the array's
  FIRST element."""
  shape = (array.shape[0], *sizes)
  if math.prod(shape) == array.size:
    return array.reshape(shape)
  if not array.size:
    raise invalid("Got empty tensor in batch of non-empty tensors.")
  widths = [(0, 0)] + [(0, n - s) for n, s in zip(sizes, array.shape[1:])]
  return np.pad(array, widths, constant_values=array.flat[0])


def _sequence_length(request):
  """A request's padded length: axis 1 of its inputs (0 for inputs without one)."""
  return max((a.shape[1] for a in request.values() if a.ndim > 1), default=0)


def _length_groups(requests, max_padding=PADDING_BUDGET):
  """Request indices grouped by length so that padding a group to its longest request costs at
  most `max_padding` times its real positions. On a CPU the model's cost follows padded
  positions, and 32 random CoNLL sentences padded together hold 2.8x their real ones."""
  groups = []
  group_rows = real = 0  # rows and real positions of groups[-1]
  for i in sorted(range(len(requests)), key=lambda i: _sequence_length(requests[i])):
    rows = _rows(requests[i])
    length = _sequence_length(requests[i])  # the longest so far: requests come sorted
    if groups and (group_rows + rows) * length <= max_padding * (real + rows * length):
      groups[-1].append(i)
      group_rows, real = group_rows + rows, real + rows * length
    else:
      groups.append([i])
      group_rows, real = rows, rows * length
  return groups
