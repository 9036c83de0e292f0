"""Throughput over a whole file (batched) and single-sentence latency under concurrency."""

import concurrent.futures
import dataclasses
import itertools
import threading
import time

import numpy as np


def padded_to(width, run_fn):
  """run_fn whose rows all go padded to `width` columns (a fixed-shape client); output trimmed."""

  def run(input_ids, input_mask, *word_shape):
    pad = ((0, 0), (0, width - input_ids.shape[1]))
    pred = run_fn(*(np.pad(a, pad) for a in (input_ids, input_mask, *word_shape)))
    return np.asarray(pred)[:, : input_ids.shape[1]]

  return run


@dataclasses.dataclass
class Throughput:
  """Sentences tagged in `seconds`, of which `run_seconds` inside run_fn (model + transport)."""

  sentences: int = 0
  seconds: float = 0.0
  run_seconds: float = 0.0

  @property
  def rate(self):
    """Sentences per second."""
    return self.sentences / self.seconds


def tag_all(featurizer, run_fn, sentences, batch_size, into):
  """Tags sentences (tokenize, batch_size rows per call, restore word tags), timed into `into`;
  returns the tags."""

  def timed(*arrays):  # input_ids, input_mask[, word_shape]
    started = time.perf_counter()
    pred = run_fn(*arrays)
    into.run_seconds += time.perf_counter() - started
    return pred

  started = time.perf_counter()
  tags = featurizer.predict_words(sentences, timed, batch_size)
  into.seconds += time.perf_counter() - started
  into.sentences += len(sentences)
  return tags


def tag_recorded(featurizer, run_fn, sentences, batch_size):
  """tag_all over all sentences at once: (tags, Throughput, the (input_ids, input_mask) batches
  run_fn was given, without any word shapes), so a peer can run exactly the batches this runner
  ran."""
  batches, cell = [], Throughput()

  def recorded(*arrays):  # input_ids, input_mask[, word_shape]
    batches.append(arrays[:2])
    return run_fn(*arrays)

  tags = tag_all(featurizer, recorded, sentences, batch_size, cell)
  return tags, cell, batches


def throughput(runners, sentences, batch_size, rounds):
  """Throughput of each {key: (featurizer, run_fn)} over all sentences, after a warm-up.

  The sentences are cut into `rounds` parts and every runner tags each part in turn, so a change
  in the load of the (shared) machine hits all runners alike.
  """
  for featurizer, run_fn in runners.values():
    featurizer.predict_words(sentences[:batch_size], run_fn, batch_size)
  results = {key: Throughput() for key in runners}
  size = -(-len(sentences) // rounds)
  for begin in range(0, len(sentences), size):
    for key, (featurizer, run_fn) in runners.items():
      tag_all(featurizer, run_fn, sentences[begin : begin + size], batch_size, results[key])
  return results


def context_throughput(featurizer, run_fn, documents, batch_size, rounds):
  """In-process throughput tagging sentence by sentence vs whole documents (their windows
  overlap, so a document costs more rows than its sentences); the same parts in turn."""
  results = {"sentence": Throughput(), "document": Throughput()}
  size = -(-len(documents) // rounds)
  for begin in range(0, len(documents), size):
    part = [[s.words for s in d] for d in documents[begin : begin + size]]
    sentences = [words for d in part for words in d]
    tag_all(featurizer, run_fn, sentences, batch_size, results["sentence"])
    started = time.perf_counter()
    featurizer.predict_documents(part, run_fn, batch_size)
    results["document"].seconds += time.perf_counter() - started
    results["document"].sentences += len(sentences)
  return results


def sorted_runs(windows, size):
  """The windows sorted by length, cut into runs of `size`."""
  ordered = sorted(windows, key=lambda w: len(w.input_ids))
  return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def merged_batch_costs(featurizer, run_fn, sentences, rows, groups, split):
  """Model ms per sentence for groups of `rows` random windows: run one by one, as one batch
  padded to its longest row (what a batching server does), or sorted by length in runs of `split`.
  """
  windows = [w for words in sentences for w in featurizer.encode_words(words)]
  rng = np.random.default_rng(0)
  picks = [[windows[i] for i in rng.choice(len(windows), rows)] for _ in range(groups)]
  ways = {
    "one by one": lambda g: [[w] for w in g],
    "one padded batch": lambda g: [g],
    f"sorted by length, runs of {split}": lambda g: sorted_runs(g, split),
  }
  run_fn(*featurizer.pad_batch(picks[0]))
  costs = {}
  for name, way in ways.items():
    started = time.perf_counter()
    for group in picks:
      for batch in way(group):
        run_fn(*featurizer.pad_batch(batch))
    costs[name] = 1000 * (time.perf_counter() - started) / (rows * groups)
  return costs


@dataclasses.dataclass
class Latency:
  """Per-request latencies (ms) of `requests` requests sent by `concurrency` threads."""

  concurrency: int
  requests: int
  seconds: float
  latencies_ms: list
  rows_per_run: float = float("nan")
  server_cpu_ms: float = float("nan")
  client_cpu_ms: float = float("nan")

  @property
  def rate(self):
    """Sentences (= requests) per second."""
    return self.requests / self.seconds

  def percentile(self, q):
    """The q-th percentile latency in ms."""
    return float(np.percentile(self.latencies_ms, q))


def tag_one(client, words):
  """One request: a single sentence through the client's featurizer and transport."""
  return client.featurizer.predict_words([words], client.run)


def warm_up(clients, words):
  """One untimed request per client (connects it)."""
  for client in clients:
    tag_one(client, words)


def latency(clients, sentences, requests):
  """Sends `requests` single-sentence requests (the sentences in order) from a thread per client."""
  return _latency(
    clients, lambda client, i: tag_one(client, sentences[i % len(sentences)]), requests
  )


def _latency(clients, send, requests):
  """Latency of `requests` calls send(client, i) from a thread per client."""
  counter, lock, latencies = itertools.count(), threading.Lock(), []

  def worker(client):
    while True:
      with lock:
        i = next(counter)
      if i >= requests:
        return
      started = time.perf_counter()
      send(client, i)
      elapsed = time.perf_counter() - started
      with lock:
        latencies.append(1000 * elapsed)

  started = time.perf_counter()
  with concurrent.futures.ThreadPoolExecutor(len(clients)) as pool:
    for future in [pool.submit(worker, client) for client in clients]:
      future.result()
  return Latency(len(clients), requests, time.perf_counter() - started, latencies)


@dataclasses.dataclass
class SignatureCell:
  """One signature's side of the text-in / ids-in comparison on one server."""

  throughput: Throughput
  server_cpu_ms: float  # server CPU per sentence over the throughput run
  latency: "Latency"


def text_vs_ids(clients, server_cpu_seconds, texts, batch_size, rounds, requests, concurrency):
  """Text in (the text signature) against ids in (the client featurizes, `result`), through
  the same transport and server: {signature: SignatureCell}.

  clients: {signature: [NerClient, ...]} (at least `concurrency` each). Throughput tags every
  sentence as text, each part of the file by both signatures in turn (a change of the machine's
  load hits both); then single-sentence latency at `concurrency`, both back to back.
  """
  parts = np.array_split(np.arange(len(texts)), rounds)
  cells = {}
  for group in clients.values():
    group[0].predict(texts[:batch_size], batch_size)  # warm-up and fingerprint check
  done = {signature: Throughput() for signature in clients}
  cpu = dict.fromkeys(clients, 0.0)
  for part in parts:
    batch = [texts[i] for i in part]
    for signature, group in clients.items():
      before, started = server_cpu_seconds(), time.perf_counter()
      group[0].predict(batch, batch_size)
      done[signature].seconds += time.perf_counter() - started
      done[signature].sentences += len(batch)
      cpu[signature] += server_cpu_seconds() - before
  for signature, group in clients.items():
    cells[signature] = SignatureCell(
      done[signature],
      1000 * cpu[signature] / done[signature].sentences,
      _latency(
        group[:concurrency], lambda client, i: client.predict([texts[i % len(texts)]]), requests
      ),
    )
  return cells
