"""`python -m bert_ner.server` as a child process, for tests and benchmarks: start, ready, stop,
RSS.

The one home of the ready line's format (printed by bert_ner/server/serving.py when every model is
served): tests, bench and deploy wait for it instead of polling ports.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Self

import psutil

from bert_ner.paths import REPO_ROOT

READY = re.compile(r"gRPC (\S+) REST http://(\S+)")
READY_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30
RSS_SAMPLE_S = 0.05


def ready_line(served: str, host: str, grpc_port: int, rest_port: int) -> str:
  """What the server prints once it serves: READY matches it."""
  return f"Serving {served}: gRPC {host}:{grpc_port} REST http://{host}:{rest_port}"


class ServerProcessError(Exception):
  """The server child process exited or did not get ready in time (not a request's failure:
  that is server.errors.ServingError); the message ends with its log."""


class ServerProcess:
  """`python -m bert_ner.server` on loopback ports (0 = free); its output is appended to log_path.

  `start()` blocks (bounded) until the ready line, then `grpc` and `rest` hold host:port and
  `rest_url` http://host:port. `kill()` is SIGKILL, `stop()` SIGTERM (SIGKILL after a timeout);
  both wait. As a context manager it starts and stops. With sample_rss, `peak_rss` is the
  largest RSS of the server and its children seen while it ran.
  """

  def __init__(
    self,
    base_path: str | os.PathLike[str],
    log_path: str | os.PathLike[str],
    grpc_port: int = 0,
    rest_port: int = 0,
    flags: Iterable[str] = (),
    sample_rss: bool = False,
  ) -> None:
    self.base_path, self.log_path = Path(base_path), Path(log_path)
    self.grpc_port, self.rest_port, self.flags = grpc_port, rest_port, list(flags)
    self.sample_rss, self.peak_rss = sample_rss, 0
    self.proc: subprocess.Popen[bytes] | None = None
    self.grpc: str | None = None  # host:port, once ready
    self.rest: str | None = None
    self.ready_seconds: float | None = None
    self._stop_sampling = threading.Event()

  def start(self, timeout: float = READY_TIMEOUT_S) -> Self:
    """Starts the server and waits for its ready line; returns self, else ServerProcessError."""
    offset = self.log_path.stat().st_size if self.log_path.exists() else 0
    started = time.monotonic()
    with open(self.log_path, "a") as out:
      self.proc = subprocess.Popen(
        [
          sys.executable,
          "-m",
          "bert_ner.server",
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

  def _started(self) -> subprocess.Popen[bytes]:
    """The child process; ServerProcessError before start()."""
    if self.proc is None:
      raise ServerProcessError("server not started")
    return self.proc

  @property
  def pid(self) -> int:
    return self._started().pid

  @property
  def rest_url(self) -> str:
    return f"http://{self.rest}"

  def log(self) -> str:
    """Everything the server printed so far (all its runs)."""
    return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

  def cpu_seconds(self) -> float:
    """User + system CPU time the server has used so far."""
    times = psutil.Process(self.pid).cpu_times()
    return times.user + times.system

  def kill(self) -> int | None:
    """SIGKILL; returns the exit status."""
    self._stop_sampling.set()
    if self.proc is None or self.proc.poll() is not None:
      return None if self.proc is None else self.proc.returncode
    self.proc.send_signal(signal.SIGKILL)
    return self.proc.wait(timeout=STOP_TIMEOUT_S)

  def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
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

  def __enter__(self) -> Self:
    return self.start()

  def __exit__(self, *exc: Any) -> None:
    self.stop()

  def _sample_rss(self, pid: int) -> None:
    """Keeps the largest RSS of the server and its children, every RSS_SAMPLE_S seconds."""
    try:
      process = psutil.Process(pid)
      while not self._stop_sampling.is_set():
        rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(True))
        self.peak_rss = max(self.peak_rss, rss)
        time.sleep(RSS_SAMPLE_S)
    except psutil.Error:  # the server exited
      pass
