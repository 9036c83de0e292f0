"""Export: versions, signature contract, assets, warm-up log, fidelity, atomicity, bad input."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bert_ner.paths import REPO_ROOT
from support.export import load_saved_model, make_checkpoint

pytestmark = pytest.mark.slow  # exports models and runs the export CLI

SAVED_MODEL_CLI = REPO_ROOT / ".venv/bin/saved_model_cli"
SIGNATURES = ("result", "serving_default")
CONLL = "EU B-ORG\nrejects O\nGerman B-MISC\n\nPeter B-PER\nBlackburn I-PER\n\nBRUSSELS B-LOC\n"


def start_export_script(code, ckpt, base):
  """Popen of `python -c code` exporting ckpt into base (code runs export's main on argv)."""
  args = ["--checkpoint", str(ckpt), "--model_base_path", str(base), "--verify_sentences", "4"]
  return subprocess.Popen(
    [sys.executable, "-c", code, *args],
    cwd=REPO_ROOT,
    stdout=subprocess.DEVNULL,
    stderr=subprocess.DEVNULL,
  )


def run_cli(*args):
  """`python -m bert_ner.export ARGS` in a subprocess from the repo root."""
  return subprocess.run(
    [sys.executable, "-m", "bert_ner.export", *map(str, args)],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


def export_main(capsys, *args):
  """`bert_ner.export.__main__.main(ARGS)` in-process: (exit status, stdout, stderr)."""
  from bert_ner.export.__main__ import main

  status = main([str(a) for a in args])
  out, err = capsys.readouterr()
  return status, out, err


def listing(base):
  """{relative path: (size, mtime_ns)} of everything under `base`."""
  return {
    str(p.relative_to(base)): (p.stat().st_size, p.stat().st_mtime_ns)
    for p in sorted(Path(base).rglob("*"))
  }


@pytest.fixture(scope="module")
def ckpt(tiny_bert_dir, tmp_path_factory):
  """The tiny checkpoint dir."""
  return make_checkpoint(tiny_bert_dir, tmp_path_factory.mktemp("ckpt") / "ckpt")


@pytest.fixture(scope="module")
def exported(ckpt, tmp_path_factory):
  """A model base exported twice: version 1 by the CLI subprocess (--verbose: signatures shown),
  version 2 in-process."""
  from bert_ner.export.__main__ import main

  base = tmp_path_factory.mktemp("models") / "bert_ner"
  first = run_cli("--checkpoint", ckpt, "--model_base_path", base, "--verbose")
  assert first.returncode == 0, first.stderr
  conll = base.parent / "verify.conll"
  conll.write_text(CONLL)
  assert (
    main(
      [
        "--checkpoint",
        str(ckpt),
        "--model_base_path",
        str(base),
        "--verify_file",
        str(conll),
        "--verify_sentences",
        "0",
      ]
    )
    == 0
  )
  return base, first.stdout


@pytest.fixture(scope="module")
def fingerprint(exported):
  """The fingerprint recorded in version 1's assets."""
  base, _ = exported
  return json.loads((base / "1/assets.extra/ner_config.json").read_text())["fingerprint"]


def test_help_needs_no_checkpoint():
  result = run_cli("--help")
  assert result.returncode == 0
  for flag in (
    "--checkpoint",
    "--model_base_path",
    "--version",
    "--verify_sentences",
    "--verify_file",
  ):
    assert flag in result.stdout


def test_versions_and_report(exported, fingerprint):
  from bert_ner import model_base

  base, stdout = exported
  assert model_base.versions(base) == [1, 2]
  assert [p.name for p in base.iterdir() if not p.name.isdigit()] == []
  assert "signature_def['serving_default']:" in stdout
  assert "Method name is: tensorflow/serving/predict" in stdout
  assert re.search(
    rf"-> {re.escape(str(base / '1'))} \(fingerprint {fingerprint}\) in "
    r"[0-9.]+s",
    stdout,
  )
  assert "SavedModel == checkpoint graph" in stdout


def test_signature_contract_in_saved_model_pb(exported, fingerprint):
  from tensorflow.core.framework import types_pb2
  from tensorflow.core.protobuf import saved_model_pb2

  base, _ = exported
  saved = saved_model_pb2.SavedModel.FromString((base / "1/saved_model.pb").read_bytes())
  assert len(saved.meta_graphs) == 1
  meta = saved.meta_graphs[0]
  assert list(meta.meta_info_def.tags) == ["serve"]
  assert sorted(meta.signature_def) == sorted(SIGNATURES)
  sig = meta.signature_def["result"]
  assert sig.method_name == "tensorflow/serving/predict"
  assert {k: v.name for k, v in sig.inputs.items()} == {
    "input_ids": "input_ids:0",
    "input_mask": "input_mask:0",
  }
  assert {k: v.name for k, v in sig.outputs.items()} == {
    "pred_label": f"ner_{fingerprint}/pred_label:0"
  }
  for info in [*sig.inputs.values(), *sig.outputs.values()]:
    assert info.dtype == types_pb2.DT_INT32
    assert [d.size for d in info.tensor_shape.dim] == [-1, -1]
  # serving_default: raw text in, entities out, dense rows padded to the widest.
  text = meta.signature_def["serving_default"]
  assert text.method_name == "tensorflow/serving/predict"
  assert {k: (v.name, v.dtype) for k, v in text.inputs.items()} == {
    "text": ("text:0", types_pb2.DT_STRING)
  }
  assert [d.size for d in text.inputs["text"].tensor_shape.dim] == [-1]
  kinds = {
    "entity_type": types_pb2.DT_STRING,
    "entity_text": types_pb2.DT_STRING,
    "entity_start": types_pb2.DT_INT32,
    "entity_end": types_pb2.DT_INT32,
    "entity_score": types_pb2.DT_FLOAT,
    "num_entities": types_pb2.DT_INT32,
  }
  assert {k: (v.name, v.dtype) for k, v in text.outputs.items()} == {
    k: (f"ner_{fingerprint}/{k}:0", dtype) for k, dtype in kinds.items()
  }
  # Inference graph only: no dropout, no optimizer, no gradients, no step counter.
  ops = {node.op for node in meta.graph_def.node}
  names = [node.name for node in meta.graph_def.node]
  assert not [n for n in names if re.search(r"dropout|^gradients|Adam|global_step", n)]
  assert not {op for op in ops if "Apply" in op}


def test_signature_contract_via_saved_model_cli(exported, fingerprint):
  if not SAVED_MODEL_CLI.exists():
    pytest.skip(f"saved_model_cli not found at {SAVED_MODEL_CLI}")
  base, _ = exported
  result = subprocess.run(
    [str(SAVED_MODEL_CLI), "show", "--dir", str(base / "1"), "--all"],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  blocks = re.split(r"\n(?=signature_def\[')", result.stdout)
  block = next(b for b in blocks if b.startswith("signature_def['result']"))
  for key, tensor in (
    ("inputs['input_ids']", "input_ids:0"),
    ("inputs['input_mask']", "input_mask:0"),
    ("outputs['pred_label']", f"ner_{fingerprint}/pred_label:0"),
  ):
    assert re.search(
      re.escape(key) + r" tensor_info:\s+dtype: DT_INT32\s+shape: \(-1, -1\)\s+"
      r"name: " + re.escape(tensor),
      block,
    ), block
  assert "Method name is: tensorflow/serving/predict" in block
  block = next(b for b in blocks if b.startswith("signature_def['serving_default']"))
  assert re.search(
    r"inputs\['text'\] tensor_info:\s+dtype: DT_STRING\s+shape: \(-1\)\s+name: text:0", block
  ), block


def test_assets(exported, ckpt, fingerprint):
  from bert_ner import checkpoint, labels
  from bert_ner.featurizer import Featurizer

  base, _ = exported
  assets = base / "1/assets.extra"
  assert (assets / "vocab.txt").read_bytes() == (ckpt / "vocab.txt").read_bytes()
  assert labels.load_label_map(str(assets)) == labels.load_label_map(str(ckpt))
  config = json.loads((assets / "ner_config.json").read_text())
  assert re.fullmatch(r"[0-9a-f]{16}", fingerprint)
  assert config["labels"] == labels.load_label_map(str(ckpt))
  assert (config["vocab_size"], config["max_position_embeddings"]) == (30522, 64)
  assert checkpoint.NerConfig.from_dict(config) == checkpoint.NerConfig.from_json_file(
    ckpt / "ner_config.json"
  )
  assert config["do_lower_case"] is True and config["max_seq_length"] == 32
  assert Featurizer.from_dir(str(assets)).encode_words(["EU"])[0].input_ids[0] == 101


def test_fingerprint_follows_content(exported, fingerprint, tiny_bert_dir, tmp_path, capsys):
  base, _ = exported
  again = json.loads((base / "2/assets.extra/ner_config.json").read_text())["fingerprint"]
  assert again == fingerprint
  other = make_checkpoint(tiny_bert_dir, tmp_path / "other", seed=1)
  status, out, err = export_main(capsys, "--checkpoint", other, "--model_base_path", tmp_path / "m")
  assert status == 0, err
  changed = json.loads((tmp_path / "m/1/assets.extra/ner_config.json").read_text())["fingerprint"]
  assert changed != fingerprint and f"fingerprint {changed}" in out


def _edit_labels(ckpt):
  """Renames an entity type: same label count and shapes, other tags."""
  path = ckpt / "label2id.json"
  path.write_text(path.read_text().replace("MISC", "EVENT"))


def _edit_vocab(ckpt):
  """Rewrites one unused vocab entry: same size, another token."""
  path = ckpt / "vocab.txt"
  path.write_text(path.read_text().replace("[unused0]\n", "[unused-zero]\n", 1))


def _edit_config(ckpt):
  """Longer windows: same variables, other rows."""
  path = ckpt / "ner_config.json"
  path.write_text(json.dumps(dict(json.loads(path.read_text()), max_seq_length=48)))


def test_fingerprint_covers_labels_vocab_and_config(ckpt, fingerprint, tmp_path, capsys):
  # Same weights each time: a client holding the old labels, vocab or config must be refused.
  found = {}
  for name, edit in (("labels", _edit_labels), ("vocab", _edit_vocab), ("config", _edit_config)):
    variant = tmp_path / name
    shutil.copytree(ckpt, variant)
    before = {p.name: p.read_bytes() for p in variant.iterdir()}
    edit(variant)
    assert [n for n, data in before.items() if (variant / n).read_bytes() != data] == [
      {"labels": "label2id.json", "vocab": "vocab.txt", "config": "ner_config.json"}[name]
    ]
    status, _, err = export_main(
      capsys, "--checkpoint", variant, "--model_base_path", tmp_path / f"m-{name}"
    )
    assert status == 0, err
    found[name] = json.loads((tmp_path / f"m-{name}/1/assets.extra/ner_config.json").read_text())[
      "fingerprint"
    ]
  assert fingerprint not in found.values() and len(set(found.values())) == 3, found


def test_warmup_requests_parse_and_run(exported):
  import tensorflow as tf
  from tensorflow_serving.apis import prediction_log_pb2

  base, _ = exported
  records = list(
    tf.data.TFRecordDataset(
      str(base / "1/assets.extra/tf_serving_warmup_requests")
    ).as_numpy_iterator()
  )
  assert len(records) >= 4
  sess, _ = load_saved_model(base / "1")
  signatures = {name: load_saved_model(base / "1", name)[1] for name in SIGNATURES}
  seen = set()
  with sess:
    for record in records:
      request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
      sig = signatures[request.model_spec.signature_name]
      seen.add(request.model_spec.signature_name)
      assert set(request.inputs) == set(sig.inputs)
      feed = {sig.inputs[k].name: tf.make_ndarray(request.inputs[k]) for k in sig.inputs}
      outputs = sess.run({k: v.name for k, v in sig.outputs.items()}, feed)
      rows = len(next(iter(feed.values())))
      assert all(len(v) == rows for v in outputs.values())
  assert seen == set(SIGNATURES)


def test_saved_model_matches_checkpoint_graph(exported, ckpt):
  import tensorflow.compat.v1 as tf

  from bert_ner import checkpoint
  from bert_ner.export.exporter import SAMPLES
  from bert_ner.featurizer import Featurizer
  from bert_ner.head import build_inference_graph

  base, _ = exported
  featurizer = Featurizer.from_dir(str(ckpt))
  input_ids, input_mask = featurizer.pad_batch(
    [w for words in SAMPLES for w in featurizer.encode_words(words)]
  )
  model_dir = checkpoint.resolve(ckpt)
  with tf.Graph().as_default(), tf.Session() as sess:
    ids = tf.placeholder(tf.int32, [None, None])
    mask = tf.placeholder(tf.int32, [None, None])
    pred = build_inference_graph(model_dir, ids, mask)
    checkpoint.restore(sess, model_dir.init_checkpoints)
    want = sess.run(pred, {ids: input_ids, mask: input_mask})
  sess, sig = load_saved_model(base / "2")
  with sess:
    feed = {sig.inputs["input_ids"].name: input_ids, sig.inputs["input_mask"].name: input_mask}
    got = sess.run(sig.outputs["pred_label"].name, feed)
  assert len(np.unique(want[input_mask > 0])) > 1  # a random head, not a constant
  np.testing.assert_array_equal(got * input_mask, want * input_mask)


def test_mismatch_is_refused(ckpt, tmp_path, capsys, monkeypatch):
  import tensorflow as tf

  from bert_ner.export import exporter

  class CorruptingBuilder(tf.compat.v1.saved_model.Builder):
    """Saves a model whose logits favour one label everywhere: predictions must change."""

    def add_meta_graph_and_variables(self, sess, *args, **kwargs):
      bias = next(v for v in tf.compat.v1.global_variables() if v.op.name == "project/logits/b")
      sess.run(bias.assign(bias + np.eye(bias.shape[0], dtype=np.float32)[-1] * 1e4))
      super().add_meta_graph_and_variables(sess, *args, **kwargs)

  monkeypatch.setattr(exporter.v1.saved_model, "Builder", CorruptingBuilder)
  base = tmp_path / "bert_ner"
  status, _, err = export_main(capsys, "--checkpoint", ckpt, "--model_base_path", base)
  assert status == 1
  assert "refused: SavedModel predictions differ from the checkpoint's" in err
  assert list(base.iterdir()) == []


def test_crash_mid_export_leaves_no_partial_version(ckpt, tmp_path, capsys):
  from bert_ner import model_base

  base = tmp_path / "bert_ner"
  assert export_main(capsys, "--checkpoint", ckpt, "--model_base_path", base)[0] == 0
  before = listing(base)
  # The export dies (SIGKILL, no cleanup possible) right before publishing its complete version.
  crash = (
    "import os, signal, sys; from bert_ner.export import layout, __main__ as cli; "
    "layout.publish = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL); "
    "sys.exit(cli.main(sys.argv[1:]))"
  )
  proc = start_export_script(crash, ckpt, base)
  while proc.poll() is None:  # a server polling the base only ever sees complete versions
    for version in model_base.versions(base):
      assert (base / str(version) / "assets.extra/tf_serving_warmup_requests").exists()
    time.sleep(0.01)
  assert proc.returncode == -signal.SIGKILL
  assert model_base.versions(base) == [1]
  assert [p.name for p in base.iterdir() if p.name.startswith(".tmp-")] == [f".tmp-2-{proc.pid}"]
  assert {k: v for k, v in listing(base).items() if not k.startswith(".tmp-")} == before
  status, out, err = export_main(capsys, "--checkpoint", ckpt, "--model_base_path", base)
  assert status == 0, err
  assert f"removed stale temp dirs of crashed exports: .tmp-2-{proc.pid}" in out
  assert sorted(p.name for p in base.iterdir()) == ["1", "2"]


# Runs the export CLI with an audit hook watching the real layout.publish: at every file-system
# operation publishing does (open, mkdir, rename, copy...), if the new version is already visible
# under the base, the process SIGKILLs itself there. A rename publishes in its last operation, so
# the export completes; a copy-then-delete makes the version visible first and fills it after,
# and dies with a partial version that a polling server would load.
KILL_WHILE_PUBLISHING = """
import os, signal, sys
from bert_ner import model_base
from bert_ner.export import layout, __main__ as cli

publishing, inside = [], []

def hook(event, args):
  if publishing and not inside:
    inside.append(1)
    try:
      if set(model_base.versions(publishing[0])) - publishing[1]:
        os.kill(os.getpid(), signal.SIGKILL)
    finally:
      inside.clear()

def publish(tmp, base, version, fixed):
  publishing[:] = [base, set(model_base.versions(base))]
  try:
    return real_publish(tmp, base, version, fixed)
  finally:
    publishing.clear()

real_publish, layout.publish = layout.publish, publish
sys.addaudithook(hook)
sys.exit(cli.main(sys.argv[1:]))
"""


def test_a_version_appears_whole_or_not_at_all(ckpt, tmp_path, capsys):
  from bert_ner import model_base

  base = tmp_path / "bert_ner"
  assert export_main(capsys, "--checkpoint", ckpt, "--model_base_path", base)[0] == 0
  sizes = lambda version: {k: v[0] for k, v in listing(base / str(version)).items()}
  # The server's version discovery (bert_ner/server/manager.py lists the base with it), newest
  # first.
  discover = lambda: sorted(model_base.version_names(os.listdir(base)), reverse=True)
  proc = start_export_script(KILL_WHILE_PUBLISHING, ckpt, base)
  seen = []
  while proc.poll() is None:
    seen += [sizes(version) for version in discover() if version != 1]
    time.sleep(0.005)
  partial = sizes(2) if 2 in discover() else {}
  assert proc.returncode == 0, (
    f"export killed while publishing (exit {proc.returncode}): version 2 was visible with "
    f"{len(partial)} of {len(sizes(1))} files"
  )
  assert discover() == [2, 1] and sizes(2).keys() == sizes(1).keys()
  assert all(files == sizes(2) for files in seen), "a poller saw a partial version"
  assert [p.name for p in base.iterdir() if not p.name.isdigit()] == []


@pytest.mark.parametrize(
  "case", ["missing_dir", "no_checkpoint", "unwritable_base", "existing_version"]
)
def test_bad_input_exits_2_and_touches_nothing(
  case, exported, tiny_bert_dir, ckpt, tmp_path, capsys
):
  base, _ = exported
  before = listing(base)
  checkpoint_dir, model_base, extra, message = {
    "missing_dir": (tmp_path / "nope", base, [], "checkpoint dir not found"),
    "no_checkpoint": (tiny_bert_dir, base, [], "no checkpoint in"),
    "unwritable_base": (ckpt, tmp_path / "file/bert_ner", [], "is not writable"),
    "existing_version": (ckpt, base, ["--version", "1"], "version 1 already exists"),
  }[case]
  (tmp_path / "file").write_text("a file, not a directory")
  status, _, err = export_main(
    capsys, "--checkpoint", checkpoint_dir, "--model_base_path", model_base, *extra
  )
  assert status == 2
  assert len(err.strip().splitlines()) == 1 and message in err, err
  assert err.startswith("export: error: ")
  assert listing(base) == before


@pytest.mark.parametrize(
  "texts",
  [[], [b""], [b"   ", "\x00\u200b".encode()], [b"", b"EU call", b""]],
  ids=["no rows", "empty", "nothing but spaces and dropped characters", "empty rows around one"],
)
def test_text_signature_answers_rows_without_words(exported, texts):
  base, _ = exported
  sess, sig = load_saved_model(base / "1", "serving_default")
  with sess:
    got = sess.run({k: v.name for k, v in sig.outputs.items()}, {sig.inputs["text"].name: texts})
  assert got["num_entities"].shape == (len(texts),)
  assert all(v.shape[0] == len(texts) for v in got.values())
  assert all(got["num_entities"][i] == 0 for i, t in enumerate(texts) if b"EU" not in t)
