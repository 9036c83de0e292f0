"""Requests whose declared shapes cost the server more than their bytes: refused from the shape
alone, before any tensor is allocated, queued or converted, with peak and kept server memory
bounded and gRPC answering while REST is flooded."""

import statistics
import threading
import time

import psutil
import pytest
import requests

from bert_ner.clients.tfs_protos import tfs_lite_pb2 as lite
from bert_ner.server.process import ServerProcess
from rel_support import (
  HTTP_TIMEOUT_S,
  POSITIONS,
  PREDICT_PATH,
  call_all,
  excerpt,
  good,
  grpc_request,
  tensor,
)

RSS_PEAK_LIMIT_MB = 300  # over the idle server, while the attack runs
RSS_RETURN_S = 60  # the kept RSS must be back within the limit this soon
RSS_SAMPLE_S = 0.02
WIDE = 8 << 20  # the most elements one tensor may declare (bert_ner/server/tensors.py MAX_ELEMENTS)
WIDE_CALLS = 8
EMPTY_ROWS_BYTES = 8 << 20  # the default --max_request_bytes
REST_FLOODERS, FLOOD_S = 4, 10.0
PROBE_P50_LIMIT_S, PROBE_MAX_LIMIT_S = 0.2, 1.0
SHAPES = 21_000  # distinct widths over the positions, one request each
SHAPE_CONCURRENCY = 64
# RSS the distinct-shape requests may leave behind: a queue kept per shape left +287 MB.
SHAPES_KEPT_LIMIT_MB = 50


@pytest.fixture
def server(env, tmp_path):
  """A server of its own: the old code kept gigabytes after these attacks."""
  started = ServerProcess(env.base, tmp_path / "server.log").start()
  good(started, "grpc")
  good(started, "rest")
  yield started
  started.stop()


class PeakRss:
  """The server's largest RSS while the block runs, and its RSS before (MB)."""

  def __init__(self, pid):
    self.process = psutil.Process(pid)
    self.before = self.peak = self.rss()
    self._stop = threading.Event()

  def rss(self):
    return self.process.memory_info().rss / 2**20

  def _sample(self):
    while not self._stop.wait(RSS_SAMPLE_S):
      self.peak = max(self.peak, self.rss())

  def __enter__(self):
    threading.Thread(target=self._sample, daemon=True).start()
    return self

  def __exit__(self, *exc):
    self._stop.set()

  def returned_within(self, limit_mb, seconds):
    """Seconds until RSS is back within limit_mb of before (None if not within seconds)."""
    started = time.monotonic()
    while time.monotonic() - started < seconds:
      if self.rss() - self.before <= limit_mb:
        return time.monotonic() - started
      time.sleep(0.5)
    return None


def wide_request():
  """87 bytes declaring [1, 8388608] for both inputs, one value each (TensorFlow's fill rule)."""
  return grpc_request(
    {name: tensor(lite.DT_INT32, [1, WIDE], int_val=[1]) for name in ("input_ids", "input_mask")}
  )


def memory_row(rss, returned_s):
  return (
    f"RSS {rss.before:.0f} MB idle, peak {rss.peak:.0f} MB (+{rss.peak - rss.before:.0f}), "
    + (
      f"back within +{RSS_PEAK_LIMIT_MB} MB after {returned_s:.1f} s"
      if returned_s is not None
      else f"not back within +{RSS_PEAK_LIMIT_MB} MB after {RSS_RETURN_S} s"
    )
  )


def test_wide_tensors_refused_before_allocation(server, report):
  started = time.monotonic()
  with PeakRss(server.pid) as rss:
    answers = call_all(server, [wide_request()] * WIDE_CALLS, WIDE_CALLS)
  seconds = time.monotonic() - started
  returned_s = rss.returned_within(RSS_PEAK_LIMIT_MB, RSS_RETURN_S)
  message = f"input_ids has length {WIDE} but the model has only {POSITIONS} positions"
  refused = all(a == ("INVALID_ARGUMENT", message) for a in answers)
  ok = refused and rss.peak - rss.before <= RSS_PEAK_LIMIT_MB and returned_s is not None
  report.add(
    "bad requests",
    f"{WIDE_CALLS} concurrent gRPC Predicts declaring [1, {WIDE:,}] with one int_val each "
    f"({len(wide_request().SerializeToString())} bytes each)",
    "grpc",
    f"INVALID_ARGUMENT '{message}' before any allocation; peak RSS within "
    f"+{RSS_PEAK_LIMIT_MB} MB of idle",
    f"{sorted({a[0] + ': ' + excerpt(a[1], 80) for a in answers})} in {seconds:.1f} s; "
    + memory_row(rss, returned_s),
    ok,
  )
  assert ok, answers


def empty_rows_body():
  """8 MiB of {"inputs": {"input_ids": [[], [], ...]}}: 2.8 million rows of nothing."""
  head, tail = b'{"signature_name": "result", "inputs": {"input_ids": [', b"]}}"
  count = (EMPTY_ROWS_BYTES - len(head) - len(tail)) // 3
  return head + b",".join([b"[]"] * count) + tail


def test_rest_flood_does_not_starve_grpc(server, report):
  body = empty_rows_body()
  stop = threading.Event()
  codes = []

  def flood():
    with requests.Session() as session:
      while not stop.is_set():
        response = session.post(
          f"http://{server.rest}{PREDICT_PATH}", data=body, timeout=HTTP_TIMEOUT_S
        )
        codes.append(response.status_code)

  probes = []
  with PeakRss(server.pid) as rss:
    flooders = [threading.Thread(target=flood) for _ in range(REST_FLOODERS)]
    for thread in flooders:
      thread.start()
    started = time.monotonic()
    while time.monotonic() - started < FLOOD_S:
      probes.append(good(server, "grpc"))
    stop.set()
    for thread in flooders:
      thread.join(HTTP_TIMEOUT_S)
  returned_s = rss.returned_within(RSS_PEAK_LIMIT_MB, RSS_RETURN_S)
  seconds = sorted(p.seconds for p in probes)
  p50, slowest = statistics.median(seconds), seconds[-1]
  answered = all(p.code == "OK" for p in probes)
  ok = (
    answered
    and p50 < PROBE_P50_LIMIT_S
    and slowest < PROBE_MAX_LIMIT_S
    and set(codes) == {400}
    and rss.peak - rss.before <= RSS_PEAK_LIMIT_MB
    and returned_s is not None
  )
  report.add(
    "load",
    f"{REST_FLOODERS} REST clients posting 8 MiB bodies of empty rows back to back for "
    f"{FLOOD_S:g} s, one-sentence gRPC probes meanwhile",
    "gRPC + REST",
    "REST 400, refused unparsed (more arrays than any valid request); gRPC p50 < "
    f"{PROBE_P50_LIMIT_S * 1000:.0f} ms, slowest < {PROBE_MAX_LIMIT_S:g} s; "
    f"peak RSS within +{RSS_PEAK_LIMIT_MB} MB",
    f"{len(codes)} REST answers {sorted(set(codes))}; {len(probes)} gRPC probes, p50 "
    f"{p50 * 1000:.0f} ms, slowest {slowest * 1000:.0f} ms, all OK: {answered}; "
    + memory_row(rss, returned_s),
    ok,
  )
  assert ok, (p50, slowest, sorted(set(codes)))


def test_distinct_shapes_do_not_accumulate(server, report):
  """One request per width over the positions: each used to open a batch queue (and a task)
  kept for the servable's life before its run failed in the graph."""
  shaped = [
    grpc_request(
      {
        n: tensor(lite.DT_INT32, [1, POSITIONS + w], int_val=[1])
        for n in ("input_ids", "input_mask")
      }
    )
    for w in range(1, SHAPES + 1)
  ]
  started = time.monotonic()
  with PeakRss(server.pid) as rss:
    answers = call_all(server, shaped, SHAPE_CONCURRENCY)
  seconds = time.monotonic() - started
  after = rss.rss()
  refused = all(code == "INVALID_ARGUMENT" for code, _ in answers)
  next_good = good(server, "grpc")
  ok = refused and next_good.code == "OK" and after - rss.before <= SHAPES_KEPT_LIMIT_MB
  report.add(
    "bad requests",
    f"{SHAPES:,} gRPC Predicts of distinct widths {POSITIONS + 1}..{POSITIONS + SHAPES} "
    f"({SHAPE_CONCURRENCY} in flight)",
    "grpc",
    "each INVALID_ARGUMENT from its shape, no batch queue opened; RSS kept within "
    f"+{SHAPES_KEPT_LIMIT_MB} MB",
    f"{sorted({c for c, _ in answers})} in {seconds:.1f} s; RSS {rss.before:.0f} -> peak "
    f"{rss.peak:.0f} -> {after:.0f} MB; next good request {next_good.code}",
    ok,
  )
  assert ok, sorted({a for a in answers})[:5]
