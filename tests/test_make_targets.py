"""The Makefile's client targets reach the server the port variables name (`make -n` only)."""

import re
import subprocess

import pytest

from bert_ner.paths import REPO_ROOT


def make_dry_run(target, *assignments):
  """The commands `make TARGET VAR=value ...` would run (the venv stamp taken as up to date)."""
  done = subprocess.run(
    ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", target, *assignments],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 0, done.stderr
  return done.stdout


@pytest.mark.slow  # runs make
@pytest.mark.parametrize(
  ("target", "assignments", "server"),
  [
    ("eval", (), "127.0.0.1:8500"),
    ("eval", ("GRPC_PORT=9500",), "127.0.0.1:9500"),
    ("eval", ("TRANSPORT=rest", "REST_PORT=9501"), "127.0.0.1:9501"),
    ("eval", ("TRANSPORT=rest", "GRPC_PORT=9500", "HOST=localhost"), "localhost:8501"),
    ("demo", ("GRPC_PORT=9500",), "127.0.0.1:9500"),
    ("demo", ("TRANSPORT=rest", "REST_PORT=9501"), "127.0.0.1:9501"),
  ],
)
def test_client_targets_honour_the_port_variables(target, assignments, server):
  servers = re.findall(r"--server (\S+)", make_dry_run(target, *assignments))
  assert servers == [server]


@pytest.mark.slow  # runs make
def test_local_eval_names_no_server_and_demo_port_moves_the_page():
  assert "--server" not in make_dry_run("eval", "TRANSPORT=local")
  assert re.findall(r"--port (\d+)", make_dry_run("demo")) == ["8080"]
  assert re.findall(r"--port (\d+)", make_dry_run("demo", "DEMO_PORT=9090")) == ["9090"]
