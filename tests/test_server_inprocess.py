"""Server rules driven in-process with fakes (no session, no sockets): which version serves, whose
deadline a run gets, where each limit starts refusing, how a batch is cut into runs, which
histogram bucket a value lands in. Each test fails on the one-line bug named in its docstring
(tests/mutate.py holds those bugs as named mutations)."""

import asyncio
import contextlib
import gzip
import math
import re

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import model_pb2, predict_pb2

from bert_ner.server import config as server_config
from bert_ner.server import grpc_service, rest, stacking
from bert_ner.server.batching import Batcher, BatchingOptions
from bert_ner.server.errors import ServingError
from bert_ner.server.manager import ModelManager
from bert_ner.server.metrics import Histogram, Metrics
from bert_ner.server.tensors import from_proto
from support.batching import FakeModel, FakeSignature, rows, run_batcher

# ---------------------------------------------------------------- version selection


class FakeServable:
  """What the manager keeps of a loaded version."""

  def __init__(self, name, version):
    self.name, self.version, self.refs = name, version, 0

  async def close(self):
    pass


def manager_serving(base, versions, policy):
  """A Manager over `base` holding version folders `versions`, after one reload: (manager, the
  versions it loaded)."""
  for version in versions:
    (base / str(version)).mkdir()
  config = server_config.single_model_config("m", str(base))
  policy(config.model_config_list.config[0].model_version_policy)
  loaded = []

  def load(name, version, path):
    loaded.append(version)
    return FakeServable(name, version)

  async def scenario():
    manager = ModelManager(load)
    await manager.reload(config)
    return manager

  return asyncio.run(scenario()), loaded


@pytest.mark.parametrize(
  "policy",
  [
    lambda p: p.all.SetInParent(),
    lambda p: p.latest.SetInParent() or setattr(p.latest, "num_versions", 2),
  ],
  ids=["all", "latest 2"],
)
def test_a_request_without_a_version_gets_the_newest_loaded(tmp_path, policy):
  """Bug: the lowest loaded version served (TF Serving serves the newest available one)."""
  manager, loaded = manager_serving(tmp_path, [3, 7, 5], policy)
  assert 7 in loaded and 5 in loaded
  with manager.acquire(model_pb2.ModelSpec(name="m")) as servable:
    assert servable.version == 7
  assert manager.latest_version("m") == 7
  with manager.acquire(model_pb2.ModelSpec(name="m", version={"value": 5})) as servable:
    assert servable.version == 5


@pytest.mark.parametrize(
  "spec, message",
  [
    ({}, "ModelSpec has no name specified."),
    ({"name": "other"}, r"Servable not found for request: Latest\(other\)"),
    ({"name": "m", "version": {"value": 9}}, r"Servable not found for request: Specific\(m, 9\)"),
    ({"name": "m", "version_label": "canary"}, "Unrecognized servable version label: canary"),
  ],
)
def test_a_spec_naming_nothing_served_gets_tf_servings_error(tmp_path, spec, message):
  """ServerCore::GetServableHandle's errors, word for word (clients match on them)."""
  manager, _ = manager_serving(tmp_path, [3, 5], lambda p: p.all.SetInParent())
  with (
    pytest.raises(ServingError, match=f"^{message}$"),
    manager.acquire(model_pb2.ModelSpec(**spec)),
  ):
    pass


def test_a_label_names_its_version_and_an_empty_model_serves_nothing(tmp_path):
  """A version label picks its version; a model with no version loaded is NOT_FOUND, not a
  crash of the version choice."""
  base = tmp_path / "m"
  base.mkdir()
  for version in (3, 5):
    (base / str(version)).mkdir()
  (tmp_path / "empty").mkdir()
  config = server_config.single_model_config("m", str(base))
  config.model_config_list.config[0].model_version_policy.all.SetInParent()
  config.model_config_list.config.add(
    name="empty", base_path=str(tmp_path / "empty"), model_platform=server_config.PLATFORM
  )

  async def scenario():
    manager = ModelManager(lambda name, version, path: FakeServable(name, version))
    await manager.reload(config)
    # A label may name only a version already available: TF Serving's second reload.
    config.model_config_list.config[0].version_labels["stable"] = 3
    await manager.reload(config)
    return manager

  manager = asyncio.run(scenario())
  with manager.acquire(model_pb2.ModelSpec(name="m", version_label="stable")) as servable:
    assert servable.version == 3
  empty = model_pb2.ModelSpec(name="empty")
  with pytest.raises(ServingError, match=r"Latest\(empty\)"), manager.acquire(empty):
    pass


# ---------------------------------------------------------------- deadlines


class FakeContext:
  """A grpc.aio servicer context with a fixed time remaining."""

  def __init__(self, remaining):
    self.remaining = remaining

  def time_remaining(self):
    return self.remaining

  async def abort(self, code, message):
    raise AssertionError(f"aborted {code}: {message}")


class DeadlineServable:
  """Records the timeout each predict gets; answers one row of labels."""

  name, version = "m", 1

  def __init__(self):
    self.timeouts = []
    self.spec = FakeSignature(key="serving_default", outputs={"pred_label": None})
    self.spec.decode = lambda tensors, check_shapes=None: {"input_ids": np.zeros((1, 3), np.int32)}

  def signature(self, name):
    return self.spec

  def check_shapes(self, signature, shapes):
    """Every shape is fine: this servable only records deadlines."""

  async def predict(self, signature, inputs, timeout_s=None):
    self.timeouts.append(timeout_s)
    return {"pred_label": np.zeros((1, 3), np.int32)}


class FakeModels:
  """The manager as PredictionService sees it, serving one servable."""

  def __init__(self, servable):
    self.servable = servable

  def metric_label(self, name):
    return name

  @contextlib.contextmanager
  def acquire(self, spec):
    yield self.servable


@pytest.mark.parametrize("remaining", [2.5, None])
def test_grpc_predict_passes_the_callers_deadline_on(remaining):
  """Bug: Predict runs without the caller's deadline (work outlives a caller that gave up)."""
  servable = DeadlineServable()
  service = grpc_service.PredictionService(FakeModels(servable), Metrics(8))
  request = predict_pb2.PredictRequest(model_spec={"name": "m"})
  response = asyncio.run(service.Predict(request, FakeContext(remaining)))
  assert servable.timeouts == [remaining]
  assert response.model_spec.version.value == 1


class DeadlineModel(FakeModel):
  """FakeModel that also records the deadline each batch runs with."""

  def __init__(self):
    super().__init__()
    self.deadlines = []

  def __call__(self, signature, requests, deadline, abandoned):
    self.deadlines.append(deadline)
    return super().__call__(signature, requests, deadline, abandoned)


def merged_run_deadline(timeouts):
  """The deadline, relative to the first submit, of the one batch merging requests with these
  timeouts (None: no deadline)."""
  model = DeadlineModel()
  options = BatchingOptions(max_batch_size=8, batch_timeout_micros=200_000)

  async def scenario():
    from concurrent import futures

    with futures.ThreadPoolExecutor(2) as executor:
      batcher = Batcher(model, options, executor, Metrics(8), "m")
      start = asyncio.get_running_loop().time()
      try:
        await asyncio.gather(*(batcher.run(FakeSignature(), rows(1), t) for t in timeouts))
      finally:
        await batcher.close()
      return start

  start = asyncio.run(scenario())
  assert [len(batch) for batch in model.batches] == [len(timeouts)], "not one merged batch"
  (deadline,) = model.deadlines
  return None if deadline is None else deadline - start


def test_a_merged_batch_runs_until_its_latest_callers_deadline():
  """Bug: the batch takes its earliest caller's deadline (BatchingSession passes the largest
  RunOptions timeout of its tasks, so no caller is cut short by another's)."""
  assert merged_run_deadline([1.0, 30.0, 5.0]) == pytest.approx(30.0, abs=1.0)
  assert merged_run_deadline([1.0, None]) is None  # one caller without a deadline: none


# ---------------------------------------------------------------- limits at their boundary


def test_max_batch_size_admits_its_own_size_and_refuses_one_more():
  """Bug: the limit checked with >= (a task of exactly max_batch_size refused)."""

  async def scenario(batcher, model):
    await batcher.run(FakeSignature(), rows(4))
    with pytest.raises(ServingError, match="Task size 5 is larger than maximum input batch size"):
      await batcher.run(FakeSignature(), rows(5))

  run_batcher(BatchingOptions(max_batch_size=4), scenario)


def int_proto(shape):
  return tf.make_tensor_proto(np.ones(shape, np.int32))


def test_tensor_element_limit_admits_its_own_size_and_refuses_one_more():
  """Bug: the per-tensor element limit checked with >=."""
  assert from_proto(int_proto([2, 3]), tf.int32, "input_ids", max_elements=6).shape == (2, 3)
  with pytest.raises(ServingError, match="declares 7 elements"):
    from_proto(int_proto([1, 7]), tf.int32, "input_ids", max_elements=7 - 1)


def test_uncompressed_body_limit_admits_its_own_size_and_refuses_one_more():
  """Bug: the gzip body limit checked with >= (a body of exactly the limit refused)."""
  body = b"[" + b"1," * 49 + b"1]"
  assert rest._gunzip(gzip.compress(body), len(body)) == body
  with pytest.raises(ServingError, match=f"body size {len(body) - 1} exceeded") as error:
    rest._gunzip(gzip.compress(body), len(body) - 1)
  assert error.value.http_status == 413


def run_sizes(count, width):
  """Rows per session run of one request of count x width positions (stacking's runs)."""
  request = {"input_ids": np.ones((count, width), np.int32)}
  spans = [(0, count, count)]
  return [len(index) for index, _ in stacking.length_group_runs([request], request, spans)]


def test_a_batch_over_max_run_positions_splits_into_enough_runs():
  """Bug: the number of runs rounded down (a batch one position over the cap runs whole)."""
  cap = stacking.MAX_RUN_POSITIONS
  assert run_sizes(cap // 128, 128) == [cap // 128]  # exactly the cap: one run
  over = run_sizes(cap // 128 + 1, 128)  # one row over: two runs
  assert len(over) == 2 and sum(over) == cap // 128 + 1
  assert len(run_sizes(cap + 1, 1)) == 2
  assert len(run_sizes(3 * cap, 1)) == 3 and len(run_sizes(3 * cap + 1, 1)) == 4


# ---------------------------------------------------------------- metrics


def bucket_counts(histogram):
  """{le bound: cumulative count} of a one-series histogram's rendering."""
  return {
    m.group(1): int(m.group(2))
    for m in map(re.compile(r'_bucket\{.*le="([^"]+)"\} (\d+)').search, histogram.render())
    if m
  }


def test_a_value_on_a_bucket_bound_counts_in_that_bucket():
  """Bug: a value equal to a bound counted in the next bucket (Prometheus buckets are le)."""
  histogram = Histogram("h", "help", [10, 20, 40])
  for value in (10, 20, 20.5, 40, 41):
    histogram.observe(value)
  assert bucket_counts(histogram) == {"10": 1, "20": 2, "40": 4, "+Inf": 5}
  assert math.isclose(
    sum(float(line.split()[-1]) for line in histogram.render() if line.startswith("h_sum")),
    131.5,
  )
