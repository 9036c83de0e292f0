"""Security: loopback binds, size limits, no unpickling of untrusted data, non-root image."""

import ipaddress
import os
import pickle
import re
import shutil

import psutil
import pytest
from e2e_support import REPO_ROOT, ServerProcess

from rel_support import (
  OVERSIZE_BYTES,
  excerpt,
  good,
  grpc_send,
  oversize_grpc,
  oversize_rest,
  rest_send,
)




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
  observed = {"rest": rest_send(env, oversize_rest()), "grpc": grpc_send(env, oversize_grpc())}
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


