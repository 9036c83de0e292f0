"""python -m bert_ner.server against TF Serving's REST and gRPC contracts, on a tiny fixture
SavedModel."""

import concurrent.futures
import re
import shutil
import threading
import time

import grpc
import numpy as np
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
  get_model_metadata_pb2,
  get_model_status_pb2,
  model_service_pb2_grpc,
  predict_pb2,
  prediction_service_pb2_grpc,
)

from bert_ner.server.batching import BatchingOptions, read_batching_parameters
from bert_ner.server.process import ServerProcess
from server_fixtures import MODEL, POISON, POSITIONS, REPO, build_model, expected

MAX_REQUEST_BYTES = 1 << 20
TIMEOUT_S = 10
BATCHING_PARAMETERS = """
max_batch_size { value: 64 }
batch_timeout_micros { value: 30000 }
num_batch_threads { value: 1 }
max_enqueued_batches { value: 100 }
pad_variable_length_inputs: true
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  """One batching server on version 1 for the whole module; must exit 0 on SIGTERM."""
  root = tmp_path_factory.mktemp("serve")
  build_model(root / "models" / "1")
  (root / "batching.txt").write_text(BATCHING_PARAMETERS)
  process = ServerProcess(
    root / "models",
    root / "server.log",
    flags=[
      f"--batching_parameters_file={root / 'batching.txt'}",
      f"--max_request_bytes={MAX_REQUEST_BYTES}",
      f"--monitoring_config_file={REPO / 'docker/monitoring_config.txt'}",
    ],
  ).start()
  yield process
  assert process.stop() == 0, process.log()


@pytest.fixture(scope="module")
def stubs(server):
  """PredictionService and ModelService stubs on the server's gRPC port."""
  with grpc.insecure_channel(server.grpc) as channel:
    yield (
      prediction_service_pb2_grpc.PredictionServiceStub(channel),
      model_service_pb2_grpc.ModelServiceStub(channel),
    )


def rest_predict(server, body, path=f"/v1/models/{MODEL}:predict"):
  """POSTs a JSON body (or raw bytes) to a predict URL."""
  kwargs = {"data": body} if isinstance(body, bytes) else {"json": body}
  return requests.post(server.rest_url + path, timeout=TIMEOUT_S, **kwargs)


def columnar(ids, mask):
  """A columnar-format body for one row."""
  return {"inputs": {"input_ids": [ids], "input_mask": [mask]}}


def grpc_request(ids, mask, signature="", dtype=tf.int32, **spec):
  """A PredictRequest for rows of ids and mask."""
  request = predict_pb2.PredictRequest()
  request.model_spec.name = spec.pop("name", MODEL)
  request.model_spec.signature_name = signature
  if "version" in spec:
    request.model_spec.version.value = spec.pop("version")
  request.inputs["input_ids"].CopyFrom(tf.make_tensor_proto(ids, dtype=dtype))
  request.inputs["input_mask"].CopyFrom(tf.make_tensor_proto(mask, dtype=tf.int32))
  return request


def batches_run(server):
  """Session runs so far, from the Prometheus page."""
  page = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=TIMEOUT_S).text
  match = re.search(r'processed_batch_size_count\{model_name="bert_ner"\} (\d+)', page)
  return int(match[1]) if match else 0


def assert_serving(server, offset=0):
  """A good request still gets the right answer (the server survived whatever came before)."""
  response = rest_predict(server, columnar([3, 4], [1, 1]))
  assert response.status_code == 200, response.text
  assert response.json() == {"outputs": [expected([3, 4], [1, 1], offset)]}


@pytest.mark.slow  # starts the server
def test_rest_row_format_returns_bare_lists_for_a_single_output(server):
  rows = [([1, 2, 3, 0], [1, 1, 1, 0]), ([5, 6, 7, 8], [1, 1, 1, 1])]
  body = {
    "signature_name": "result",
    "instances": [{"input_ids": i, "input_mask": m} for i, m in rows],
  }
  response = rest_predict(server, body)
  assert response.status_code == 200, response.text
  assert response.json() == {"predictions": [expected(i, m) for i, m in rows]}


@pytest.mark.slow  # starts the server
def test_rest_columnar_format_and_default_signature(server):
  response = rest_predict(
    server, {"inputs": {"input_ids": [[1, 2, 3], [4, 5, 6]], "input_mask": [[1, 1, 1], [1, 1, 0]]}}
  )
  assert response.status_code == 200, response.text
  assert response.json() == {
    "outputs": [expected([1, 2, 3], [1, 1, 1]), expected([4, 5, 6], [1, 1, 0])]
  }


@pytest.mark.slow  # starts the server
def test_grpc_predict_matches_rest(server, stubs):
  ids, mask = [[9, 10, 11, 12], [13, 14, 0, 0]], [[1, 1, 1, 1], [1, 1, 0, 0]]
  response = stubs[0].Predict(grpc_request(ids, mask, "result"), timeout=TIMEOUT_S)
  assert (
    response.model_spec.name,
    response.model_spec.version.value,
    response.model_spec.signature_name,
  ) == (MODEL, 1, "result")
  output = response.outputs["pred_label"]
  assert output.dtype == tf.int32.as_datatype_enum and len(output.int_val) == 8
  rest = rest_predict(
    server, {"signature_name": "result", "inputs": {"input_ids": ids, "input_mask": mask}}
  )
  assert tf.make_ndarray(output).tolist() == rest.json()["outputs"]

  filtered = stubs[0].Predict(
    _with_filter(grpc_request(ids, mask), ["pred_label"]), timeout=TIMEOUT_S
  )
  assert list(filtered.outputs) == ["pred_label"]
  assert filtered.model_spec.signature_name == "serving_default"


def _with_filter(request, aliases):
  """The request with an output_filter."""
  request.output_filter.extend(aliases)
  return request


@pytest.mark.slow  # starts the server
def test_status_and_metadata_rest_and_grpc(server, stubs):
  status = {
    "model_version_status": [
      {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
    ]
  }
  for path in (f"/v1/models/{MODEL}", f"/v1/models/{MODEL}/versions/1"):
    assert requests.get(server.rest_url + path, timeout=TIMEOUT_S).json() == status
  assert (
    requests.get(server.rest_url + f"/v1/models/{MODEL}/versions/7", timeout=TIMEOUT_S).status_code
    == 404
  )

  metadata = requests.get(
    server.rest_url + f"/v1/models/{MODEL}/metadata", timeout=TIMEOUT_S
  ).json()
  assert metadata["model_spec"] == {"name": MODEL, "version": "1", "signature_name": ""}
  signatures = metadata["metadata"]["signature_def"]["signature_def"]
  assert set(signatures) == {"result", "serving_default"}
  ids = signatures["result"]["inputs"]["input_ids"]
  assert ids["dtype"] == "DT_INT32"
  assert [d["size"] for d in ids["tensor_shape"]["dim"]] == ["-1", "-1"]
  assert signatures["result"]["outputs"]["pred_label"]["name"] == "ner_test/pred_label:0"

  request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
  request.model_spec.name = MODEL
  response = stubs[0].GetModelMetadata(request, timeout=TIMEOUT_S)
  signature_map = get_model_metadata_pb2.SignatureDefMap()
  assert response.metadata["signature_def"].Unpack(signature_map)
  assert set(signature_map.signature_def) == {"result", "serving_default"}
  assert response.model_spec.version.value == 1

  request = get_model_status_pb2.GetModelStatusRequest()
  request.model_spec.name = MODEL
  (version,) = stubs[1].GetModelStatus(request, timeout=TIMEOUT_S).model_version_status
  assert version.version == 1
  assert version.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE


@pytest.mark.parametrize(
  "path, body, status, message",
  [
    ("", b'{"inputs": [1,', 400, "JSON Parse error"),
    ("", {"instances": [[1, 2]]}, 400, "expecting list of objects"),
    ("", {"signature_name": "result"}, 400, "Missing 'inputs' or 'instances' key"),
    (
      "",
      columnar([1.5, 2], [1, 1]),
      400,
      "JSON Value: 1.5 Type: Number is not of expected type: int32",
    ),
    ("", columnar(["a"], [1]), 400, 'JSON Value: "a" Type: String is not of expected type: int32'),
    (
      "",
      columnar([1, 2, 3, 4, 5, 6], [1, 1, 1, 1, 1]),
      400,
      "input_mask shape [1,5] does not match input_ids shape [1,6]",
    ),
    (
      "",
      {"inputs": {"input_ids": [[1, 2], [3]], "input_mask": [[1, 1], [1]]}},
      400,
      "Encountered list at unexpected size: 1 at level: 1 expected size: 2",
    ),
    ("", {"inputs": {"input_ids": [[1, 2]]}}, 400, "Missing but required: {input_mask}"),
    ("", {"inputs": {"input_ids": [[1]], "input_mask": [[1]], "x": [[1]]}}, 400, "Sent extra: {x}"),
    ("", columnar([1, 100], [1, 1]), 400, "outside the vocabulary [0, 100)"),
    ("", columnar([1] * (POSITIONS + 1), [1] * (POSITIONS + 1)), 400, "positions"),
    ("", {"inputs": {"input_ids": [1, 2], "input_mask": [1, 1]}}, 400, "expects [-1,-1]"),
    (
      "",
      {"signature_name": "nope", **columnar([1], [1])},
      400,
      'Serving signature name: "nope" not found in signature def',
    ),
    ("/v1/models/nope:predict", columnar([1], [1]), 404, "Servable not found for request"),
    (f"/v1/models/{MODEL}/versions/7:predict", columnar([1], [1]), 404, f"Specific({MODEL}, 7)"),
    (
      f"/v1/models/{MODEL}/labels/canary:predict",
      columnar([1], [1]),
      400,
      "Unrecognized servable version label: canary",
    ),
    ("", columnar([[1] * 1000] * 400, [1]), 413, "Maximum request body size"),
  ],
)
@pytest.mark.slow  # starts the server
def test_rest_errors_are_json_and_leave_the_server_up(server, path, body, status, message):
  response = rest_predict(server, body, path or f"/v1/models/{MODEL}:predict")
  assert response.status_code == status, response.text
  assert message in response.json()["error"]
  assert_serving(server)


@pytest.mark.parametrize(
  "request_, code, message",
  [
    (grpc_request([[1]], [[1]], name="nope"), grpc.StatusCode.NOT_FOUND, "Latest(nope)"),
    (grpc_request([[1]], [[1]], version=7), grpc.StatusCode.NOT_FOUND, f"Specific({MODEL}, 7)"),
    (
      grpc_request([[1]], [[1]], "nope"),
      grpc.StatusCode.FAILED_PRECONDITION,
      'Serving signature key "nope" not found.',
    ),
    (
      grpc_request([[1]], [[1]], dtype=tf.int64),
      grpc.StatusCode.INVALID_ARGUMENT,
      "Expects arg[input_ids] to be int32 but int64 is provided",
    ),
    (
      grpc_request([[1, 2, 3, 4, 5, 6]], [[1, 1, 1, 1, 1]]),
      grpc.StatusCode.INVALID_ARGUMENT,
      "input_mask shape [1,5] does not match input_ids shape [1,6]",
    ),
    (grpc_request([[1, -1]], [[1, 1]]), grpc.StatusCode.INVALID_ARGUMENT, "vocabulary"),
    (grpc_request([1, 2], [1, 2]), grpc.StatusCode.INVALID_ARGUMENT, "expects [-1,-1]"),
    (
      _with_filter(grpc_request([[1]], [[1]]), ["logits"]),
      grpc.StatusCode.INVALID_ARGUMENT,
      "output tensor alias not found in signature: logits",
    ),
    (grpc_request([[1] * 1000] * 300, [[1] * 1000] * 300), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
  ],
  ids=["model", "version", "signature", "dtype", "shape", "vocab", "rank", "filter", "size"],
)
@pytest.mark.slow  # starts the server
def test_grpc_errors_have_tf_serving_codes(server, stubs, request_, code, message):
  with pytest.raises(grpc.RpcError) as error:
    stubs[0].Predict(request_, timeout=TIMEOUT_S)
  assert error.value.code() == code
  assert message in error.value.details()
  assert_serving(server)


@pytest.mark.slow  # starts the server
def test_missing_input_over_grpc(server, stubs):
  request = grpc_request([[1]], [[1]])
  del request.inputs["input_mask"]
  with pytest.raises(grpc.RpcError) as error:
    stubs[0].Predict(request, timeout=TIMEOUT_S)
  assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
  assert "Missing but required: {input_mask}" in error.value.details()


def _concurrently(calls):
  """Runs the callables at the same moment from their own threads; returns their results."""
  barrier = threading.Barrier(len(calls))

  def fire(call):
    barrier.wait(TIMEOUT_S)
    return call()

  with concurrent.futures.ThreadPoolExecutor(len(calls)) as pool:
    return list(pool.map(fire, calls))


@pytest.mark.slow  # starts the server
def test_batching_merges_concurrent_variable_length_requests(server, stubs):
  rows = [
    ([(n * 7 + k) % 90 + 1 for k in range(n)], [1] * (n - n // 3) + [0] * (n // 3))
    for n in range(1, 25)
  ]
  before = batches_run(server)
  calls = [lambda i=i, m=m: rest_predict(server, columnar(i, m)) for i, m in rows[::2]]
  calls += [
    lambda i=i, m=m: stubs[0].Predict(grpc_request([i], [m]), timeout=TIMEOUT_S)
    for i, m in rows[1::2]
  ]
  results = _concurrently(calls)
  runs = batches_run(server) - before
  assert runs < len(rows), f"{len(rows)} requests took {runs} session runs: nothing merged"
  wider = 0
  for (ids, mask), result in zip(rows[::2] + rows[1::2], results):
    values = (
      result.json()["outputs"][0]
      if isinstance(result, requests.Response)
      else tf.make_ndarray(result.outputs["pred_label"])[0].tolist()
    )
    # As TF Serving: the merged batch's width, padded with the request's first element.
    width = len(values)
    wider += width > len(ids)
    assert values == expected(
      ids + [ids[0]] * (width - len(ids)), mask + [mask[0]] * (width - len(ids))
    )
  assert wider


@pytest.mark.slow  # starts the server
def test_a_request_failing_in_the_model_fails_alone(server):
  good = [([n, n + 1, n + 2], [1, 1, 1]) for n in range(1, 8)]
  calls = [lambda: rest_predict(server, columnar([1, POISON], [1, 1]))]
  calls += [lambda i=i, m=m: rest_predict(server, columnar(i, m)) for i, m in good]
  before = batches_run(server)
  poisoned, *results = _concurrently(calls)
  assert batches_run(server) - before < len(calls)  # The poison shared a run with others.
  assert poisoned.status_code == 400 and "poison id" in poisoned.json()["error"]
  assert "Traceback" not in poisoned.text and 'File "' not in poisoned.text
  for (ids, mask), result in zip(good, results):
    assert result.status_code == 200 and result.json() == {"outputs": [expected(ids, mask)]}


@pytest.mark.slow  # starts the server
def test_metrics_page_counts_requests(server):
  page = requests.get(server.rest_url + "/monitoring/prometheus/metrics", timeout=TIMEOUT_S).text
  assert re.search(r'request_count\{model_name="bert_ner",status="OK"\} \d+', page)
  assert 'status="INVALID_ARGUMENT"' in page
  assert ':tensorflow:serving:request_latency_bucket{API="predict",entrypoint="GRPC"' in page


def test_batching_parameters_file(tmp_path):
  path = tmp_path / "batching.txt"
  path.write_text(BATCHING_PARAMETERS)
  options = read_batching_parameters(path)
  assert options == BatchingOptions(
    enabled=True,
    max_batch_size=64,
    batch_timeout_micros=30000,
    num_batch_threads=1,
    max_enqueued_batches=100,
    pad_variable_length_inputs=True,
  )


@pytest.mark.slow  # starts the server
def test_hot_reload_swaps_without_failures_and_skips_broken_versions(tmp_path):
  base = tmp_path / "models"
  build_model(base / "1")
  build_model(tmp_path / "staging" / "2", offset=10)
  build_model(tmp_path / "staging" / "4", offset=20, warmup_ids=(POISON,))  # Warm-up fails.
  server = ServerProcess(
    base,
    tmp_path / "server.log",
    flags=["--file_system_poll_wait_seconds=0.2", "--enable_batching=false"],
  ).start()
  failures, versions, stop = [], set(), threading.Event()

  def client():
    with grpc.insecure_channel(server.grpc) as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      for _ in range(5000):
        if stop.is_set():
          return
        try:
          response = stub.Predict(grpc_request([[3, 4]], [[1, 1]]), timeout=TIMEOUT_S)
          version = response.model_spec.version.value
          offset = 10 * (version - 1)
          if tf.make_ndarray(response.outputs["pred_label"]).tolist() != [
            expected([3, 4], [1, 1], offset)
          ]:
            failures.append(f"wrong answer from version {version}")
          versions.add(version)
        except grpc.RpcError as error:
          failures.append(error.details())

  thread = threading.Thread(target=client)
  thread.start()
  try:
    time.sleep(0.5)
    (base / "2").mkdir()  # Half-written: a graph without its variables is skipped...
    shutil.copy(tmp_path / "staging" / "2" / "saved_model.pb", base / "2")
    _wait(lambda: 2 in _failed_versions(server), "half-written version 2 skipped")
    shutil.copytree(tmp_path / "staging" / "2", base / "2", dirs_exist_ok=True)
    _wait(lambda: 2 in versions, "version 2 served")  # ...and retried once complete.
    # The latest policy aspires only the newest folder: 3 fails while 2 keeps serving, then 4
    # (warm-up fails) is tried and 3 is not retried, as in TF Serving.
    (base / "3").mkdir()
    (base / "3" / "saved_model.pb").write_bytes(b"not a SavedModel")
    _wait(lambda: 3 in _failed_versions(server), "version 3 skipped")
    shutil.copytree(tmp_path / "staging" / "4", base / "4")
    _wait(lambda: 4 in _failed_versions(server), "version 4 skipped")
    time.sleep(0.5)
  finally:
    stop.set()
    thread.join(TIMEOUT_S)
  assert failures == []
  assert versions == {1, 2}
  assert_serving(server, offset=10)
  states = {s["version"]: s["state"] for s in _status(server)}
  assert states == {"4": "END", "3": "END", "2": "AVAILABLE", "1": "END"}
  assert server.stop() == 0, server.log()
  assert "Skipping bert_ner version 3" in server.log()


def _status(server):
  """model_version_status from the REST status endpoint."""
  return requests.get(f"{server.rest_url}/v1/models/{MODEL}", timeout=TIMEOUT_S).json()[
    "model_version_status"
  ]


def _failed_versions(server):
  """Versions reported as END with an error."""
  return {int(s["version"]) for s in _status(server) if s["status"]["error_code"] != "OK"}


def _wait(condition, what, timeout=30):
  """Polls condition until true, failing after timeout seconds."""
  deadline = time.monotonic() + timeout
  while not condition():
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.1)


def test_length_groups_bound_padding_and_keep_every_request():
  from bert_ner.server.stacking import PADDING_BUDGET, length_groups

  lengths = [5, 40, 7, 41, 6, 12, 39, 5, 13, 90]
  requests = [{"input_ids": np.ones((1, n), np.int32)} for n in lengths]
  groups = length_groups(requests)
  assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
  for group in groups:
    longest = max(lengths[i] for i in group)
    assert len(group) * longest <= PADDING_BUDGET * sum(lengths[i] for i in group)
  assert len(groups) < len(lengths)  # similar lengths still share a run
