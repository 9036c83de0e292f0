"""Label maps: our `label2id.json`, macanv's `label2id.pkl` (read safely) and the label list.

`id2label` (a list indexed by label id) is the in-memory form everywhere. macanv numbers its
labels from 1 and leaves id 0 for padding; ids missing from a map read as "O".
"""

import io
import json
import os
import pickle

import numpy as np

from bert_ner.jsonfile import read_json

LABEL2ID_JSON = "label2id.json"
LABEL2ID_PKL = "label2id.pkl"
X_LABEL = "X"  # a word's later sub-tokens (the first carries the word's label)
SPECIAL_LABELS = [X_LABEL, "[CLS]", "[SEP]"]
# A training row's label id where the tag is not taught (the CRF sums over every tag there).
UNOBSERVED_LABEL = -1
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


def forbidden_transitions(id2label):
  """[L, L] bool: True where IOB2 forbids label `next` right after label `previous`.

  I-T may follow only B-T, I-T, or X: an entity is entered at its B-, and X (a word's later
  sub-token) hides the word's own label, so X -> I-T stays allowed. Everything else is allowed.
  A CRF learns these rules only softly: without them Viterbi can return O, I-ORG or B-MISC, I-ORG,
  which seqeval's strict IOB2 scoring drops and a lenient reader turns into an entity.

  For example, with labels ["O", "B-LOC", "I-LOC", "X"] the only forbidden moves are
  O -> I-LOC ([0, 2]); B-LOC -> I-LOC, I-LOC -> I-LOC and X -> I-LOC are allowed.
  """
  forbidden = np.zeros((len(id2label), len(id2label)), bool)
  for previous, before in enumerate(id2label):
    for following, after in enumerate(id2label):
      if after.startswith("I-") and before != X_LABEL:
        forbidden[previous, following] = before not in (f"B-{after[2:]}", after)
  return forbidden


def entity_types(id2label):
  """The sorted entity types of a label list (the X of its B-X / I-X labels)."""
  return sorted({label[2:] for label in id2label if label.startswith(("B-", "I-"))})
