"""Shared CLI, assets discovery and fingerprint check of the gRPC and REST clients."""

import argparse
import bisect
import dataclasses
import itertools
import json
import math
import os
import re
import signal
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import numpy.typing as npt

from bert_ner import model_base, ner_schema
from bert_ner.cli import OneLineParser
from bert_ner.featurizer import (
  VOCAB_FILE,
  Entity,
  Featurizer,
  IntArray,
  StrPath,
  text_entities,
)
from bert_ner.labels import LABEL2ID_JSON, entity_types
from bert_ner.paths import REPO_ROOT

HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d+)")
# Library messages name a parameter the way a Python caller passes it (`assets=DIR`); the
# command-line tools show their flag instead (command_line_message).
PARAMETER = re.compile(r"(?<![\w-])(assets|server)=")


class ClientError(Exception):
  """A failure the scripts report as one line on stderr.

  `code` names the canonical status (gRPC's StatusCode names; REST statuses mapped to them) the
  server answered, or the client concluded from its answer (a signature the metadata lacks is
  NOT_FOUND); None when the failure is the client's own (bad arguments, assets, a malformed
  answer). Callers such as the demo answer by it: a wrong model name is not a server outage.
  """

  def __init__(self, message: str, code: str | None = None) -> None:
    super().__init__(message)
    self.code = code


def command_line_message(error: Exception) -> str:
  """A library message as a command-line tool shows it: `assets=DIR` becomes `--assets DIR`."""
  return PARAMETER.sub(r"--\1 ", str(error))


def model_bases(roots: Iterable[StrPath] | None = None) -> list[Path]:
  """The model bases the clients look in for assets: models/bert_ner of CWD, then of the repo."""
  return [Path(root, "models", model_base.MODEL_NAME) for root in roots or (Path.cwd(), REPO_ROOT)]


def find_assets(roots: Iterable[StrPath] | None = None) -> Path:
  """$BERT_NER_ASSETS, else the highest version's assets.extra under models/bert_ner of CWD/repo."""
  if os.environ.get("BERT_NER_ASSETS"):
    return Path(os.environ["BERT_NER_ASSETS"])
  for base in model_bases(roots):
    found = model_base.latest_assets(base)
    if found:
      return found
  raise ClientError(
    "missing assets: no models/bert_ner/<version>/assets.extra in the current "
    "directory or the repo; pass assets=DIR or set BERT_NER_ASSETS"
  )


def assets_with_fingerprint(
  fingerprints: Iterable[str], roots: Iterable[StrPath] | None = None
) -> Path | None:
  """assets.extra of a version under models/bert_ner of CWD/repo whose export has one of the
  fingerprints (several versions may be on disk, the served one need not be the highest)."""
  wanted = set(fingerprints)
  for base in model_bases(roots):
    for folder in model_base.version_dirs(base).values():
      assets = model_base.assets(folder)
      try:
        if read_fingerprint(assets) in wanted:
          return assets
      except (OSError, ValueError):
        continue  # a version being written or removed right now is not the served one
  return None


def read_fingerprint(path: Path) -> str | None:
  """The fingerprint an export recorded in assets.extra/ner_config.json (None if none)."""
  export = ner_schema.read(ner_schema.path_in(path)).export
  return export.fingerprint if export else None


def load_assets(path: StrPath) -> tuple[Featurizer, str]:
  """(Featurizer, fingerprint) from an export's assets.extra directory."""
  path = Path(path)
  for name in (VOCAB_FILE, ner_schema.FILE_NAME, LABEL2ID_JSON):
    if not (path / name).is_file():
      raise ClientError(f"missing assets: {path / name} not found (pass assets=DIR)")
  try:
    fingerprint = read_fingerprint(path)
    featurizer = Featurizer.from_dir(str(path))
  except (OSError, ValueError) as e:
    raise ClientError(f"bad assets in {path}: {e}") from None
  if not fingerprint:
    raise ClientError(f"missing assets: {ner_schema.path_in(path)} has no fingerprint")
  return featurizer, fingerprint


def reject_str(value: object, what: str) -> None:
  """TypeError for a str where a list of them is expected: iterating it would tag each character
  as a sentence of its own."""
  if isinstance(value, str):
    raise TypeError(f"{what} takes a list of strings, not a str: wrap it as [text]")


def split_servers(server: str, schemes: Sequence[str] = ()) -> tuple[str | None, list[str]]:
  """(scheme, [host:port, ...]) of --server: comma-separated host:port targets, or one
  scheme://... target for a scheme in `schemes`; ClientError naming what is wrong."""
  if not server.strip():
    raise ClientError("--server is empty: give host:port (several: host:port,host:port)")
  scheme: str | None
  scheme, _, rest = server.partition(":")
  if scheme in schemes and rest.startswith("//"):
    # dns:///name:port and ipv4:///a:p,b:p carry an authority slot, left empty here.
    rest = rest.strip("/")
  elif "://" in server:
    raise ClientError(
      f"--server {server!r}: scheme {scheme!r} not supported (use host:port"
      + (f" or {', '.join(s + '://' for s in schemes)}" if schemes else "")
      + ")"
    )
  else:
    scheme, rest = None, server
  targets = [target.strip() for target in rest.split(",")]
  for target in targets:
    match = HOST_PORT.fullmatch(target)
    if not match:
      raise ClientError(f"--server {server!r}: {target!r} is not host:port")
    if not 1 <= int(match.group(2)) <= 65535:
      raise ClientError(f"--server {server!r}: port {int(match.group(2))} is not in 1-65535")
  return scheme, targets


def excerpt(value: object, limit: int = 80) -> str:
  """One line of at most `limit` characters showing a (JSON) value; encodes only its start (a
  whole hostile answer dumped and split took the REST client from 240 to 552 MB)."""
  chunks: list[str] = []
  for chunk in json.JSONEncoder(default=str).iterencode(value):
    chunks.append(chunk)
    if sum(map(len, chunks)) > 4 * limit:
      break
  text = " ".join("".join(chunks).split())
  return text if len(text) <= limit else text[: limit - 3] + "..."


def _leaves(value: object) -> Iterator[object]:
  """The non-list values of nested lists."""
  if isinstance(value, list):
    for item in value:
      yield from _leaves(item)
  else:
    yield value


def check_labels(pred: npt.ArrayLike, input_ids: IntArray, num_labels: int) -> IntArray:
  """The server's pred_label (nested lists or an array) as int32 [B, T] for `input_ids`, or
  ClientError: a wrong shape or a label id that is not an integer in [0, num_labels) would
  silently give wrong tags (numpy alone turns 1.7 into 1 and true into 1)."""
  if not isinstance(pred, np.ndarray):
    odd = [v for v in _leaves(pred) if type(v) is not int][:1]
    if odd:
      raise ClientError(f"server answered a non-integer label id: {excerpt(odd[0])}")
    try:
      pred = np.asarray(pred)
    except ValueError:
      raise ClientError("server answered ragged pred_label rows") from None
  if pred.dtype.kind not in "iu":
    raise ClientError(f"server answered {pred.dtype} label ids, not integers")
  rows, width = input_ids.shape
  # TF Serving's batching pads a request merged with longer ones to the batch's width and splits
  # the outputs by rows only: a wider pred_label is normal, and only our own columns count.
  if pred.ndim != 2 or pred.shape[0] != rows or pred.shape[1] < width:
    raise ClientError(
      f"server answered pred_label of shape {list(pred.shape)} for "
      f"input_ids of shape {list(input_ids.shape)}"
    )
  pred = pred[:, :width]
  bad = pred[(pred < 0) | (pred >= num_labels)]
  if bad.size:
    raise ClientError(
      f"server answered label id {bad.flat[0]}, outside the "
      f"{num_labels} labels of the assets (0-{num_labels - 1})"
    )
  return pred.astype(np.int32)


class NerClient:
  """Tags texts with a served bert_ner model; subclasses supply run(), run_text() and
  output_names().

  Two modes, chosen by the served signature (`signature`, default serving_default): a text
  signature takes the texts as they are and answers entities with scores, so the client needs
  nothing but the server; an ids signature (`result`) takes sub-token ids, so the client
  featurizes with the served version's assets (vocab, label map) and restores the entities.

  For a model trained with word shapes (its assets' ner_config has `word_shape_dim`) the ids
  signature `result` is upgraded, once the fingerprint check finds it served, to
  `result_word_shape`, which also takes the featurizer's word_shape: `request_signature`.
  """

  # pred_label [B, T] for one padded batch (input_ids, input_mask[, word_shape]).
  run: Callable[..., IntArray]
  # The text signature's outputs (model_base.TEXT_OUTPUTS) for a batch of texts.
  run_text: Callable[[list[str]], Mapping[str, Any]]
  # Output tensor names per signature name of the served model.
  output_names: Callable[[], dict[str, list[str]]]

  def __init__(
    self,
    server: str,
    model: str = model_base.MODEL_NAME,
    signature: str = model_base.DEFAULT_SIGNATURE,
    timeout: float = 10.0,
    assets: StrPath | None = None,
  ) -> None:
    self.server, self.model, self.signature, self.timeout = server, model, signature, timeout
    # Assets are read now when named, else only if the signature turns out to take ids; assets
    # found on disk (none passed) follow the served version: check_fingerprint switches to the
    # version whose fingerprint the server reports. Assets passed are kept or refused.
    self.follow_served = not assets and not os.environ.get("BERT_NER_ASSETS")
    self.assets = Path(assets) if assets else None
    self._featurizer: Featurizer | None = None
    # The served model's fingerprint once checked (with assets: theirs, until then).
    self.fingerprint: str | None = None
    if self.assets:
      self._featurizer, self.fingerprint = load_assets(self.assets)
    self.text_in = False
    self.fingerprint_checked = False
    self.shape_signature: str | None = None  # set by check_fingerprint when served
    self.connect()

  def request_signature(self, word_shape: IntArray | None) -> str:
    """The signature an ids batch goes to: the word-shape one when shapes are given and served."""
    if word_shape is not None and self.shape_signature:
      return self.shape_signature
    return self.signature

  def connect(self) -> None:
    """Sets up the transport to self.server (the subclass's channel or HTTP session)."""
    raise NotImplementedError

  @property
  def featurizer(self) -> Featurizer:
    """The featurizer of the assets (found as `find_assets` does when none were named)."""
    if self._featurizer is None:
      self.assets = find_assets()
      self._featurizer, self.fingerprint = load_assets(self.assets)
    return self._featurizer

  def close(self) -> None:
    """Releases the transport (channel or HTTP connections); the client is unusable after."""
    raise NotImplementedError

  def __enter__(self) -> "NerClient":
    return self

  def __exit__(self, *exc: object) -> None:
    self.close()

  def predict(self, texts: Iterable[str], batch_size: int = 64) -> list[list[Entity]]:
    """Entities (type, text, start, end, score) of each text; batch_size texts (text
    signature) or windows (ids) per request.

    The first call checks the served signature (one metadata request per client): assets of
    another version would map label ids to the wrong tags without any error.
    """
    reject_str(texts, "predict")
    texts = list(texts)
    if not self.fingerprint_checked:
      self.check_fingerprint()
    if self.text_in:
      return self._text_entities(texts, batch_size)
    return self.featurizer.predict_texts(texts, self.run, batch_size)

  def predict_documents(
    self, documents: Iterable[Iterable[str]], batch_size: int = 64
  ) -> list[list[list[Entity]]]:
    """Entities of each line of each document (a list of lines), a document tagged as one text
    so its lines see each other; offsets are within the line. Checks the signature as
    `predict` does."""
    reject_str(documents, "predict_documents")
    documents = list(documents)
    for document in documents:
      reject_str(document, "predict_documents (each document)")
    lines_of = [list(d) for d in documents]
    if not self.fingerprint_checked:
      self.check_fingerprint()
    if not self.text_in:
      return self.featurizer.predict_text_documents(lines_of, self.run, batch_size)
    joined = self._text_entities(["\n".join(lines) for lines in lines_of], batch_size)
    return [per_line(lines, found) for lines, found in zip(lines_of, joined)]

  def _text_entities(self, texts: list[str], batch_size: int) -> list[list[Entity]]:
    """Entities of texts through the text signature, batch_size texts per request, shortest
    first: the model pads a request's windows to its longest, and random sentences padded
    together hold about 2.8 times their real positions."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    found: list[list[Entity]] = [[] for _ in texts]
    for begin in range(0, len(order), batch_size):
      chunk = order[begin : begin + batch_size]
      batch = [texts[i] for i in chunk]
      outputs = self.run_text(batch)
      missing = [key for key in model_base.TEXT_OUTPUTS if key not in outputs]
      if missing:
        raise ClientError(f"server answer lacks the text signature's outputs {missing}")
      try:
        for i, entities in zip(chunk, text_entities(batch, outputs)):
          found[i] = entities
      except (ValueError, TypeError, IndexError, KeyError) as e:
        raise ClientError(f"bad answer from {self.server}: {e}") from None
    return found

  def checked_labels(self, pred: npt.ArrayLike, input_ids: IntArray) -> IntArray:
    """pred_label as int32 [B, T] once it fits the request and the label map (check_labels)."""
    id2label = cast(list[str], self.featurizer.id2label)  # from_dir always reads the label map
    return check_labels(pred, input_ids, len(id2label))

  def check_fingerprint(self) -> None:
    """Checks the served signature: a text signature is self-contained; an ids signature's
    output must be named ner_<fingerprint of the assets>, else ClientError."""
    signatures = self.output_names()
    if self.signature not in signatures:
      raise ClientError(
        f"signature {self.signature!r} not found in model {self.model!r} "
        f"(has: {', '.join(sorted(signatures)) or 'none'})",
        "NOT_FOUND",
      )
    served = {
      m.group(1) for name in signatures[self.signature] if (m := model_base.FINGERPRINT.match(name))
    }
    if not served:
      raise ClientError(
        f"signature {self.signature!r} of model {self.model!r} has no "
        f"ner_<fingerprint> output: not a bert_ner export"
      )
    self.text_in = any(
      name.partition(":")[0].endswith("/" + model_base.NUM_ENTITIES)
      for name in signatures[self.signature]
    )
    if self.text_in:
      self.fingerprint = min(served)
      self.fingerprint_checked = True
      return
    if self.follow_served and (self._featurizer is None or self.fingerprint not in served):
      self.load_served_assets(served)
    self.featurizer  # noqa: B018  (reads the assets now, so their fingerprint can be compared)
    if self.fingerprint not in served:
      raise ClientError(
        f"fingerprint mismatch (version skew): server has "
        f"{', '.join(sorted(served))}, assets {self.assets} have "
        f"{self.fingerprint}; pass the served version's assets.extra as assets=DIR"
      )
    shape_outputs = signatures.get(model_base.WORD_SHAPE_SIGNATURE, [])
    served_with_shapes = (
      self.featurizer.word_shape
      and self.signature in model_base.SHAPED_IDS_SIGNATURES
      and any(name.startswith(f"ner_{self.fingerprint}/") for name in shape_outputs)
    )
    self.shape_signature = model_base.WORD_SHAPE_SIGNATURE if served_with_shapes else None
    self.fingerprint_checked = True

  def entity_types(self) -> list[str]:
    """The model's entity types where the client has its label map (assets), else []: a text
    signature answers types by name, so a caller learns them from the entities."""
    if self._featurizer is None or self._featurizer.id2label is None:
      return []
    return entity_types(self._featurizer.id2label)

  def load_served_assets(self, served: set[str]) -> None:
    """Switches to the assets on disk of the served version, if a version there has its
    fingerprint (around a reload the highest version on disk is not yet or no longer served)."""
    found = assets_with_fingerprint(served)
    if found is not None:
      self._featurizer, self.fingerprint = load_assets(found)
      self.assets = found

  def error(self, code: str, detail: object = "", answered: str | None = None) -> ClientError:
    """ClientError carrying a canonical status code name (gRPC's, or mapped from HTTP);
    `answered` is what the server sent when it is worth showing instead (REST: "HTTP 500")."""
    message = {
      "UNAVAILABLE": f"server unreachable at {self.server}",
      "DEADLINE_EXCEEDED": f"timeout: no answer from {self.server} within {self.timeout:g}s",
      "NOT_FOUND": f"not found on {self.server} (model {self.model!r}, "
      f"signature {self.signature!r})",
      "INVALID_ARGUMENT": "server rejected the request (INVALID_ARGUMENT)",
    }.get(code, f"server error {answered or code}")
    detail = " ".join(str(detail).split())
    return ClientError(f"{message}: {detail}" if detail else message, code)


def per_line(lines: Sequence[str], found: Iterable[Entity]) -> list[list[Entity]]:
  """Entities of "\\n".join(lines) -> each line's entities, offsets within the line (an entity
  never crosses a line break)."""
  starts = list(itertools.accumulate((len(line) + 1 for line in lines), initial=0))
  result: list[list[Entity]] = [[] for _ in lines]
  for entity in found:
    line = bisect.bisect_right(starts, entity.start) - 1
    shift = starts[line]
    result[line].append(
      dataclasses.replace(entity, start=entity.start - shift, end=entity.end - shift)
    )
  return result


def add_model_flags(parser: argparse.ArgumentParser) -> None:
  """--model, --signature, --timeout and --assets: which served model a client talks to, how."""
  parser.add_argument(
    "--model", default=model_base.MODEL_NAME, help="model name (default: %(default)s)"
  )
  parser.add_argument(
    "--signature",
    default=model_base.DEFAULT_SIGNATURE,
    help="signature name (default: %(default)s, which takes text; "
    f"{model_base.SIGNATURE!r} takes ids and needs the served version's assets)",
  )
  parser.add_argument(
    "--timeout", type=float, default=10.0, help="seconds per request (default: %(default)s)"
  )
  parser.add_argument(
    "--assets",
    help="assets.extra of the served version, for a signature that takes ids (default: "
    "$BERT_NER_ASSETS, else the version under models/bert_ner whose fingerprint the server "
    "reports)",
  )


def build_parser(description: str | None, default_server: str) -> OneLineParser:
  """The flags both client scripts share."""
  parser = OneLineParser(description=description)
  parser.add_argument("texts", nargs="*", help="sentences to tag")
  parser.add_argument("--file", help="tag each line of this file ('-' for stdin)")
  parser.add_argument(
    "--server",
    default=default_server,
    help="host:port of the model server, or several replicas as "
    "host:port,host:port (gRPC also dns:///name:port) "
    "(default: %(default)s)",
  )
  add_model_flags(parser)
  parser.add_argument(
    "--batch_size", type=int, default=64, help="rows (windows) per request (default: %(default)s)"
  )
  parser.add_argument(
    "--json", action="store_true", help="print one JSON object per line (entities with scores)"
  )
  parser.add_argument(
    "--min_score",
    type=float,
    default=None,
    help="print only entities whose score is at least this (0-1; the text signature's scores)",
  )
  parser.add_argument(
    "--document",
    action="store_true",
    help="consecutive lines form one document, tagged with each other as "
    "context (a blank line starts the next); entities still per line",
  )
  return parser


def read_texts(args: argparse.Namespace) -> list[str]:
  """The sentences from the arguments or from --file."""
  for number, text in enumerate(args.texts, 1):
    # Undecodable argv bytes arrive as lone surrogates (PEP 383).
    bad = next((i for i, c in enumerate(text) if "\udc80" <= c <= "\udcff"), None)
    if bad is not None:
      raise ClientError(
        f"sentence argument {number} is not valid UTF-8 (byte "
        f"{ord(text[bad]) - 0xDC00:#04x} at character {bad})"
      )
  if args.file is None:
    return args.texts
  name = "stdin" if args.file == "-" else args.file
  try:
    data = sys.stdin.buffer.read() if args.file == "-" else Path(args.file).read_bytes()
    text = data.decode("utf-8")
  except OSError as e:
    raise ClientError(f"cannot read {args.file}: {e}") from None
  except UnicodeDecodeError as e:
    raise ClientError(
      f"{name} is not valid UTF-8 (byte {e.object[e.start]:#04x} at byte offset {e.start})"
    ) from None
  return args.texts + (file_lines(text) if text else [])


def file_lines(text: str) -> list[str]:
  """The lines of a file's text, without their \\n or \\r\\n ending."""
  return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")]


def split_documents(lines: Iterable[str]) -> list[list[str]]:
  """Consecutive non-blank lines as documents; blank lines separate them."""
  documents: list[list[str]] = []
  current: list[str] = []
  for line in lines:
    if line.strip():
      current.append(line)
    elif current:
      documents.append(current)
      current = []
  return documents + ([current] if current else [])


def tag_lines(
  client: NerClient, texts: list[str], document: bool, batch_size: int
) -> list[tuple[str, list[Entity]]]:
  """(line, entities) for every input line, sentence by sentence or by documents."""
  if not document:
    return list(zip(texts, client.predict(texts, batch_size)))
  documents = split_documents(texts)
  found = iter(e for d in client.predict_documents(documents, batch_size) for e in d)
  return [(line, next(found) if line.strip() else []) for line in texts]


def above(entities: Iterable[Entity], min_score: float | None) -> list[Entity]:
  """The entities scoring at least min_score (all of them for None)."""
  if min_score is None:
    return list(entities)
  return [e for e in entities if e.score is not None and e.score >= min_score]


def entity_json(entity: Entity) -> dict[str, Any]:
  """An entity as JSON: type, text, start, end, and score where the signature gave one."""
  fields = dataclasses.asdict(entity)
  if entity.score is None:
    del fields["score"]
  return fields


def format_result(text: str, entities: Iterable[Entity], as_json: bool) -> str:
  """The sentence followed by its entities, or one JSON object (with each entity's score)."""
  if as_json:
    return json.dumps({"text": text, "entities": [entity_json(e) for e in entities]})
  return "\n".join([text] + [f"  {e.text} -> {e.type} [{e.start}:{e.end}]" for e in entities])


def stdout_gone() -> int:
  """Exit status once the reader of stdout has gone (`| head`): stdout is pointed at /dev/null
  so the interpreter's last flush stays silent, and the status is that of a process SIGPIPE
  ended, as `yes | head` leaves it."""
  devnull = os.open(os.devnull, os.O_WRONLY)
  os.dup2(devnull, sys.stdout.fileno())
  os.close(devnull)
  return 128 + signal.SIGPIPE


def main(
  client_class: Callable[..., NerClient],
  description: str | None,
  default_server: str,
  argv: Sequence[str] | None = None,
) -> int:
  """Runs a client script; returns its exit status."""
  parser = build_parser(description, default_server)
  args = parser.parse_args(argv)
  if not args.texts and args.file is None:
    parser.error("give sentences or --file")
  if args.batch_size < 1 or not 0 < args.timeout < math.inf:
    parser.error("--batch_size and --timeout must be positive (--timeout finite)")
  if args.min_score is not None and not 0 <= args.min_score <= 1:
    parser.error("--min_score must be between 0 and 1")
  try:
    texts = read_texts(args)
    client = client_class(args.server, args.model, args.signature, args.timeout, args.assets)
    client.check_fingerprint()
    if args.min_score is not None and not client.text_in:
      raise ClientError(
        f"--min_score needs scores, which signature {args.signature!r} does not give "
        f"(the text signature {model_base.TEXT_SIGNATURE!r} does)"
      )
    for text, entities in tag_lines(client, texts, args.document, args.batch_size):
      print(format_result(text, above(entities, args.min_score), args.json))
    sys.stdout.flush()  # a reader gone shows here, not in the interpreter's exit
  except ClientError as e:
    print(f"error: {command_line_message(e)}", file=sys.stderr)
    return 1
  except BrokenPipeError:
    return stdout_gone()
  return 0
