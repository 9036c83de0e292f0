"""Checkpoint dirs: NER config, resolving the three layouts, restoring and saving variables.

Layouts `resolve` understands:
  * ours / macanv: `checkpoint` state file, `model.ckpt-N.*`, `bert_config.json`, `vocab.txt`,
    `label2id.json` or `label2id.pkl`, and (ours only) `ner_config.json`;
  * head-only (the shipped default model): head checkpoint, `label2id.json`, `ner_config.json`
    and `manifest.json` naming the pinned backbone, converted on first use by `bert_ner.backbone`.
"""

import dataclasses
import os
import shutil
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow.compat.v1 as tf

from bert_ner import atomic, backbone, labels, model_checks, modeling, ner_schema
from bert_ner.featurizer import Featurizer
from bert_ner.jsonfile import read_json
from bert_ner.ner_schema import NerConfig

BERT_CONFIG = "bert_config.json"
VOCAB = "vocab.txt"
MANIFEST = "manifest.json"
CHECKPOINT_STATE = "checkpoint"
LSTM_KERNEL = "rnn_layer/bidirectional_rnn/fw/lstm_cell/kernel"
HIDDEN_WEIGHTS = "project/hidden/W"
TRANSITIONS = "crf_loss/transitions"
StrPath = str | os.PathLike[str]  # a file name as open() takes it
# TensorFlow ships no type information: its sessions and variables are Any here.
Session = Any
Variable = Any


@dataclasses.dataclass
class ModelDir:
  """Everything needed to build and restore the inference graph of one model."""

  bert_config_path: str
  vocab_path: str
  ner_config: NerConfig
  id2label: list[str]
  init_checkpoints: list[str]  # restore() reads each variable from the first that has it

  def featurizer(self) -> Featurizer:
    """The featurizer this model was trained with (its vocab, casing, window, labels and
    whether it takes word shapes)."""
    return Featurizer(
      self.vocab_path,
      self.ner_config.do_lower_case,
      self.ner_config.max_seq_length,
      self.id2label,
      word_shape=self.ner_config.word_shape_dim > 0,
    )


def vocab_is_cased(vocab_path: StrPath) -> bool:
  """True if some word piece (not a [bracketed] special token) would change under lower-casing."""
  with open(vocab_path, encoding="utf-8") as f:
    tokens = (line.strip() for line in f)
    return any(
      token != token.lower()
      for token in tokens
      if not (token.startswith("[") and token.endswith("]"))
    )


def infer_ner_config(checkpoint_path: str, vocab_path: StrPath) -> NerConfig:
  """NerConfig for a dir without `ner_config.json` (macanv), read off its variables and vocab."""
  shapes = variable_shapes([checkpoint_path])
  config = NerConfig(do_lower_case=not vocab_is_cased(vocab_path))
  # The default window, unless the model has fewer positions than that.
  positions = shapes.get(model_checks.EMBEDDINGS.format("position"), [config.max_seq_length])
  config.max_seq_length = min(config.max_seq_length, positions[0])
  rnn_variables = sorted(name for name in shapes if name.startswith("rnn_layer/"))
  if not rnn_variables:
    config.head = "dense"
  elif LSTM_KERNEL in shapes and HIDDEN_WEIGHTS in shapes:
    config.lstm_size = shapes[LSTM_KERNEL][1] // 4
    config.hidden_size = shapes[HIDDEN_WEIGHTS][1]
  else:
    raise ValueError(
      f"{checkpoint_path}: unsupported recurrent layer (only a one-layer "
      f"BiLSTM is supported); it has {rnn_variables}"
    )
  return config


def latest_checkpoint(directory: StrPath) -> str:
  """Prefix named by the dir's `checkpoint` file; a stale absolute path (a dir copied from
  another machine) is looked for by its basename inside the dir."""
  state = tf.train.get_checkpoint_state(directory)
  if state is None:
    raise FileNotFoundError(f"no checkpoint in {directory}: `{CHECKPOINT_STATE}` file missing")
  prefix = state.model_checkpoint_path
  for candidate in (prefix, os.path.join(directory, os.path.basename(prefix))):
    if os.path.isfile(candidate + ".index"):
      return candidate
  raise FileNotFoundError(f"no checkpoint in {directory}: {prefix}.index missing")


def _require_file(directory: str, name: str) -> str:
  """Path of `name` inside `directory`, or a FileNotFoundError saying which file is missing."""
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{name} missing in {directory}")
  return path


def _check_num_labels(checkpoint_path: str, id2label: Sequence[str]) -> None:
  """Fails early when the label map and the checkpoint's CRF disagree on the label count."""
  shapes = variable_shapes([checkpoint_path])
  if TRANSITIONS in shapes and shapes[TRANSITIONS][0] != len(id2label):
    raise ValueError(
      f"{checkpoint_path}: {TRANSITIONS} is {shapes[TRANSITIONS]} but the "
      f"label map has {len(id2label)} ids"
    )


def _resolve_checkpoint_dir(directory: str) -> ModelDir:
  """Our or macanv's full checkpoint dir."""
  checkpoint_path = latest_checkpoint(directory)
  bert_config_path = _require_file(directory, BERT_CONFIG)
  vocab_path = _require_file(directory, VOCAB)
  ner_config_path = os.path.join(directory, ner_schema.FILE_NAME)
  if os.path.isfile(ner_config_path):
    ner_config = NerConfig.from_json_file(ner_config_path)
  else:
    ner_config = infer_ner_config(checkpoint_path, vocab_path)
  id2label = labels.load_label_map(directory)
  _check_num_labels(checkpoint_path, id2label)
  return ModelDir(bert_config_path, vocab_path, ner_config, id2label, [checkpoint_path])


def _resolve_head_only_dir(directory: str) -> ModelDir:
  """A head-only dir whose `manifest.json` names the pinned backbone; converts it if needed."""
  manifest = read_json(os.path.join(directory, MANIFEST))
  wanted = (manifest.get("backbone") if isinstance(manifest, dict) else None) or {}
  if not isinstance(wanted, dict):
    raise ValueError(f"{directory}/{MANIFEST}: backbone must be an object, got {wanted!r:.40}")
  pinned = backbone.DEFAULT_BACKBONE
  for key in ("package", "version", "sha256"):
    if wanted.get(key) != pinned[key]:
      raise ValueError(
        f"{directory}/{MANIFEST}: backbone {key} {wanted.get(key)!r} is not the "
        f"pinned {pinned[key]!r}"
      )
  head_checkpoint = latest_checkpoint(directory)
  ner_config = NerConfig.from_json_file(_require_file(directory, ner_schema.FILE_NAME))
  id2label = labels.load_label_map(directory)
  _check_num_labels(head_checkpoint, id2label)
  backbone_dir = backbone.ensure_converted(backbone.locate_default_backbone(), pinned["sha256"])
  return ModelDir(
    bert_config_path=_require_file(backbone_dir, BERT_CONFIG),
    vocab_path=_require_file(backbone_dir, VOCAB),
    ner_config=ner_config,
    id2label=id2label,
    init_checkpoints=[head_checkpoint, os.path.join(backbone_dir, backbone.CHECKPOINT_NAME)],
  )


def resolve(path: StrPath) -> ModelDir:
  """Turns a checkpoint dir of any supported layout into a ModelDir."""
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"model dir {path} does not exist")
  if os.path.isfile(os.path.join(path, MANIFEST)):
    model_dir = _resolve_head_only_dir(path)
  else:
    model_dir = _resolve_checkpoint_dir(path)
  check_model_dir(model_dir)
  return model_dir


def variable_shapes(init_checkpoints: Sequence[str]) -> dict[str, list[int]]:
  """Name -> shape of the variables restore() would read (the first checkpoint holding a name
  wins); ValueError for a checkpoint TensorFlow cannot read."""
  shapes: dict[str, list[int]] = {}
  for path in reversed(init_checkpoints):
    try:
      shapes.update(tf.train.list_variables(path))
    except tf.errors.OpError as e:
      raise ValueError(f"{path}: unreadable checkpoint ({e.message.splitlines()[0]})") from e
  return shapes


def check_model_dir(model_dir: ModelDir) -> None:
  """Configs, vocabulary and label count checked against the checkpoint's variable shapes, so a
  bad dir is refused in a second with one line instead of while (or after) building its graph."""
  shapes = variable_shapes(model_dir.init_checkpoints)
  bert = model_checks.check_bert_config(model_dir.bert_config_path, shapes)
  model_checks.check_vocab(model_dir.vocab_path, bert.vocab_size)
  model_checks.check_ner_config(
    model_dir.ner_config, bert, shapes, len(model_dir.id2label), ner_schema.FILE_NAME
  )


def restore(
  sess: Session, init_checkpoints: Sequence[str], var_list: Sequence[Variable] | None = None
) -> None:
  """Restores each variable (default: all global ones) from the first checkpoint holding its
  name; raises ValueError listing variables found nowhere or with a different shape."""
  variables = tf.global_variables() if var_list is None else var_list
  shapes = [dict(tf.train.list_variables(path)) for path in init_checkpoints]
  assignments: list[dict[str, Variable]] = [{} for _ in init_checkpoints]
  problems = []
  for var in variables:
    name, shape = var.op.name, var.shape.as_list()
    source = next((i for i, available in enumerate(shapes) if name in available), None)
    if source is None:
      problems.append(f"  {name} {shape}: in no checkpoint")
    elif shapes[source][name] != shape:
      problems.append(
        f"  {name}: graph {shape} vs {shapes[source][name]} in {init_checkpoints[source]}"
      )
    else:
      assignments[source][name] = var
  if problems:
    raise ValueError(
      f"cannot restore {len(problems)} variable(s) from {init_checkpoints}:\n" + "\n".join(problems)
    )
  for path, assignment in zip(init_checkpoints, assignments):
    if assignment:
      tf.train.Saver(assignment).restore(sess, path)


def merge_adapters(
  sess: Session, init_checkpoints: Sequence[str], ner_config: NerConfig
) -> list[str]:
  """Adds scale * A B of every adapter pair in the checkpoints into its graph kernel.

  For a graph built without adapters (export, merged checkpoints): the merged kernels give the
  adapter graph's outputs with google-research/bert's variables only. Returns the merged names.
  """
  kernels = {v.op.name: v for v in tf.global_variables()}
  suffix = "/" + modeling.ADAPTER_DOWN
  merged = []
  for path in init_checkpoints:
    names = {name for name, _ in tf.train.list_variables(path)}
    for down_name in sorted(n for n in names if n.endswith(suffix)):
      scope = down_name[: -len(suffix)]
      kernel = kernels.get(scope + "/kernel")
      if kernel is None or scope + "/kernel" in merged:
        continue
      adapters = ner_config.adapters()
      if adapters is None:
        raise ValueError(
          f"{path} holds adapters ({down_name}) but ner_config.json has no adapter_rank"
        )
      down = tf.train.load_variable(path, down_name)
      up = tf.train.load_variable(path, f"{scope}/{modeling.ADAPTER_UP}")
      value = sess.run(kernel) + adapters.scale * np.matmul(down, up)
      kernel.load(value.astype(np.float32), sess)
      merged.append(scope + "/kernel")
  return merged


def restore_model(sess: Session, model_dir: ModelDir) -> list[str]:
  """Restores a ModelDir's graph; a graph without adapter variables gets them merged in."""
  restore(sess, model_dir.init_checkpoints)
  graph_has_adapters = any(
    v.op.name.endswith("/" + modeling.ADAPTER_DOWN) for v in tf.global_variables()
  )
  if graph_has_adapters:
    return []
  return merge_adapters(sess, model_dir.init_checkpoints, model_dir.ner_config)


def save_checkpoint_dir(
  sess: Session,
  out_dir: StrPath,
  step: int,
  bert_config_path: StrPath,
  vocab_path: StrPath,
  id2label: Sequence[str],
  ner_config: NerConfig,
  var_list: Sequence[Variable] | None = None,
) -> str:
  """Writes a macanv-layout checkpoint dir atomically; returns its checkpoint prefix.

  `var_list` (default: all saveable global variables) picks what goes into `model.ckpt-<step>`.
  """
  out_dir = os.path.abspath(os.fspath(out_dir))
  prefix = f"model.ckpt-{step}"
  with atomic.build_dir(out_dir, replace=True) as tmp_dir:
    tf.train.Saver(var_list).save(
      sess, os.path.join(tmp_dir, prefix), write_meta_graph=False, write_state=False
    )
    # Relative paths keep the dir valid after the rename and when copied elsewhere.
    with open(os.path.join(tmp_dir, CHECKPOINT_STATE), "w", encoding="utf-8") as f:
      f.write(f'model_checkpoint_path: "{prefix}"\nall_model_checkpoint_paths: "{prefix}"\n')
    shutil.copyfile(bert_config_path, os.path.join(tmp_dir, BERT_CONFIG))
    shutil.copyfile(vocab_path, os.path.join(tmp_dir, VOCAB))
    labels.save_label_map(tmp_dir, id2label)
    ner_config.to_json_file(os.path.join(tmp_dir, ner_schema.FILE_NAME))
  return os.path.join(out_dir, prefix)
