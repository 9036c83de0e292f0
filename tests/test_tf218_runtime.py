"""The runtime the image embeds agrees: TensorFlow 2.18 (tensorflow/serving:2.18.0) loads the export
and tags the whole dev set as the dev venv's TensorFlow does, and TF Serving 2.18's schemas accept
the image's config files. TF 2.18 runs in .venv-tf218 (`make tf218`) via tests/tf218_runtime.py.
"""

import json
import subprocess

import numpy as np
import pytest

from bert_ner.paths import REPO_ROOT
from e2e_support import export_shipped_model
from support.export import load_saved_model

pytestmark = pytest.mark.slow  # needs TF 2.18 (.venv-tf218)

TF218_PYTHON = REPO_ROOT / ".venv-tf218" / "bin" / "python"
RUNNER = REPO_ROOT / "tests" / "tf218_runtime.py"
# Rows per batch: the dev set sorted by length in batches of 64 pads little and runs in a few
# dozen session calls per TensorFlow.
BATCH_ROWS = 64


@pytest.fixture(scope="module")
def tf218():
  """Runs tests/tf218_runtime.py under TF 2.18; `make tf218` first (a no-op once it is built)."""
  made = subprocess.run(
    ["make", "--no-print-directory", "-s", "tf218"],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=1200,
  )
  assert made.returncode == 0, made.stdout + made.stderr

  def run(*args):
    done = subprocess.run(
      [str(TF218_PYTHON), str(RUNNER), *map(str, args)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])

  return run


@pytest.fixture(scope="module")
def shipped_export(tmp_path_factory):
  """models/default exported by the dev venv's TensorFlow, as the image's first stage does."""
  return export_shipped_model(tmp_path_factory.mktemp("tf218") / "bert_ner")


def dev_batches(export_dir, dev_path):
  """Every window of every dev sentence, featurized from the export's assets, sorted by length
  and padded per batch: [(input_ids, input_mask)]."""
  from bert_ner import conll
  from bert_ner.featurizer import Featurizer, pad_batch

  featurizer = Featurizer.from_dir(str(export_dir / "assets.extra"))
  sentences = conll.read_conll(dev_path)
  windows = [w for s in sentences for w in featurizer.encode_words(s.words)]
  windows.sort(key=lambda w: len(w.input_ids))
  return len(sentences), [
    pad_batch(windows[i : i + BATCH_ROWS]) for i in range(0, len(windows), BATCH_ROWS)
  ]


def test_tf218_loader_tags_the_dev_set_as_the_dev_venv_does(
  tf218, shipped_export, conll_dev_path, tmp_path, capsys
):
  import tensorflow as tf

  sentence_count, batches = dev_batches(shipped_export, conll_dev_path)
  inputs = tmp_path / "batches.npz"
  np.savez(
    inputs,
    **{
      f"{k}_{i}": a
      for i, (ids, mask) in enumerate(batches)
      for k, a in (("ids", ids), ("mask", mask))
    },
  )
  ran = tf218("predict", shipped_export, inputs, tmp_path / "tf218.npz")
  assert ran == {"tensorflow": "2.18.0", "batches": len(batches)}
  theirs = np.load(tmp_path / "tf218.npz")
  sess, signature = load_saved_model(shipped_export)
  fetch = signature.outputs["pred_label"].name
  feeds = [signature.inputs[k].name for k in ("input_ids", "input_mask")]
  tokens = differing = 0
  with sess:
    for i, (ids, mask) in enumerate(batches):
      ours = sess.run(fetch, dict(zip(feeds, (ids, mask))))
      real = mask.astype(bool)
      assert theirs[f"pred_{i}"].shape == ours.shape
      tokens += int(real.sum())
      differing += int((theirs[f"pred_{i}"] != ours)[real].sum())
  with capsys.disabled():
    print(
      f"\nTF 2.18 loader vs TF {tf.__version__}: {differing} of {tokens} "
      f"dev tokens labelled differently ({sentence_count} sentences, {len(batches)} batches)"
    )
  assert sentence_count > 3000 and tokens > 50000
  assert differing == 0


def test_tf_serving_218_schemas_accept_the_image_configs(tf218):
  report = tf218("configs", REPO_ROOT / "docker")
  assert report["models.config"]["schema"] == (
    "tensorflow-serving-api 2.18.0 "
    "tensorflow_serving.config.model_server_config_pb2.ModelServerConfig"
  )
  assert report["models.config"]["fields"] == ["model_config_list"]
  for name in ("batching_parameters.txt", "monitoring_config.txt"):
    assert (
      "declared in bert_ner/server/tfs_config.proto (tensorflow-serving-api 2.18.0 lacks"
      in report[name]["schema"]
    )
  assert "max_batch_size" in report["batching_parameters.txt"]["fields"]
  assert (
    report["monitoring_config.txt"]["text"]
    == 'prometheus_config { enable: true path: "/monitoring/prometheus/metrics" }'
  )


def test_a_field_tf_serving_218_lacks_fails_the_strict_parse(tf218, tmp_path):
  for name in ("models.config", "batching_parameters.txt", "monitoring_config.txt"):
    (tmp_path / name).write_text((REPO_ROOT / "docker" / name).read_text())
  with open(tmp_path / "batching_parameters.txt", "a", encoding="utf-8") as f:
    f.write("mixed_priority_batching_policy: 1\n")
  with pytest.raises(AssertionError, match='has no field named "mixed_priority_batching_policy"'):
    tf218("configs", tmp_path)


def test_every_op_of_the_export_is_a_tf_218_core_op(tf218, shipped_export, capsys):
  audit = tf218("ops", shipped_export)
  with capsys.disabled():
    print(
      f"\nop audit: {len(audit['ops'])} op types in the export; "
      f"TF {audit['tensorflow']} lacks {audit['unregistered']}"
    )
  assert audit["tensorflow"] == "2.18.0"
  # The text signature's own kinds of op are there (not a graph without it).
  assert {"LookupTableFindV2", "StringJoin", "UnicodeEncode"} <= set(audit["ops"])
  assert audit["unregistered"] == []
  # No TF Text, no Python: ops the stock tensorflow/serving image cannot run.
  assert not [op for op in audit["ops"] if op.startswith(("PyFunc", "EagerPyFunc", "Text>"))]


def test_tf218_text_signature_answers_as_the_dev_venv_does(
  tf218, shipped_export, conll_dev_path, tmp_path
):
  import tensorflow as tf

  from bert_ner import conll
  from text_corpus import corpus

  # Eight documents (sentences alone and whole, many windows each) and 120 generated strings reach
  # every branch of the in-graph tokenizer; tests/test_text_graph.py proves it equal to the
  # featurizer on all of CoNLL, so this asks only whether TF 2.18's kernels agree with ours.
  documents = conll.read_documents(conll_dev_path)[:8]
  texts = [" ".join(s.words) for d in documents for s in d]
  texts += ["\n".join(" ".join(s.words) for s in d) for d in documents]
  texts += [t for t in corpus(120, seed=7) if isinstance(t, str)]
  # Requests of 16 texts, as clients send them: one batch of every text pads each to the longest
  # and costs twice the time.
  requests = [texts[i : i + 16] for i in range(0, len(texts), 16)]
  (tmp_path / "requests.json").write_text(json.dumps(requests), encoding="utf-8")
  ran = tf218("text", shipped_export, tmp_path / "requests.json", tmp_path / "tf218.json")
  assert ran == {"tensorflow": "2.18.0", "texts": len(texts)}
  theirs = json.loads((tmp_path / "tf218.json").read_text(encoding="utf-8"))
  sess, signature = load_saved_model(shipped_export, "serving_default")
  ours = {}
  with sess:
    for request in requests:
      got = sess.run(
        {key: info.name for key, info in signature.outputs.items()},
        {signature.inputs["text"].name: [t.encode("utf-8") for t in request]},
      )
      for key, value in got.items():
        ours.setdefault(key, []).extend(value.tolist())
  for key in ("entity_type", "entity_text"):
    assert theirs[key] == [[v.decode("utf-8") for v in row] for row in ours[key]], key
  for key in ("entity_start", "entity_end", "num_entities"):
    assert theirs[key] == ours[key], key
  # Scores are float32 sums of the same potentials by two TensorFlow builds' kernels: they agree
  # to under 1e-3 (0.00071 at most over these texts' entities, measured), the entities
  # themselves exactly.
  difference = max(
    (
      abs(x - y)
      for mine, real in zip(ours["entity_score"], theirs["entity_score"])
      for x, y in zip(mine, real)
    ),
    default=0.0,
  )
  print(f"\nTF 2.18 vs {tf.__version__}: scores differ by at most {difference:.6f}")
  assert difference < 2e-3
  assert sum(ours["num_entities"]) > 100


@pytest.mark.parametrize("overlay", ["base", "overlays/volume"])
def test_tf_serving_218_schemas_accept_the_kubernetes_configs(tf218, tmp_path, overlay):
  import k8s_support

  resources = k8s_support.by_kind_and_name(k8s_support.render(REPO_ROOT / "k8s" / overlay))
  for name, text in resources["ConfigMap", "bert-ner-config"]["data"].items():
    (tmp_path / name).write_text(text)
  report = tf218("configs", tmp_path)
  assert "num_batch_threads" in report["batching_parameters.txt"]["fields"]
  assert report["models.config"]["fields"] == ["model_config_list"]
