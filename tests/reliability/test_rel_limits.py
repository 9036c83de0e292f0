"""Request size and queue limits: refused before any allocation with TF Serving's batching
errors, abandoned work dropped, server memory unchanged by the attacks."""

import json
import re
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import psutil
import pytest
import requests

from bert_ner.clients.tfs_protos import tfs_lite_pb2 as lite
from bert_ner.paths import REPO_ROOT
from bert_ner.server.process import ServerProcess
from rel_support import (
  CLS,
  GOOD_IDS,
  HTTP_TIMEOUT_S,
  PREDICT_PATH,
  PREDICT_RPC,
  SEP,
  excerpt,
  good,
  grpc_inputs,
  grpc_request,
  grpc_send,
  rest_columnar,
  rest_send,
  tensor,
)

MAX_BATCH_SIZE = 64  # docker/batching_parameters.txt, the server's default
ATTACK_RSS_LIMIT_MB = 300  # server RSS after the attack cases vs before
ATTACK_TIME_LIMIT_S = 10.0
SHIPPED = Path(__file__).resolve().parents[2] / "models" / "default"
# Row 14: flood requests of 64 x 512 on the shipped model with a 1 s REST deadline.
FLOOD_REQUESTS, FLOOD_ROWS, FLOOD_WIDTH, FLOOD_TIMEOUT_MS = 8, 64, 512, 1000
# Unstopped, the floods' work runs about 30 s per request on 2 cores; stopped, it ends within a
# chunk of 1,024 positions (about 0.5 s) after the deadlines, and the server idles.
SETTLE_S, IDLE_WINDOW_S, IDLE_CPU_LIMIT_S = 1.0, 2.0, 0.5
# gRPC calls of 64 x 512 with a long deadline that their clients cancel (RST_STREAM) while they run.
CANCELLED_CALLS, CANCEL_AFTER_S, CANCELLED_DEADLINE_S = 4, 0.5, 120


def rss_mb(env):
  return psutil.Process(env.server.pid).memory_info().rss / 2**20


@pytest.fixture(scope="module")
def attack_rss(env, report):
  """Server RSS before this module's attack cases; after them it must stay within the limit."""
  good(env, "rest")
  before = rss_mb(env)
  yield before
  after = rss_mb(env)
  ok = after - before <= ATTACK_RSS_LIMIT_MB
  report.counts["server RSS around the size-limit attacks"] = (
    f"{before:.0f} MB before, {after:.0f} MB after (limit +{ATTACK_RSS_LIMIT_MB} MB)"
  )
  report.add(
    "load",
    "server memory after the size-limit attacks (shape, batch size, input_mask)",
    "server",
    f"RSS within {ATTACK_RSS_LIMIT_MB} MB of before",
    f"{before:.0f} MB -> {after:.0f} MB",
    ok,
  )
  assert ok, (before, after)


def shape_only_request(rows):
  """A Predict request declaring [rows, 0] for both inputs and carrying no values."""
  return grpc_request(
    {"input_ids": tensor(lite.DT_INT32, [rows, 0]), "input_mask": tensor(lite.DT_INT32, [rows, 0])}
  )


def rows_of(count, width):
  ids = np.full((count, width), 1000, np.int64)
  ids[:, 0], ids[:, -1] = CLS, SEP
  return ids.tolist()


def task_size_message(rows):
  return rf"^Task size {rows} is larger than maximum input batch size {MAX_BATCH_SIZE}$"


ATTACKS = [
  # (limit, case, transport, send(env) -> Observed, codes, message regex)
  (
    "shape",
    f"shape [2**31, 0] without values ({len(shape_only_request(2**31).SerializeToString())} bytes)",
    "grpc",
    lambda env: grpc_send(env, shape_only_request(2**31)),
    ("INVALID_ARGUMENT",),
    task_size_message(2**31),
  ),
  (
    "batch size",
    "2,000 rows x 128 (under the 8 MiB body limit)",
    "rest",
    lambda env: rest_send(env, rest_columnar(rows_of(2000, 128))),
    (400,),
    task_size_message(2000),
  ),
  (
    "batch size",
    "5,000 rows x 128 (under the 8 MiB body limit)",
    "rest",
    lambda env: rest_send(env, rest_columnar(rows_of(5000, 128))),
    (400,),
    task_size_message(5000),
  ),
  (
    "batch size",
    "5,000 rows x 128",
    "grpc",
    lambda env: grpc_send(
      env,
      grpc_request(grpc_inputs(rows_of(5000, 128), np.ones((5000, 128)))),
    ),
    ("INVALID_ARGUMENT",),
    task_size_message(5000),
  ),
  (
    "batch size",
    f"{MAX_BATCH_SIZE + 1} rows, one over max_batch_size",
    "rest",
    lambda env: rest_send(env, rest_columnar(rows_of(MAX_BATCH_SIZE + 1, 8))),
    (400,),
    task_size_message(MAX_BATCH_SIZE + 1),
  ),
]
for transport in ("rest", "grpc"):
  for name, ids, mask, message in [
    (
      "input_mask [1, 2**31-1, 2**31-1] (int32 overflow in its sum)",
      [[CLS, 7327, SEP]],
      [[1, 2**31 - 1, 2**31 - 1]],
      r"input_mask must hold only 0 and 1, got 2147483647",
    ),
    (
      "input_mask value 2",
      GOOD_IDS,
      [[1, 1, 2, 1, 1, 1]],
      r"input_mask must hold only 0 and 1, got 2 \(row 0, position 2\)",
    ),
    ("zero-length row (shape [1,0])", [[]], [[]], r"input_mask row 0 has length 0"),
    (
      "row whose mask starts with 0",
      GOOD_IDS,
      [[0, 1, 1, 1, 1, 1]],
      r"input_mask row 0 has length 0",
    ),
  ]:
    if transport == "rest":
      send = lambda env, ids=ids, mask=mask: rest_send(env, rest_columnar(ids, mask))
    elif np.size(ids):
      send = lambda env, ids=ids, mask=mask: grpc_send(env, grpc_request(grpc_inputs(ids, mask)))
    else:
      send = lambda env: grpc_send(env, shape_only_request(1))
    ATTACKS.append(
      (
        "input_mask",
        name,
        transport,
        send,
        (400,) if transport == "rest" else ("INVALID_ARGUMENT",),
        message,
      )
    )


@pytest.mark.parametrize(
  "limit, name, transport, send, codes, message",
  ATTACKS,
  ids=[f"{a[0]}-{a[2]}-{re.sub(r'[^a-z0-9]+', '_', a[1].lower())}" for a in ATTACKS],
)
def test_size_and_mask_attacks(
  env, report, attack_rss, limit, name, transport, send, codes, message
):
  before = rss_mb(env)
  observed = send(env)
  after_rss = rss_mb(env)
  after = good(env, transport)
  ok = (
    observed.code in codes
    and re.search(message, observed.message) is not None
    and observed.seconds < ATTACK_TIME_LIMIT_S
    and after.code in (200, "OK")
  )
  report.add(
    "bad requests",
    f"{limit}: {name}",
    transport,
    f"{' or '.join(map(str, codes))}, message ~ /{message}/, "
    f"< {ATTACK_TIME_LIMIT_S:g} s; then a good request succeeds",
    f"{observed.code}: {excerpt(observed.message)}; {observed.seconds * 1000:.0f} ms; "
    f"server RSS {before:.0f} -> {after_rss:.0f} MB; next good request: {after.code}",
    ok,
  )
  assert observed.code in codes, observed
  assert re.search(message, observed.message), observed
  assert observed.seconds < ATTACK_TIME_LIMIT_S
  assert after.code in (200, "OK"), after


@pytest.fixture(scope="module")
def shipped_server(tmp_path_factory):
  """The shipped model exported and served with --rest_api_timeout_in_ms 1000."""
  from bert_ner.export import exporter

  work = tmp_path_factory.mktemp("flood")
  exporter.export_model(str(SHIPPED), str(work / "models"), log=lambda message: None)
  server = ServerProcess(
    work / "models",
    work / "server.log",
    flags=[
      f"--rest_api_timeout_in_ms={FLOOD_TIMEOUT_MS}",
      "--monitoring_config_file",
      str(REPO_ROOT / "docker" / "monitoring_config.txt"),
    ],
  ).start()
  yield server
  server.stop()


def processed_rows(server):
  """Rows the server has run in batches (the batch size histogram's sum)."""
  page = requests.get(
    f"http://{server.rest}/monitoring/prometheus/metrics", timeout=HTTP_TIMEOUT_S
  ).text
  found = re.search(r"processed_batch_size_sum\{[^}]*\} (\d+)", page)
  return int(found.group(1)) if found else 0


def post(server, ids):
  started = time.monotonic()
  response = requests.post(
    f"http://{server.rest}{PREDICT_PATH}",
    timeout=HTTP_TIMEOUT_S,
    data=json.dumps(rest_columnar(ids)),
  )
  return response.status_code, response.json().get("error", ""), time.monotonic() - started


def test_abandoned_work_is_dropped(shipped_server, report):
  process = psutil.Process(shipped_server.proc.pid)
  tiny = [[CLS, 7327, SEP]]
  assert post(shipped_server, tiny)[0] == 200
  rss_before, rows_before = process.memory_info().rss / 2**20, processed_rows(shipped_server)
  flood = rows_of(FLOOD_ROWS, FLOOD_WIDTH)
  with futures.ThreadPoolExecutor(FLOOD_REQUESTS) as pool:
    floods = list(pool.map(lambda _: post(shipped_server, flood), range(FLOOD_REQUESTS)))
  time.sleep(SETTLE_S)  # a chunk that started before the deadlines ends
  status, error, seconds = post(shipped_server, tiny)
  cpu = process.cpu_times()
  time.sleep(IDLE_WINDOW_S)
  busy = sum(process.cpu_times()[:2]) - sum(cpu[:2])  # user + system CPU seconds in the window
  started = (processed_rows(shipped_server) - rows_before - len(tiny)) // FLOOD_ROWS
  rss_after = process.memory_info().rss / 2**20
  codes = sorted(code for code, _, _ in floods)
  ok = (
    status == 200
    and set(codes) <= {503, 504}
    and busy < IDLE_CPU_LIMIT_S
    and rss_after - rss_before <= ATTACK_RSS_LIMIT_MB
  )
  report.add(
    "load",
    f"--rest_api_timeout_in_ms {FLOOD_TIMEOUT_MS}, "
    f"{FLOOD_REQUESTS} concurrent {FLOOD_ROWS}x{FLOOD_WIDTH} requests on the shipped model, "
    f"then a one-sentence request {SETTLE_S:g} s after their answers",
    "rest",
    f"floods 504 (timed out) or 503 (queue full); then the one-sentence request 200 and the "
    f"server idle (< {IDLE_CPU_LIMIT_S:g} CPU s in {IDLE_WINDOW_S:g} s): nothing abandoned "
    f"keeps running; RSS within {ATTACK_RSS_LIMIT_MB} MB",
    f"floods {codes} ({', '.join(sorted({excerpt(e, 60) for _, e, _ in floods}))}); "
    f"{started} of {FLOOD_REQUESTS} started, each stopped at its deadline; then 200 in "
    f"{seconds * 1000:.0f} ms (got {status}); {busy:.2f} CPU s in the idle window; "
    f"RSS {rss_before:.0f} -> {rss_after:.0f} MB",
    ok,
  )
  assert status == 200, error
  assert set(codes) <= {503, 504}, floods
  assert busy < IDLE_CPU_LIMIT_S
  assert rss_after - rss_before <= ATTACK_RSS_LIMIT_MB


def test_cancelled_grpc_work_stops(shipped_server, report):
  """Calls cancelled mid-run stop at the next session run instead of running to their deadline."""
  process = psutil.Process(shipped_server.proc.pid)
  request = grpc_request(grpc_inputs(rows_of(FLOOD_ROWS, FLOOD_WIDTH)))
  with grpc.insecure_channel(shipped_server.grpc) as channel:
    predict = channel.unary_unary(
      PREDICT_RPC, request_serializer=lite.PredictRequest.SerializeToString
    )
    calls = [predict.future(request, timeout=CANCELLED_DEADLINE_S) for _ in range(CANCELLED_CALLS)]
    time.sleep(CANCEL_AFTER_S)
    cancelled = sum(call.cancel() for call in calls)
  time.sleep(SETTLE_S)
  status, error, seconds = post(shipped_server, [[CLS, 7327, SEP]])
  cpu = process.cpu_times()
  time.sleep(IDLE_WINDOW_S)
  busy = sum(process.cpu_times()[:2]) - sum(cpu[:2])
  ok = status == 200 and cancelled == CANCELLED_CALLS and busy < IDLE_CPU_LIMIT_S
  report.add(
    "load",
    f"{CANCELLED_CALLS} gRPC calls of {FLOOD_ROWS}x{FLOOD_WIDTH} on the shipped model (deadline "
    f"{CANCELLED_DEADLINE_S} s) cancelled by the client after {CANCEL_AFTER_S:g} s, then a "
    f"one-sentence request {SETTLE_S:g} s later",
    "grpc",
    f"the cancelled work stops (the server idle: < {IDLE_CPU_LIMIT_S:g} CPU s in "
    f"{IDLE_WINDOW_S:g} s); the sentence 200",
    f"{cancelled} cancelled; then {status} in {seconds * 1000:.0f} ms; {busy:.2f} CPU s in the "
    "idle window",
    ok,
  )
  assert status == 200, error
  assert cancelled == CANCELLED_CALLS and busy < IDLE_CPU_LIMIT_S, busy
