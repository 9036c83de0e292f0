"""End-to-end helpers shared by test_clients and tests/reliability: free loopback ports, a tiny
NER checkpoint built on the `tiny_bert_dir` fixture (`python -m server` as a subprocess is
server.process.ServerProcess).

TensorFlow is imported inside the functions only (test_clients checks clients stay TF-free).
"""

import socket
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = [
  "O",
  "B-LOC",
  "I-LOC",
  "B-MISC",
  "I-MISC",
  "B-ORG",
  "I-ORG",
  "B-PER",
  "I-PER",
  "X",
  "[CLS]",
  "[SEP]",
]


def free_port():
  """A loopback port nobody listens on (bound, then closed)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def make_checkpoint(tiny_bert_dir, out_dir):
  """A tiny dense-CRF checkpoint dir: the tiny BERT plus a random head, max_seq_length 32."""
  import tensorflow.compat.v1 as tf

  from bert_ner import checkpoint
  from bert_ner.head import build_inference_graph

  config = checkpoint.NerConfig(head="dense", feature_layers=[-1], max_seq_length=32)
  model_dir = checkpoint.ModelDir(
    str(tiny_bert_dir / "bert_config.json"),
    str(tiny_bert_dir / "vocab.txt"),
    config,
    LABELS,
    [str(tiny_bert_dir / "bert_model.ckpt")],
  )
  with tf.Graph().as_default():
    tf.set_random_seed(1)
    input_ids = tf.placeholder(tf.int32, [None, None])
    build_inference_graph(model_dir, input_ids, tf.ones_like(input_ids))
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      checkpoint.save_checkpoint_dir(
        sess, out_dir, 1, model_dir.bert_config_path, model_dir.vocab_path, LABELS, config
      )
  return out_dir
