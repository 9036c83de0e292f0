"""Security: loopback binds, size limits, no unpickling of untrusted data, non-root image."""

import ast
import ipaddress
import os
import pickle
import re
import shutil

import psutil
import pytest

from bert_ner.paths import REPO_ROOT
from bert_ner.server.process import ServerProcess
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
  return sorted(
    {
      (c.laddr.ip, c.laddr.port)
      for c in psutil.Process(pid).net_connections("inet")
      if c.status == psutil.CONN_LISTEN
    }
  )


def loopback(ip):
  """127.0.0.0/8 or ::1, also as an IPv4-mapped IPv6 address (gRPC's dual-stack sockets)."""
  address = ipaddress.ip_address(ip)
  return (getattr(address, "ipv4_mapped", None) or address).is_loopback


def test_binds_loopback_by_default(env, report):
  addresses = listening(env.server.pid)
  ports = {env.server.grpc_port, env.server.rest_port}
  ok = all(loopback(ip) for ip, _ in addresses) and ports == {p for _, p in addresses}
  report.add(
    "security",
    "listening sockets with no --host flag (psutil)",
    "gRPC + REST",
    "loopback only, on the two ports",
    f"{addresses}",
    ok,
  )
  assert ok, addresses


def test_binds_all_interfaces_only_when_asked(env, report):
  server = ServerProcess(env.base, env.work / "server-any.log", flags=["--host", "0.0.0.0"])
  try:
    server.start()  # no request is sent to it: only its sockets are inspected
    addresses = listening(server.pid)
  finally:
    server.stop()
  ok = {ip for ip, _ in addresses} <= {"0.0.0.0", "::"} and len(addresses) == 2
  report.add(
    "security",
    "listening sockets with --host 0.0.0.0 (psutil; no traffic sent)",
    "gRPC + REST",
    "the wildcard address on both ports (0.0.0.0, or gRPC's dual-stack :: which also covers IPv4)",
    f"{addresses}",
    ok,
  )
  assert ok, addresses


def test_request_size_limits(env, report):
  observed = {"rest": rest_send(env, oversize_rest()), "grpc": grpc_send(env, oversize_grpc())}
  ok = (
    observed["rest"].code == 413
    and observed["grpc"].code == "RESOURCE_EXHAUSTED"
    and all(good(env, t).code in (200, "OK") for t in observed)
  )
  report.add(
    "security",
    f"request size limit: {OVERSIZE_BYTES >> 20} MiB request, default --max_request_bytes 8 MiB",
    "gRPC + REST",
    "REST 413, gRPC RESOURCE_EXHAUSTED; the server keeps serving",
    "; ".join(
      f"{t}: {o.code} {excerpt(o.message, 70)} in {o.seconds * 1000:.0f} ms"
      for t, o in observed.items()
    ),
    ok,
  )
  assert ok, observed


class _Payload:
  """A pickle that would create a file if unpickled with the plain pickle module."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_malicious_label_pickle_is_refused(env, report, tmp_path):
  from bert_ner import labels
  from bert_ner.export import exporter

  macanv = tmp_path / "macanv"
  shutil.copytree(env.ckpt, macanv)
  (macanv / "label2id.json").unlink()
  marker = tmp_path / "pwned"
  (macanv / "label2id.pkl").write_bytes(pickle.dumps(_Payload(marker)))
  with pytest.raises(ValueError) as direct:
    labels.load_label_map(str(macanv))
  with pytest.raises(exporter.ExportError) as export_error:
    exporter.export_model(str(macanv), str(tmp_path / "base"), log=lambda *_: None)
  ok = (
    not marker.exists()
    and "refusing to load" in str(direct.value)
    and ("refusing to load" in str(export_error.value))
  )
  report.add(
    "security",
    "label2id.pkl whose unpickling runs os.system",
    "bert_ner.labels + export",
    "refused with a clear error, the command never runs",
    f"load_label_map: {excerpt(direct.value, 150)}; export: "
    f"{excerpt(export_error.value, 60)}; command ran: {marker.exists()}",
    ok,
  )
  assert ok


# Modules whose loaders run code from the data (pickle and its relatives): server/ and clients/
# handle untrusted requests and have no use for them, so importing one at all is a finding.
PICKLING_MODULES = {
  "pickle",
  "_pickle",
  "cPickle",
  "cloudpickle",
  "dill",
  "joblib",
  "marshal",
  "shelve",
  "copyreg",
  "_compat_pickle",
}
# Loaders elsewhere that unpickle: torch.load, pandas.read_pickle, yaml's full loaders.
UNPICKLING_CALLS = {
  "torch.load",
  "pandas.read_pickle",
  "yaml.unsafe_load",
  "yaml.full_load",
  "yaml.unsafe_load_all",
  "yaml.full_load_all",
}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}


def _dotted(node, aliases):
  """`a.b.c` of a Name/Attribute chain with import aliases resolved, or None."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return None
  parts.append(aliases.get(node.id, node.id))
  return ".".join(reversed(parts))


def unpickling_sites(source):
  """(line, what) of every way `source` could unpickle data: imports of the pickle family under
  any spelling or alias, dynamic imports of them, torch.load, pandas.read_pickle, yaml's unsafe
  loaders and any call passing allow_pickle=True (numpy)."""
  tree = ast.parse(source)
  aliases, sites = {}, []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for name in node.names:
        aliases[(name.asname or name.name).split(".")[0]] = (
          name.name if name.asname else name.name.split(".")[0]
        )
        if name.name.split(".")[0] in PICKLING_MODULES:
          sites.append((node.lineno, f"import {name.name}"))
    elif isinstance(node, ast.ImportFrom) and node.module:
      for name in node.names:
        aliases[name.asname or name.name] = f"{node.module}.{name.name}"
      if node.module.split(".")[0] in PICKLING_MODULES:
        sites.append(
          (node.lineno, f"from {node.module} import {', '.join(n.name for n in node.names)}")
        )
  for node in ast.walk(tree):
    if not isinstance(node, ast.Call):
      continue
    called = _dotted(node.func, aliases) or ""
    first = node.args[0] if node.args else None
    if (
      called in ("__import__", "importlib.import_module")
      and isinstance(first, ast.Constant)
      and str(first.value).split(".")[0] in PICKLING_MODULES
    ):
      sites.append((node.lineno, f"{called}({first.value!r})"))
    if called in UNPICKLING_CALLS:
      sites.append((node.lineno, called))
    if called == "yaml.load":
      loader = next(
        (k.value for k in node.keywords if k.arg == "Loader"),
        node.args[1] if len(node.args) > 1 else None,
      )
      if (_dotted(loader, aliases) or "").split(".")[-1] not in SAFE_YAML_LOADERS:
        sites.append((node.lineno, "yaml.load without a safe Loader"))
    if any(
      k.arg == "allow_pickle" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
      for k in node.keywords
    ):
      sites.append((node.lineno, f"{called or 'a call'}(allow_pickle=...)"))
  return sorted(sites)


UNPICKLING = [
  "import pickle\npickle.loads(b)",
  "from pickle import load\nload(f)",
  "import pickle as p\np.loads(b)",
  "import pickle\npickle.Unpickler(f).load()",
  "import _pickle\n_pickle.loads(b)",
  "from _pickle import Unpickler",
  "import cPickle",
  "import dill",
  "import joblib",
  "import marshal",
  "import shelve",
  "import cloudpickle",
  "import copyreg",
  "import importlib\nimportlib.import_module('pickle')",
  "__import__('pickle')",
  "import numpy as np\nnp.load(f, allow_pickle=True)",
  "from numpy import load\nload(f, allow_pickle=flag)",
  "import torch\ntorch.load(f)",
  "from torch import load\nload(f)",
  "import pandas as pd\npd.read_pickle(f)",
  "import yaml\nyaml.load(f)",
  "import yaml\nyaml.load(f, Loader=yaml.Loader)",
  "import yaml\nyaml.unsafe_load(f)",
]
SAFE = [
  "import json\njson.loads(b)",
  "import numpy as np\nnp.load(f)",
  "import numpy as np\nnp.load(f, allow_pickle=False)",
  "import yaml\nyaml.load(f, Loader=yaml.SafeLoader)",
  "import yaml\nyaml.safe_load(f)",
  "model.load(f)",
  "def loads(b):\n  return b",
]


def test_unpickling_check_knows_every_spelling():
  missed = [code for code in UNPICKLING if not unpickling_sites(code)]
  flagged = [code for code in SAFE if unpickling_sites(code)]
  assert not missed and not flagged, (missed, flagged)


def test_server_and_clients_never_unpickle(report):
  paths = [
    path
    for folder in ("bert_ner/server", "bert_ner/clients")
    for path in sorted((REPO_ROOT / folder).rglob("*.py"))
  ]
  hits = [
    f"{path.relative_to(REPO_ROOT)}:{line}: {what}"
    for path in paths
    for line, what in unpickling_sites(path.read_text(encoding="utf-8"))
  ]
  report.add(
    "security",
    "server/ and clients/ parsed (AST) for any import of pickle, _pickle, "
    "cPickle, dill, joblib, marshal, shelve, cloudpickle (aliases and from-imports "
    "included), dynamic imports of them, torch.load, pandas.read_pickle, unsafe "
    f"yaml loads, allow_pickle (checked against {len(UNPICKLING)} spellings)",
    "static",
    "no match",
    f"{len(paths)} files parsed, {len(hits)} matches" + (f": {hits}" if hits else ""),
    not hits,
  )
  assert not hits


def test_docker_image_runs_as_non_root(report):
  lines = (REPO_ROOT / "docker" / "Dockerfile").read_text().splitlines()
  users = [
    (i, line.split(None, 1)[1].strip())
    for i, line in enumerate(lines)
    if re.match(r"\s*USER\s+\S", line, re.I)
  ]
  entry = max(
    (i for i, line in enumerate(lines) if re.match(r"\s*(ENTRYPOINT|CMD)\b", line)), default=-1
  )
  last = users[-1][1] if users else None
  user = last.split(":")[0] if last else None
  ok = bool(users) and user not in ("root", "0") and users[-1][0] < entry
  report.add(
    "security",
    "docker/Dockerfile USER",
    "static",
    "a non-root USER set before ENTRYPOINT",
    f"USER {last} (line {users[-1][0] + 1})" if users else "no USER directive",
    ok,
  )
  assert ok, users


def test_reload_config_api_is_off_without_a_config_file(env, report):
  """HandleReloadConfigRequest loads whatever SavedModel path a caller names, and a SavedModel's
  ops run at load: without --model_config_file nobody needs it, so it is off."""
  import grpc
  from tensorflow_serving.apis import model_management_pb2

  request = model_management_pb2.ReloadConfigRequest()
  request.config.model_config_list.config.add(
    name="bert_ner", base_path=str(env.base), model_platform="tensorflow"
  )
  with grpc.insecure_channel(env.grpc) as channel:
    reload_config = channel.unary_unary(
      "/tensorflow.serving.ModelService/HandleReloadConfigRequest",
      request_serializer=model_management_pb2.ReloadConfigRequest.SerializeToString,
      response_deserializer=model_management_pb2.ReloadConfigResponse.FromString,
    )
    try:
      reload_config(request, timeout=30)
      code, details = "OK", "config applied"
    except grpc.RpcError as error:
      code, details = error.code().name, error.details() or ""
  after = good(env, "grpc")
  ok = code == "UNIMPLEMENTED" and "--enable_model_reload_api" in details and after.code == "OK"
  report.add(
    "security",
    "HandleReloadConfigRequest naming a model base, server started without --model_config_file",
    "grpc",
    "UNIMPLEMENTED naming --enable_model_reload_api; the served model unchanged",
    f"{code}: {excerpt(details, 90)}; next Predict {after.code}",
    ok,
  )
  assert ok, (code, details)
