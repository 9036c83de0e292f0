"""`python -m server` as a child process on free loopback ports, with its peak RSS sampled."""

import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
READY = re.compile(r"gRPC (\S+) REST http://(\S+)")
SAMPLE_S = 0.05
BATCH_SIZE_METRIC = ":tensorflow:serving:batching_session:processed_batch_size"


class ServerError(Exception):
  """The server exited or did not get ready; the message ends with its log."""


class ServerProcess:
  """Context manager: starts the server, waits for its ready line, samples RSS until stopped."""

  def __init__(self, model_base_path, batching=True, timeout=300):
    self.args = [sys.executable, "-m", "server", "--port", "0", "--rest_api_port", "0",
                 "--host", "127.0.0.1", "--model_base_path", str(Path(model_base_path).resolve()),
                 "--enable_batching", str(batching).lower(),
                 "--monitoring_config_file", str(REPO_ROOT / "docker/monitoring_config.txt")]
    self.timeout = timeout
    self.grpc = self.rest = None
    self.ready_seconds = None
    self.peak_rss = 0
    self._log = tempfile.NamedTemporaryFile("w+", prefix="bench-server-", suffix=".log")
    self._stop = threading.Event()

  def __enter__(self):
    started = time.perf_counter()
    self._process = subprocess.Popen(self.args, cwd=REPO_ROOT, stdout=self._log,
                                     stderr=subprocess.STDOUT)
    self._sampler = threading.Thread(target=self._sample, daemon=True)
    self._sampler.start()
    try:
      while not (ready := READY.search(self.log())):
        if self._process.poll() is not None:
          raise ServerError(f"server exited with {self._process.returncode}:\n{self.log()[-3000:]}")
        if time.perf_counter() - started > self.timeout:
          raise ServerError(f"server not ready in {self.timeout}s:\n{self.log()[-3000:]}")
        time.sleep(0.05)
    except BaseException:
      self.__exit__()
      raise
    self.ready_seconds = time.perf_counter() - started
    self.grpc, self.rest = ready.group(1), ready.group(2)
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._process.terminate()
    try:
      self._process.wait(timeout=30)
    except subprocess.TimeoutExpired:
      self._process.kill()
      self._process.wait()
    self._sampler.join()
    self._log.close()

  def batch_totals(self):
    """(rows, merged batches) so far, from the server's Prometheus batch size histogram."""
    text = requests.get(f"http://{self.rest}/monitoring/prometheus/metrics", timeout=30).text
    totals = {"_sum": 0.0, "_count": 0.0}
    for line in text.splitlines():
      name, _, value = line.rpartition(" ")
      for suffix in totals:
        if name.startswith(BATCH_SIZE_METRIC + suffix):
          totals[suffix] += float(value)
    return totals["_sum"], totals["_count"]

  def cpu_seconds(self):
    """User + system CPU time the server has used so far."""
    times = psutil.Process(self._process.pid).cpu_times()
    return times.user + times.system

  def log(self):
    """Everything the server wrote so far."""
    return Path(self._log.name).read_text(errors="replace")

  def _sample(self):
    """Keeps the largest RSS of the server and its children seen every SAMPLE_S seconds."""
    try:
      process = psutil.Process(self._process.pid)
      while not self._stop.is_set():
        rss = process.memory_info().rss + sum(c.memory_info().rss for c in process.children(True))
        self.peak_rss = max(self.peak_rss, rss)
        time.sleep(SAMPLE_S)
    except psutil.Error:  # the server exited
      pass
