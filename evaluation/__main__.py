"""python -m evaluation: tag a CoNLL file via gRPC, REST or in-process and print the seqeval report.

Words are the file's own tokens, scored like the trainer's dev report (bert_ner.metrics): per-type
lines, then `overall precision P recall R f1 F` as the last line. Throughput goes to stderr.
`--document` tags each `-DOCSTART-` document as one word sequence (sliding windows over it, so
sentences see their neighbours); the default tags sentence by sentence.
Exit 2 with one `error:` line for a missing or unlabelled file, an unreachable server or model.
"""

import argparse
import os
import sys
import time

from tqdm import tqdm

from bert_ner import conll, model_base
from bert_ner.featurizer import Featurizer
from bert_ner.metrics import format_scores, seqeval_scores
from bert_ner.quiet import VERBOSE_ENV, add_verbose_flag
from clients.common import ClientError, command_line_message
from clients.grpc_client import GrpcNerClient
from clients.rest_client import RestNerClient

CLIENTS = {"grpc": GrpcNerClient, "rest": RestNerClient}
DEFAULT_SERVERS = {"grpc": "127.0.0.1:8500", "rest": "127.0.0.1:8501"}


class EvaluationError(Exception):
  """A failure reported as one `error:` line, exit 2."""


def parse_args(argv=None):
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__)
  p.add_argument("--data", required=True, help="CoNLL file (1-4 columns, tag last)")
  p.add_argument("--transport", required=True, choices=("grpc", "rest", "local"))
  p.add_argument("--server", help="host:port (default: 127.0.0.1:8500 grpc, 127.0.0.1:8501 rest)")
  p.add_argument(
    "--model_base_path",
    default="models/bert_ner",
    help="model base: `local` loads its latest version; its assets.extra is the default --assets",
  )
  p.add_argument("--assets", help="assets.extra of the served version")
  p.add_argument("--model", default=model_base.MODEL_NAME, help="served model name")
  p.add_argument(
    "--document",
    action="store_true",
    help="tag each -DOCSTART- document as one text (default: each sentence alone)",
  )
  p.add_argument("--batch_size", type=int, default=64, help="rows (windows) per request")
  p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
  add_verbose_flag(p, "local: TensorFlow's start-up logs too")
  args = p.parse_args(argv)
  if args.batch_size < 1:
    p.error("--batch_size must be >= 1")
  return args


def read_documents(path):
  """The labelled documents (lists of sentences) of a CoNLL file."""
  try:
    documents = conll.read_documents(path)
  except FileNotFoundError:
    raise EvaluationError(f"data file not found: {path}") from None
  except (OSError, UnicodeDecodeError, conll.ConllError) as e:
    raise EvaluationError(f"cannot read {path}: {e}") from None
  if not documents:
    raise EvaluationError(f"no sentences in {path}")
  if documents[0][0].tags is None:
    raise EvaluationError(f"{path} has no tag column: nothing to score against")
  return documents


def default_assets(model_base_path):
  """assets.extra of the latest version under the model base, or None (clients' discovery)."""
  return model_base.latest_assets(model_base_path)


def connect(args):
  """(featurizer, run_fn, description) of the chosen transport."""
  if args.transport == "local":
    from evaluation.local import LocalModel  # pylint: disable=import-outside-toplevel

    try:
      model = LocalModel(args.model_base_path)
      return Featurizer.from_dir(str(args.assets or model.assets)), model.run, str(model.path)
    except (OSError, ValueError) as e:
      raise EvaluationError(str(e)) from None
  server = args.server or DEFAULT_SERVERS[args.transport]
  client = CLIENTS[args.transport](
    server,
    args.model,
    timeout=args.timeout,
    assets=args.assets or default_assets(args.model_base_path),
  )
  client.check_fingerprint()
  return client.featurizer, client.run, f"{args.transport} {server}"


def tag(featurizer, run_fn, sentences, batch_size):
  """Predicted word tags of every sentence, with a progress bar on stderr."""
  chunk = 4 * batch_size  # sentences per progress step; each is sorted by length and batched
  pred = []
  with tqdm(total=len(sentences), unit="sent", file=sys.stderr, leave=False) as bar:
    for begin in range(0, len(sentences), chunk):
      words = [s.words for s in sentences[begin : begin + chunk]]
      pred += featurizer.predict_words(words, run_fn, batch_size)
      bar.update(len(words))
  return pred


def tag_documents(featurizer, run_fn, documents, batch_size):
  """Predicted word tags of every sentence, each document tagged as one text."""
  chunk = 8  # documents per progress step (about 120 sentences in CoNLL-2003)
  pred = []
  with tqdm(total=len(documents), unit="doc", file=sys.stderr, leave=False) as bar:
    for begin in range(0, len(documents), chunk):
      words = [[s.words for s in d] for d in documents[begin : begin + chunk]]
      pred += [
        tags
        for document in featurizer.predict_documents(words, run_fn, batch_size)
        for tags in document
      ]
      bar.update(len(words))
  return pred


def main(argv=None):
  """Runs the evaluation; returns the exit status."""
  args = parse_args(argv)
  if args.verbose:
    os.environ[VERBOSE_ENV] = "1"
  try:
    documents = read_documents(args.data)
    sentences = [s for d in documents for s in d]
    featurizer, run_fn, description = connect(args)
    started = time.perf_counter()
    if args.document:
      pred = tag_documents(featurizer, run_fn, documents, args.batch_size)
    else:
      pred = tag(featurizer, run_fn, sentences, args.batch_size)
    seconds = time.perf_counter() - started
  except (EvaluationError, ClientError) as e:
    print(f"error: {command_line_message(e)}", file=sys.stderr)
    return 2
  unit = f" in {len(documents)} documents" if args.document else ""
  print(
    f"{len(sentences)} sentences{unit} via {description} in {seconds:.1f}s: "
    f"{len(sentences) / seconds:.1f} sentences/s",
    file=sys.stderr,
  )
  print(format_scores(seqeval_scores([s.tags for s in sentences], pred)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
