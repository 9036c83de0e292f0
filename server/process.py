"""`python -m server` as a child process, for tests and benchmarks: start, ready, stop, RSS.

The one home of the ready line's format (printed by server/serving.py when every model is
served): tests, bench and deploy wait for it instead of polling ports.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"gRPC (\S+) REST http://(\S+)")
READY_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30
RSS_SAMPLE_S = 0.05


def ready_line(served, host, grpc_port, rest_port):
  """What the server prints once it serves: READY matches it."""
  return f"Serving {served}: gRPC {host}:{grpc_port} REST http://{host}:{rest_port}"


class ServerProcessError(Exception):
  """The server child process exited or did not get ready in time (not a request's failure:
  that is server.errors.ServingError); the message ends with its log."""


class ServerProcess:
  """`python -m server` on loopback ports (0 = free); its output is appended to log_path.

  `start()` blocks (bounded) until the ready line, then `grpc` and `rest` hold host:port and
  `rest_url` http://host:port. `kill()` is SIGKILL, `stop()` SIGTERM (SIGKILL after a timeout);
  both wait. As a context manager it starts and stops. With sample_rss, `peak_rss` is the
  largest RSS of the server and its children seen while it ran.
  """

  def __init__(self, base_path, log_path, grpc_port=0, rest_port=0, flags=(), sample_rss=False):
    self.base_path, self.log_path = Path(base_path), Path(log_path)
    self.grpc_port, self.rest_port, self.flags = grpc_port, rest_port, list(flags)
    self.sample_rss, self.peak_rss = sample_rss, 0
    self.proc = self.grpc = self.rest = None
    self.ready_seconds = None
    self._stop_sampling = threading.Event()

  def start(self, timeout=READY_TIMEOUT_S):
    """Starts the server and waits for its ready line; returns self, else ServerProcessError."""
    offset = self.log_path.stat().st_size if self.log_path.exists() else 0
    started = time.monotonic()
    with open(self.log_path, "a") as out:
      self.proc = subprocess.Popen(
        [
          sys.executable,
          "-m",
          "server",
          "--port",
          str(self.grpc_port),
          "--rest_api_port",
          str(self.rest_port),
          "--model_base_path",
          str(self.base_path),
          *self.flags,
        ],
        cwd=REPO_ROOT,
        stdout=out,
        stderr=subprocess.STDOUT,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""),
      )
    if self.sample_rss:
      self._stop_sampling.clear()
      threading.Thread(target=self._sample_rss, args=(self.proc.pid,), daemon=True).start()
    while not (ready := READY.search(self.log()[offset:])):
      if self.proc.poll() is not None or time.monotonic() - started > timeout:
        self.kill()
        raise ServerProcessError(f"server not ready: {self.log()[offset:][-3000:]}")
      time.sleep(0.05)
    self.ready_seconds = time.monotonic() - started
    self.grpc, self.rest = ready.group(1), ready.group(2)
    return self

  @property
  def pid(self):
    return self.proc.pid

  @property
  def rest_url(self):
    return f"http://{self.rest}"

  def log(self):
    """Everything the server printed so far (all its runs)."""
    return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

  def cpu_seconds(self):
    """User + system CPU time the server has used so far."""
    times = psutil.Process(self.proc.pid).cpu_times()
    return times.user + times.system

  def kill(self):
    """SIGKILL; returns the exit status."""
    self._stop_sampling.set()
    if self.proc is None or self.proc.poll() is not None:
      return None if self.proc is None else self.proc.returncode
    self.proc.send_signal(signal.SIGKILL)
    return self.proc.wait(timeout=STOP_TIMEOUT_S)

  def stop(self, timeout=STOP_TIMEOUT_S):
    """SIGTERM, then the exit status (SIGKILL after timeout seconds: returns None)."""
    self._stop_sampling.set()
    if self.proc is None or self.proc.poll() is not None:
      return None if self.proc is None else self.proc.returncode
    self.proc.terminate()
    try:
      return self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      return None

  def __enter__(self):
    return self.start()

  def __exit__(self, *exc):
    self.stop()

  def _sample_rss(self, pid):
    """Keeps the largest RSS of the server and its children, every RSS_SAMPLE_S seconds."""
    try:
      process = psutil.Process(pid)
      while not self._stop_sampling.is_set():
        rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(True))
        self.peak_rss = max(self.peak_rss, rss)
        time.sleep(RSS_SAMPLE_S)
    except psutil.Error:  # the server exited
      pass
