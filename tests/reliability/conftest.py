"""Reliability of the served model end to end: bad inputs, load, faults and security.

A tiny random export served by `python -m bert_ner.server` on free loopback ports (127.0.0.1 only)
gets a corpus of bad requests on REST and gRPC, bad texts through both client classes, 5,000
concurrent requests, SIGKILLs of the server and of an export, a corrupt version directory and
static security checks, one module per section (test_rel_*.py). Every case records what it
expected and what it observed; when the session ends the collector writes build/RELIABILITY.md,
or docs/RELIABILITY.md for a full run with WRITE_RELIABILITY_REPORT=1 (`make reliability-report`).
"""

import dataclasses
import os
import sys
import time

import pytest

from bert_ner import model_base
from bert_ner.clients import grpc_client, rest_client
from bert_ner.paths import REPO_ROOT
from bert_ner.server.process import ServerProcess
from e2e_support import free_port, make_checkpoint
from rel_support import CLIENT_TIMEOUT_S, MODEL, POSITIONS, SENTENCES, VOCAB_SIZE

DOC = REPO_ROOT / "docs" / "RELIABILITY.md"
PARTIAL_DOC = REPO_ROOT / "build" / "RELIABILITY.md"  # build/ is not tracked
SECTIONS = ("bad requests", "bad texts", "bad files", "load", "faults", "security")
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
      "Written by `tests/reliability/` (`make test`, or "
      "`.venv/bin/python -m pytest -q tests/reliability`) from what the run observed; "
      "do not edit by hand. A tiny random BERT-NER export (2 layers, hidden 32, vocabulary "
      f"{VOCAB_SIZE}, {POSITIONS} positions, max_seq_length 32) is served by "
      "`python -m bert_ner.server` with its default flags on free 127.0.0.1 ports; nothing is "
      "sent to any other address.",
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
      lines += [
        f"## {section.capitalize()}",
        "",
        "| case | transport | expected | observed | |",
        "|---|---|---|---|---|",
      ]
      lines += [
        f"| {cell(r.case)} | {cell(r.transport)} | {cell(r.expected)} | "
        f"{cell(r.observed)} | {'ok' if r.ok else '**FAILED**'} |"
        for r in self.rows
        if r.section == section
      ]
      lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def pytest_collection_modifyitems(items):
  """Every reliability case needs a served export (some start, kill or restart more servers):
  all are `slow`, left out of `make test-fast`."""
  here = os.path.dirname(__file__)
  for item in items:
    if str(item.path).startswith(here + os.sep):
      item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def report():
  """Session-wide collector; writes docs/RELIABILITY.md when the session ends."""
  collector = Report()
  yield collector
  collector.write(DOC)


# ---------------------------------------------------------------- the deployment under test


class Deployment:
  """The served model base, its checkpoint and assets, and the server on fixed loopback ports."""

  def __init__(self, work, ckpt, base, verify_file):
    self.work, self.ckpt, self.base, self.verify_file = work, ckpt, base, verify_file
    self.assets = base / "1" / model_base.ASSETS_DIR
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
      return grpc_client.GrpcNerClient(
        self.grpc, signature="result", timeout=timeout, assets=self.assets
      )
    return rest_client.RestNerClient(
      self.rest, signature="result", timeout=timeout, assets=self.assets
    )

  def export_command(self, *extra):
    return [
      sys.executable,
      "-m",
      "bert_ner.export",
      "--checkpoint",
      str(self.ckpt),
      "--model_base_path",
      str(self.base),
      "--verify_file",
      str(self.verify_file),
      "--verify_sentences",
      "2",
      *extra,
    ]


@pytest.fixture(scope="session")
def env(tiny_bert_dir, tmp_path_factory, report):
  """Version 1 exported in-process, served by `python -m bert_ner.server` (defaults, fixed free
  ports)."""
  from bert_ner.export import exporter

  work = tmp_path_factory.mktemp("reliability")
  ckpt = make_checkpoint(tiny_bert_dir, work / "ckpt")
  verify_file = work / "verify.txt"
  verify_file.write_text("\n\n".join("\n".join(s.split()) for s in SENTENCES[:2]) + "\n")
  base = work / "models" / MODEL
  exporter.export_model(
    str(ckpt), str(base), None, [s.split() for s in SENTENCES[:2]], log=lambda *_: None
  )
  deployment = Deployment(work, ckpt, base, verify_file)
  started = time.monotonic()
  deployment.server.start()
  deployment.start_seconds = time.monotonic() - started
  try:
    yield deployment
  finally:
    # Headline counts, written whatever order the case modules ran in.
    report.counts["server restarts survived"] = deployment.restarts
    report.counts["versions served in turn"] = " -> ".join(map(str, deployment.versions_served))
    report.counts["run time"] = (
      f"{time.monotonic() - report.started:.0f} s (export, server start-ups and every case)"
    )
    alive = deployment.server.proc.poll() is None
    report.add(
      "faults",
      "the server process at the end of the suite",
      "server",
      "still running",
      "running" if alive else f"exited {deployment.server.proc.poll()}",
      alive,
    )
    for child in deployment.children:
      if child.poll() is None:
        child.kill()
        child.wait(timeout=30)
    deployment.server.stop()
