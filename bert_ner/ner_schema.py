"""`ner_config.json`: its one typed schema, and the only code that reads or writes the file.

The file sits in a checkpoint dir (the head's hyper-parameters: `NerConfig`) and in an export's
`assets.extra/`, where the exporter adds what serving needs to know about that export
(`ExportInfo`: fingerprint, labels, table sizes, whether rows may run in length groups). It is one
flat JSON object, so that any earlier reader (a client or server of an older release) still finds
the keys it knows; `schema_version` says which fields a file can have. Files written before that
field existed are version 1 and read with the same defaults as before.

No TensorFlow here: clients and the featurizer read this file too.
"""

import dataclasses
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

from bert_ner.jsonfile import is_int, is_number, read_json, require_field

if TYPE_CHECKING:
  from bert_ner import modeling

FILE_NAME = "ner_config.json"
# 1: no schema_version field (every file written before it); 2: schema_version and, in an
# export, outputs_zero_past_length. `word_shape_dim` and `word_shape_dropout` came later without a
# new version: a reader that ignores them serves such a model through `result`, which reads the
# word shapes as 0, and refuses its checkpoint (the head's kernels are wider than it expects).
SCHEMA_VERSION = 2
HEADS = ("bilstm", "dense")
MIN_SEQ_LENGTH = 3  # [CLS] + one sub-token + [SEP]
# What the featurizer needs: a file without them cannot featurize (no defaults are guessed).
FEATURIZER_FIELDS = ("do_lower_case", "max_seq_length")
StrPath = str | os.PathLike[str]


@dataclasses.dataclass
class NerConfig:
  """Head hyper-parameters; the defaults are what a macanv dir (which has no such file) implies."""

  head: str = "bilstm"  # "bilstm" or "dense"
  lstm_size: int = 128
  hidden_size: int = 128
  feature_layers: list[int] = dataclasses.field(default_factory=lambda: [-1])
  do_lower_case: bool = True
  max_seq_length: int = 128
  dropout: float = 0.5  # rate on the BERT features while training (macanv's keep_prob 0.5)
  adapter_rank: int = 0  # LoRA rank of the encoder's adapters; 0 = none in the checkpoint
  adapter_alpha: float = 0.0  # LoRA alpha: the adapters add (alpha / rank) * A B to a kernel
  adapter_first_layer: int = 0  # encoder layers from this one up have adapters
  # Width of the learned embedding of the optional `word_shape` input (bert_ner.word_shape),
  # concatenated to the head's input; 0 = the model has no such input (every older model).
  word_shape_dim: int = 0
  # Training only: probability that a whole row's word_shape is fed as 0 ("not fed"), so the
  # model also tags well without it.
  word_shape_dropout: float = 0.0

  def adapters(self) -> "modeling.Adapters | None":
    """`modeling.Adapters` of this config, or None without adapters."""
    if not self.adapter_rank:
      return None
    # modeling loads TensorFlow, which the clients reading this module must not.
    from bert_ner import modeling  # pylint: disable=import-outside-toplevel

    return modeling.Adapters(
      self.adapter_rank, self.adapter_alpha / self.adapter_rank, self.adapter_first_layer
    )

  @classmethod
  def from_dict(cls, data: Mapping[str, Any]) -> Self:
    """A config from a dict; missing keys take defaults, other keys (the export's) are ignored."""
    fields = {field.name for field in dataclasses.fields(cls)}
    config = cls(**{key: value for key, value in data.items() if key in fields})
    config.feature_layers = [int(layer) for layer in config.feature_layers]
    return config

  @staticmethod
  def from_json_file(path: StrPath) -> "NerConfig":
    """The hyper-parameters of a `ner_config.json`; ValueError naming the file and field."""
    return read(path).config

  def to_json_file(self, path: StrPath) -> None:
    """Writes a checkpoint dir's `ner_config.json` (no export info)."""
    write(path, NerConfigFile(self))


@dataclasses.dataclass(frozen=True)
class ExportInfo:
  """What the exporter records about one export beside its hyper-parameters."""

  fingerprint: str  # the `ner_<fingerprint>` output scope: which assets a served version needs
  labels: list[str] | None = None  # id2label
  vocab_size: int | None = None
  max_position_embeddings: int | None = None  # None: written before the exporter recorded it
  # The graph's outputs are 0 past each row's length, so the server may run a batch's rows in
  # groups of similar length and pad them back. Every export of schema version 1 had this.
  outputs_zero_past_length: bool = True


@dataclasses.dataclass
class NerConfigFile:
  """The whole file: hyper-parameters, the export's info (None in a checkpoint dir), version."""

  config: NerConfig
  export: ExportInfo | None = None
  schema_version: int = SCHEMA_VERSION


def path_in(directory: StrPath) -> Path:
  """Where a checkpoint dir or an `assets.extra/` keeps the file."""
  return Path(directory) / FILE_NAME


def read(path: StrPath, required: Sequence[str] = ()) -> NerConfigFile:
  """Reads a `ner_config.json`; ValueError naming the file (and field) for anything that is not
  this schema, a field of `required` missing, or a schema_version newer than this code's."""
  data = read_json(path)
  source = os.fspath(path)
  check_fields(data, source)
  missing = [key for key in required if key not in data]
  if missing:
    raise ValueError(f"{source} lacks {missing}")
  version = data.get("schema_version", 1)
  if version > SCHEMA_VERSION:
    raise ValueError(
      f"{source}: schema_version {version} is newer than this code reads ({SCHEMA_VERSION})"
    )
  export = None
  if "fingerprint" in data:
    names = {field.name for field in dataclasses.fields(ExportInfo)}
    export = ExportInfo(**{key: value for key, value in data.items() if key in names})
  return NerConfigFile(NerConfig.from_dict(data), export, version)


def write(path: StrPath, content: NerConfigFile) -> None:
  """Writes `content` as one flat JSON object at the current schema version."""
  data = {"schema_version": SCHEMA_VERSION, **dataclasses.asdict(content.config)}
  if content.export is not None:
    # A field not known (None) is left out: absent, it reads back as None.
    export = dataclasses.asdict(content.export)
    data.update({key: value for key, value in export.items() if value is not None})
  with open(path, "w", encoding="utf-8") as f:
    json.dump(data, f, indent=1)
    f.write("\n")


def _is_size(value: Any) -> bool:
  return is_int(value) and value >= 1


def _is_count(value: Any) -> bool:
  return is_int(value) and value >= 0


# field -> (accepts the value, the rule a refusal names); a field absent from the file defaults.
_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
  "schema_version": (_is_size, "an integer >= 1"),
  "head": (lambda v: v in HEADS, f"one of {HEADS}"),
  "lstm_size": (_is_size, "an integer >= 1"),
  "hidden_size": (_is_size, "an integer >= 1"),
  "feature_layers": (
    lambda v: isinstance(v, list) and bool(v) and all(map(is_int, v)),
    "a non-empty list of layer indices",
  ),
  "do_lower_case": (lambda v: isinstance(v, bool), "true or false"),
  "max_seq_length": (
    lambda v: is_int(v) and v >= MIN_SEQ_LENGTH,
    f"an integer >= {MIN_SEQ_LENGTH}",
  ),
  "dropout": (lambda v: is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
  "adapter_rank": (_is_count, "an integer >= 0"),
  "adapter_alpha": (is_number, "a finite number"),
  "adapter_first_layer": (_is_count, "an integer >= 0"),
  "word_shape_dim": (_is_count, "an integer >= 0"),
  "word_shape_dropout": (lambda v: is_number(v) and 0 <= v <= 1, "a number in [0, 1]"),
  "fingerprint": (lambda v: isinstance(v, str), "a string"),
  "labels": (
    lambda v: isinstance(v, list) and all(isinstance(label, str) for label in v),
    "a list of label names",
  ),
  "vocab_size": (_is_size, "an integer >= 1"),
  "max_position_embeddings": (_is_size, "an integer >= 1"),
  "outputs_zero_past_length": (lambda v: isinstance(v, bool), "true or false"),
}


def check_fields(data: Any, source: str) -> None:
  """Types and ranges of the fields present in `data` (the rest default)."""
  if not isinstance(data, dict):
    raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
  for field, (ok, rule) in _RULES.items():
    if field in data:
      require_field(ok(data[field]), source, field, rule, data[field])
