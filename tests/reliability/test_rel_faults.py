"""Faults: the server SIGKILLed under load, an export killed midway, a corrupt version."""

import re
import shutil
import signal
import subprocess
import threading
import time
from concurrent import futures

import requests

from bert_ner.clients import common
from bert_ner.paths import REPO_ROOT
from rel_support import (
  CLIENT_TIMEOUT_S,
  EXPORT_TIMEOUT_S,
  HTTP_TIMEOUT_S,
  MODEL,
  OUTAGE_S,
  RECONNECT_LIMIT_S,
  RECOVERY_LIMIT_S,
  SENTENCES,
  VERSION_SWAP_LIMIT_S,
  excerpt,
  served_version,
)


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
    for _after_kill, seconds, error in calls:
      if error:
        per_transport.setdefault(transport, []).append((seconds, error))
  for transport in ("grpc", "rest"):
    fails = per_transport.get(transport, [])
    slowest = max((s for s, _ in fails), default=0.0)
    kinds = sorted({k for _, (k, _) in fails})
    messages = sorted({re.sub(r"\d+", "N", m) for _, (_, m) in fails})
    one_line = all(
      k == "ClientError"
      and "\n" not in m
      and re.search(r"server unreachable at 127\.0\.0\.1:\d+", m)
      for _, (k, m) in fails
    )
    ok = bool(fails) and one_line and slowest < CLIENT_TIMEOUT_S + 1
    report.add(
      "faults",
      f"server SIGKILLed under load (8 threads, client timeout {CLIENT_TIMEOUT_S:g} s)",
      transport,
      f"every call fails in < {CLIENT_TIMEOUT_S + 1:g} s with a one-line "
      "ClientError 'server unreachable at ...'",
      f"{len(fails)} failed calls, slowest {slowest * 1000:.0f} ms, {', '.join(kinds)}: "
      + " / ".join(excerpt(m, 90) for m in messages[:3]),
      ok,
    )
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
    report.add(
      "faults",
      "the same client objects after a restart on the same ports",
      transport,
      f"succeed again within {RECONNECT_LIMIT_S:g} s of the server being ready",
      f"server ready {restart_s:.1f} s after its restart ({restart_s + kill_to_start:.1f} "
      f"s outage); the {len(times)} clients succeeded after "
      + ", ".join("never" if r is None else f"{r * 1000:.0f} ms" for r in times),
      ok,
    )
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
    export = subprocess.Popen(
      env.export_command(), cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT
    )
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
  report.add(
    "faults",
    "export SIGKILLed while writing its temp dir",
    "export + gRPC/REST",
    "server keeps serving version 1, no partial version dir, clients keep working",
    f"killed with {len(partial)} files in its temp dir ({', '.join(sorted(partial)[:4])}"
    f"{', ...' if len(partial) > 4 else ''}); base holds {left}; served version "
    f"{version}; versions known to the server {sorted(statuses)}; clients ok: "
    f"{clients_ok}",
    ok,
  )
  assert ok, (left, statuses, version)

  started = time.monotonic()
  result = subprocess.run(
    env.export_command(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=EXPORT_TIMEOUT_S
  )
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
  report.add(
    "faults",
    "next export after the killed one",
    "export + gRPC/REST",
    "exit 0, publishes version 2, removes the dead temp dir, server swaps to 2",
    f"exit {result.returncode} in {export_s:.1f} s; stale temp dir removed: {cleaned}; "
    f"base holds {leftovers}; server answers from version {version} "
    f"{swap_s:.1f} s after the export finished; clients ok: {clients_ok}",
    ok,
  )
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
    ok = (
      statuses.get(7, {}).get("state") == "END"
      and status.get("error_message")
      and any("Skipping" in line for line in logged)
      and version == current
    )
    report.add(
      "faults",
      "corrupt version dir 7 (garbage saved_model.pb)",
      "server",
      f"logged and reported (status END + error), not served; version {current} keeps serving",
      f"log: {excerpt(re.sub(r'^[-0-9 :,]+', '', logged[0]) if logged else '-', 130)}"
      f"; GetModelStatus of 7: {statuses.get(7, {}).get('state')} "
      f"{status.get('error_code')}; served version {version}",
      ok,
    )
    assert ok, (statuses, logged, version)
  finally:
    shutil.rmtree(corrupt)
