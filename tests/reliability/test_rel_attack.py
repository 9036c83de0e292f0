"""Hostile inputs the other case modules do not send: bodies and connections TF Serving answers
4xx where a naive server answers 500, malformed or abandoned HTTP requests that must not log a
traceback, a warm-up record that must pass the request-size checks, and a deeply nested JSON
answer the client must refuse in one line.
"""

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from bert_ner import model_base
from rel_support import (
  GOOD_IDS,
  HTTP_TIMEOUT_S,
  MODEL,
  PREDICT_PATH,
  excerpt,
  good,
  polling_server,
  rest_columnar,
  rest_send,
)

CASE_TIME_LIMIT_S = 10.0
POLL_S = 0.5
VERSION_WAIT_S = 60
# Python's json refuses integers over 4,300 digits (sys.int_info.default_max_str_digits).
LONG_INTEGER = b"9" * 5000
# A warm-up Predict declaring this many rows and no values: over max_batch_size (64) and cheap to
# build. Warm-up decodes and validates before any task-size check, so [2**31, 0] took the server
# to 18 GB and the kernel's OOM killer on this machine; this many rows is refused today only by
# the zero-length-row check, after a per-row allocation.
WARMUP_ROWS = 1_000_000


def new_log(env, offset):
  """The server log written since offset."""
  return env.server.log()[offset:]


def log_offset(env):
  return len(env.server.log())


REST_4XX = [
  (
    "integer of 5,000 digits in input_ids",
    PREDICT_PATH,
    b'{"signature_name": "result", "inputs": {"input_ids": [[101, '
    + LONG_INTEGER
    + b', 102]], "input_mask": [[1, 1, 1]]}}',
    (400,),
  ),
  (
    "model name %FF (not UTF-8) in a predict path",
    "/v1/models/%FF:predict",
    json.dumps(rest_columnar(GOOD_IDS)).encode(),
    (404,),
  ),
  ("model name %FF in a metadata path", "/v1/models/%FF/metadata", None, (404,)),
]


@pytest.mark.parametrize("name, path, body, codes", REST_4XX, ids=[c[0] for c in REST_4XX])
def test_rest_hostile_requests_are_4xx_without_traceback(env, report, name, path, body, codes):
  offset = log_offset(env)
  observed = rest_send(env, body, path=path, method="POST" if body else "GET")
  time.sleep(0.2)
  traceback = "Traceback" in new_log(env, offset)
  ok = (
    observed.code in codes
    and observed.seconds < CASE_TIME_LIMIT_S
    and not traceback
    and good(env, "rest").code == 200
  )
  report.add(
    "bad requests",
    name,
    "rest",
    f"{codes}, no traceback in the log",
    f"{observed.code} {excerpt(observed.message, 80)}; traceback logged: {traceback}",
    ok,
  )
  assert ok, (observed, new_log(env, offset)[-2000:])


def raw_http(env, data, close_after_send=False):
  """Sends raw bytes to the REST port; returns the first answer line ('' if none)."""
  host, port = env.rest.rsplit(":", 1)
  with socket.create_connection((host, int(port)), timeout=HTTP_TIMEOUT_S) as sock:
    sock.sendall(data)
    if close_after_send:
      return ""
    return sock.recv(4096).split(b"\r\n", 1)[0].decode("latin-1")


MALFORMED_HTTP = [
  (
    "Content-Length: -1",
    f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    False,
  ),
  (
    "Content-Length and Transfer-Encoding both",
    f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\n"
    "Content-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    False,
  ),
  (
    "chunk size over 64 bits",
    f"POST {PREDICT_PATH} HTTP/1.1\r\nHost: x\r\n"
    "Transfer-Encoding: chunked\r\n\r\nffffffffffffffffffff\r\nabc",
    False,
  ),
  ("HTTP/2 preface on the REST port", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", False),
  (
    "connection closed after 10 of 1,000 body bytes",
    f"POST {PREDICT_PATH} HTTP/1.1\r\n"
    "Host: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n[[[[[[[[[[",
    True,
  ),
]


@pytest.mark.parametrize("name, data, close", MALFORMED_HTTP, ids=[c[0] for c in MALFORMED_HTTP])
def test_malformed_or_abandoned_http_logs_no_traceback(env, report, name, data, close):
  """One line per refused request at most: 200 abandoned uploads logged 3,800 traceback lines."""
  offset = log_offset(env)
  line = raw_http(env, data.encode(), close_after_send=close)
  time.sleep(0.5)
  traceback = "Traceback" in new_log(env, offset)
  ok = (
    (close or line.startswith("HTTP/1.") and " 400 " in line)
    and not traceback
    and good(env, "rest").code == 200
  )
  report.add(
    "bad requests",
    f"raw HTTP: {name}",
    "rest",
    ("connection dropped" if close else "400") + ", no traceback in the log",
    f"{line or 'closed by the client'}; traceback logged: {traceback}",
    ok,
  )
  assert ok, new_log(env, offset)[-2000:]


def warmup_record(rows):
  """A TFRecord file of one PredictionLog whose request declares [rows, 0] and has no values."""
  from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

  request = predict_pb2.PredictRequest()
  request.model_spec.name, request.model_spec.signature_name = MODEL, "result"
  for name in ("input_ids", "input_mask"):
    tensor = request.inputs[name]
    tensor.dtype = 3  # DT_INT32
    tensor.tensor_shape.dim.add(size=rows)
    tensor.tensor_shape.dim.add(size=0)
  return prediction_log_pb2.PredictionLog(
    predict_log=prediction_log_pb2.PredictLog(request=request)
  ).SerializeToString()


def test_warmup_request_over_the_size_limits_skips_the_version(env, report, tmp_path):
  """A version whose warm-up record declares 1,000,000 rows: TF Serving runs warm-up through the
  batching session, which refuses the task; the version fails to load and version 1 serves."""
  import tensorflow as tf

  base, server = polling_server(env, tmp_path, POLL_S)
  try:
    staging = tmp_path / "staging"
    shutil.copytree(env.base / "1", staging)
    with tf.io.TFRecordWriter(str(staging / model_base.ASSETS_DIR / model_base.WARMUP_FILE)) as w:
      w.write(warmup_record(WARMUP_ROWS))
    staging.rename(base / "2")
    started = time.monotonic()
    while "version 2" not in server.log() and time.monotonic() - started < VERSION_WAIT_S:
      time.sleep(POLL_S)
    time.sleep(2 * POLL_S)
    log = server.log()
    skipped = (
      re.search(
        rf"Skipping bert_ner version 2: .*Task size {WARMUP_ROWS} is larger than "
        r"maximum input batch size",
        log,
      )
      is not None
    )
    alive = server.proc.poll() is None
    served_2 = "Serving bert_ner version 2" in log
  finally:
    server.stop()
  ok = alive and skipped and not served_2
  report.add(
    "faults",
    f"new version whose warm-up Predict declares [{WARMUP_ROWS:,}, 0]",
    "server",
    "version 2 skipped naming the task size, as TF Serving; version 1 serves",
    f"alive: {alive}; version 2 skipped: {skipped}; version 2 served: {served_2}",
    ok,
  )
  assert ok, log[-3000:]


class NestedJsonServer:
  """Answers every HTTP request with 200 and a JSON body nested 100,000 arrays deep."""

  BODY = b'{"outputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"

  def __init__(self):
    self.sock = socket.create_server(("127.0.0.1", 0))
    self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
    threading.Thread(target=self._serve, daemon=True).start()

  def _serve(self):
    while True:
      try:
        conn, _ = self.sock.accept()
      except OSError:
        return
      with conn:
        conn.settimeout(HTTP_TIMEOUT_S)
        conn.recv(65536)
        conn.sendall(
          b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
          b"%d\r\nConnection: close\r\n\r\n" % len(self.BODY) + self.BODY
        )

  def close(self):
    self.sock.close()


def test_rest_client_on_a_deeply_nested_answer_is_one_line(env, report):
  server = NestedJsonServer()
  try:
    result = subprocess.run(
      [
        sys.executable,
        "-m",
        "bert_ner.clients.rest_client",
        "--assets",
        str(env.assets),
        "--server",
        server.address,
        "--timeout",
        "5",
        "EU rejects German call",
      ],
      capture_output=True,
      text=True,
      timeout=60,
    )
  finally:
    server.close()
  lines = result.stderr.splitlines()
  ok = result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ")
  report.add(
    "faults",
    "server answers JSON nested 100,000 deep",
    "rest",
    "one line on stderr, non-zero exit",
    f"exit {result.returncode}: {excerpt(lines[-1] if lines else '')} ({len(lines)} stderr lines)",
    ok,
  )
  assert ok, result.stderr[-2000:]
