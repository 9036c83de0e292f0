"""The TF Serving model base as every folder reads it: names, versions and assets (no TF).

`<base>/<version>/` holds `saved_model.pb`, `variables/` and `assets.extra/`: the featurizer's
files (vocab, `ner_config.json` with the fingerprint, label map) and TF Serving's warm-up log.
export/ writes it, server/ loads it, clients, evaluation, deploy, demo and bench find their
assets in it; this module is the one spelling of each of those names and rules.
"""

import re
from pathlib import Path

MODEL_NAME = "bert_ner"
# `result` (macanv's name, the ids clients' default) takes sub-token ids and gives label ids;
# `serving_default`, what TF Serving runs when a request names no signature, takes raw text and
# gives entities (bert_ner.text_graph; docs/TEXT_SIGNATURE.md).
SIGNATURE, DEFAULT_SIGNATURE = "result", "serving_default"
TEXT_SIGNATURE = DEFAULT_SIGNATURE
SIGNATURES = (DEFAULT_SIGNATURE, SIGNATURE)
INPUT_IDS, INPUT_MASK, OUTPUT = "input_ids", "input_mask", "pred_label"
# Optional [B, T] int32 input of models trained with word shapes (ner_config `word_shape_dim`):
# a placeholder_with_default (0 = no information) that `result` does not name; the export's
# `WORD_SHAPE_SIGNATURE` takes it beside input_ids and input_mask, and the clients' ids path
# sends it there (bert_ner/word_shape.py says what the ids mean).
WORD_SHAPE = "word_shape"
WORD_SHAPE_SIGNATURE = "result_word_shape"
# The ids signatures a client may name whose batches go, with word shapes, to WORD_SHAPE_SIGNATURE
# when the model takes them: naming WORD_SHAPE_SIGNATURE itself must not send it ids alone.
SHAPED_IDS_SIGNATURES = (SIGNATURE, WORD_SHAPE_SIGNATURE)
TEXT = "text"
ENTITY_TYPE, ENTITY_START, ENTITY_END = "entity_type", "entity_start", "entity_end"
ENTITY_TEXT, ENTITY_SCORE, NUM_ENTITIES = "entity_text", "entity_score", "num_entities"
ENTITY_OFFSETS = (ENTITY_START, ENTITY_END)
TEXT_OUTPUTS = (ENTITY_TYPE, ENTITY_START, ENTITY_END, ENTITY_TEXT, ENTITY_SCORE, NUM_ENTITIES)
ASSETS_DIR = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
# The trainer's report in a checkpoint dir; the exporter copies it into assets.extra so that the
# next export can compare its dev F1 with the served version's (bert_ner/export/guard.py).
TRAIN_REPORT = "train_report.json"
# The exported output tensor is `ner_<fingerprint>/pred_label`: GetModelMetadata shows any
# TF Serving client which assets the served version needs.
OUTPUT_SCOPE = "ner_{fingerprint}"
FINGERPRINT = re.compile(r"ner_([0-9a-f]+)/")

# TF Serving 2.18 reads a version folder's name with safe_strto64 (file_system_storage_path_
# source.cc): optional ASCII whitespace around an optionally negative run of ASCII digits,
# within int64. Anything else ('²', '+3', '99999999999999999999', '.tmp-2') is not a version.
_VERSION_NAME = re.compile(r"[ \t\n\v\f\r]*(-?[0-9]+)[ \t\n\v\f\r]*")
_INT64 = (-(2**63), 2**63 - 1)


def parse_version(name):
  """A version folder name as an int64 version number, or None when TF Serving ignores it."""
  match = _VERSION_NAME.fullmatch(name)
  if not match:
    return None
  version = int(match.group(1))
  return version if _INT64[0] <= version <= _INT64[1] else None


def version_names(names):
  """{version: name} of the folder names that TF Serving loads as versions; where two names give
  one version ('7', '007') the last in sorted order wins, as IndexChildrenByVersion keeps the
  last child listed."""
  found = {}
  for name in sorted(names):
    version = parse_version(name)
    if version is not None:
      found[version] = name
  return found


def version_dirs(base):
  """{version: folder} of the version folders under `base` ({} when there is no such dir)."""
  base = Path(base)
  if not base.is_dir():
    return {}
  names = [p.name for p in base.iterdir() if p.is_dir()]
  return {version: base / name for version, name in version_names(names).items()}


def versions(base):
  """Sorted version numbers under `base`."""
  return sorted(version_dirs(base))


def latest(base):
  """Folder of the highest version under `base`, or None."""
  found = version_dirs(base)
  return found[max(found)] if found else None


def assets(version_dir):
  """The assets.extra folder of a version folder."""
  return Path(version_dir) / ASSETS_DIR


def latest_assets(base):
  """assets.extra of the highest version under `base` that has one, or None."""
  found = version_dirs(base)
  for version in sorted(found, reverse=True):
    if assets(found[version]).is_dir():
      return assets(found[version])
  return None
