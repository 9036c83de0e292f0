"""Three replicas of `python -m bert_ner.server` on 127.0.0.1 behind one client: gRPC round robin
spreads the requests (each replica's Prometheus request counter), REST fails over, and a replica
SIGKILLed mid-run costs no request on either transport."""

import re
import threading
import time
from concurrent import futures

import pytest
import requests

from bert_ner import model_base
from bert_ner.clients import grpc_client, rest_client
from bert_ner.paths import REPO_ROOT
from bert_ner.server.process import ServerProcess
from e2e_support import free_port, make_checkpoint
from rel_support import HTTP_TIMEOUT_S, MODEL, SENTENCES

REPLICAS = 3
REQUESTS = 3000
THREADS = 8
KILL_AFTER = 1000  # requests answered before one replica is SIGKILLed
SHARE_RANGE = (25.0, 42.0)  # % of the gRPC requests each replica must see
RUN_TIME_LIMIT_S = 240
CLIENT_TIMEOUT_S = 10.0
REQUEST_COUNT = re.compile(r"^:tensorflow:serving:request_count\{[^}]*\} (\d+)$", re.M)


@pytest.fixture(scope="module")
def replicas(tiny_bert_dir, tmp_path_factory):
  """Three servers of one tiny export on free loopback ports, started side by side."""
  from bert_ner.export import exporter

  work = tmp_path_factory.mktemp("replicas")
  base = work / "models" / MODEL
  exporter.export_model(
    str(make_checkpoint(tiny_bert_dir, work / "ckpt")),
    str(base),
    None,
    [s.split() for s in SENTENCES[:2]],
    log=lambda *_: None,
  )
  servers = [
    # The Prometheus page (each replica's request counter) needs the monitoring config, as in
    # TF Serving.
    ServerProcess(
      base,
      work / f"replica{i}.log",
      free_port(),
      free_port(),
      flags=["--monitoring_config_file", str(REPO_ROOT / "docker" / "monitoring_config.txt")],
    )
    for i in range(REPLICAS)
  ]
  try:
    with futures.ThreadPoolExecutor(REPLICAS) as pool:
      list(pool.map(lambda server: server.start(), servers))
    yield servers, base / "1" / model_base.ASSETS_DIR
  finally:
    for server in servers:
      server.stop()


def request_count(server):
  """Predict requests the replica counted (all statuses), from its Prometheus page."""
  page = requests.get(
    f"http://127.0.0.1:{server.rest_port}/monitoring/prometheus/metrics", timeout=HTTP_TIMEOUT_S
  ).text
  return sum(int(n) for n in REQUEST_COUNT.findall(page))


def alive(servers):
  return [s for s in servers if s.proc.poll() is None]


def targets(servers, transport):
  port = "grpc_port" if transport == "grpc" else "rest_port"
  return ",".join(f"127.0.0.1:{getattr(s, port)}" for s in servers)


def make_client(transport, servers, assets):
  cls = grpc_client.GrpcNerClient if transport == "grpc" else rest_client.RestNerClient
  client = cls(targets(servers, transport), timeout=CLIENT_TIMEOUT_S, assets=assets)
  client.check_fingerprint()
  return client


def drive(client, total, on_answered=None):
  """Sends `total` one-sentence requests from THREADS threads; returns (errors, seconds).

  on_answered(n) runs once, in the thread whose answer made n reach KILL_AFTER.
  """
  counter, lock, errors = [0], threading.Lock(), []
  issued = iter(range(total))

  def worker():
    while True:
      with lock:
        index = next(issued, None)
      if index is None:
        return
      try:
        client.predict([SENTENCES[index % len(SENTENCES)]])
      except Exception as e:  # any failure is a lost request: recorded, asserted by the caller
        errors.append(f"{type(e).__name__}: {e}")
      with lock:
        counter[0] += 1
        fire = counter[0] == KILL_AFTER
      if fire and on_answered:
        on_answered(KILL_AFTER)

  started = time.monotonic()
  with futures.ThreadPoolExecutor(THREADS) as pool:
    jobs = [pool.submit(worker) for _ in range(THREADS)]
    done, pending = futures.wait(jobs, timeout=RUN_TIME_LIMIT_S)
  assert not pending, f"{total} requests did not finish within {RUN_TIME_LIMIT_S} s"
  return errors, time.monotonic() - started


def shares(before, after):
  """% of the requests each replica counted between two readings."""
  deltas = [b - a for a, b in zip(before, after)]
  return [100.0 * d / max(1, sum(deltas)) for d in deltas], sum(deltas)


def test_grpc_round_robin_spreads_requests_over_replicas(replicas, report):
  servers, assets = replicas
  live = alive(servers)
  assert len(live) == REPLICAS
  client = make_client("grpc", live, assets)
  before = [request_count(s) for s in live]
  errors, seconds = drive(client, REQUESTS)
  percent, counted = shares(before, [request_count(s) for s in live])
  ok = (
    not errors
    and counted == REQUESTS
    and all(SHARE_RANGE[0] <= p <= SHARE_RANGE[1] for p in percent)
  )
  report.add(
    "load",
    f"{REQUESTS:,} gRPC requests, {THREADS} threads, one client, --server "
    f"a,b,c ({REPLICAS} replicas)",
    "grpc",
    f"each replica {SHARE_RANGE[0]:g}-{SHARE_RANGE[1]:g} % (round robin), 0 errors",
    f"shares {' / '.join(f'{p:.1f}' for p in percent)} % of {counted:,} counted; "
    f"{len(errors)} errors; {REQUESTS / seconds:.0f} req/s",
    ok,
  )
  assert not errors, errors[:3]
  assert counted == REQUESTS
  assert all(SHARE_RANGE[0] <= p <= SHARE_RANGE[1] for p in percent), percent


def test_rest_sends_every_request_to_a_live_replica(replicas, report):
  servers, assets = replicas
  live = alive(servers)
  client = make_client("rest", live, assets)
  before = [request_count(s) for s in live]
  errors, seconds = drive(client, REQUESTS)
  percent, counted = shares(before, [request_count(s) for s in live])
  ok = not errors and counted == REQUESTS
  report.add(
    "load",
    f"{REQUESTS:,} REST requests, {THREADS} threads, one client, --server "
    f"a,b,c ({len(live)} replicas)",
    "rest",
    "0 errors; fail-over client: the first live target takes the requests",
    f"shares {' / '.join(f'{p:.1f}' for p in percent)} % of {counted:,} counted; "
    f"{len(errors)} errors; {REQUESTS / seconds:.0f} req/s",
    ok,
  )
  assert not errors, errors[:3]
  assert counted == REQUESTS


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_a_replica_sigkilled_mid_run_loses_no_request(replicas, report, transport):
  servers, assets = replicas
  live = alive(servers)
  assert len(live) >= 2, "needs two live replicas"
  client = make_client(transport, live, assets)
  # REST sends to the first target until it fails: kill that one, so the fail-over is exercised.
  victim = live[0]
  killed_at = []

  def kill(_):
    killed_at.append(time.monotonic())
    victim.kill()

  errors, seconds = drive(client, REQUESTS, on_answered=kill)
  ok = bool(killed_at) and not errors
  report.add(
    "faults",
    f"{REQUESTS:,} {transport} requests over {len(live)} replicas, the "
    f"first SIGKILLed after {KILL_AFTER:,} answers",
    transport,
    "0 requests lost (gRPC: retry of UNAVAILABLE on another replica; REST: fail-over "
    "to the next target)",
    f"{REQUESTS:,} sent, {len(errors)} lost"
    + (f" ({errors[0][:80]})" if errors else "")
    + f"; replica exited {victim.proc.returncode}; {seconds:.1f} s",
    ok,
  )
  assert killed_at and victim.proc.returncode is not None
  assert not errors, errors[:3]
