"""Prometheus metrics named as TF Serving exports them at /monitoring/prometheus/metrics."""

import asyncio
import bisect
import contextlib
import time

import grpc

from bert_ner.server.errors import ServingError


def _labels(labels):
  """Renders a label set: {a="1",b="2"}."""

  def escape(v):
    return str(v).replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")

  return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in labels) + "}" if labels else ""


class Counter:
  """A monotonically increasing count per label set."""

  def __init__(self, name, help_text):
    self.name, self.help, self._values = name, help_text, {}

  def inc(self, **labels):
    """Adds one to the labelled count."""
    key = tuple(sorted(labels.items()))
    self._values[key] = self._values.get(key, 0) + 1

  def render(self):
    """Prometheus text exposition lines."""
    yield f"# HELP {self.name} {self.help}"
    yield f"# TYPE {self.name} counter"
    for key, value in sorted(self._values.items()):
      yield f"{self.name}{_labels(key)} {value}"


class Histogram:
  """Cumulative buckets, sum and count per label set."""

  def __init__(self, name, help_text, bounds):
    self.name, self.help, self.bounds, self._values = name, help_text, list(bounds), {}

  def observe(self, value, **labels):
    """Records one observation."""
    key = tuple(sorted(labels.items()))
    counts, total = self._values.get(key, ([0] * (len(self.bounds) + 1), 0))
    counts[bisect.bisect_left(self.bounds, value)] += 1
    self._values[key] = (counts, total + value)

  def render(self):
    """Prometheus text exposition lines."""
    yield f"# HELP {self.name} {self.help}"
    yield f"# TYPE {self.name} histogram"
    for key, (counts, total) in sorted(self._values.items()):
      cumulative = 0
      for bound, count in zip([*self.bounds, "+Inf"], counts):
        cumulative += count
        yield f"{self.name}_bucket{_labels((*key, ('le', bound)))} {cumulative}"
      yield f"{self.name}_sum{_labels(key)} {total}"
      yield f"{self.name}_count{_labels(key)} {cumulative}"


class Metrics:
  """The server's metric families; updated and rendered on the event loop thread only."""

  def __init__(self, max_batch_size):
    self.request_count = Counter(
      ":tensorflow:serving:request_count", "The total number of requests."
    )
    self.request_latency = Histogram(
      ":tensorflow:serving:request_latency",
      "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
      [10 * 1.8**i for i in range(33)],
    )
    self.batch_size = Histogram(
      ":tensorflow:serving:batching_session:processed_batch_size",
      "Tracks the batch size (rows per merged batch) distribution on processing.",
      [2**i for i in range(max(1, max_batch_size).bit_length() + 1)],
    )

  @contextlib.contextmanager
  def track(self, model_name, api, entrypoint):
    """Counts one request with its final status and records its latency."""
    start, status = time.perf_counter(), grpc.StatusCode.OK
    try:
      yield
    except ServingError as error:
      status = error.code
      raise
    except asyncio.CancelledError:
      status = grpc.StatusCode.CANCELLED
      raise
    except BaseException:
      status = grpc.StatusCode.UNKNOWN
      raise
    finally:
      self.request_count.inc(model_name=model_name, status=status.name)
      self.request_latency.observe(
        (time.perf_counter() - start) * 1e6, model_name=model_name, API=api, entrypoint=entrypoint
      )

  def render(self):
    """The /monitoring/prometheus/metrics page."""
    families = (self.request_count, self.request_latency, self.batch_size)
    return "\n".join(line for family in families for line in family.render()) + "\n"
