"""The embedded server answers as TF Serving 2.18: odd version folders, unknown-model floods
against the metrics page, request bodies, flags, Classify/Regress/MultiInference/
HandleReloadConfigRequest, a model config file with labels. Each case records its answer, time
and, where it matters, the server's RSS."""

import gzip
import http.client
import json
import re
import shutil
import subprocess
import sys
import threading
import time

import grpc
import pytest
import requests
from tensorflow_serving.apis import (
  classification_pb2,
  inference_pb2,
  model_management_pb2,
  regression_pb2,
)

from bert_ner.clients.tfs_protos import tfs_lite_pb2 as lite
from bert_ner.paths import REPO_ROOT
from bert_ner.server.process import ServerProcess
from rel_support import (
  GOOD_IDS,
  MODEL,
  PREDICT_PATH,
  excerpt,
  good_inputs,
  grpc_request,
  grpc_send,
  int_tensor,
  rest_columnar,
  rest_send,
  tensor,
)

MONITORING = REPO_ROOT / "docker" / "monitoring_config.txt"
METRICS_PATH = "/monitoring/prometheus/metrics"
POLL_S = 0.2
SETTLE_S = 30  # a version folder change is served within this
FLOOD_REQUESTS, FLOOD_THREADS = 20_000, 8
METRICS_PAGE_LIMIT = 64 << 10  # bytes: the page after the flood stays this small
FLAG_EXIT_LIMIT_S = 30


def rss_mb(pid):
  """Resident set size of a process in MB."""
  with open(f"/proc/{pid}/status") as f:
    return int(next(line for line in f if line.startswith("VmRSS")).split()[1]) // 1024


def wait_for(condition, timeout=SETTLE_S):
  """Polls condition until true or timeout; returns the seconds it took (None on timeout)."""
  started = time.monotonic()
  while time.monotonic() - started < timeout:
    if condition():
      return time.monotonic() - started
    time.sleep(0.1)
  return None


class Private:
  """A server of this module's own on a copy of version 1, polling fast, metrics enabled."""

  def __init__(self, env, work, *flags):
    self.base = work / "models"
    self.base.mkdir(parents=True)
    shutil.copytree(env.base / "1", self.base / "1")
    # Issue 10 rows 3 and 5: names TF Serving's safe_strto64 refuses, there before the start.
    for name in ("99999999999999999999", "\u00b2"):
      shutil.copytree(env.base / "1", self.base / name)
    self.server = ServerProcess(
      self.base,
      work / "server.log",
      flags=[
        "--file_system_poll_wait_seconds",
        str(POLL_S),
        "--monitoring_config_file",
        str(MONITORING),
        *flags,
      ],
    ).start()
    self.grpc, self.rest = self.server.grpc, self.server.rest

  def status(self):
    response = requests.get(f"http://{self.rest}/v1/models/{MODEL}", timeout=10)
    return {int(s["version"]): s["state"] for s in response.json()["model_version_status"]}

  def version(self):
    observed = grpc_send(
      self,
      grpc_request(good_inputs()),
    )
    return observed.body.model_spec.version.value if observed.code == "OK" else observed.code


@pytest.fixture(scope="module")
def private(env, tmp_path_factory):
  server = Private(env, tmp_path_factory.mktemp("contract"), "--enable_model_reload_api=true")
  yield server
  server.server.stop()


def test_odd_version_folders_are_ignored_and_new_versions_still_load(private, report, env):
  """Rows 3 and 5: '99999999999999999999' (over int64) and '²' (a non-ASCII digit)."""
  log = private.server.log()
  warnings = [
    n for n in ("99999999999999999999", "\u00b2") if len(re.findall(rf"Ignoring '{n}'", log)) == 1
  ]
  before = rss_mb(private.server.pid)
  started = time.monotonic()
  predicted = private.version()
  metadata = grpc_metadata(private)
  rest_meta = requests.get(f"http://{private.rest}/v1/models/{MODEL}/metadata", timeout=10)
  seconds = time.monotonic() - started
  shutil.copytree(private.base / "1", private.base / "2")
  swapped = wait_for(lambda: private.version() == 2)
  ok = (
    predicted == 1
    and metadata == "OK"
    and rest_meta.status_code == 200
    and swapped is not None
    and len(warnings) == 2
    and "Traceback" not in private.server.log()
  )
  report.add(
    "faults",
    "version folders '99999999999999999999' and '²' next to 1 (rows 3, 5)",
    "server",
    "ignored with one warning each; Predict/metadata fine; a new version 2 still loads",
    f"started; Predict from version {predicted}, gRPC metadata {metadata}, REST "
    f"metadata {rest_meta.status_code} in {seconds * 1000:.0f} ms; one warning each: "
    f"{len(warnings) == 2}; version 2 served after {swapped or 0:.1f} s; "
    f"RSS {before} -> {rss_mb(private.server.pid)} MB",
    ok,
  )
  assert ok, private.server.log()[-3000:]


def grpc_metadata(target):
  """The code of a GetModelMetadata call."""
  with grpc.insecure_channel(target.grpc) as channel:
    call = channel.unary_unary("/tensorflow.serving.PredictionService/GetModelMetadata")
    request = lite.GetModelMetadataRequest(
      model_spec=lite.ModelSpec(name=MODEL), metadata_field=["signature_def"]
    )
    try:
      call(request.SerializeToString(), timeout=10)
      return "OK"
    except grpc.RpcError as e:
      return e.code().name


def test_deleted_served_version_falls_back(private, report):
  """Row 13: delete the served version's folder while version 1 remains."""
  if private.version() != 2:
    shutil.copytree(private.base / "1", private.base / "2")
    wait_for(lambda: private.version() == 2)
  before = rss_mb(private.server.pid)
  shutil.rmtree(private.base / "2")
  seconds = wait_for(lambda: private.version() == 1)
  ended = wait_for(lambda: private.status().get(2) == "END")
  status = private.status()
  ok = seconds is not None and ended is not None and status.get(1) == "AVAILABLE"
  report.add(
    "faults",
    "delete the served version 2 while 1 remains",
    "server",
    "falls back to 1 (availability-preserving), status 2 END, 1 AVAILABLE",
    f"served by 1 after {seconds or 0:.1f} s; status {status}; "
    f"RSS {before} -> {rss_mb(private.server.pid)} MB",
    ok,
  )
  assert ok, (status, private.server.log()[-3000:])


def test_unknown_model_flood_keeps_metrics_small(private, report):
  """Row 4: 20,000 requests naming distinct unknown models."""
  before = rss_mb(private.server.pid)
  host, port = private.rest.rsplit(":", 1)
  codes, lock = {}, threading.Lock()

  def flood(start):
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    body = json.dumps(rest_columnar(GOOD_IDS))
    for i in range(start, FLOOD_REQUESTS, FLOOD_THREADS):
      connection.request(
        "POST", f"/v1/models/nope{i}:predict", body, {"Content-Type": "application/json"}
      )
      status = connection.getresponse()
      status.read()
      with lock:
        codes[status.status] = codes.get(status.status, 0) + 1
    connection.close()

  started = time.monotonic()
  threads = [threading.Thread(target=flood, args=(i,)) for i in range(FLOOD_THREADS)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  flood_s = time.monotonic() - started
  started = time.monotonic()
  page = requests.get(f"http://{private.rest}{METRICS_PATH}", timeout=30)
  page_s = time.monotonic() - started
  series = len(re.findall(r'model_name="nope', page.text))
  ok = (
    codes == {404: FLOOD_REQUESTS}
    and len(page.content) < METRICS_PAGE_LIMIT
    and series == 0
    and "<unknown model>" in page.text
    and page_s < 1
  )
  report.add(
    "load",
    f"{FLOOD_REQUESTS:,} REST predicts naming distinct unknown models",
    "rest",
    f"404 each; metrics page < {METRICS_PAGE_LIMIT >> 10} KiB, one shared "
    "series for unknown names, built in < 1 s",
    f"{codes} in {flood_s:.0f} s; page {len(page.content):,} bytes in "
    f"{page_s * 1000:.0f} ms, {series} per-name series; RSS {before} -> "
    f"{rss_mb(private.server.pid)} MB",
    ok,
  )
  assert ok, (codes, len(page.content), series, page_s)


GOOD_BODY = json.dumps(rest_columnar(GOOD_IDS)).encode()
DUPLICATE_KEYS = (
  b'{"signature_name": "result", "inputs": {"input_ids": [[101, 7327, '
  b'19164, 2446, 2655, 102]], "input_mask": [[1, 1, 1, 1, 1, 1]], "input_ids": '
  b'[[101, 102]]}, "inputs": {"input_ids": [[1]]}}'
)
REST_CASES = [
  # name, method, path, body, headers, expected status, message regex
  (
    "gzip Content-Encoding, body not gzip",
    "POST",
    PREDICT_PATH,
    GOOD_BODY,
    {"Content-Encoding": "gzip"},
    400,
    r"^JSON Parse error: The document is empty$",
  ),
  (
    "gzip Content-Encoding, gzip body",
    "POST",
    PREDICT_PATH,
    gzip.compress(GOOD_BODY),
    {"Content-Encoding": "gzip"},
    200,
    r"^$",
  ),
  (
    "JSON boolean in an int tensor [101, true, 102]",
    "POST",
    PREDICT_PATH,
    b'{"signature_name": "result", '
    b'"inputs": {"input_ids": [[101, true, 102]], "input_mask": [[1, 1, 1]]}}',
    {},
    400,
    r"^JSON Value: true Type: True is not of expected type: int32$",
  ),
  (
    "id 2**63",
    "POST",
    PREDICT_PATH,
    b'{"signature_name": "result", '
    b'"inputs": {"input_ids": [[101, 9223372036854775808]], "input_mask": [[1, 1]]}}',
    {},
    400,
    r"^JSON Value: 9223372036854775808 Type: Number is not of expected type: int32$",
  ),
  (
    "UTF-16 body",
    "POST",
    PREDICT_PATH,
    GOOD_BODY.decode().encode("utf-16"),
    {},
    400,
    r"^JSON Parse error",
  ),
  (
    "duplicated keys: the first wins",
    "POST",
    PREDICT_PATH,
    DUPLICATE_KEYS,
    {},
    200,
    r"^$",
  ),
  (
    "GET on :predict",
    "GET",
    PREDICT_PATH,
    b"",
    {},
    400,
    rf"^Malformed request: GET {re.escape(PREDICT_PATH)}$",
  ),
  (
    "unmatched /v1 path",
    "GET",
    "/v1/nothing/here",
    b"",
    {},
    400,
    r"^Malformed request: GET /v1/nothing/here$",
  ),
  (
    "upper-case path /V1/MODELS/bert_ner",
    "GET",
    f"/V1/MODELS/{MODEL}",
    b"",
    {},
    200,
    r"^$",
  ),
  (
    "upper-case predict path /V1/Models/bert_ner:predict",
    "POST",
    f"/V1/Models/{MODEL}:predict",
    GOOD_BODY,
    {},
    200,
    r"^$",
  ),
  (
    ":classify on a predict signature",
    "POST",
    f"/v1/models/{MODEL}:classify",
    b'{"signature_name": "result", "examples": [{"x": 1}]}',
    {},
    400,
    r"^Expected one input Tensor\.$",
  ),
  (
    ":regress on a predict signature",
    "POST",
    f"/v1/models/{MODEL}:regress",
    b'{"signature_name": "result", "examples": [{"x": 1}]}',
    {},
    400,
    r"^Expected one input Tensor\.$",
  ),
  ("path outside /v1 (libevent 404)", "GET", "/v2/models", b"", {}, 404, r"404 Not Found"),
  (
    "URL of 9,000 bytes",
    "POST",
    "/v1/models/" + "a" * 9000 + ":predict",
    GOOD_BODY,
    {},
    404,
    r"^Servable not found for request: Latest\(a{9000}\)$",
  ),
]


@pytest.mark.parametrize("case", REST_CASES, ids=[c[0] for c in REST_CASES])
def test_rest_contract(private, report, case):
  name, method, path, body, headers, status, message = case
  started = time.monotonic()
  response = requests.request(
    method,
    f"http://{private.rest}{path}",
    data=body,
    headers={"Content-Type": "application/json", **headers},
    timeout=30,
  )
  seconds = time.monotonic() - started
  try:
    error = response.json().get("error", "")
  except ValueError:
    error = response.text
  if name.startswith("duplicated"):
    first = requests.post(f"http://{private.rest}{PREDICT_PATH}", data=GOOD_BODY, timeout=30)
    same = response.status_code == 200 and response.json() == first.json()
  else:
    same = True
  ok = (
    response.status_code == status
    and re.search(message, error) is not None
    and same
    and "Traceback" not in private.server.log()
  )
  report.add(
    "bad requests",
    name,
    "rest",
    f"{status}, message ~ /{excerpt(message, 60)}/",
    f"{response.status_code}: {excerpt(error, 90) or '(answer)'}; {seconds * 1000:.0f} ms",
    ok,
  )
  assert ok, (response.status_code, error)


def _unary(target, method, request, response_class):
  """(code name, details, response) of one gRPC call by its full method name."""
  with grpc.insecure_channel(target.grpc) as channel:
    call = channel.unary_unary(
      method,
      request_serializer=lambda m: m.SerializeToString(),
      response_deserializer=response_class.FromString,
    )
    try:
      return "OK", "", call(request, timeout=60)
    except grpc.RpcError as e:
      return e.code().name, e.details() or "", None


SPEC = {"name": MODEL}
IDS_SPEC = {"name": MODEL, "signature_name": "result"}  # a predict signature with two inputs
GRPC_CASES = [
  (
    "gRPC tensor dtype 9999",
    "/tensorflow.serving.PredictionService/Predict",
    grpc_request(
      {"input_ids": tensor(9999, [1, 2], int_val=[101, 102]), "input_mask": int_tensor([[1, 1]])}
    ),
    lite.PredictResponse,
    "INVALID_ARGUMENT",
    r"^tensor parsing error: input_ids$",
  ),
  (
    "fewer int_val than the shape: filled as Tensor::FromProto",
    "/tensorflow.serving.PredictionService/Predict",
    grpc_request(
      {
        "input_ids": tensor(lite.DT_INT32, [1, 3], int_val=[101, 102]),
        "input_mask": int_tensor([[1, 1, 1]]),
      }
    ),
    lite.PredictResponse,
    "OK",
    r"^$",
  ),
  (
    "unknown signature",
    "/tensorflow.serving.PredictionService/Predict",
    grpc_request(good_inputs(), signature="nope"),
    lite.PredictResponse,
    "FAILED_PRECONDITION",
    r'^Serving signature key "nope" not found\.$',
  ),
  (
    "unknown version label",
    "/tensorflow.serving.PredictionService/Predict",
    grpc_request(good_inputs(), label="canary"),
    lite.PredictResponse,
    "INVALID_ARGUMENT",
    r"^Unrecognized servable version label: canary$",
  ),
  (
    "Classify on a predict signature",
    "/tensorflow.serving.PredictionService/Classify",
    classification_pb2.ClassificationRequest(model_spec=IDS_SPEC),
    classification_pb2.ClassificationResponse,
    "INVALID_ARGUMENT",
    r"^Expected one input Tensor\.$",
  ),
  (
    "Regress on a predict signature",
    "/tensorflow.serving.PredictionService/Regress",
    regression_pb2.RegressionRequest(model_spec=IDS_SPEC),
    regression_pb2.RegressionResponse,
    "INVALID_ARGUMENT",
    r"^Expected one input Tensor\.$",
  ),
  (
    "MultiInference without tasks",
    "/tensorflow.serving.PredictionService/MultiInference",
    inference_pb2.MultiInferenceRequest(),
    inference_pb2.MultiInferenceResponse,
    "INVALID_ARGUMENT",
    r"^ModelSpec has no name specified\.$",
  ),
  (
    "HandleReloadConfigRequest without a model_config_list",
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    model_management_pb2.ReloadConfigRequest(),
    model_management_pb2.ReloadConfigResponse,
    "INVALID_ARGUMENT",
    r"Only ModelConfigList is currently supported",
  ),
]


@pytest.mark.parametrize("case", GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_grpc_contract(private, report, case):
  name, method, request, response_class, code, message = case
  before = rss_mb(private.server.pid)
  started = time.monotonic()
  got, details, _ = _unary(private, method, request, response_class)
  seconds = time.monotonic() - started
  after = rss_mb(private.server.pid)
  ok = (
    got == code
    and re.search(message, details) is not None
    and after - before < 100
    and "Traceback" not in private.server.log()
  )
  report.add(
    "bad requests",
    name,
    "grpc",
    f"{code}, message ~ /{excerpt(message, 60)}/",
    f"{got}: {excerpt(details, 90) or '(answer)'}; {seconds * 1000:.0f} ms; "
    f"RSS {before} -> {after} MB",
    ok,
  )
  assert ok, (got, details, before, after)


def test_reload_config_over_grpc_applies_labels(private, report):
  """HandleReloadConfigRequest with a ModelConfigList: labels then route REST and gRPC."""
  if 2 not in [v for v, s in private.status().items() if s == "AVAILABLE"]:
    shutil.copytree(private.base / "1", private.base / "2", dirs_exist_ok=True)
  config = model_management_pb2.ReloadConfigRequest()
  model = config.config.model_config_list.config.add(
    name=MODEL, base_path=str(private.base), model_platform="tensorflow"
  )
  model.model_version_policy.all.SetInParent()
  wait_for(lambda: private.status().get(2) == "AVAILABLE")
  started = time.monotonic()
  got, details, _ = _unary(
    private,
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    config,
    model_management_pb2.ReloadConfigResponse,
  )
  both = wait_for(lambda: {1, 2} <= {v for v, s in private.status().items() if s == "AVAILABLE"})
  model.version_labels["stable"] = 1
  model.version_labels["canary"] = 2
  labelled, _, _ = _unary(
    private,
    "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
    config,
    model_management_pb2.ReloadConfigResponse,
  )
  seconds = time.monotonic() - started
  canary = rest_send(private, rest_columnar(GOOD_IDS), f"/v1/models/{MODEL}/labels/canary:predict")
  stable = grpc_send(
    private,
    grpc_request(good_inputs(), label="stable"),
  )
  ok = (
    got == "OK"
    and both is not None
    and labelled == "OK"
    and canary.code == 200
    and stable.code == "OK"
    and stable.body.model_spec.version.value == 1
  )
  report.add(
    "bad requests",
    "HandleReloadConfigRequest: policy all, labels stable=1 canary=2",
    "grpc",
    "OK; both versions AVAILABLE; /labels/canary (REST) and version_label stable (gRPC) served",
    f"{got} {details}; labels {labelled}; canary REST {canary.code}, stable gRPC "
    f"{stable.code} from version "
    f"{stable.body.model_spec.version.value if stable.body else '-'}; {seconds:.1f} s",
    ok,
  )
  assert ok, (got, details, labelled, canary, stable)


MODELS_CONFIG = """model_config_list {{
  config {{
    name: "{name}"
    base_path: "{base}"
    model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: {canary} }}
  }}
  config {{ name: "second" base_path: "{base}" model_platform: "tensorflow" }}
}}
"""


def test_model_config_file_two_models_labels_and_polling(env, report, tmp_path):
  """--model_config_file with two models, specific versions, labels; edited while serving."""
  base = tmp_path / "models"
  for version in (1, 2):
    shutil.copytree(env.base / "1", base / str(version))
  config = tmp_path / "models.config"
  config.write_text(MODELS_CONFIG.format(name=MODEL, base=base, canary=2))
  refused = subprocess.run(
    [
      sys.executable,
      "-m",
      "bert_ner.server",
      "--port",
      "0",
      "--rest_api_port",
      "0",
      "--model_config_file",
      str(config),
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )
  server = ServerProcess(
    base,
    tmp_path / "server.log",
    flags=[
      "--model_config_file",
      str(config),
      "--model_config_file_poll_wait_seconds",
      "1",
      "--allow_version_labels_for_unavailable_models",
    ],
  ).start()
  try:
    target = type("Target", (), {"grpc": server.grpc, "rest": server.rest})()
    canary = rest_send(target, rest_columnar(GOOD_IDS), f"/v1/models/{MODEL}/labels/canary:predict")
    second = rest_send(target, rest_columnar(GOOD_IDS), "/v1/models/second/versions/2:predict")
    config.write_text(MODELS_CONFIG.format(name=MODEL, base=base, canary=1))
    started = time.monotonic()
    moved = wait_for(
      lambda: (
        grpc_send(
          target,
          grpc_request(good_inputs(), label="canary"),
        ).body
        is not None
        and grpc_send(
          target,
          grpc_request(good_inputs(), label="canary"),
        ).body.model_spec.version.value
        == 1
      )
    )
    refused_line = refused.stderr.strip().splitlines()[-1] if refused.stderr.strip() else ""
    ok = (
      refused.returncode != 0
      and "FAILED_PRECONDITION" in refused_line
      and "Traceback" not in refused.stderr
      and canary.code == 200
      and second.code == 200
      and moved is not None
    )
    report.add(
      "faults",
      "--model_config_file: 2 models, specific {1,2}, stable=1 canary=2, "
      "then canary moved to 1 in the file",
      "server",
      "without --allow_version_labels_for_unavailable_models: refused at start "
      "(FAILED_PRECONDITION); with it: labels and both models served, the edit applied "
      "by the poll",
      f"without: exit {refused.returncode} '{excerpt(refused_line, 100)}'; with: canary "
      f"{canary.code}, second v2 {second.code}; canary on 1 after "
      f"{moved or 0:.1f} s ({time.monotonic() - started:.1f} s)",
      ok,
    )
    assert ok, (refused.stderr[-2000:], canary, second, moved, server.log()[-2000:])
  finally:
    server.stop()


def _flag_cases(tmp_path):
  not_a_dir = tmp_path / "file"
  not_a_dir.write_text("x")
  return [
    ("--port 99999", ["--port", "99999"]),
    ("--rest_api_port 99999", ["--rest_api_port", "99999"]),
    ("--num_batch_threads 0", ["--num_batch_threads", "0"]),
    ("--model_base_path is a file", ["--model_base_path", str(not_a_dir)]),
    (
      "--monitoring_config_file unreadable",
      ["--monitoring_config_file", str(tmp_path / "missing.txt")],
    ),
  ]


def test_bad_flags_are_one_line_errors(env, report, tmp_path):
  """Row 15: each bad flag exits non-zero with one line on stderr and no traceback."""
  for name, flags in _flag_cases(tmp_path):
    started = time.monotonic()
    result = subprocess.run(
      [sys.executable, "-m", "bert_ner.server", "--model_base_path", str(env.base), *flags],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=FLAG_EXIT_LIMIT_S * 4,
    )
    seconds = time.monotonic() - started
    lines = [
      line
      for line in result.stderr.splitlines()
      if line.strip()
      and not re.match(r"^(WARNING|I0000|W0000|E0000|To enable|.*cuda|.*oneDNN)", line)
    ]
    ok = (
      result.returncode != 0
      and len(lines) == 1
      and "Traceback" not in result.stderr
      and seconds < FLAG_EXIT_LIMIT_S
    )
    report.add(
      "faults",
      f"python -m bert_ner.server {name}",
      "server",
      "one clear line on stderr, non-zero exit, no traceback",
      f"exit {result.returncode} in {seconds:.1f} s: "
      f"{excerpt(lines[-1] if lines else '(nothing)', 110)}",
      ok,
    )
    assert ok, (name, result.returncode, result.stderr[-2000:])
