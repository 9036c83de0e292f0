"""Shared CLI, assets discovery and fingerprint check of the gRPC and REST clients."""

import argparse
import dataclasses
import json
import os
import re
import sys
from pathlib import Path

from bert_ner.featurizer import NER_CONFIG_FILE, VOCAB_FILE, Featurizer
from bert_ner.labels import LABEL2ID_JSON

REPO_ROOT = Path(__file__).resolve().parents[1]
OUTPUT = "pred_label"
FINGERPRINT = re.compile(r"ner_([0-9a-f]+)/")


class ClientError(Exception):
  """A failure the scripts report as one line on stderr."""


def find_assets(roots=None):
  """$BERT_NER_ASSETS, else the highest version's assets.extra under models/bert_ner of CWD/repo."""
  if os.environ.get("BERT_NER_ASSETS"):
    return Path(os.environ["BERT_NER_ASSETS"])
  for root in roots or (Path.cwd(), REPO_ROOT):
    found = [d for d in Path(root, "models", "bert_ner").glob("*/assets.extra")
             if d.parent.name.isdigit()]
    if found:
      return max(found, key=lambda d: int(d.parent.name))
  raise ClientError("missing assets: no models/bert_ner/<version>/assets.extra in the current "
                    "directory or the repo; pass --assets DIR or set BERT_NER_ASSETS")


def load_assets(path):
  """(Featurizer, fingerprint) from an export's assets.extra directory."""
  path = Path(path)
  for name in (VOCAB_FILE, NER_CONFIG_FILE, LABEL2ID_JSON):
    if not (path / name).is_file():
      raise ClientError(f"missing assets: {path / name} not found (pass --assets DIR)")
  try:
    fingerprint = json.loads((path / NER_CONFIG_FILE).read_text(encoding="utf-8")).get(
        "fingerprint")
    featurizer = Featurizer.from_dir(str(path))
  except (OSError, ValueError) as e:
    raise ClientError(f"bad assets in {path}: {e}") from None
  if not fingerprint:
    raise ClientError(f"missing assets: {path / NER_CONFIG_FILE} has no fingerprint")
  return featurizer, fingerprint


class NerClient:
  """Tags texts with a served bert_ner model; subclasses supply run() and output_names()."""

  def __init__(self, server, model="bert_ner", signature="result", timeout=10.0, assets=None):
    self.server, self.model, self.signature, self.timeout = server, model, signature, timeout
    self.assets = Path(assets) if assets else find_assets()
    self.featurizer, self.fingerprint = load_assets(self.assets)

  def predict(self, texts, batch_size=64):
    """Entities (type, text, start, end) of each text; windows go batch_size rows per request."""
    return self.featurizer.predict_texts(list(texts), self.run, batch_size)

  def predict_documents(self, documents, batch_size=64):
    """Entities of each line of each document (a list of lines), a document tagged as one text
    so its lines see each other; offsets are within the line."""
    return self.featurizer.predict_text_documents([list(d) for d in documents], self.run,
                                                  batch_size)

  def check_fingerprint(self):
    """Raises ClientError unless the signature's output is named ner_<fingerprint of the assets>."""
    signatures = self.output_names()
    if self.signature not in signatures:
      raise ClientError(f"signature {self.signature!r} not found in model {self.model!r} "
                        f"(has: {', '.join(sorted(signatures)) or 'none'})")
    served = {m.group(1) for name in signatures[self.signature] if (m := FINGERPRINT.match(name))}
    if not served:
      raise ClientError(f"signature {self.signature!r} of model {self.model!r} has no "
                        f"ner_<fingerprint> output: not a bert_ner export")
    if self.fingerprint not in served:
      raise ClientError(f"fingerprint mismatch (version skew): server has "
                        f"{', '.join(sorted(served))}, assets {self.assets} have "
                        f"{self.fingerprint}; pass the served version's assets.extra with --assets")

  def error(self, code, detail=""):
    """ClientError for a canonical status code name (gRPC's, or mapped from HTTP)."""
    message = {
        "UNAVAILABLE": f"server unreachable at {self.server}",
        "DEADLINE_EXCEEDED": f"timeout: no answer from {self.server} within {self.timeout:g}s",
        "NOT_FOUND": f"not found on {self.server} (model {self.model!r}, "
                     f"signature {self.signature!r})",
        "INVALID_ARGUMENT": "server rejected the request (INVALID_ARGUMENT)",
    }.get(code, f"server error {code}")
    detail = " ".join(str(detail).split())
    return ClientError(f"{message}: {detail}" if detail else message)


def build_parser(description, default_server):
  """The flags both client scripts share."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("texts", nargs="*", help="sentences to tag")
  parser.add_argument("--file", help="tag each line of this file ('-' for stdin)")
  parser.add_argument("--server", default=default_server,
                      help="host:port of the model server (default: %(default)s)")
  parser.add_argument("--model", default="bert_ner", help="model name (default: %(default)s)")
  parser.add_argument("--signature", default="result",
                      help="signature name (default: %(default)s)")
  parser.add_argument("--timeout", type=float, default=10.0,
                      help="seconds per request (default: %(default)s)")
  parser.add_argument("--assets", help="assets.extra of the served version (default: "
                                       "$BERT_NER_ASSETS, else the highest under models/bert_ner)")
  parser.add_argument("--batch_size", type=int, default=64,
                      help="rows (windows) per request (default: %(default)s)")
  parser.add_argument("--json", action="store_true", help="print one JSON object per line")
  parser.add_argument("--document", action="store_true",
                      help="consecutive lines form one document, tagged with each other as "
                           "context (a blank line starts the next); entities still per line")
  return parser


def read_texts(args):
  """The sentences from the arguments or from --file."""
  if args.file is None:
    return args.texts
  try:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text(encoding="utf-8")
  except (OSError, UnicodeDecodeError) as e:
    raise ClientError(f"cannot read {args.file}: {e}") from None
  return args.texts + (text.removesuffix("\n").split("\n") if text else [])


def split_documents(lines):
  """Consecutive non-blank lines as documents; blank lines separate them."""
  documents, current = [], []
  for line in lines:
    if line.strip():
      current.append(line)
    elif current:
      documents.append(current)
      current = []
  return documents + ([current] if current else [])


def tag_lines(client, texts, document, batch_size):
  """(line, entities) for every input line, sentence by sentence or by documents."""
  if not document:
    return list(zip(texts, client.predict(texts, batch_size)))
  documents = split_documents(texts)
  found = iter(e for d in client.predict_documents(documents, batch_size) for e in d)
  return [(line, next(found) if line.strip() else []) for line in texts]


def format_result(text, entities, as_json):
  """The sentence followed by its entities, or one JSON object."""
  if as_json:
    return json.dumps({"text": text, "entities": [dataclasses.asdict(e) for e in entities]})
  return "\n".join([text] + [f"  {e.text} -> {e.type} [{e.start}:{e.end}]" for e in entities])


def main(client_class, description, default_server, argv=None):
  """Runs a client script; returns its exit status."""
  parser = build_parser(description, default_server)
  args = parser.parse_args(argv)
  if not args.texts and args.file is None:
    parser.error("give sentences or --file")
  if args.batch_size < 1 or args.timeout <= 0:
    parser.error("--batch_size and --timeout must be positive")
  try:
    texts = read_texts(args)
    client = client_class(args.server, args.model, args.signature, args.timeout, args.assets)
    client.check_fingerprint()
    for text, entities in tag_lines(client, texts, args.document, args.batch_size):
      print(format_result(text, entities, args.json))
  except ClientError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0
