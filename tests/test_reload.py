"""Clients across a reload: a model base holding several versions, a new version moved in while
requests run in a loop. New clients (as the scripts make) and one long-lived client (as the demo
keeps, checking before every request) must take the served version's assets: no request fails,
neither while the new version is on disk but not yet served nor after the switch."""

import os
import threading
import time

import pytest

from bert_ner import model_base
from bert_ner.clients import common, grpc_client, rest_client
from bert_ner.server.process import ServerProcess
from e2e_support import make_checkpoint, run_export

CLASSES = {"grpc": grpc_client.GrpcNerClient, "rest": rest_client.RestNerClient}
SENTENCE = "EU rejects German call"
LOOP_TIMEOUT_S = 120
AFTER_SWITCH = 40  # requests of each kind once every new client has the new version


def export(checkpoint, base, version):
  """`python -m bert_ner.export` of checkpoint as `version` of base; returns the fingerprint."""
  done = run_export(checkpoint, base, "--version", version)
  assert done.returncode == 0, done.stderr[-2000:]
  return common.read_fingerprint(model_base.assets(base / str(version)))


@pytest.mark.slow  # exports two models, starts the server
@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_no_request_fails_across_a_reload(tiny_bert_dir, tmp_path, monkeypatch, capsys, transport):
  monkeypatch.delenv("BERT_NER_ASSETS", raising=False)
  monkeypatch.chdir(tmp_path)  # the clients look for models/bert_ner here first
  base, staging = tmp_path / "models" / "bert_ner", tmp_path / "staging"
  old = export(make_checkpoint(tiny_bert_dir, tmp_path / "a", seed=1), base, 1)
  new = export(make_checkpoint(tiny_bert_dir, tmp_path / "b", seed=2), staging, 2)
  assert old != new
  with ServerProcess(base, tmp_path / "server.log") as server:
    address = server.grpc if transport == "grpc" else server.rest
    client_class = CLASSES[transport]
    failures, answered = [], []  # answered: (kind, fingerprint, version 2 on disk then)
    long_lived = client_class(address, signature="result")
    moved = threading.Event()

    def one_request(kind, client):
      on_disk = moved.is_set()
      try:
        client.check_fingerprint()
        client.predict([SENTENCE])
        answered.append((kind, client.fingerprint, on_disk))
      except common.ClientError as e:
        failures.append(f"{kind}: {e}")

    deadline = time.monotonic() + LOOP_TIMEOUT_S
    while time.monotonic() < deadline:
      try:
        with client_class(address, signature="result") as fresh:
          one_request("new client", fresh)
      except common.ClientError as e:  # the scripts load their assets when they start
        failures.append(f"new client: {e}")
      one_request("long-lived client", long_lived)
      if len(answered) == 20:
        # The export was written aside; moving it in is what an exporter's rename does.
        os.rename(staging / "2", base / "2")
        moved.set()
      done = [a for a in answered if a[1] == new]
      if len(done) >= 2 * AFTER_SWITCH:
        break
    long_lived.close()
  window = [a for a in answered if a[2] and a[1] == old]
  with capsys.disabled():
    print(
      f"\n{transport}: {len(answered) + len(failures)} requests across the reload, "
      f"{len(failures)} failed; {len(window)} answered by version 1 while version 2 was "
      f"already on disk, {len([a for a in answered if a[1] == new])} by version 2"
    )
  assert failures == []
  assert window, "no request fell in the window where version 2 was on disk but not served"
  assert {kind for kind, fingerprint, _ in answered if fingerprint == new} == {
    "new client",
    "long-lived client",
  }
