"""What a newcomer sees: `make serve` on a fresh clone of the committed tree, a busy port, the
clients run by a Python without their dependencies, `make help`.

The clone reuses this checkout's venv (a symlink, its stamp kept current, so nothing installs)
and the backbone cache; the Docker engine is pointed at a socket that does not exist, so the
embedded server is what serves, on free loopback ports.
"""

import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest

from bert_ner.paths import REPO_ROOT
from e2e_support import free_port

SERVE_TIMEOUT_S = 300  # export + server start on 2 busy cores took 70 s
STOP_TIMEOUT_S = 30
EXAMPLE = "EU rejects German call"
SETUP_INPUTS = ("pyproject.toml", "requirements.lock", "requirements-nodeps.txt")
# C++ log lines at W, E or F level, Python warnings and errors, tracebacks.
ALARMING = re.compile(r"[WEF]\d{4} |.*\b(WARNING|ERROR|CRITICAL|Traceback)\b")
# A busy port's listener; its command line is what the report names.
LISTENER = (
  "import socket, sys, time; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen();"
  " print(s.getsockname()[1], flush=True); time.sleep(600)"
)


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
  """A git clone of HEAD sharing this checkout's venv, with the venv's stamp up to date."""
  if not shutil.which("git") or not shutil.which("make"):
    pytest.skip("needs git and make")
  repo = tmp_path_factory.mktemp("fresh") / "bert-ner-serving"
  subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(repo)], check=True, timeout=120)
  (repo / ".venv").symlink_to((REPO_ROOT / ".venv").resolve())
  for name in SETUP_INPUTS:  # older than the shared stamp: make must not reinstall into it
    os.utime(repo / name, (0, 0))
  if subprocess.run(["make", "-q", ".venv/.installed"], cwd=repo).returncode != 0:
    pytest.skip("this checkout's venv has no up-to-date .venv/.installed stamp")
  return repo


def newcomer_env(repo):
  """The environment of a first `make serve`: no verbosity or log level set, no Docker engine."""
  env = {
    k: v
    for k, v in os.environ.items()
    # A newcomer's shell, not a make running pytest (.ci/run): an inherited MAKELEVEL makes the
    # inner make print "Entering directory" lines a newcomer never sees.
    if k
    not in (
      "BERT_NER_VERBOSE",
      "TF_CPP_MIN_LOG_LEVEL",
      "CUDA_VISIBLE_DEVICES",
      "MAKELEVEL",
      "MAKEFLAGS",
      "MFLAGS",
      "MAKEOVERRIDES",
    )
  }
  env.update(
    PYTHONPATH=str(repo),
    DOCKER_HOST=f"unix://{repo}/no-docker.sock",
    BERT_NER_CACHE=os.environ.get("BERT_NER_CACHE", str(REPO_ROOT / ".cache")),
  )
  return env


@pytest.fixture()
def busy_port():
  """(port, pid) of a process listening on a loopback port."""
  listener = subprocess.Popen([sys.executable, "-c", LISTENER], stdout=subprocess.PIPE, text=True)
  try:
    yield int(listener.stdout.readline()), listener.pid
  finally:
    listener.kill()
    listener.wait()


def lines_of(process):
  """A queue filled with the process's output lines by a daemon thread; None at the end."""
  lines = queue.Queue()

  def pump():
    for line in process.stdout:
      lines.put(line.rstrip("\n"))
    lines.put(None)

  threading.Thread(target=pump, daemon=True).start()
  return lines


def stop(process):
  """SIGTERM to the process group (make, deploy, server), SIGKILL after STOP_TIMEOUT_S."""
  os.killpg(process.pid, signal.SIGTERM)
  try:
    process.wait(STOP_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_busy_port_is_reported_before_anything_loads(clone, busy_port):
  port, pid = busy_port
  started = time.monotonic()
  done = subprocess.run(
    ["make", "serve", f"GRPC_PORT={port}", f"REST_PORT={free_port()}"],
    cwd=clone,
    env=newcomer_env(clone),
    capture_output=True,
    text=True,
    timeout=SERVE_TIMEOUT_S,
  )
  assert done.returncode == 2
  assert done.stdout == ""
  deploy_line, make_line = done.stderr.splitlines()
  assert re.fullmatch(
    rf"deploy: error: grpc port 127\.0\.0\.1:{port} is not free: in use by pid {pid} "
    rf"\(python[\d.]* -c import socket, sys, time; .*\); stop it or choose another "
    rf"\(make serve GRPC_PORT=N, or --grpc_port N\)",
    deploy_line,
  ), deploy_line
  assert re.fullmatch(r"make: \*\*\* \[Makefile:\d+: serve\] Error 2", make_line), make_line
  # No export ran (the clone has none yet) and no TensorFlow was imported: seconds, not minutes.
  assert not (clone / "models/bert_ner").exists()
  assert time.monotonic() - started < 60


@pytest.mark.slow
def test_server_reports_a_busy_port_before_loading(clone, busy_port):
  port, pid = busy_port
  done = subprocess.run(
    [
      sys.executable,
      "-m",
      "bert_ner.server",
      "--model_base_path",
      "models/default",
      "--port",
      str(free_port()),
      "--rest_api_port",
      str(port),
    ],
    cwd=clone,
    env=newcomer_env(clone),
    capture_output=True,
    text=True,
    timeout=SERVE_TIMEOUT_S,
  )
  assert done.returncode == 1 and done.stdout == ""
  assert re.fullmatch(
    rf"Cannot listen on 127\.0\.0\.1:{port} \(--rest_api_port\): in use by pid "
    rf"{pid} \(python[\d.]* -c import socket, .*\)\n",
    done.stderr,
  ), done.stderr


@pytest.mark.slow
def test_make_serve_on_a_fresh_clone_is_short_quiet_and_right(clone):
  grpc_port, rest_port = free_port(), free_port()
  process = subprocess.Popen(
    ["make", "serve", f"GRPC_PORT={grpc_port}", f"REST_PORT={rest_port}"],
    cwd=clone,
    env=newcomer_env(clone),
    stdout=subprocess.PIPE,
    stderr=subprocess.STDOUT,
    text=True,
    start_new_session=True,
  )
  lines, seen = lines_of(process), []
  deadline = time.monotonic() + SERVE_TIMEOUT_S
  try:
    while not seen or not seen[-1].startswith("  curl "):
      line = lines.get(timeout=max(deadline - time.monotonic(), 0.1))
      assert line is not None, "make serve ended early:\n" + "\n".join(seen)
      seen.append(line)
    printed = next(line for line in seen if "clients/grpc_client.py" in line)
    query = subprocess.run(
      shlex.split(printed),
      cwd=clone,
      env=newcomer_env(clone),
      capture_output=True,
      text=True,
      timeout=60,
    )
  finally:
    stop(process)
  output = "\n".join(seen)
  assert not [line for line in seen if ALARMING.match(line)], output
  # One line per step (export, engine, the server's two log lines, ready) and the query block;
  # room for a line or two more (a demo page), not for TensorFlow's start-up.
  assert len(seen) <= 11, output
  assert re.fullmatch(
    r"exported models/default -> models/bert_ner/1 \(fingerprint [0-9a-f]{16}\) "
    r"in [0-9.]+s, verified: SavedModel == checkpoint graph on \d+ sentences "
    r"\(\d+ windows\)",
    seen[0],
  ), output
  assert seen[1] == (
    f"no Docker engine answers at unix://{clone}/no-docker.sock (No such file "
    f"or directory); serving with the embedded server (python -m bert_ner.server) instead"
  )
  ready = seen.index(
    f"Serving bert_ner version 1: gRPC 127.0.0.1:{grpc_port} REST http://127.0.0.1:{rest_port}"
  )
  assert seen[ready + 1 : ready + 3] == [
    "query it with:",
    f'  .venv/bin/python clients/grpc_client.py --server 127.0.0.1:{grpc_port} "{EXAMPLE}"',
  ]
  assert seen[ready + 3] == (
    f'  .venv/bin/python clients/rest_client.py --server 127.0.0.1:{rest_port} "{EXAMPLE}"'
  )
  assert seen[-1].startswith(f"  curl -s -X POST http://127.0.0.1:{rest_port}/v1/models/bert_ner:")
  # The printed command works as printed, without --assets.
  assert query.returncode == 0, query.stderr
  assert query.stdout == f"{EXAMPLE}\n  EU -> ORG [0:2]\n  German -> MISC [11:17]\n"


@pytest.mark.slow  # runs the client scripts
@pytest.mark.parametrize("script", ["grpc_client.py", "rest_client.py"])
def test_client_without_its_dependencies_says_how_to_get_them(script):
  # -S: no site-packages, so neither grpc nor numpy nor tokenizers, like the system python3.
  done = subprocess.run(
    [sys.executable, "-S", f"clients/{script}", EXAMPLE],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 2 and done.stdout == ""
  assert re.fullmatch(
    rf"{script}: error: \S+ has no module '\w+', which the clients need: run `make setup`, "
    rf"then `\.venv/bin/python clients/{script} \.\.\.` \(or `\. \.venv/bin/activate` first\), "
    rf"or `pip install '\.\[client\]'`\n",
    done.stderr,
  ), done.stderr


@pytest.mark.slow  # runs make
def test_make_help_lists_every_target_once():
  done = subprocess.run(
    ["make", "--no-print-directory", "help"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert done.returncode == 0, done.stderr
  makefile = (REPO_ROOT / "Makefile").read_text()
  targets = re.search(r"^\.PHONY: (.*)$", makefile, re.M).group(1).split()
  listed = [m.group(1) for m in re.finditer(r"^  make (\S+) +\S", done.stdout, re.M)]
  assert sorted(listed) == sorted(targets)


@pytest.mark.slow  # runs a subprocess
def test_start_up_filter_drops_the_notices_and_keeps_real_warnings():
  notices = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to "
    "STDERR\nI0000 00:00:1.0 1 port.cc:153] oneDNN custom operations are on.\n"
    "E0000 00:00:1.0 1 util.cc:131] oneDNN supports DT_BOOL only on platforms with "
    "AVX-512. Falling back to the default Eigen-based implementation if present.\n"
  )
  kept = (
    "W0000 00:00:1.0 1 allocator.cc:1] Allocation exceeds 10% of free system memory.\n"
    "E0000 00:00:1.0 1 session.cc:1] a real error\n"
  )
  script = (
    "import os; from bert_ner.quiet import _stderr_filtered, _is_start_up_notice\n"
    "with _stderr_filtered(_is_start_up_notice):\n"
    f"  os.write(2, {(notices + kept).encode()!r})\n"
  )
  done = subprocess.run(
    [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
  )
  assert done.returncode == 0 and done.stderr == kept
