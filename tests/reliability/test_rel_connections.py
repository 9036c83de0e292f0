"""REST connections that never finish a request (nothing sent, a request line, a header trickle,
a body never sent, a chunked body never ending): closed in bounded time, held in bounded number,
logged in bounded lines, with gRPC and REST still answering."""

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import grpc
import psutil
import pytest

from bert_ner.server.connections import DEFAULT_MAX_CONNECTIONS
from bert_ner.server.process import ServerProcess
from rel_support import PREDICT_RPC, excerpt, good

HOLDER = Path(__file__).with_name("idle_clients.py")
# Two processes of 10,000 each: the test's own descriptor limit stays out of it.
HOLDERS, PER_HOLDER = 2, 10_000
OPEN_LIMIT_S = 300  # SYNs past the listen backlog are retried by the kernel after 1, 3, 7 s...
ANSWER_LIMIT_S = 1.0
PROBES = 3
FD_MARGIN = 64  # listening sockets, gRPC, TensorFlow's files, the log
LOG_GROWTH_LIMIT_BYTES = 20_000
SLOW_CONNECTIONS = 100
READ_TIMEOUT_MS = 1000
LINGER_S = 10  # aiohttp reads an unfinished body this long after answering 408, then closes
CLOSE_LIMIT_S = 2 * READ_TIMEOUT_MS / 1000 + LINGER_S + 5


def holder(server, count, mode):
  """A process holding count connections to the server's REST port in mode (idle_clients.py)."""
  port = server.rest.rsplit(":", 1)[1]
  return subprocess.Popen(
    [sys.executable, str(HOLDER), port, str(count), mode],
    stdin=subprocess.PIPE,
    stdout=subprocess.PIPE,
    text=True,
  )


def still_open(proc):
  """How many of a holder's connections the server has not closed."""
  proc.stdin.write("count\n")
  proc.stdin.flush()
  return int(proc.stdout.readline().split()[1])


def release(procs):
  for proc in procs:
    proc.stdin.close()
    proc.wait(timeout=60)


def probes(server):
  """The slowest of PROBES good gRPC and REST requests, and whether all succeeded."""
  answers = [good(server, t) for _ in range(PROBES) for t in ("grpc", "rest")]
  return max(a.seconds for a in answers), all(a.code in (200, "OK") for a in answers)


def log_size(server):
  return server.log_path.stat().st_size


def test_twenty_thousand_idle_connections(env, report, tmp_path):
  """The server with its default flags: 20,000 connections that send nothing."""
  server = ServerProcess(env.base, tmp_path / "server.log").start()
  procs = []
  try:
    process = psutil.Process(server.pid)
    fds_idle, rss_idle, log_idle = process.num_fds(), process.memory_info().rss, log_size(server)
    started = time.monotonic()
    procs = [holder(server, PER_HOLDER, "nothing") for _ in range(HOLDERS)]
    for proc in procs:
      proc.stdout.readline()
    opened_s = time.monotonic() - started
    slowest, answered = probes(server)
    fds, rss = process.num_fds(), process.memory_info().rss
    held = sum(still_open(proc) for proc in procs)
    log_growth = log_size(server) - log_idle
    release(procs)
    time.sleep(2)
    fds_after = process.num_fds()
    rss_after = process.memory_info().rss
  finally:
    release(p for p in procs if not p.stdin.closed)
    server.stop()
  fd_limit = DEFAULT_MAX_CONNECTIONS + FD_MARGIN
  ok = (
    answered
    and slowest < ANSWER_LIMIT_S
    and fds <= fd_limit
    and log_growth <= LOG_GROWTH_LIMIT_BYTES
  )
  report.add(
    "load",
    f"{HOLDERS * PER_HOLDER:,} REST connections that send nothing, server with default flags",
    "gRPC + REST",
    f"gRPC and REST answer within {ANSWER_LIMIT_S:g} s; server fds <= {fd_limit} "
    f"(--rest_api_max_connections {DEFAULT_MAX_CONNECTIONS}, the longest idle closed past it); "
    f"log growth <= {LOG_GROWTH_LIMIT_BYTES:,} bytes",
    f"opened in {opened_s:.0f} s; slowest answer {slowest * 1000:.0f} ms (all good: {answered}); "
    f"{held:,} still held by the clients; server fds {fds_idle} -> {fds} -> {fds_after} "
    f"after release; RSS {rss_idle / 2**20:.0f} -> {rss / 2**20:.0f} -> "
    f"{rss_after / 2**20:.0f} MB; log +{log_growth:,} bytes",
    ok,
  )
  assert ok, server.log()[-3000:]


@pytest.fixture(scope="module")
def short_timeout_server(env, tmp_path_factory):
  """The served export with a 1 s REST read timeout."""
  work = tmp_path_factory.mktemp("read-timeout")
  server = ServerProcess(
    env.base, work / "server.log", flags=[f"--rest_api_read_timeout_in_ms={READ_TIMEOUT_MS}"]
  ).start()
  yield server
  server.stop()


SLOW_MODES = {
  "line": "a request line only",
  "header": "a request line, then a header byte every second",
  "body": "headers announcing 1,000 body bytes, 1 sent",
  "chunked": "a chunked body never ending",
}


@pytest.mark.parametrize("mode", list(SLOW_MODES))
def test_slow_requests_are_closed(short_timeout_server, report, mode):
  server = short_timeout_server
  proc = holder(server, SLOW_CONNECTIONS, mode)
  try:
    opened = int(proc.stdout.readline().split()[1])
    started = time.monotonic()
    while (left := still_open(proc)) and time.monotonic() - started < CLOSE_LIMIT_S:
      time.sleep(0.5)
    closed_s = time.monotonic() - started
    slowest, answered = probes(server)
  finally:
    release([proc])
  ok = opened == SLOW_CONNECTIONS and left == 0 and answered and slowest < ANSWER_LIMIT_S
  report.add(
    "load",
    f"{SLOW_CONNECTIONS} REST connections sending {SLOW_MODES[mode]}, "
    f"--rest_api_read_timeout_in_ms {READ_TIMEOUT_MS}",
    "rest",
    f"all closed by the server within {CLOSE_LIMIT_S:g} s (a stalled body is answered 408 and "
    f"closed after aiohttp's {LINGER_S} s linger); gRPC and REST answer meanwhile",
    f"{opened} opened; {left} still open after {closed_s:.1f} s; slowest answer "
    f"{slowest * 1000:.0f} ms (all good: {answered})",
    ok,
  )
  assert ok, excerpt(server.log()[-2000:], 2000)


HALF_OPEN_STREAMS = 40_000
STREAMS_SETTLE_S = 10.0
STREAMS_RSS_LIMIT_MB = 50  # unbounded, the streams held +306 MB and kept +253 MB


async def half_open_streams(server, count, settle_s):
  """Opens count Predict streams on one gRPC connection that never send their message; the
  server's RSS (MB) once they are open, and a probe's answer meanwhile."""
  process = psutil.Process(server.pid)
  stop = asyncio.Event()

  async def never():
    await stop.wait()
    yield b""  # never reached before the calls are cancelled

  async with grpc.aio.insecure_channel(server.grpc) as channel:
    predict = channel.stream_unary(PREDICT_RPC)
    calls = [predict(never(), timeout=OPEN_LIMIT_S) for _ in range(count)]
    await asyncio.sleep(settle_s)
    rss = process.memory_info().rss / 2**20
    probe = await asyncio.to_thread(good, server, "grpc")
    for call in calls:
      call.cancel()
    stop.set()
  return rss, probe


def test_half_open_grpc_streams_on_one_connection(env, report, tmp_path):
  server = ServerProcess(env.base, tmp_path / "server.log").start()
  try:
    process = psutil.Process(server.pid)
    idle = process.memory_info().rss / 2**20
    rss, probe = asyncio.run(half_open_streams(server, HALF_OPEN_STREAMS, STREAMS_SETTLE_S))
    time.sleep(STREAMS_SETTLE_S / 2)
    kept = process.memory_info().rss / 2**20
  finally:
    server.stop()
  ok = probe.code == "OK" and probe.seconds < ANSWER_LIMIT_S and rss - idle <= STREAMS_RSS_LIMIT_MB
  report.add(
    "load",
    f"{HALF_OPEN_STREAMS:,} Predict streams on one gRPC connection, none sending its message",
    "grpc",
    f"the server opens at most grpc.max_concurrent_streams (128) of them; RSS within "
    f"+{STREAMS_RSS_LIMIT_MB} MB; a probe on another connection answers within "
    f"{ANSWER_LIMIT_S:g} s",
    f"RSS {idle:.0f} MB idle, {rss:.0f} MB with the streams open, {kept:.0f} MB after they "
    f"were cancelled; probe {probe.code} in {probe.seconds * 1000:.0f} ms",
    ok,
  )
  assert ok, (idle, rss, kept, probe)
