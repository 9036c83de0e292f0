"""Concurrent load through both clients, with a memory bound."""

import threading
import time
from concurrent import futures

import psutil

from rel_support import (
  CLIENT_TIMEOUT_S,
  LOAD_REQUESTS,
  LOAD_THREADS,
  LOAD_TIME_LIMIT_S,
  RSS_GROWTH_LIMIT_MB,
  SENTENCES,
  WARMUP_REQUESTS,
  entities_sensible,
  excerpt,
)


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
  return {
    "issued": issued["n"],
    "ok": len(latencies),
    "errors": errors,
    "seconds": elapsed,
    "by_transport": by_transport,
    "latencies": sorted(latencies),
  }


def anon_rss(process):
  """Resident anonymous memory (heap, arenas) in bytes: what a leak grows. The file-backed
  part of RSS (TensorFlow's mapped libraries, about 400 MB here) is dropped and re-read by the
  kernel under memory pressure from other processes: one run saw RSS fall by 273 MB under load."""
  memory = process.memory_info()
  return memory.rss - memory.shared


def test_load_32_threads_5000_requests(env, report):
  server = psutil.Process(env.server.pid)
  clients = [{t: env.client(t) for t in ("grpc", "rest")} for _ in range(LOAD_THREADS)]
  warm = _run_load(env, clients, WARMUP_REQUESTS, LOAD_TIME_LIMIT_S)
  assert not warm["errors"], warm["errors"][:5]
  rss_warm = anon_rss(server)
  stats = _run_load(env, clients, LOAD_REQUESTS, LOAD_TIME_LIMIT_S)
  rss_after = anon_rss(server)
  growth_mb = (rss_after - rss_warm) / 2**20
  rate = stats["ok"] / stats["seconds"]
  lat = stats["latencies"] or [0.0]
  p50, p99 = lat[len(lat) // 2], lat[int(len(lat) * 0.99)]
  report.counts.update(
    {
      "requests sent under load": f"{stats['issued']:,} ({stats['by_transport']['grpc']:,} "
      f"gRPC + {stats['by_transport']['rest']:,} REST answered; "
      f"{LOAD_THREADS} threads; after {WARMUP_REQUESTS} warm-up)",
      "errors under load": len(stats["errors"]),
      "throughput under load": f"{rate:.0f} requests/s over {stats['seconds']:.1f} s "
      f"(p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms)",
      "server anonymous RSS growth during load": f"{growth_mb:+.1f} MB ({rss_warm / 2**20:.0f} "
      f"MB after warm-up -> "
      f"{rss_after / 2**20:.0f} MB; "
      f"bound {RSS_GROWTH_LIMIT_MB} MB)",
    }
  )
  complete = stats["issued"] == LOAD_REQUESTS and stats["ok"] == LOAD_REQUESTS
  report.add(
    "load",
    f"{LOAD_REQUESTS:,} single-sentence requests, {LOAD_THREADS} threads, alternating transports",
    "gRPC + REST",
    f"all {LOAD_REQUESTS:,} answered, 0 errors, < {LOAD_TIME_LIMIT_S} s",
    f"{stats['ok']:,} answered, {len(stats['errors'])} errors, "
    f"{stats['seconds']:.1f} s, {rate:.0f} requests/s, p50 {p50 * 1000:.0f} ms, "
    f"p99 {p99 * 1000:.0f} ms"
    + (f"; first error: {stats['errors'][0]}" if stats["errors"] else ""),
    complete and not stats["errors"],
  )
  report.add(
    "load",
    "server anonymous RSS after load minus after warm-up",
    "-",
    f"< {RSS_GROWTH_LIMIT_MB} MB",
    f"{growth_mb:+.1f} MB",
    growth_mb < RSS_GROWTH_LIMIT_MB,
  )
  assert not stats["errors"], stats["errors"][:5]
  assert complete, stats
  assert growth_mb < RSS_GROWTH_LIMIT_MB
