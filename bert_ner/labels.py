"""Label maps: our `label2id.json`, macanv's `label2id.pkl` (read safely) and the label list.

`id2label` (a list indexed by label id) is the in-memory form everywhere. macanv numbers its
labels from 1 and leaves id 0 for padding; ids missing from a map read as "O".
"""

import io
import json
import os
import pickle

from bert_ner.jsonfile import read_json

LABEL2ID_JSON = "label2id.json"
LABEL2ID_PKL = "label2id.pkl"
SPECIAL_LABELS = ["X", "[CLS]", "[SEP]"]
# Ids are list indices: a map is refused before id2label is allocated when an id reaches this.
# A CRF over L labels holds L x L transitions; tag sets have tens of labels, not thousands.
MAX_LABELS = 1024


class _DataOnlyUnpickler(pickle.Unpickler):
  """Unpickler that resolves no globals, so a pickle can build plain data but never run code."""

  def find_class(self, module, name):
    raise pickle.UnpicklingError(
      f"refusing to load {module}.{name}: a label map pickle may hold only a dict of str -> int"
    )


def _read_pickle(path):
  """Loads macanv's label2id.pkl without executing anything it references."""
  with open(path, "rb") as f:
    data = f.read()
  try:
    return _DataOnlyUnpickler(io.BytesIO(data)).load()
  except Exception as e:  # malformed input surfaces as many exception types
    raise ValueError(f"{path}: not a plain label map pickle: {e}") from e


def _id2label(label2id, source):
  """Turns a {label: id} map into an id-indexed list, unknown ids -> "O"; validates types."""
  if not isinstance(label2id, dict) or not label2id:
    raise ValueError(
      f"{source}: expected a non-empty dict of label -> id, got {type(label2id).__name__}"
    )
  for label, label_id in label2id.items():
    if not isinstance(label, str) or type(label_id) is not int or label_id < 0:
      raise ValueError(f"{source}: bad entry {label!r}: {label_id!r} (need str -> int >= 0)")
  if max(label2id.values()) >= MAX_LABELS:
    raise ValueError(f"{source}: label id {max(label2id.values())} is not below {MAX_LABELS}")
  if len(set(label2id.values())) != len(label2id):
    raise ValueError(f"{source}: two labels share an id")
  id2label = ["O"] * (max(label2id.values()) + 1)
  for label, label_id in label2id.items():
    id2label[label_id] = label
  return id2label


def load_label_map(directory):
  """Reads `label2id.json` (ours) or `label2id.pkl` (macanv) from a dir; returns id2label."""
  json_path = os.path.join(directory, LABEL2ID_JSON)
  pkl_path = os.path.join(directory, LABEL2ID_PKL)
  if os.path.isfile(json_path):
    return _id2label(read_json(json_path), json_path)
  if os.path.isfile(pkl_path):
    return _id2label(_read_pickle(pkl_path), pkl_path)
  raise FileNotFoundError(f"no {LABEL2ID_JSON} or {LABEL2ID_PKL} in {directory}")


def save_label_map(directory, id2label):
  """Writes `label2id.json`; repeated "O" fillers (ids a macanv map left out) stay implicit."""
  label2id = {}
  for label_id, label in enumerate(id2label):
    if label in label2id and label != "O":
      raise ValueError(f"label {label!r} appears twice in id2label")
    # The last "O" wins so the map keeps the full length; other "O" ids read back as "O".
    label2id[label] = label_id
  with open(os.path.join(directory, LABEL2ID_JSON), "w", encoding="utf-8") as f:
    json.dump(label2id, f, indent=1)
    f.write("\n")


def make_label_list(entity_types):
  """Our id2label: "O", then B-/I- per sorted entity type, then "X", "[CLS]", "[SEP]"."""
  entity_labels = [
    f"{prefix}-{entity}" for entity in sorted(set(entity_types)) for prefix in ("B", "I")
  ]
  return ["O"] + entity_labels + SPECIAL_LABELS


def entity_types(id2label):
  """The sorted entity types of a label list (the X of its B-X / I-X labels)."""
  return sorted({label[2:] for label in id2label if label.startswith(("B-", "I-"))})
