"""A checkpoint dir's configs checked against its variables before any graph is built.

The graph is built from `bert_config.json` and `ner_config.json`, so a config that disagrees with
the checkpoint fails only after every layer it names is built (100,000 layers: half an hour), and
a vocabulary longer than the embedding table or a window wider than the position table would be
exported as if it worked. Here each config is read as data (types and ranges), then compared with
the shapes the checkpoint's variables actually have; every refusal is a ValueError of one line.
"""

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from bert_ner import featurizer, modeling, word_shape
from bert_ner.jsonfile import is_int, is_number, read_json, require_field

Shapes = Mapping[str, Sequence[int]]  # variable name -> shape, as tf.train.list_variables gives
EMBEDDINGS = "bert/embeddings/{}_embeddings"
LAYER = re.compile(r"bert/encoder/layer_(\d+)/")
LAYER_KERNELS = {  # per encoder layer: kernel -> (rows, columns) as config field names
  "attention/self/query/kernel": ("hidden_size", "hidden_size"),
  "intermediate/dense/kernel": ("hidden_size", "intermediate_size"),
}
BERT_SIZES = (
  "vocab_size",
  "hidden_size",
  "num_hidden_layers",
  "num_attention_heads",
  "intermediate_size",
  "max_position_embeddings",
  "type_vocab_size",
)
BERT_RATES = ("hidden_dropout_prob", "attention_probs_dropout_prob")
BERT_POSITIVE = ("initializer_range", "layer_norm_eps")


def _require_shape(shapes: Shapes, name: str, want: list[int], source: str) -> None:
  """The checkpoint holds `name` with shape `want`, as the config implies."""
  have = shapes.get(name)
  if have is None:
    raise ValueError(f"{source} implies {name} {want}, which no checkpoint of the dir holds")
  if list(have) != want:
    raise ValueError(f"{source} implies {name} {want} but the checkpoint has {list(have)}")


def encoder_layers(shapes: Shapes) -> set[int]:
  """Indices of the encoder layers that have variables in the checkpoint."""
  return {int(m.group(1)) for m in map(LAYER.match, shapes) if m}


def check_bert_config(path: str, shapes: Shapes) -> modeling.BertConfig:
  """`bert_config.json` as a BertConfig, its fields typed and sized like the checkpoint's."""
  raw = read_json(path)
  if not isinstance(raw, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(raw).__name__}")
  config = modeling.BertConfig.from_dict({"vocab_size": None, **raw})
  for field in BERT_SIZES:
    require_field(
      is_int(getattr(config, field)), path, field, "an integer >= 1", getattr(config, field)
    )
    require_field(
      getattr(config, field) >= 1, path, field, "an integer >= 1", getattr(config, field)
    )
  for field in BERT_RATES:
    value = getattr(config, field)
    require_field(is_number(value) and 0 <= value < 1, path, field, "a number in [0, 1)", value)
  for field in BERT_POSITIVE:
    value = getattr(config, field)
    require_field(is_number(value) and value > 0, path, field, "a number > 0", value)
  activations = sorted(modeling.ACTIVATIONS)
  require_field(
    config.hidden_act in activations, path, "hidden_act", f"one of {activations}", config.hidden_act
  )
  if config.hidden_size % config.num_attention_heads:
    raise ValueError(
      f"{path}: hidden_size {config.hidden_size} is not a multiple of num_attention_heads "
      f"{config.num_attention_heads}"
    )
  hidden = config.hidden_size
  for table, rows in (
    ("word", config.vocab_size),
    ("token_type", config.type_vocab_size),
    ("position", config.max_position_embeddings),
  ):
    _require_shape(shapes, EMBEDDINGS.format(table), [rows, hidden], path)
  layers = encoder_layers(shapes)
  if layers != set(range(config.num_hidden_layers)):
    raise ValueError(
      f"{path}: num_hidden_layers is {config.num_hidden_layers} but the checkpoint has "
      f"{len(layers)} encoder layers"
    )
  for layer in sorted(layers):
    for kernel, (rows, columns) in LAYER_KERNELS.items():
      want = [getattr(config, rows), getattr(config, columns)]
      _require_shape(shapes, f"bert/encoder/layer_{layer}/{kernel}", want, path)
  return config


def head_shapes(
  ner_config: Any, bert: modeling.BertConfig, num_labels: int
) -> dict[str, list[int]]:
  """The shapes `bert_ner.head.build_ner_head` gives its variables for these configs."""
  # The head's input: the feature layers, and the word shape embedding where the model has one.
  features = bert.hidden_size * len(ner_config.feature_layers) + ner_config.word_shape_dim
  lstm, hidden = ner_config.lstm_size, ner_config.hidden_size
  shapes = {"crf_loss/transitions": [num_labels, num_labels]}
  if ner_config.word_shape_dim:
    shapes["word_shape/embedding"] = [word_shape.NUM_IDS, ner_config.word_shape_dim]
  if ner_config.head == "dense":
    return {**shapes, "project/logits/W": [features, num_labels]}
  for direction in ("fw", "bw"):
    shapes[f"rnn_layer/bidirectional_rnn/{direction}/lstm_cell/kernel"] = [
      features + lstm,
      4 * lstm,
    ]
  return {
    **shapes,
    "project/hidden/W": [2 * lstm, hidden],
    "project/logits/W": [hidden, num_labels],
  }


def check_ner_config(
  ner_config: Any, bert: modeling.BertConfig, shapes: Shapes, num_labels: int, source: str
) -> None:
  """The NER config fits the encoder (layers, positions) and the head variables' shapes."""
  layers = bert.num_hidden_layers
  for layer in ner_config.feature_layers:
    if not -layers <= layer < layers:
      raise ValueError(f"{source}: feature_layers has {layer}; the encoder has {layers} layers")
  if ner_config.max_seq_length > bert.max_position_embeddings:
    raise ValueError(
      f"{source}: max_seq_length {ner_config.max_seq_length} exceeds the model's "
      f"{bert.max_position_embeddings} positions"
    )
  if ner_config.adapter_first_layer > layers:
    raise ValueError(
      f"{source}: adapter_first_layer {ner_config.adapter_first_layer} is beyond the "
      f"{layers} layers"
    )
  for name, want in head_shapes(ner_config, bert, num_labels).items():
    _require_shape(shapes, name, want, source)
  _check_adapters(ner_config.adapter_rank, shapes, source)


def _check_adapters(rank: int, shapes: Shapes, source: str) -> None:
  """Each adapter pair in the checkpoint is [in, rank] x [rank, out] beside its [in, out] kernel."""
  suffix = "/" + modeling.ADAPTER_DOWN
  for down in sorted(name for name in shapes if name.endswith(suffix)):
    if not rank:
      raise ValueError(f"the checkpoint holds adapters ({down}) but {source} has no adapter_rank")
    scope = down[: -len(suffix)]
    rows, columns = shapes.get(f"{scope}/kernel", [None, None])
    _require_shape(shapes, down, [rows, rank], source)
    _require_shape(shapes, f"{scope}/{modeling.ADAPTER_UP}", [rank, columns], source)


def check_vocab(path: str | os.PathLike[str], vocab_size: int) -> None:
  """vocab.txt is UTF-8, has the special tokens, and no more lines than the embedding rows.

  Read line by line and stopped one line past `vocab_size`: a 10-million-line file costs no more
  than a valid one.
  """
  tokens = set()
  try:
    with open(path, encoding="utf-8") as f:
      for count, line in enumerate(f, 1):
        if count > vocab_size:
          raise ValueError(
            f"{path}: more than {vocab_size} lines but the embedding table has "
            f"vocab_size {vocab_size} rows"
          )
        tokens.add(line.strip())
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from e
  missing = [t for t in (featurizer.CLS, featurizer.SEP, featurizer.UNK) if t not in tokens]
  if missing:
    raise ValueError(f"{path}: lacks {missing}" + ("" if tokens else " (the file is empty)"))
