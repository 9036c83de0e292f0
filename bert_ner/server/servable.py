"""One loaded SavedModel version: session, signatures, warm-up, batched runs, metadata.

Requests are checked against their signature (bert_ner/server/signature.py), queued by
bert_ner/server/batching.py and merged into one batch, run in length groups for this project's
exports, by bert_ner/server/stacking.py.
"""

import asyncio
import logging
import math
import os
import time

import grpc
import tensorflow as tf
from tensorflow_serving.apis import get_model_metadata_pb2, prediction_log_pb2

from bert_ner import model_base, ner_schema
from bert_ner.server import stacking
from bert_ner.server.batching import Batcher
from bert_ner.server.errors import ServingError
from bert_ner.server.signature import Signature

MAX_WARMUP_RECORDS = 1000  # TF Serving's limit on tf_serving_warmup_requests.
# Parsed before refusal whatever the model: 10,000 rows or JSON nested 100,000 deep get TF
# Serving's answer (the task size, the parse error), at most about 60 ms of parsing.
MIN_JSON_CONTAINERS = 1 << 17
# A batch that stopped for these is not rerun request by request: every request would stop too.
STOPPED = (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


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
    export = _export_info(path)
    # Rows run in length groups only where the export says its outputs allow it.
    self._runs_in_groups = export is not None and export.outputs_zero_past_length
    positions = export.max_position_embeddings if self._runs_in_groups else None
    self.signatures = {k: Signature(k, v, positions) for k, v in meta_graph.signature_def.items()}
    self._batching = batching
    # JSON arrays and objects a REST request may hold, far more than a valid one needs (rows + 1
    # per input); None without positions. Each costs the parser a Python object and the
    # garbage collector a visit: 8 MiB of empty rows took 5 s to parse.
    widest = max((len(s.inputs) for s in self.signatures.values()), default=0)
    self.max_json_containers = (
      None
      if positions is None
      else max(MIN_JSON_CONTAINERS, 2 * widest * batching.max_batch_size * (positions + 2))
    )
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
      signature.validate(inputs)
      self._batcher.task_size(signature, {a: v.shape for a, v in inputs.items()})
      (result,) = self.run(signature, [inputs])
      if isinstance(result, ServingError):
        raise result
    return count

  def signature(self, key):
    """The named signature; an empty name means serving_default, as in TF Serving."""
    key = key or model_base.DEFAULT_SIGNATURE
    if key not in self.signatures:  # predict_util.cc RunPredict
      raise ServingError(
        grpc.StatusCode.FAILED_PRECONDITION, f'Serving signature key "{key}" not found.'
      )
    return self.signatures[key]

  def check_shapes(self, signature, shapes):
    """Refuses a request by the shapes its inputs declare, before they are converted, in TF
    Serving's order: more rows than max_batch_size (the first dim of any input; unequal rows
    are refused after conversion), then wider than the model's positions (the graph's check)."""
    self._batcher.check_rows(signature, max((s[0] for s in shapes.values() if s), default=0))
    signature.check_widths(shapes)

  async def predict(self, signature, inputs, timeout_s=None):
    """Validates one request and returns its outputs, run in a merged batch if batching; work
    still waiting or running after timeout_s seconds is abandoned."""
    signature.validate(inputs)
    return await self._batcher.run(signature, inputs, timeout_s)

  def run(self, signature, requests, deadline=None, abandoned=lambda: False):
    """Runs a batch of requests as one TF Serving batch; their outputs (or ServingErrors) in
    order. deadline: time.monotonic() after which the run is abandoned (DEADLINE_EXCEEDED);
    abandoned(): True once no caller waits for the batch any more (CANCELLED).

    A batch that fails is rerun request by request, so only the culprits fail (TF Serving fails
    every request of the batch).
    """
    try:
      if not signature.batchable:
        return [self._session_run(signature, requests[0], deadline, abandoned)]
      if self._batching.enabled:
        merged, spans = stacking.merge(requests, self._batching)
      else:  # one request, as it came
        rows = stacking.rows(requests[0])
        merged, spans = requests[0], [(0, rows, rows)]
      if self._runs_in_groups:
        outputs = self._run_length_groups(signature, requests, merged, spans, deadline, abandoned)
      else:
        outputs = self._session_run(signature, merged, deadline, abandoned)
    except ServingError as error:
      if len(requests) == 1 or error.code in STOPPED:
        return [error] * len(requests)
      return [self.run(signature, [request], deadline, abandoned)[0] for request in requests]
    return [{a: v[start:end] for a, v in outputs.items()} for start, end, _ in spans]

  def _run_length_groups(self, signature, requests, merged, spans, deadline, abandoned):
    """The outputs of one merged run, computed in runs of requests of similar length, each
    run checking the deadline and the callers first (stacking.length_group_runs)."""
    runs = [
      (index, self._session_run(signature, feeds, deadline, abandoned))
      for index, feeds in stacking.length_group_runs(requests, merged, spans)
    ]
    return stacking.scatter_rows(runs, stacking.rows(merged))

  def _session_run(self, signature, feeds, deadline, abandoned):
    """One session run; an OpError (a model check, the deadline) becomes a ServingError."""
    # A gRPC client's cancel (RST_STREAM) left up to 64 x 512 positions running for their
    # callers' deadlines (the next request waited 4 to 18 s); now the batch stops at its next run
    # of at most MAX_RUN_POSITIONS (about 0.5 s).
    if abandoned():
      raise ServingError(grpc.StatusCode.CANCELLED, "Cancelled")
    options = None
    if deadline is not None:
      remaining_ms = math.floor((deadline - time.monotonic()) * 1000)
      if remaining_ms <= 0:
        raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded")
      # A run with a timeout that fails (a model check) leaks about 0.8 KB of native memory in
      # TensorFlow 2.18's DirectSession (none without one, none when it succeeds): 82,000
      # failing requests kept 62 MB. Runs in length groups are at most MAX_RUN_POSITIONS and
      # the deadline is checked before each, so they go without; others keep TF Serving's.
      if not self._runs_in_groups:
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


def _export_info(path):
  """What this project's exporter recorded about the version at path (its ner_config.json), or
  None for any other SavedModel."""
  config = ner_schema.path_in(model_base.assets(path))
  return ner_schema.read(config).export if config.is_file() else None
