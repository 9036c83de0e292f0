"""Reliability of the served model end to end: bad inputs, load, faults and security.

A tiny random export served by `python -m server` on free loopback ports (127.0.0.1 only) gets
a corpus of bad requests on REST and gRPC, bad texts through both client classes, 5,000
concurrent requests, SIGKILLs of the server and of an export, a corrupt version directory and
static security checks. Every case records what it expected and what it observed; at the end
of the session the collector writes build/RELIABILITY.md, or docs/RELIABILITY.md for a full run
with WRITE_RELIABILITY_REPORT=1 (`make reliability-report`).
"""

import dataclasses
import ipaddress
import json
import os
import pickle
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import psutil
import pytest
import requests

from clients import common, grpc_client, rest_client
from clients.tfs_protos import tfs_lite_pb2 as lite
from e2e_support import REPO_ROOT, ServerProcess, free_port, make_checkpoint

MODEL = "bert_ner"
VOCAB_SIZE, POSITIONS = 30522, 64  # conftest.TINY_BERT_CONFIG
CLS, SEP = 101, 102
GOOD_IDS = [[CLS, 7327, 19164, 2446, 2655, 102]]  # [CLS] eu rejects german call [SEP]
PREDICT_PATH = f"/v1/models/{MODEL}:predict"
PREDICT_RPC = "/tensorflow.serving.PredictionService/Predict"
HTTP_TIMEOUT_S = 30
CLIENT_TIMEOUT_S = 5.0
CASE_TIME_LIMIT_S = 10.0
HUGE_ROWS, HUGE_LEN = 10_000, 8
OVERSIZE_BYTES = 10 << 20  # the server's default --max_request_bytes is 8 MiB
LOAD_THREADS, LOAD_REQUESTS, WARMUP_REQUESTS = 32, 5000, 320
LOAD_TIME_LIMIT_S = 150
RSS_GROWTH_LIMIT_MB = 150
RECOVERY_LIMIT_S = 60
RECONNECT_LIMIT_S = 3.0  # a restarted server is usable by existing clients this soon
# The server stays down about this long: gRPC's default reconnect backoff (1 s x 1.6 per try,
# +-20 %) next retries ~26 s after the kill, so a client without a backoff cap waits ~9 s more.
OUTAGE_S = 17.0
EXPORT_TIMEOUT_S = 300
VERSION_SWAP_LIMIT_S = 120
SENTENCES = ["EU rejects German call to boycott British lamb .", "Peter Blackburn",
             "BRUSSELS 1996-08-22", "Japan began the defence of their Asian Cup title ."]
DOC = REPO_ROOT / "docs" / "RELIABILITY.md"
PARTIAL_DOC = REPO_ROOT / "build" / "RELIABILITY.md"  # build/ is not tracked
SECTIONS = ("bad requests", "bad texts", "load", "faults", "security")
NOTES = [
    "REST ignores Content-Type, as TF Serving does (`curl -d` sends "
    "application/x-www-form-urlencoded): a JSON body is served whatever the header says, any "
    "other body is refused 400 'JSON Parse error'.",
    "gRPC binds dual-stack sockets: the default 127.0.0.1 shows as ::ffff:127.0.0.1 and "
    "--host 0.0.0.0 as :: (every IPv4 and IPv6 interface).",
    "Found by this suite and fixed: an undecodable gRPC request was answered UNKNOWN "
    "'Unexpected <class DecodeError>' with a server-side traceback (now INVALID_ARGUMENT); a "
    "long-lived gRPC client stayed UNAVAILABLE for seconds to minutes after the server came back, "
    "because gRPC's reconnect backoff grows to 120 s (now capped at 2 s); the clients failed to "
    "import after the featurizer dropped LABEL2ID_FILE.",
]


# ---------------------------------------------------------------- the collector


@dataclasses.dataclass
class Row:
  section: str
  case: str
  transport: str
  expected: str
  observed: str
  ok: bool


class Report:
  """Cases as they ran (expected vs observed) and the headline counts; writes the Markdown."""

  def __init__(self):
    self.rows, self.counts, self.notes = [], {}, list(NOTES)
    self.started = time.monotonic()

  def add(self, section, case, transport, expected, observed, ok):
    self.rows.append(Row(section, case, transport, expected, observed, bool(ok)))
    return ok

  def write(self, path):
    sections = {r.section for r in self.rows}
    # The committed report changes only on request (`make reliability-report`), so a plain
    # `make test` leaves the work tree clean; a partial run (-k, -x) never replaces it.
    if not set(SECTIONS) <= sections or os.environ.get("WRITE_RELIABILITY_REPORT") != "1":
      path = PARTIAL_DOC
      path.parent.mkdir(parents=True, exist_ok=True)
    cell = lambda text: " ".join(str(text).split()).replace("|", "\\|")
    failed = [r for r in self.rows if not r.ok]
    lines = [
        "# Reliability report",
        "",
        "Written by `tests/test_reliability.py` (`make test`, or "
        "`.venv/bin/python -m pytest -q tests/test_reliability.py`) from what the run observed; "
        "do not edit by hand. A tiny random BERT-NER export (2 layers, hidden 32, vocabulary "
        f"{VOCAB_SIZE}, {POSITIONS} positions, max_seq_length 32) is served by "
        "`python -m server` with its default flags on free 127.0.0.1 ports; nothing is sent to "
        "any other address.",
        "",
        "## Counts",
        "",
        "| | |",
        "|---|---|",
        f"| cases tried | {len(self.rows)} ({len(self.rows) - len(failed)} as expected, "
        f"{len(failed)} not) |",
    ]
    lines += [f"| {cell(k)} | {cell(v)} |" for k, v in self.counts.items()]
    lines += [f"| machine | {os.cpu_count()} CPU cores, shared |", ""]
    if self.notes:
      lines += ["## Notes", ""] + [f"- {n}" for n in self.notes] + [""]
    for section in SECTIONS:
      lines += [f"## {section.capitalize()}", "",
                "| case | transport | expected | observed | |", "|---|---|---|---|---|"]
      lines += [f"| {cell(r.case)} | {cell(r.transport)} | {cell(r.expected)} | "
                f"{cell(r.observed)} | {'ok' if r.ok else '**FAILED**'} |"
                for r in self.rows if r.section == section]
      lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


@pytest.fixture(scope="session")
def report():
  """Session-wide collector; writes docs/RELIABILITY.md when the session ends."""
  collector = Report()
  yield collector
  collector.write(DOC)


def excerpt(text, limit=110):
  """One line of at most limit characters; pytest's temp dirs read <tmp>."""
  text = re.sub(r"/\S*?/pytest-\d+/", "<tmp>/", " ".join(str(text).split()))
  return text if len(text) <= limit else text[:limit - 3] + "..."


# ---------------------------------------------------------------- the deployment under test


class Deployment:
  """The served model base, its checkpoint and assets, and the server on fixed loopback ports."""

  def __init__(self, work, ckpt, base, verify_file):
    self.work, self.ckpt, self.base, self.verify_file = work, ckpt, base, verify_file
    self.assets = base / "1" / "assets.extra"
    self.server = ServerProcess(base, work / "server.log", free_port(), free_port())
    self.restarts, self.start_seconds = 0, 0.0
    self.versions_served = [1]
    self.children = []  # other processes a test started; killed at teardown

  @property
  def grpc(self):
    return f"127.0.0.1:{self.server.grpc_port}"

  @property
  def rest(self):
    return f"127.0.0.1:{self.server.rest_port}"

  def client(self, transport, timeout=CLIENT_TIMEOUT_S):
    if transport == "grpc":
      return grpc_client.GrpcNerClient(self.grpc, timeout=timeout, assets=self.assets)
    return rest_client.RestNerClient(self.rest, timeout=timeout, assets=self.assets)

  def export_command(self, *extra):
    return [sys.executable, "-m", "export", "--checkpoint", str(self.ckpt), "--model_base_path",
            str(self.base), "--verify_file", str(self.verify_file), "--verify_sentences", "2",
            *extra]


@pytest.fixture(scope="module")
def env(tiny_bert_dir, tmp_path_factory):
  """Version 1 exported in-process, served by `python -m server` (defaults, fixed free ports)."""
  from export import exporter

  work = tmp_path_factory.mktemp("reliability")
  ckpt = make_checkpoint(tiny_bert_dir, work / "ckpt")
  verify_file = work / "verify.txt"
  verify_file.write_text("\n\n".join("\n".join(s.split()) for s in SENTENCES[:2]) + "\n")
  base = work / "models" / MODEL
  exporter.export_model(str(ckpt), str(base), None, [s.split() for s in SENTENCES[:2]],
                        log=lambda *_: None)
  deployment = Deployment(work, ckpt, base, verify_file)
  started = time.monotonic()
  deployment.server.start()
  deployment.start_seconds = time.monotonic() - started
  try:
    yield deployment
  finally:
    for child in deployment.children:
      if child.poll() is None:
        child.kill()
        child.wait(timeout=30)
    deployment.server.stop()


# ---------------------------------------------------------------- raw requests


@dataclasses.dataclass
class Observed:
  code: object  # HTTP status (int) or gRPC status name (str)
  message: str
  seconds: float
  body: object = None


def rest_send(env, body, path=PREDICT_PATH, headers=None, method="POST"):
  """One raw REST request; a dict body goes as JSON, bytes as they are."""
  data = json.dumps(body).encode() if isinstance(body, dict) else body
  headers = headers or {"Content-Type": "application/json"}
  started = time.monotonic()
  try:
    response = requests.request(method, f"http://{env.rest}{path}", data=data, headers=headers,
                                timeout=HTTP_TIMEOUT_S)
  except requests.RequestException as e:
    return Observed(f"no HTTP answer ({type(e).__name__})", str(e), time.monotonic() - started)
  seconds = time.monotonic() - started
  try:
    document = response.json()
  except ValueError:
    return Observed(response.status_code, response.text[:300], seconds)
  message = document.get("error", "") if isinstance(document, dict) else ""
  return Observed(response.status_code, message, seconds, document)


def grpc_send(env, request, timeout=HTTP_TIMEOUT_S):
  """One raw Predict call; request is a lite PredictRequest or raw bytes."""
  payload = request if isinstance(request, bytes) else request.SerializeToString()
  started = time.monotonic()
  with grpc.insecure_channel(env.grpc) as channel:
    predict = channel.unary_unary(PREDICT_RPC)
    try:
      raw = predict(payload, timeout=timeout)
    except grpc.RpcError as e:
      return Observed(e.code().name, e.details() or "", time.monotonic() - started)
  return Observed("OK", "", time.monotonic() - started, lite.PredictResponse.FromString(raw))


def int_tensor(values):
  """int32 TensorProto (tensor_content) of a rectangular list."""
  return grpc_client.make_tensor(np.asarray(values, dtype=np.int64))


def tensor(dtype, shape, **values):
  return lite.TensorProto(dtype=dtype, tensor_shape=lite.TensorShapeProto(
      dim=[lite.TensorShapeProto.Dim(size=n) for n in shape]), **values)


def mask_of(ids):
  return [[1] * len(row) for row in ids] if isinstance(ids[0], list) else [1] * len(ids)


def grpc_request(inputs, name=MODEL, signature="serving_default", version=None, label=None):
  spec = lite.ModelSpec(name=name, signature_name=signature)
  if version is not None:
    spec.version.value = version
  if label is not None:
    spec.version_label = label
  return lite.PredictRequest(model_spec=spec, inputs=inputs)


def rest_columnar(ids, mask=None, **extra):
  inputs = {"input_ids": ids, "input_mask": mask_of(ids) if mask is None else mask, **extra}
  return {"signature_name": "serving_default", "inputs": inputs}


def good(env, transport):
  """A good one-row request on a transport; returns Observed (code 200 / OK on success)."""
  if transport == "rest":
    return rest_send(env, rest_columnar(GOOD_IDS))
  return grpc_send(env, grpc_request({"input_ids": int_tensor(GOOD_IDS),
                                      "input_mask": int_tensor(mask_of(GOOD_IDS))}))


def served_version(env):
  """The version number a gRPC Predict answers from (None if the call fails)."""
  observed = good(env, "grpc")
  return observed.body.model_spec.version.value if observed.code == "OK" else None


# ---------------------------------------------------------------- 1. bad requests


@dataclasses.dataclass
class Case:
  """A bad request: how to send it on each transport and what must come back."""
  name: str
  rest: object = None  # dict | bytes | callable(env) -> Observed | None (not applicable)
  grpc: object = None  # lite.PredictRequest | bytes | callable(env) -> Observed | None
  rest_status: tuple = (400,)
  grpc_code: tuple = ("INVALID_ARGUMENT",)
  message: str = ""  # regex the error message must match
  rest_path: str = PREDICT_PATH
  rest_headers: dict = None
  time_limit: float = CASE_TIME_LIMIT_S
  check: object = None  # callable(transport, Observed) -> bool for accepted answers


def both(inputs_rest, inputs_grpc, **kwargs):
  return dict(rest=inputs_rest, grpc=inputs_grpc, **kwargs)


def huge_ok(transport, observed):
  """accepted with one prediction row each, or refused with a size error"""
  if observed.code in (200, "OK"):
    if transport == "rest":
      return np.asarray(observed.body["outputs"]).shape == (HUGE_ROWS, HUGE_LEN)
    shape = [d.size for d in observed.body.outputs["pred_label"].tensor_shape.dim]
    return shape == [HUGE_ROWS, HUGE_LEN]
  return observed.code in (413, "RESOURCE_EXHAUSTED") and re.search(
      r"(?i)large|size|exceed|max", observed.message)


def empty_batch_ok(transport, observed):
  """an empty prediction, or refused with a message naming the empty batch or shape"""
  if observed.code in (200, "OK"):
    if transport == "rest":
      return np.asarray(observed.body["outputs"]).size == 0
    return [d.size for d in observed.body.outputs["pred_label"].tensor_shape.dim][0] == 0
  return observed.code in (400, "INVALID_ARGUMENT") and re.search(
      r"(?i)empty|non-empty|shape|rows|batch", observed.message)


def curl_json_ok(transport, observed):
  """accepted as TF Serving accepts it, which ignores Content-Type: one row of 6 predictions"""
  return np.asarray(observed.body["outputs"]).shape == (1, 6)


def http11_to_grpc_port(env):
  """A plain HTTP/1.1 JSON POST to the gRPC port: what comes back before the socket closes."""
  host, port = env.grpc.rsplit(":", 1)
  body = json.dumps(rest_columnar(GOOD_IDS)).encode()
  started = time.monotonic()
  with socket.create_connection((host, int(port)), timeout=HTTP_TIMEOUT_S) as s:
    s.sendall(b"POST " + PREDICT_RPC.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
              b"application/json\r\nContent-Length: " + str(len(body)).encode() +
              b"\r\nConnection: close\r\n\r\n" + body)
    answer = b""
    while len(answer) < 4096 and (chunk := s.recv(4096)):
      answer += chunk
  seconds = time.monotonic() - started
  status = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
  if status:
    return Observed(int(status.group(1)), excerpt(answer.decode("latin-1")), seconds)
  # An HTTP/2 frame header: 3 bytes length, 1 byte type (4 SETTINGS, 7 GOAWAY).
  kinds = {4: "SETTINGS", 7: "GOAWAY", 8: "WINDOW_UPDATE"}
  frames, at = [], 0
  while at + 9 <= len(answer):
    frames.append(kinds.get(answer[at + 3], f"type {answer[at + 3]}"))
    at += 9 + int.from_bytes(answer[at:at + 3], "big")
  return Observed("connection closed", f"{len(answer)} bytes back: HTTP/2 frames "
                  f"{', '.join(frames) or 'none'}, no HTTP/1 response", seconds)


def nested_json(depth):
  return b'{"inputs": {"input_ids": ' + b"[" * depth + b"]" * depth + b"}}"


def oversize_rest():
  row = b"[" + b",".join([b"1000"] * 1000) + b"]"
  rows = b",".join([row] * (OVERSIZE_BYTES // len(row) + 1))
  return b'{"inputs": {"input_ids": [' + rows + b'], "input_mask": [[1]]}}'


def oversize_grpc():
  ids = np.full((OVERSIZE_BYTES // 4 // 1000 + 1, 1000), 1000, np.int32)
  return grpc_request({"input_ids": grpc_client.make_tensor(ids),
                       "input_mask": grpc_client.make_tensor([[1]])})


def huge_ids():
  return np.random.default_rng(0).integers(1000, 2000, (HUGE_ROWS, HUGE_LEN)).tolist()


ONE_D = [CLS, 7327, SEP]
LONG_IDS = [[CLS] + [7327] * (POSITIONS - 1) + [SEP]]  # POSITIONS + 1 long
CASES = [
    Case("malformed body (truncated JSON / undecodable protobuf)",
         rest=b'{"inputs": {"input_ids": [[101, 102]', grpc=b"\x0a\xff\x01garbage",
         message=r"JSON Parse error|cannot parse the request"),
    Case("body not UTF-8", rest=b'{"inputs": "\xff\xfe"}', message=r"JSON Parse error"),
    Case("body is a JSON array, not an object", rest=b"[[101, 102]]",
         message=r"not a JSON object"),
    Case("deeply nested JSON (100,000 levels)", rest=nested_json(100_000),
         message=r"(?i)JSON Parse error|nested|recursion"),
    Case("wrong content type, non-JSON body (form-encoded)",
         rest=b"input_ids=101&input_mask=1",
         rest_headers={"Content-Type": "application/x-www-form-urlencoded"},
         message=r"JSON Parse error"),
    Case("JSON body sent with curl -d's default content type (form-urlencoded)",
         rest=json.dumps(rest_columnar(GOOD_IDS)).encode(),
         rest_headers={"Content-Type": "application/x-www-form-urlencoded"}, rest_status=(200,),
         check=curl_json_ok),
    Case("wrong HTTP method (GET on :predict)",
         rest=lambda env: rest_send(env, b"", method="GET"), rest_status=(405,),
         message=r"(?i)method not allowed"),
    Case("both 'inputs' and 'instances'", rest=dict(rest_columnar(GOOD_IDS), instances=[]),
         message=r"only one of 'inputs' or 'instances'"),
    Case("wrong protocol: HTTP/1.1 JSON POST to the gRPC port", grpc=http11_to_grpc_port,
         grpc_code=("connection closed", 400, 403, 404, 405, 415, 426, 505),
         message=""),
    Case("missing input (no input_mask)",
         **both({"inputs": {"input_ids": GOOD_IDS}},
                grpc_request({"input_ids": int_tensor(GOOD_IDS)})),
         message=r"Missing but required: \{input_mask\}"),
    Case("extra input (token_type_ids)",
         **both(rest_columnar(GOOD_IDS, token_type_ids=[[0] * 6]),
                grpc_request({"input_ids": int_tensor(GOOD_IDS),
                              "input_mask": int_tensor(mask_of(GOOD_IDS)),
                              "token_type_ids": int_tensor([[0] * 6])})),
         message=r"Sent extra: \{token_type_ids\}"),
    Case("wrong dtype: float ids",
         **both(rest_columnar([[101.5, 102.0]]),
                grpc_request({"input_ids": tensor(lite.DT_FLOAT, [1, 2], float_val=[101.5, 102]),
                              "input_mask": int_tensor([[1, 1]])})),
         message=r"input_ids.*(float).*int32|int32 but float"),
    Case("wrong dtype: string ids",
         **both(rest_columnar([["101", "102"]]),
                grpc_request({"input_ids": tensor(lite.DT_STRING, [1, 2],
                                                  string_val=[b"101", b"102"]),
                              "input_mask": int_tensor([[1, 1]])})),
         message=r"input_ids.*string.*int32|int32 but string"),
    Case("wrong rank: 1-D ids",
         **both(rest_columnar(ONE_D, [1, 1, 1]),
                grpc_request({"input_ids": int_tensor(ONE_D), "input_mask": int_tensor([1] * 3)})),
         message=r"input_ids has shape \[3\] but the signature expects \[-1,-1\]"),
    Case("wrong rank: 3-D ids",
         **both(rest_columnar([GOOD_IDS], [mask_of(GOOD_IDS)]),
                grpc_request({"input_ids": int_tensor([GOOD_IDS]),
                              "input_mask": int_tensor([mask_of(GOOD_IDS)])})),
         message=r"input_ids has shape \[1,1,6\] but the signature expects \[-1,-1\]"),
    Case("ragged rows (REST) / value count != shape (gRPC)",
         **both(rest_columnar([[CLS, 7327, SEP], [CLS, SEP]], [[1, 1, 1], [1, 1]]),
                grpc_request({"input_ids": tensor(lite.DT_INT32, [2, 3],
                                                  int_val=[CLS, 7327, SEP, CLS, SEP]),
                              "input_mask": int_tensor([[1, 1, 1], [1, 1, 0]])})),
         message=r"rectangular|5 values but its shape \[2,3\] needs 6"),
    Case("tensor_content shorter than its shape", grpc=grpc_request(
        {"input_ids": tensor(lite.DT_INT32, [2, 3], tensor_content=b"\x01\x00\x00\x00" * 5),
         "input_mask": int_tensor([[1, 1, 1], [1, 1, 0]])}),
         message=r"input_ids"),
    Case("input_mask shape != input_ids shape",
         **both(rest_columnar(GOOD_IDS, [[1, 1, 1, 1]]),
                grpc_request({"input_ids": int_tensor(GOOD_IDS),
                              "input_mask": int_tensor([[1, 1, 1, 1]])})),
         message=r"input_mask shape \[1,4\] does not match input_ids shape \[1,6\]"),
    Case("negative ids",
         **both(rest_columnar([[CLS, -5, SEP]]),
                grpc_request({"input_ids": int_tensor([[CLS, -5, SEP]]),
                              "input_mask": int_tensor([[1, 1, 1]])})),
         message=rf"-5, outside the vocabulary \[0, {VOCAB_SIZE}\)"),
    Case("ids >= vocabulary size",
         **both(rest_columnar([[CLS, VOCAB_SIZE, SEP]]),
                grpc_request({"input_ids": int_tensor([[CLS, VOCAB_SIZE, SEP]]),
                              "input_mask": int_tensor([[1, 1, 1]])})),
         message=rf"{VOCAB_SIZE}, outside the vocabulary"),
    Case("ids beyond int32 (2**40)", rest=rest_columnar([[CLS, 2**40, SEP]]),
         message=r"outside the range of int32"),
    Case(f"sequence longer than the position table ({POSITIONS + 1} > {POSITIONS})",
         **both(rest_columnar(LONG_IDS),
                grpc_request({"input_ids": int_tensor(LONG_IDS),
                              "input_mask": int_tensor(mask_of(LONG_IDS))})),
         message=rf"length {POSITIONS + 1} but the model has only {POSITIONS} positions"),
    Case("empty batch: 'instances': []", rest={"instances": []},
         message=r"non-empty"),
    Case("empty batch: 0 rows ([] / shape [0,8])",
         **both(rest_columnar([], []),
                grpc_request({"input_ids": tensor(lite.DT_INT32, [0, 8]),
                              "input_mask": tensor(lite.DT_INT32, [0, 8])})),
         rest_status=(200, 400), grpc_code=("OK", "INVALID_ARGUMENT"), check=empty_batch_ok),
    Case(f"huge batch: {HUGE_ROWS:,} rows x {HUGE_LEN}",
         **both(lambda env: rest_send(env, rest_columnar(huge_ids())),
                lambda env: grpc_send(env, grpc_request(
                    {"input_ids": int_tensor(huge_ids()),
                     "input_mask": int_tensor(np.ones((HUGE_ROWS, HUGE_LEN)))}))),
         rest_status=(200, 413), grpc_code=("OK", "RESOURCE_EXHAUSTED"), check=huge_ok,
         time_limit=60),
    Case(f"body over the limit ({OVERSIZE_BYTES >> 20} MiB > 8 MiB default)",
         **both(lambda env: rest_send(env, oversize_rest()),
                lambda env: grpc_send(env, oversize_grpc())),
         rest_status=(413,), grpc_code=("RESOURCE_EXHAUSTED",),
         message=r"(?i)too large|larger than max|exceeds|maximum"),
    Case("unknown model",
         **both(rest_columnar(GOOD_IDS), grpc_request({
             "input_ids": int_tensor(GOOD_IDS), "input_mask": int_tensor(mask_of(GOOD_IDS))},
             name="nope")),
         rest_path="/v1/models/nope:predict", rest_status=(404,), grpc_code=("NOT_FOUND",),
         message=r"Servable not found for request: Latest\(nope\)"),
    Case("unknown version (99)",
         **both(rest_columnar(GOOD_IDS), grpc_request({
             "input_ids": int_tensor(GOOD_IDS), "input_mask": int_tensor(mask_of(GOOD_IDS))},
             version=99)),
         rest_path=f"/v1/models/{MODEL}/versions/99:predict", rest_status=(404,),
         grpc_code=("NOT_FOUND",), message=rf"Specific\({MODEL}, 99\)"),
    Case("unknown version label",
         **both(rest_columnar(GOOD_IDS), grpc_request({
             "input_ids": int_tensor(GOOD_IDS), "input_mask": int_tensor(mask_of(GOOD_IDS))},
             label="canary")),
         rest_path=f"/v1/models/{MODEL}/labels/canary:predict", rest_status=(404,),
         grpc_code=("NOT_FOUND",), message=r"version label: canary"),
    Case("unknown signature",
         **both(dict(rest_columnar(GOOD_IDS), signature_name="nope"), grpc_request({
             "input_ids": int_tensor(GOOD_IDS), "input_mask": int_tensor(mask_of(GOOD_IDS))},
             signature="nope")),
         rest_status=(400, 404), grpc_code=("NOT_FOUND", "INVALID_ARGUMENT",
                                            "FAILED_PRECONDITION"),
         message=r'Serving signature key "nope" not found'),
    Case("unknown REST route (:explode)", rest=rest_columnar(GOOD_IDS),
         rest_path=f"/v1/models/{MODEL}:explode", rest_status=(404,), message=r"(?i)not found"),
]


def expected_text(case, transport):
  codes = case.rest_status if transport == "rest" else case.grpc_code
  text = " or ".join(map(str, codes))
  if case.check is not None:
    text += f" ({case.check.__doc__.strip()})"
  elif case.message:
    text += f", message ~ /{case.message}/"
  return text + f", < {case.time_limit:g} s; then a good request succeeds"


def send(env, case, transport):
  spec = case.rest if transport == "rest" else case.grpc
  if callable(spec):
    return spec(env)
  if transport == "rest":
    return rest_send(env, spec, case.rest_path, case.rest_headers)
  return grpc_send(env, spec)


@pytest.mark.parametrize("case,transport", [
    pytest.param(case, transport, id=f"{transport}-{re.sub(r'[^a-z0-9]+', '_', case.name.lower())}")
    for case in CASES for transport in ("rest", "grpc")
    if (case.rest if transport == "rest" else case.grpc) is not None])
def test_bad_request(env, report, case, transport):
  observed = send(env, case, transport)
  after = good(env, transport)
  codes = case.rest_status if transport == "rest" else case.grpc_code
  accepted = observed.code in codes and (
      case.check(transport, observed) if case.check else
      re.search(case.message, observed.message) is not None)
  fast = observed.seconds < case.time_limit
  alive = after.code in (200, "OK") and env.server.proc.poll() is None
  text = f"{observed.code}: {excerpt(observed.message) or '(no message)'}"
  if observed.code in (200, "OK") and case.check is huge_ok:
    text = f"{observed.code}: all {HUGE_ROWS:,} rows predicted"
  if observed.code in (200, "OK") and case.check is empty_batch_ok:
    text = f"{observed.code}: empty prediction"
  report.add("bad requests", case.name, transport, expected_text(case, transport),
             f"{text}; {observed.seconds * 1000:.0f} ms; next good request: {after.code}",
             accepted and fast and alive)
  assert observed.code in codes, observed
  assert accepted, observed
  assert fast, f"took {observed.seconds:.1f}s"
  assert alive, (after, env.server.log()[-3000:])


# ---------------------------------------------------------------- 1b. bad texts via the clients


TEXTS = {
    "empty string": "",
    "whitespace only": " \t\n\r\u00a0\u2003 ",
    "20,000-word text": " ".join(
        " ".join(SENTENCES).split()[i % 23] for i in range(20_000)),
    "control characters": "EU\x01 rejects\x07 German\x1b[31m call\x7f to\x0b boycott\x0c British",
    "emoji": "\U0001f642 EU rejects \U0001f44d\U0001f3fd German call \U0001f1e9\U0001f1ea lamb",
    "CJK": "\u6b27\u76df\u62d2\u7edd\u5fb7\u56fd\u7684\u547c\u5401 EU \u6771\u4eac\u90fd "
           "\uc11c\uc6b8 \u30bd\u30cb\u30fc",
    "right-to-left (Arabic, Hebrew, RLM marks)": "\u0627\u0644\u0627\u062a\u062d\u0627\u062f "
        "\u0627\u0644\u0623\u0648\u0631\u0648\u0628\u064a \u200f\u05d9\u05e8\u05d5\u05e9\u05dc"
        "\u05d9\u05dd\u200f German \u202bcall\u202c",
    "NUL bytes": "EU\x00rejects\x00 German \x00\x00call",
    "combining accents and zero-width": "Zu\u0308rich\u200b EU\u200d Ge\u0301rman cafe\u0301",
}


def entities_sensible(text, entities):
  """Entities lie inside the text, name their own span and carry one of the label types."""
  return isinstance(entities, list) and all(
      0 <= e.start < e.end <= len(text) and text[e.start:e.end] == e.text and
      e.type in {"LOC", "MISC", "ORG", "PER"} for e in entities)


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_bad_texts_through_the_clients(env, report, transport):
  client = env.client(transport, timeout=60)
  client.check_fingerprint()
  failures = []
  for name, text in TEXTS.items():
    started = time.monotonic()
    try:
      result = client.predict([text])
      error = None
    except Exception as e:  # any exception is a finding: recorded, then asserted below
      result, error = None, f"{type(e).__name__}: {excerpt(e)}"
    seconds = time.monotonic() - started
    if error:
      observed, ok = f"raised {error}", False
    else:
      entities = result[0] if len(result) == 1 else None
      ok = entities is not None and entities_sensible(text, entities)
      if name in ("empty string", "whitespace only"):
        ok = ok and entities == []
      observed = f"{len(entities or [])} entities, offsets inside the text: {ok}"
    words = len(text.split())
    report.add("bad texts", f"{name} ({len(text):,} chars, {words:,} words)", transport,
               "a list of entities, each text[start:end] == entity.text; no exception"
               + (" ([] for empty input)" if name in ("empty string", "whitespace only") else ""),
               f"{observed}; {seconds * 1000:.0f} ms", ok)
    if not ok:
      failures.append((name, observed))
  assert not failures


# ---------------------------------------------------------------- 2. load


def _run_load(env, clients, total, deadline_s):
  """Sends `total` single-sentence requests from len(clients) threads; returns stats."""
  lock = threading.Lock()
  issued = {"n": 0}
  errors, latencies, by_transport = [], [], {"grpc": 0, "rest": 0}
  deadline = time.monotonic() + deadline_s

  def worker(index):
    pair = clients[index]
    while time.monotonic() < deadline:
      with lock:
        if issued["n"] >= total:
          return
        n = issued["n"]
        issued["n"] += 1
      transport = "grpc" if n % 2 == 0 else "rest"
      text = SENTENCES[(n // 2) % len(SENTENCES)]
      started = time.monotonic()
      try:
        result = pair[transport].predict([text])
        if not entities_sensible(text, result[0]):
          raise AssertionError(f"bad entities for {text!r}: {result}")
      except Exception as e:  # counted as an error of the load run
        with lock:
          errors.append(f"{transport}: {type(e).__name__}: {excerpt(e)}")
        continue
      with lock:
        latencies.append(time.monotonic() - started)
        by_transport[transport] += 1

  started = time.monotonic()
  with futures.ThreadPoolExecutor(len(clients)) as pool:
    jobs = [pool.submit(worker, i) for i in range(len(clients))]
    futures.wait(jobs, timeout=deadline_s + 2 * CLIENT_TIMEOUT_S)
  elapsed = time.monotonic() - started
  return {"issued": issued["n"], "ok": len(latencies), "errors": errors, "seconds": elapsed,
          "by_transport": by_transport, "latencies": sorted(latencies)}


def test_load_32_threads_5000_requests(env, report):
  server = psutil.Process(env.server.pid)
  clients = [{t: env.client(t) for t in ("grpc", "rest")} for _ in range(LOAD_THREADS)]
  warm = _run_load(env, clients, WARMUP_REQUESTS, LOAD_TIME_LIMIT_S)
  assert not warm["errors"], warm["errors"][:5]
  rss_warm = server.memory_info().rss
  stats = _run_load(env, clients, LOAD_REQUESTS, LOAD_TIME_LIMIT_S)
  rss_after = server.memory_info().rss
  growth_mb = (rss_after - rss_warm) / 2**20
  rate = stats["ok"] / stats["seconds"]
  lat = stats["latencies"] or [0.0]
  p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
  report.counts.update({
      "requests sent under load": f"{stats['issued']:,} ({stats['by_transport']['grpc']:,} "
                                  f"gRPC + {stats['by_transport']['rest']:,} REST answered; "
                                  f"{LOAD_THREADS} threads; after {WARMUP_REQUESTS} warm-up)",
      "errors under load": len(stats["errors"]),
      "throughput under load": f"{rate:.0f} requests/s over {stats['seconds']:.1f} s "
                               f"(p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms)",
      "server RSS growth during load": f"{growth_mb:+.1f} MB ({rss_warm / 2**20:.0f} MB after "
                                       f"warm-up -> {rss_after / 2**20:.0f} MB; "
                                       f"bound {RSS_GROWTH_LIMIT_MB} MB)"})
  complete = stats["issued"] == LOAD_REQUESTS and stats["ok"] == LOAD_REQUESTS
  report.add("load", f"{LOAD_REQUESTS:,} single-sentence requests, {LOAD_THREADS} threads, "
             "alternating transports", "gRPC + REST",
             f"all {LOAD_REQUESTS:,} answered, 0 errors, < {LOAD_TIME_LIMIT_S} s",
             f"{stats['ok']:,} answered, {len(stats['errors'])} errors, "
             f"{stats['seconds']:.1f} s, {rate:.0f} requests/s, p50 {p50 * 1000:.0f} ms, "
             f"p99 {p99 * 1000:.0f} ms" + (f"; first error: {stats['errors'][0]}"
                                           if stats["errors"] else ""),
             complete and not stats["errors"])
  report.add("load", "server RSS after load minus after warm-up", "-",
             f"< {RSS_GROWTH_LIMIT_MB} MB", f"{growth_mb:+.1f} MB", growth_mb < RSS_GROWTH_LIMIT_MB)
  assert not stats["errors"], stats["errors"][:5]
  assert complete, stats
  assert growth_mb < RSS_GROWTH_LIMIT_MB


# ---------------------------------------------------------------- 3. faults


def test_server_sigkill_during_load_then_restart_on_the_same_ports(env, report):
  clients = [(t, env.client(t)) for t in ("grpc", "rest") * 4]
  outcomes = [[] for _ in clients]  # (after_kill, seconds, error or None)
  killed = threading.Event()
  failures_wanted, max_calls = 3, 2000

  def worker(index):
    transport, client = clients[index]
    failures = 0
    for _ in range(max_calls):
      after_kill = killed.is_set()
      started = time.monotonic()
      try:
        client.predict([SENTENCES[0]])
        error = None
      except common.ClientError as e:
        error = ("ClientError", str(e))
      except Exception as e:  # not the clients' one-line error: a finding
        error = (type(e).__name__, str(e))
      outcomes[index].append((after_kill, time.monotonic() - started, error))
      if error:
        failures += 1
        if failures >= failures_wanted:
          return
        time.sleep(0.05)

  with futures.ThreadPoolExecutor(len(clients)) as pool:
    jobs = [pool.submit(worker, i) for i in range(len(clients))]
    time.sleep(1.5)  # load is flowing
    before = sum(len(o) for o in outcomes)
    killed.set()
    killed_at = time.monotonic()
    env.server.kill()
    done, pending = futures.wait(jobs, timeout=failures_wanted * (CLIENT_TIMEOUT_S + 2) + 10)
  assert not pending, "clients did not give up after the kill"
  # Down for ~OUTAGE_S in all: the restart itself takes about as long as the first start did.
  time.sleep(max(0.0, killed_at + OUTAGE_S - env.start_seconds - time.monotonic()))
  kill_to_start = time.monotonic() - killed_at

  per_transport = {}
  for (transport, _), calls in zip(clients, outcomes):
    for after_kill, seconds, error in calls:
      if error:
        per_transport.setdefault(transport, []).append((seconds, error))
  for transport in ("grpc", "rest"):
    fails = per_transport.get(transport, [])
    slowest = max((s for s, _ in fails), default=0.0)
    kinds = sorted({k for _, (k, _) in fails})
    messages = sorted({re.sub(r"\d+", "N", m) for _, (_, m) in fails})
    one_line = all(k == "ClientError" and "\n" not in m and
                   re.search(r"server unreachable at 127\.0\.0\.1:\d+", m) for _, (k, m) in fails)
    ok = bool(fails) and one_line and slowest < CLIENT_TIMEOUT_S + 1
    report.add("faults", "server SIGKILLed under load (8 threads, client timeout "
               f"{CLIENT_TIMEOUT_S:g} s)", transport,
               f"every call fails in < {CLIENT_TIMEOUT_S + 1:g} s with a one-line "
               "ClientError 'server unreachable at ...'",
               f"{len(fails)} failed calls, slowest {slowest * 1000:.0f} ms, {', '.join(kinds)}: "
               + " / ".join(excerpt(m, 90) for m in messages[:3]), ok)
    assert fails, f"no {transport} call failed after the kill"
    assert one_line, messages
    assert slowest < CLIENT_TIMEOUT_S + 1

  started = time.monotonic()
  env.server.start()
  restart_s = time.monotonic() - started
  env.restarts += 1

  def recover(client):
    """Seconds from "server ready" to this client's first success (None: not within limit)."""
    ready = time.monotonic()
    while time.monotonic() - ready < RECOVERY_LIMIT_S:
      try:
        client.predict([SENTENCES[0]])
        return time.monotonic() - ready
      except common.ClientError:
        time.sleep(0.1)
    return None

  with futures.ThreadPoolExecutor(len(clients)) as pool:
    recovered = list(pool.map(recover, [c for _, c in clients], timeout=RECOVERY_LIMIT_S + 30))
  for transport in ("grpc", "rest"):
    times = [r for (t, _), r in zip(clients, recovered) if t == transport]
    ok = None not in times and max(times) < RECONNECT_LIMIT_S
    report.add("faults", "the same client objects after a restart on the same ports", transport,
               f"succeed again within {RECONNECT_LIMIT_S:g} s of the server being ready",
               f"server ready {restart_s:.1f} s after its restart ({restart_s + kill_to_start:.1f} "
               f"s outage); the {len(times)} clients succeeded after " + ", ".join(
                   "never" if r is None else f"{r * 1000:.0f} ms" for r in times), ok)
    assert ok, times
  report.counts["requests before the kill"] = before


def version_dirs(base):
  return sorted(p.name for p in base.iterdir() if p.name.isdigit())


def rest_status(env):
  response = requests.get(f"http://{env.rest}/v1/models/{MODEL}", timeout=HTTP_TIMEOUT_S)
  return {int(v["version"]): v for v in response.json()["model_version_status"]}


def test_export_sigkilled_midway_then_next_export_is_served(env, report):
  log_path = env.work / "export-killed.log"
  with open(log_path, "w") as log:
    export = subprocess.Popen(env.export_command(), cwd=REPO_ROOT, stdout=log,
                              stderr=subprocess.STDOUT)
  env.children.append(export)
  deadline = time.monotonic() + EXPORT_TIMEOUT_S
  partial = []
  while time.monotonic() < deadline and export.poll() is None:
    tmp = list(env.base.glob(".tmp-*"))
    partial = [str(p.relative_to(tmp[0])) for p in tmp[0].rglob("*")] if tmp else []
    if partial:
      break
    time.sleep(0.02)
  assert export.poll() is None, f"export ended before it could be killed: {log_path.read_text()}"
  export.send_signal(signal.SIGKILL)
  export.wait(timeout=30)
  time.sleep(3)  # three poll intervals of the server
  left = sorted(p.name for p in env.base.iterdir())
  versions_now = version_dirs(env.base)
  statuses = rest_status(env)
  version = served_version(env)
  clients_ok = all(env.client(t).predict([SENTENCES[0]]) is not None for t in ("grpc", "rest"))
  ok = versions_now == ["1"] and version == 1 and set(statuses) == {1} and clients_ok
  report.add("faults", "export SIGKILLed while writing its temp dir", "export + gRPC/REST",
             "server keeps serving version 1, no partial version dir, clients keep working",
             f"killed with {len(partial)} files in its temp dir ({', '.join(sorted(partial)[:4])}"
             f"{', ...' if len(partial) > 4 else ''}); base holds {left}; served version "
             f"{version}; versions known to the server {sorted(statuses)}; clients ok: "
             f"{clients_ok}", ok)
  assert ok, (left, statuses, version)

  started = time.monotonic()
  result = subprocess.run(env.export_command(), cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=EXPORT_TIMEOUT_S)
  export_s = time.monotonic() - started
  assert result.returncode == 0, result.stderr[-3000:]
  deadline = time.monotonic() + VERSION_SWAP_LIMIT_S
  while (version := served_version(env)) != 2 and time.monotonic() < deadline:
    time.sleep(0.25)
  swap_s = time.monotonic() - started - export_s
  leftovers = sorted(p.name for p in env.base.iterdir())
  clients_ok = all(env.client(t).predict([SENTENCES[0]]) is not None for t in ("grpc", "rest"))
  cleaned = "removed stale temp dirs" in result.stdout
  ok = version == 2 and leftovers == ["1", "2"] and clients_ok
  env.versions_served.append(version)
  report.add("faults", "next export after the killed one", "export + gRPC/REST",
             "exit 0, publishes version 2, removes the dead temp dir, server swaps to 2",
             f"exit {result.returncode} in {export_s:.1f} s; stale temp dir removed: {cleaned}; "
             f"base holds {leftovers}; server answers from version {version} "
             f"{swap_s:.1f} s after the export finished; clients ok: {clients_ok}", ok)
  assert ok, (version, leftovers, result.stdout[-2000:])


def test_corrupt_version_is_reported_and_skipped(env, report):
  current = served_version(env)
  corrupt = env.base / "7"
  (corrupt / "variables").mkdir(parents=True)
  (corrupt / "saved_model.pb").write_bytes(b"\x00\xffnot a SavedModel\x08" * 64)
  try:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
      statuses = rest_status(env)
      if 7 in statuses and statuses[7]["state"] == "END":
        break
      time.sleep(0.25)
    logged = [line for line in env.server.log().splitlines() if "version 7" in line]
    version = served_version(env)
    status = statuses.get(7, {}).get("status", {})
    ok = (statuses.get(7, {}).get("state") == "END" and status.get("error_message") and
          any("Skipping" in line for line in logged) and version == current)
    report.add("faults", "corrupt version dir 7 (garbage saved_model.pb)", "server",
               f"logged and reported (status END + error), not served; version {current} "
               "keeps serving",
               f"log: {excerpt(re.sub(r'^[-0-9 :,]+', '', logged[0]) if logged else '-', 130)}"
               f"; GetModelStatus of 7: {statuses.get(7, {}).get('state')} "
               f"{status.get('error_code')}; served version {version}", ok)
    assert ok, (statuses, logged, version)
  finally:
    shutil.rmtree(corrupt)


# ---------------------------------------------------------------- 4. security


def listening(pid):
  """(address, port) of a process's listening TCP sockets."""
  return sorted({(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections("inet")
                 if c.status == psutil.CONN_LISTEN})


def loopback(ip):
  """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (gRPC's dual-stack sockets)."""
  address = ipaddress.ip_address(ip)
  return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_binds_loopback_by_default(env, report):
  addresses = listening(env.server.pid)
  ports = {env.server.grpc_port, env.server.rest_port}
  ok = all(loopback(ip) for ip, _ in addresses) and ports == {p for _, p in addresses}
  report.add("security", "listening sockets with no --host flag (psutil)", "gRPC + REST",
             "loopback only, on the two ports", f"{addresses}", ok)
  assert ok, addresses


def test_binds_all_interfaces_only_when_asked(env, report):
  server = ServerProcess(env.base, env.work / "server-any.log", 0, 0, "--host", "0.0.0.0")
  try:
    server.start()  # no request is sent to it: only its sockets are inspected
    addresses = listening(server.pid)
  finally:
    server.stop()
  ok = {ip for ip, _ in addresses} <= {"0.0.0.0", "::"} and len(addresses) == 2
  report.add("security", "listening sockets with --host 0.0.0.0 (psutil; no traffic sent)",
             "gRPC + REST", "the wildcard address on both ports (0.0.0.0, or gRPC's dual-stack "
             ":: which also covers IPv4)", f"{addresses}", ok)
  assert ok, addresses


def test_request_size_limits(env, report):
  case = next(c for c in CASES if c.name.startswith("body over the limit"))
  observed = {t: send(env, case, t) for t in ("rest", "grpc")}
  ok = (observed["rest"].code == 413 and observed["grpc"].code == "RESOURCE_EXHAUSTED" and
        all(good(env, t).code in (200, "OK") for t in observed))
  report.add("security", f"request size limit: {OVERSIZE_BYTES >> 20} MiB request, default "
             "--max_request_bytes 8 MiB", "gRPC + REST",
             "REST 413, gRPC RESOURCE_EXHAUSTED; the server keeps serving",
             "; ".join(f"{t}: {o.code} {excerpt(o.message, 70)} in {o.seconds * 1000:.0f} ms"
                       for t, o in observed.items()), ok)
  assert ok, observed


class _Payload:
  """A pickle that would create a file if unpickled with the plain pickle module."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_label_pickle_is_refused(env, report, tmp_path):
  from bert_ner import labels
  from export import exporter

  macanv = tmp_path / "macanv"
  shutil.copytree(env.ckpt, macanv)
  (macanv / "label2id.json").unlink()
  marker = tmp_path / "pwned"
  (macanv / "label2id.pkl").write_bytes(pickle.dumps(_Payload(marker)))
  with pytest.raises(ValueError) as direct:
    labels.load_label_map(str(macanv))
  with pytest.raises(exporter.ExportError) as export_error:
    exporter.export_model(str(macanv), str(tmp_path / "base"), log=lambda *_: None)
  ok = not marker.exists() and "refusing to load" in str(direct.value) and (
      "refusing to load" in str(export_error.value))
  report.add("security", "label2id.pkl whose unpickling runs os.system", "bert_ner.labels + export",
             "refused with a clear error, the command never runs",
             f"load_label_map: {excerpt(direct.value, 150)}; export: "
             f"{excerpt(export_error.value, 60)}; command ran: {marker.exists()}", ok)
  assert ok


UNSAFE = re.compile(r"\b(c?pickle|dill|joblib|marshal|shelve)\.(load|loads|Unpickler|open)\b|"
                    r"allow_pickle\s*=\s*True|^\s*import (dill|joblib|shelve)\b", re.M)


def test_server_and_clients_never_unpickle(report):
  hits = [f"{path.relative_to(REPO_ROOT)}:{text[:m.start()].count(chr(10)) + 1}: {m.group(0)}"
          for folder in ("server", "clients") for path in sorted((REPO_ROOT / folder).rglob("*.py"))
          for text in [path.read_text(encoding="utf-8")] for m in UNSAFE.finditer(text)]
  files = sum(1 for folder in ("server", "clients") for _ in (REPO_ROOT / folder).rglob("*.py"))
  report.add("security", "grep server/ and clients/ for pickle.load(s)/Unpickler, dill, joblib, "
             "marshal, shelve, allow_pickle=True", "static", "no match",
             f"{files} files scanned, {len(hits)} matches" + (f": {hits}" if hits else ""),
             not hits)
  assert not hits


def test_docker_image_runs_as_non_root(report):
  lines = (REPO_ROOT / "docker" / "Dockerfile").read_text().splitlines()
  users = [(i, line.split(None, 1)[1].strip()) for i, line in enumerate(lines)
           if re.match(r"\s*USER\s+\S", line, re.I)]
  entry = max((i for i, line in enumerate(lines) if re.match(r"\s*(ENTRYPOINT|CMD)\b", line)),
              default=-1)
  last = users[-1][1] if users else None
  user = last.split(":")[0] if last else None
  ok = bool(users) and user not in ("root", "0") and users[-1][0] < entry
  report.add("security", "docker/Dockerfile USER", "static",
             "a non-root USER set before ENTRYPOINT", f"USER {last} (line {users[-1][0] + 1})"
             if users else "no USER directive", ok)
  assert ok, users


def test_counts(env, report):
  """Headline counts for docs/RELIABILITY.md (runs last)."""
  report.counts["server restarts survived"] = env.restarts
  report.counts["versions served in turn"] = " -> ".join(map(str, env.versions_served))
  report.counts["module run time"] = (f"{time.monotonic() - report.started:.0f} s (export, "
                                      "server start-ups and every case)")
  assert env.server.proc.poll() is None
