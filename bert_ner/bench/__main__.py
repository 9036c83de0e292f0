"""python -m bert_ner.bench: export, load, throughput, latency and server memory of one model, in
one run.

Exports the checkpoint into a temp model base and loads it in-process; starts `python -m
bert_ner.server`
twice on it (batching on, batching off). Tags the whole file in-process, over gRPC and over REST
(variable-length batches vs rows padded to max_seq_length), then measures single-sentence latency
at several concurrencies against both servers; then two CPU peers side by side
(bert_ner/bench/peers.py, in
.venv-bench). Writes results.md, results.json and results.png into --out, and the figures
docs/SCALING.md quotes into its `<!-- bench:... -->` blocks when --out is bench/.
"""

import argparse
import contextlib
import datetime
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import requests

from bert_ner import conll, model_base
from bert_ner.bench import measure, peers, report
from bert_ner.clients.common import load_assets
from bert_ner.clients.grpc_client import GrpcNerClient
from bert_ner.clients.rest_client import RestNerClient
from bert_ner.metrics import seqeval_scores
from bert_ner.paths import REPO_ROOT
from bert_ner.quiet import add_verbose_flag, quiet_tensorflow
from bert_ner.server.batching import DEFAULT_PARAMETERS_FILE, read_batching_parameters
from bert_ner.server.process import ServerProcess

DEFAULT_DATA = conll.DEFAULT_DIR / "dev.txt"
CLIENTS = {"grpc": GrpcNerClient, "rest": RestNerClient}
CONCURRENCY = (1, 8, 32)
TEXT_CONCURRENCY = 8  # callers of the text-in / ids-in latency comparison
BATCH_SIZE_METRIC = ":tensorflow:serving:batching_session:processed_batch_size"
MONITORING_CONFIG = REPO_ROOT / "docker" / "monitoring_config.txt"
ROUNDS = 4  # parts of the file each throughput runner tags in turn
VERIFY_SENTENCES = 64
MERGED_GROUPS = 12
MERGED_SPLIT = 8
QUICK_SENTENCES = 64
QUICK_REQUESTS = 32
TIMEOUT_S = 120.0
PEER_PYTHON = REPO_ROOT / ".venv-bench" / "bin" / "python"
PEER_TIMEOUT_S = 1800.0
SCALING_DOC = REPO_ROOT / "docs" / "SCALING.md"


def parse_args(argv=None):
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m bert_ner.bench", description=__doc__)
  p.add_argument(
    "--checkpoint",
    default=str(REPO_ROOT / "models/default"),
    help="checkpoint dir to export and serve (default: the shipped model)",
  )
  p.add_argument("--data", default=str(DEFAULT_DATA), help="CoNLL file to tag")
  p.add_argument(
    "--out",
    default=str(REPO_ROOT / "bench"),
    help="where results.md, results.json and results.png go",
  )
  p.add_argument(
    "--scaling_doc",
    default=None,
    help="doc whose <!-- bench:... --> blocks get this run's figures (default: docs/SCALING.md "
    "when --out is bench/, else none; 'none' for none)",
  )
  p.add_argument(
    "--peer_python",
    default=str(PEER_PYTHON),
    help="python of the venv with the `bench` extra (spaCy, onnxruntime); missing = peers skipped",
  )
  p.add_argument("--batch_size", type=int, default=64, help="rows per throughput request")
  p.add_argument("--requests", type=int, default=300, help="requests per latency cell")
  p.add_argument(
    "--sentences",
    type=int,
    default=None,
    help="tag only the file's first N sentences in the throughput, document and text runs (a "
    "loaded machine's smaller setting); the peer comparison still tags the whole file",
  )
  p.add_argument(
    "--quick",
    action="store_true",
    help=f"first {QUICK_SENTENCES} sentences (peers too) and {QUICK_REQUESTS} requests per cell",
  )
  add_verbose_flag(p)
  args = p.parse_args(argv)
  if args.quick:
    args.requests = QUICK_REQUESTS
  sizes = [args.batch_size, args.requests] + ([] if args.sentences is None else [args.sentences])
  if min(sizes) < 1:
    p.error("--batch_size, --requests and --sentences must be >= 1")
  if args.scaling_doc is None:
    args.scaling_doc = SCALING_DOC if Path(args.out).resolve() == REPO_ROOT / "bench" else None
  elif args.scaling_doc == "none":
    args.scaling_doc = None
  return args


def say(message):
  """Progress on stderr."""
  print(f"bench: {message}", file=sys.stderr, flush=True)


def cpu_model():
  """The CPU model name from /proc/cpuinfo, else platform's guess."""
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def machine(tf_version):
  """Cores, CPU, memory and versions."""
  return {
    "cores": len(os.sched_getaffinity(0)),
    "cpu": cpu_model(),
    "memory_gib": psutil.virtual_memory().total / (1 << 30),
    "python": platform.python_version(),
    "tensorflow": tf_version,
    "load_before": os.getloadavg()[0],
  }


def shown(path):
  """A path as the report shows it: relative to the repo root."""
  return os.path.relpath(Path(path).resolve(), REPO_ROOT)


def own_cpu_seconds():
  """User + system CPU time of this process (the clients)."""
  times = psutil.Process().cpu_times()
  return times.user + times.system


def padding(lengths, merged, batch_size):
  """Padded / real sub-tokens: random batches of `merged` rows, length-sorted ones of batch_size."""
  draws = np.random.default_rng(0).choice(lengths, (1000, merged))
  ordered = np.sort(lengths)
  batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
  return {
    "random": float((draws.max(1) * merged).sum() / draws.sum()),
    "sorted": float(sum(b.max() * len(b) for b in batches) / ordered.sum()),
  }


def batching_flags(options):
  """The server's batching settings (docker/batching_parameters.txt), as the report states them."""
  return (
    f"docker/batching_parameters.txt: max_batch_size {options.max_batch_size}, "
    f"batch_timeout_micros {options.batch_timeout_micros}, max_enqueued_batches "
    f"{options.max_enqueued_batches}, num_batch_threads {options.num_batch_threads} "
    f"(one per core)"
  )


def batch_totals(server):
  """(rows, merged batches) so far, from the server's Prometheus batch size histogram."""
  text = requests.get(f"{server.rest_url}/monitoring/prometheus/metrics", timeout=30).text
  totals = {"_sum": 0.0, "_count": 0.0}
  for line in text.splitlines():
    name, _, value = line.rpartition(" ")
    for suffix in totals:
      if name.startswith(BATCH_SIZE_METRIC + suffix):
        totals[suffix] += float(value)
  return totals["_sum"], totals["_count"]


def latency_cell(server, clients, sentences, request_count):
  """One latency cell, with the server's rows per run and both sides' CPU per request."""
  rows, runs = batch_totals(server)
  server_cpu, client_cpu = server.cpu_seconds(), own_cpu_seconds()
  cell = measure.latency(clients, sentences, request_count)
  cell.server_cpu_ms = 1000 * (server.cpu_seconds() - server_cpu) / request_count
  cell.client_cpu_ms = 1000 * (own_cpu_seconds() - client_cpu) / request_count
  rows_after, runs_after = batch_totals(server)
  cell.rows_per_run = (rows_after - rows) / max(runs_after - runs, 1)
  return cell


def f1(gold, tags):
  """seqeval's entity F1 (percent) of tags against gold, or None for a file without tags."""
  if any(g is None for g in gold):
    return None
  return seqeval_scores(gold, tags)["f1"]


def peer_comparison(args, featurizer, run_fn, documents):
  """The in-process model, then spaCy and the int8 ONNX encoder on the same sentences, back to
  back: F1 where a peer tags, sentences/s; the ONNX encoder runs the batches the model ran."""
  sentences = [s.words for d in documents for s in d]
  gold = [s.tags for d in documents for s in d]
  load = os.getloadavg()[0]
  tags, ours, batches = measure.tag_recorded(featurizer, run_fn, sentences, args.batch_size)
  found = peers.measure(args.peer_python, sentences, batches, args.batch_size, PEER_TIMEOUT_S)
  spacy = found["spacy"]
  if "tags" in spacy:
    spacy["f1"] = f1(gold, spacy.pop("tags"))
  return {
    "load_before": load,
    "load_after": os.getloadavg()[0],
    "sentences": len(sentences),
    "batch_size": args.batch_size,
    "ours": {
      "f1": f1(gold, tags),
      "rate": ours.rate,
      "model_rate": ours.sentences / ours.run_seconds,
      "batches": len(batches),
      "rows": sum(len(ids) for ids, _ in batches),
    },
    "spacy": spacy,
    "onnx": found["onnx"],
  }


def run(args, command):
  """Every measurement; returns the results dict the report reads."""
  quiet_tensorflow(args.verbose)  # the servers it starts inherit the choice
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (after --help)

  from bert_ner.evaluation.local import LocalModel  # pylint: disable=import-outside-toplevel
  from bert_ner.export import exporter  # pylint: disable=import-outside-toplevel

  whole = conll.read_documents(args.data)
  if args.quick:
    whole = conll.first_sentences(whole, QUICK_SENTENCES)
  documents = whole if args.sentences is None else conll.first_sentences(whole, args.sentences)
  sentences = [s.words for d in documents for s in d]
  results = {
    "command": command,
    "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    "machine": machine(tf.__version__),
    "checkpoint": shown(args.checkpoint),
    "data": shown(args.data),
    "sentences": len(sentences),
    "batch_size": args.batch_size,
    "requests": args.requests,
    "concurrency": CONCURRENCY,
    "rounds": ROUNDS,
    "latency": {},
    "servers": {},
    "batching_flags": batching_flags(read_batching_parameters(DEFAULT_PARAMETERS_FILE)),
  }
  with (
    tempfile.TemporaryDirectory(prefix="bench-") as base,
    tempfile.TemporaryDirectory(prefix="bench-logs-") as logs,
    contextlib.ExitStack() as stack,
  ):
    started = time.perf_counter()
    exporter.export_model(
      args.checkpoint, base, verify_sentences=sentences[:VERIFY_SENTENCES], log=lambda message: None
    )
    results["export_s"] = time.perf_counter() - started
    model = LocalModel(base)
    featurizer, fingerprint = load_assets(model.assets)
    lengths = [len(w.input_ids) for words in sentences for w in featurizer.encode_words(words)]
    results.update(
      load_s=model.load_seconds,
      fingerprint=fingerprint,
      width=featurizer.max_seq_length,
      windows=len(lengths),
      mean_tokens=sum(lengths) / len(lengths),
      padding=padding(lengths, max(CONCURRENCY), args.batch_size),
    )
    say(f"export {results['export_s']:.1f} s, load {model.load_seconds:.2f} s")
    servers = {}
    for batching in (True, False):  # one after the other: each start-up gets the machine
      servers[batching] = stack.enter_context(
        ServerProcess(
          base,
          Path(logs) / f"server-batching-{batching}.log",
          sample_rss=True,
          flags=[
            "--host",
            "127.0.0.1",
            "--enable_batching",
            str(batching).lower(),
            "--monitoring_config_file",
            str(MONITORING_CONFIG),
          ],
        )
      )
      say(f"server batching {batching} ready in {servers[batching].ready_seconds:.1f} s")
    runners = {("local", "variable"): (featurizer, model.run)}
    for transport in CLIENTS:
      client = CLIENTS[transport](
        getattr(servers[True], transport),
        signature=model_base.SIGNATURE,
        timeout=TIMEOUT_S,
        assets=model.assets,
      )
      client.check_fingerprint()
      runners[transport, "variable"] = (client.featurizer, client.run)
    for (transport, _), (runner_featurizer, run_fn) in list(runners.items()):
      runners[transport, "fixed"] = (
        runner_featurizer,
        measure.padded_to(featurizer.max_seq_length, run_fn),
      )
    results["throughput"] = measure.throughput(runners, sentences, args.batch_size, ROUNDS)
    for (transport, mode), cell in results["throughput"].items():
      say(f"{transport} {mode}: {cell.rate:.1f} sentences/s")
    results["context"] = measure.context_throughput(
      featurizer, model.run, documents, args.batch_size, ROUNDS
    )
    say(
      "in-process sentence / document mode: "
      + ", ".join(f"{cell.rate:.1f}" for cell in results["context"].values())
      + " sentences/s"
    )
    results["merged"] = measure.merged_batch_costs(
      featurizer, model.run, sentences, max(CONCURRENCY), MERGED_GROUPS, MERGED_SPLIT
    )
    say(f"merged batch costs (ms/sentence): {results['merged']}")
    results["peers"] = peer_comparison(args, featurizer, model.run, whole)
    say(f"peers: {report.peer_summary(results['peers'])}")
    model.close()
    texts = [" ".join(words) for words in sentences]
    results["text_vs_ids"] = {}
    for transport in CLIENTS:
      server = servers[True]
      clients = {
        signature: [
          CLIENTS[transport](
            getattr(server, transport), signature=signature, timeout=TIMEOUT_S, assets=model.assets
          )
          for _ in range(TEXT_CONCURRENCY)
        ]
        for signature in (model_base.TEXT_SIGNATURE, model_base.SIGNATURE)
      }
      cells = results["text_vs_ids"][transport] = measure.text_vs_ids(
        clients, server.cpu_seconds, texts, args.batch_size, ROUNDS, args.requests, TEXT_CONCURRENCY
      )
      for signature, cell in cells.items():
        say(
          f"{transport} {signature}: {cell.throughput.rate:.1f} sentences/s, server CPU "
          f"{cell.server_cpu_ms:.1f} ms/sentence, concurrency {TEXT_CONCURRENCY} p50 "
          f"{cell.latency.percentile(50):.1f} ms p99 {cell.latency.percentile(99):.1f} ms"
        )
    for transport in CLIENTS:
      clients = {
        batching: [
          CLIENTS[transport](
            getattr(server, transport),
            signature=model_base.SIGNATURE,
            timeout=TIMEOUT_S,
            assets=model.assets,
          )
          for _ in range(max(CONCURRENCY))
        ]
        for batching, server in servers.items()
      }
      for group in clients.values():
        measure.warm_up(group, sentences[0])
      for concurrency in CONCURRENCY:
        for batching, server in servers.items():  # on and off back to back: same load
          cell = results["latency"][transport, batching, concurrency] = latency_cell(
            server, clients[batching][:concurrency], sentences, args.requests
          )
          say(
            f"{transport} batching {batching} concurrency {concurrency}: p50 "
            f"{cell.percentile(50):.1f} ms, p99 {cell.percentile(99):.1f} ms, "
            f"{cell.rate:.1f} sentences/s, {cell.rows_per_run:.1f} rows/run"
          )
  results["servers"] = {
    batching: {"ready_s": server.ready_seconds, "peak_rss": server.peak_rss}
    for batching, server in servers.items()
  }
  results["machine"]["load_after"] = os.getloadavg()[0]
  return results


def main(argv=None):
  """Runs the benchmark and writes the report."""
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  results = run(args, shlex.join(["python", "-m", "bert_ner.bench", *argv]))
  written = report.write(results, args.out, args.scaling_doc)
  say("wrote " + ", ".join(str(path) for path in written))
  return 0


if __name__ == "__main__":
  sys.exit(main())
