"""End-to-end helpers shared by test_clients and tests/reliability: free loopback ports, a tiny
NER checkpoint built on the `tiny_bert_dir` fixture (`python -m bert_ner.server` as a subprocess is
server.process.ServerProcess).

TensorFlow is imported inside the functions only (test_clients checks clients stay TF-free).
"""

import atexit
import contextlib
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from bert_ner import labels, model_base
from bert_ner.paths import REPO_ROOT

LABELS = labels.make_label_list(["LOC", "MISC", "ORG", "PER"])


def free_port():
  """A loopback port nobody listens on (bound, then closed)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def make_checkpoint(tiny_bert_dir, out_dir, seed=1, **ner_config):
  """A tiny NER checkpoint dir: the tiny BERT plus a random head (by default a dense CRF on the
  last layer, max_seq_length 32; `ner_config` overrides NerConfig fields)."""
  import tensorflow.compat.v1 as tf

  from bert_ner import checkpoint
  from bert_ner.head import build_inference_graph

  config = checkpoint.NerConfig(
    **{"head": "dense", "feature_layers": [-1], "max_seq_length": 32, **ner_config}
  )
  model_dir = checkpoint.ModelDir(
    str(tiny_bert_dir / "bert_config.json"),
    str(tiny_bert_dir / "vocab.txt"),
    config,
    LABELS,
    [str(tiny_bert_dir / "bert_model.ckpt")],
  )
  with tf.Graph().as_default():
    tf.set_random_seed(seed)
    input_ids = tf.placeholder(tf.int32, [None, None])
    build_inference_graph(model_dir, input_ids, tf.ones_like(input_ids))
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      checkpoint.restore(
        sess,
        model_dir.init_checkpoints,
        [v for v in tf.global_variables() if v.op.name.startswith("bert/")],
      )
      checkpoint.save_checkpoint_dir(
        sess, out_dir, 1, model_dir.bert_config_path, model_dir.vocab_path, LABELS, config
      )
  return Path(out_dir)


def run_export(checkpoint, base, *flags):
  """`python -m bert_ner.export` of `checkpoint` into the model base `base` (4 verification
  sentences)."""
  return subprocess.run(
    [sys.executable, "-m", "bert_ner.export", "--checkpoint", str(checkpoint)]
    + ["--model_base_path", str(base), "--verify_sentences", "4", *map(str, flags)],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=600,
  )


_shipped_export = None  # this process's export of models/default (its version dir)


def export_shipped_model(base):
  """models/default exported by `python -m bert_ner.export` (as the image's first stage does) into
  the model base `base`; returns the version dir.

  The export (about half a minute of CPU) runs once per test process; later calls copy that
  version into their own base, so a test that changes its copy changes nobody else's."""
  global _shipped_export
  if _shipped_export is None:
    first = Path(tempfile.mkdtemp(prefix="shipped-export-")) / "bert_ner"
    atexit.register(shutil.rmtree, first.parent, True)
    done = run_export("models/default", first)
    assert done.returncode == 0, done.stderr[-3000:]
    _shipped_export = first / "1"
  version = Path(base) / "1"
  shutil.copytree(_shipped_export, version)
  return version


@contextlib.contextmanager
def served_shipped_model(base):
  """The shipped model exported into `base`, served on free loopback ports: (server, assets)."""
  from bert_ner.server.process import ServerProcess

  version = export_shipped_model(base)
  server = ServerProcess(base, Path(base).parent / "server.log").start()
  try:
    yield server, model_base.assets(version)
  finally:
    server.stop()
