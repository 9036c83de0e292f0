"""python -m bert_ner.evaluation: tag a CoNLL file via gRPC, REST or in-process and print the
seqeval report.

Words are the file's own tokens, scored like the trainer's dev report (bert_ner.metrics): per-type
lines, then `overall precision P recall R f1 F` as the last line. Throughput goes to stderr.
`--document` tags each `-DOCSTART-` document as one word sequence (sliding windows over it, so
sentences see their neighbours); the default tags sentence by sentence. A model trained with word
shapes gets them through the ids path (`result_word_shape`) unless `--no_word_shape`.
Exit 2 with one `error:` line for a missing or unlabelled file, an unreachable server or model.
"""

import argparse
import os
import sys
import time

from seqeval.metrics.sequence_labeling import get_entities
from tqdm import tqdm

from bert_ner import conll, model_base
from bert_ner.clients.common import ClientError, command_line_message
from bert_ner.clients.grpc_client import GrpcNerClient
from bert_ner.clients.rest_client import RestNerClient
from bert_ner.evaluation.local import LocalNerClient
from bert_ner.evaluation.plot import plot_calibration
from bert_ner.featurizer import Featurizer
from bert_ner.metrics import calibration, format_calibration, format_scores, seqeval_scores
from bert_ner.quiet import VERBOSE_ENV, add_verbose_flag

CLIENTS = {"grpc": GrpcNerClient, "rest": RestNerClient}
DEFAULT_SERVERS = {"grpc": "127.0.0.1:8500", "rest": "127.0.0.1:8501"}


class EvaluationError(Exception):
  """A failure reported as one `error:` line, exit 2."""


def parse_args(argv=None):
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m bert_ner.evaluation", description=__doc__)
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
  p.add_argument(
    "--input",
    choices=("words", "text"),
    default="words",
    help="words: the file's tokens through the ids signature (the trainer's view); text: each "
    "sentence as one line of text (a document: its lines) through --signature, as a client "
    "sends it, entities mapped back to the tokens (default: %(default)s)",
  )
  p.add_argument(
    "--signature",
    default=model_base.DEFAULT_SIGNATURE,
    help="with --input text: the signature (default: %(default)s, the text signature; "
    f"{model_base.SIGNATURE!r}: ids, featurized here)",
  )
  p.add_argument(
    "--compare_signature",
    help="with --input text: also tag through this signature and count the texts whose "
    "entities differ",
  )
  p.add_argument(
    "--no_word_shape",
    action="store_true",
    help="through an ids signature, send only input_ids and input_mask even to a model that "
    f"takes word shapes (what {model_base.SIGNATURE!r} alone gives)",
  )
  p.add_argument(
    "--calibration_plot",
    help="with scores (the text signature): write a reliability diagram of the entity scores here",
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
    from bert_ner.evaluation.local import LocalModel  # pylint: disable=import-outside-toplevel

    try:
      model = LocalModel(args.model_base_path)
      featurizer = Featurizer.from_dir(str(args.assets or model.assets))
    except (OSError, ValueError) as e:
      raise EvaluationError(str(e)) from None
    featurizer.word_shape = (
      featurizer.word_shape and model.takes_word_shape and not args.no_word_shape
    )
    return featurizer, model.run, str(model.path)
  server = args.server or DEFAULT_SERVERS[args.transport]
  client = CLIENTS[args.transport](
    server,
    args.model,
    model_base.SIGNATURE,  # the file's own tokens go in as ids
    timeout=args.timeout,
    assets=args.assets or default_assets(args.model_base_path),
  )
  client.check_fingerprint()
  settle_word_shapes(client, args)
  return client.featurizer, client.run, f"{args.transport} {server}"


def settle_word_shapes(client, args):
  """An ids client's featurizer hands its run function word shapes only where they are sent:
  the served model takes them (`shape_signature`) and --no_word_shape is not given. True when
  they are."""
  if client.text_in:
    return False
  featurizer = client.featurizer
  featurizer.word_shape = (
    featurizer.word_shape and client.shape_signature is not None and not args.no_word_shape
  )
  return featurizer.word_shape


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


def text_client(args, signature):
  """A NerClient for --input text over the chosen transport."""
  if args.transport == "local":
    return LocalNerClient(args.model_base_path, args.model, signature, args.timeout, args.assets)
  server = args.server or DEFAULT_SERVERS[args.transport]
  return CLIENTS[args.transport](
    server, args.model, signature, args.timeout, args.assets or default_assets(args.model_base_path)
  )


def sentence_text(sentence):
  """A sentence's tokens as one line of text, and each token's [start, end) in it."""
  spans, start = [], 0
  for word in sentence.words:
    spans.append((start, start + len(word)))
    start += len(word) + 1
  return " ".join(sentence.words), spans


def entity_words(spans, entity):
  """(first, last) index of the tokens an entity overlaps, or None."""
  hit = [i for i, (start, end) in enumerate(spans) if start < entity.end and entity.start < end]
  return (hit[0], hit[-1]) if hit else None


def tags_of(sentence, entities):
  """IOB2 tags of a sentence's tokens from entities found in its text (an entity marks every
  token it overlaps; where two overlap a token, the first keeps it)."""
  _, spans = sentence_text(sentence)
  tags = ["O"] * len(spans)
  for entity in entities:
    found = entity_words(spans, entity)
    if found is None or any(tags[i] != "O" for i in range(found[0], found[1] + 1)):
      continue
    tags[found[0]] = "B-" + entity.type
    for i in range(found[0] + 1, found[1] + 1):
      tags[i] = "I-" + entity.type
  return tags


def tag_texts(client, documents, document_mode, batch_size):
  """Entities of every sentence (as text), by sentence or by documents of lines."""
  texts = [[sentence_text(s)[0] for s in d] for d in documents]
  found = []
  if document_mode:
    # A document is many windows: a few documents per request.
    step = max(1, batch_size // 16)
    with tqdm(total=len(texts), unit="doc", file=sys.stderr, leave=False) as bar:
      for begin in range(0, len(texts), step):
        batch = texts[begin : begin + step]
        found += [e for d in client.predict_documents(batch, step) for e in d]
        bar.update(len(batch))
    return found
  lines = [t for d in texts for t in d]
  with tqdm(total=len(lines), unit="sent", file=sys.stderr, leave=False) as bar:
    for begin in range(0, len(lines), 4 * batch_size):
      batch = lines[begin : begin + 4 * batch_size]
      found += client.predict(batch, batch_size)
      bar.update(len(batch))
  return found


def calibration_of(sentences, found):
  """metrics.calibration of the entities' scores: an entity is correct when a gold entity has
  its type and tokens."""
  scores, correct = [], []
  for sentence, entities in zip(sentences, found):
    gold = {(t, first, last) for t, first, last in get_entities(sentence.tags)}
    _, spans = sentence_text(sentence)
    for entity in entities:
      if entity.score is None:
        return None
      words = entity_words(spans, entity)
      scores.append(entity.score)
      correct.append(words is not None and (entity.type, *words) in gold)
  return calibration(scores, correct)


def evaluate_text(args, documents, sentences):
  """(predicted tags, description, extra report lines) for --input text."""
  client = text_client(args, args.signature)
  client.check_fingerprint()
  shaped = settle_word_shapes(client, args)
  found = tag_texts(client, documents, args.document, args.batch_size)
  pred = [tags_of(s, e) for s, e in zip(sentences, found)]
  lines = []
  if args.compare_signature:
    other = text_client(args, args.compare_signature)
    other.check_fingerprint()
    settle_word_shapes(other, args)
    differ = sum(
      a != b for a, b in zip(found, tag_texts(other, documents, args.document, args.batch_size))
    )
    lines.append(
      f"entities differ from signature {args.compare_signature!r} on {differ} of {len(found)} texts"
    )
  report = calibration_of(sentences, found)
  if report is not None:
    lines.append(format_calibration(report))
    if args.calibration_plot:
      plot_calibration(report, args.calibration_plot, os.path.basename(args.data))
  description = f"{args.transport} {client.server}, signature {args.signature!r}"
  return pred, description + (" with word shapes" if shaped else ""), lines


def main(argv=None):
  """Runs the evaluation; returns the exit status."""
  args = parse_args(argv)
  if args.verbose:
    os.environ[VERBOSE_ENV] = "1"
  try:
    documents = read_documents(args.data)
    sentences = [s for d in documents for s in d]
    extra = []
    started = time.perf_counter()
    if args.input == "text":
      pred, description, extra = evaluate_text(args, documents, sentences)
    else:
      featurizer, run_fn, description = connect(args)
      description += " with word shapes" if featurizer.word_shape else ""
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
  for line in extra:
    print(line, file=sys.stderr)
  print(format_scores(seqeval_scores([s.tags for s in sentences], pred)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
