"""CoNLL files: one token per line, the NER tag in the last column, a blank line between sentences.

Any column layout works: `word` (1 column, no tags), `word tag`, `word POS tag`, `word POS chunk
tag` (CoNLL-2003), ... Columns are separated by whitespace, `-DOCSTART-` lines start a new
document (`read_documents`; `read_conll` returns all sentences) and tags come back in IOB2 (IOB1
files are converted), so every entity starts with `B-`.
"""

import dataclasses
import re
from pathlib import Path

# CoNLL-2003 where a checkout expects it: shared/data/conll2003 beside the repository, whatever
# the working directory (the trainer's, exporter's and bench's defaults).
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "conll2003"

DOCSTART = "-DOCSTART-"

_TAG_RE = re.compile(r"^(O|[BI]-\S+)$")
_BLANKS = " \t\r\n"
_COLUMN_SEP = re.compile(r"[ \t]+")


@dataclasses.dataclass
class Sentence:
  """One sentence: its words and their IOB2 tags (None for a file without a tag column)."""

  words: list[str]
  tags: list[str] | None = None


class ConllError(ValueError):
  """Malformed CoNLL input; the message names the file and line."""


def iob1_to_iob2(tags):
  """Rewrites an I- tag that opens an entity as B-; IOB2 input comes back unchanged."""
  out = []
  previous = "O"
  for tag in tags:
    if tag.startswith("I-") and previous[2:] != tag[2:]:
      tag = "B-" + tag[2:]
    out.append(tag)
    previous = tag
  return out


def _finish(words, tags, has_tags):
  """Builds a Sentence from the collected columns, tags converted to IOB2."""
  return Sentence(words, iob1_to_iob2(tags) if has_tags else None)


def read_conll(path):
  """Reads a CoNLL file into Sentences; raises ConllError with `path:line` on malformed input."""
  return [sentence for document in read_documents(path) for sentence in document]


def read_documents(path):
  """Reads a CoNLL file into documents (lists of Sentences), split at `-DOCSTART-` lines.

  A file without `-DOCSTART-` is one document. A UTF-8 byte order mark (what some Windows editors
  write first) is skipped, so it never turns a first `-DOCSTART-` into a word. A directory or a
  file that is not UTF-8 is a ConllError naming it.
  """
  if Path(path).is_dir():
    raise ConllError(f"{path} is a directory, not a CoNLL file")
  try:
    return _read_documents(path)
  except UnicodeDecodeError as e:
    raise ConllError(f"{path}: not UTF-8 ({e.reason}: byte {e.object[e.start]:#04x})") from None


def _read_documents(path):
  """read_documents of a UTF-8 file."""
  documents = [[]]
  sentences = documents[-1]
  words, tags = [], []
  num_columns = None
  with open(path, encoding="utf-8-sig") as f:
    for line_number, line in enumerate(f, 1):
      stripped = line.strip(_BLANKS)
      if not stripped:
        if words:
          sentences.append(_finish(words, tags, num_columns > 1))
          words, tags = [], []
        continue
      columns = _COLUMN_SEP.split(stripped)
      if columns[0] == DOCSTART:
        if words:  # no blank line before it: the sentence ends here
          sentences.append(_finish(words, tags, num_columns > 1))
          words, tags = [], []
        if sentences:
          documents.append([])
          sentences = documents[-1]
        continue
      if num_columns is None:
        num_columns = len(columns)
      elif len(columns) != num_columns:
        raise ConllError(
          f"{path}:{line_number}: {len(columns)} columns where the file has "
          f"{num_columns}: {line.rstrip()!r}"
        )
      if num_columns > 1 and not _TAG_RE.match(columns[-1]):
        raise ConllError(
          f"{path}:{line_number}: last column {columns[-1]!r} is not an IOB tag "
          f"(O, B-TYPE or I-TYPE)"
        )
      words.append(columns[0])
      tags.append(columns[-1])
  if words:
    sentences.append(_finish(words, tags, num_columns > 1))
  return [document for document in documents if document]


def first_sentences(documents, count):
  """The documents cut after their first `count` sentences in all."""
  kept = []
  for document in documents:
    if count <= 0:
      break
    kept.append(document[:count])
    count -= len(kept[-1])
  return kept
