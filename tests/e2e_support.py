"""End-to-end helpers shared by test_clients and tests/reliability: free loopback ports, a tiny
NER checkpoint built on the `tiny_bert_dir` fixture, and `python -m server` as a subprocess.

TensorFlow is imported inside the functions only (test_clients checks clients stay TF-free).
"""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
LABELS = ["O", "B-LOC", "I-LOC", "B-MISC", "I-MISC", "B-ORG", "I-ORG", "B-PER", "I-PER", "X",
          "[CLS]", "[SEP]"]
READY = re.compile(r"gRPC (\S+) REST http://(\S+)")
SERVER_READY_TIMEOUT_S = 300
SERVER_STOP_TIMEOUT_S = 30


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
  model_dir = checkpoint.ModelDir(str(tiny_bert_dir / "bert_config.json"),
                                  str(tiny_bert_dir / "vocab.txt"), config, LABELS,
                                  [str(tiny_bert_dir / "bert_model.ckpt")])
  with tf.Graph().as_default():
    tf.set_random_seed(1)
    input_ids = tf.placeholder(tf.int32, [None, None])
    build_inference_graph(model_dir, input_ids, tf.ones_like(input_ids))
    with tf.Session() as sess:
      sess.run(tf.global_variables_initializer())
      checkpoint.save_checkpoint_dir(sess, out_dir, 1, model_dir.bert_config_path,
                                     model_dir.vocab_path, LABELS, config)
  return out_dir


class ServerProcess:
  """`python -m server` on loopback ports (0 = free); stdout and stderr go to log_path.

  `start()` blocks until the "gRPC ... REST ..." ready line, then `grpc` and `rest` hold
  host:port. `kill()` is SIGKILL, `stop()` SIGTERM (SIGKILL after a timeout); both wait.
  """

  def __init__(self, base_path, log_path, grpc_port=0, rest_port=0, *flags):
    self.base_path, self.log_path = Path(base_path), Path(log_path)
    self.grpc_port, self.rest_port, self.flags = grpc_port, rest_port, list(flags)
    self.proc = self.grpc = self.rest = None

  def start(self, timeout=SERVER_READY_TIMEOUT_S):
    """Starts the server and waits (bounded) for its ready line; returns self."""
    offset = self.log_path.stat().st_size if self.log_path.exists() else 0
    with open(self.log_path, "a") as out:
      self.proc = subprocess.Popen(
          [sys.executable, "-m", "server", "--port", str(self.grpc_port), "--rest_api_port",
           str(self.rest_port), "--model_name", "bert_ner", "--model_base_path",
           str(self.base_path), *self.flags],
          cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", CUDA_VISIBLE_DEVICES=""))
    deadline = time.monotonic() + timeout
    while not (ready := READY.search(self.log()[offset:])):
      if self.proc.poll() is not None or time.monotonic() > deadline:
        self.kill()
        raise RuntimeError(f"server not ready: {self.log()[offset:][-3000:]}")
      time.sleep(0.2)
    self.grpc, self.rest = ready.group(1), ready.group(2)
    return self

  @property
  def pid(self):
    return self.proc.pid

  def log(self):
    """Everything the server printed so far (all its runs)."""
    return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

  def kill(self):
    """SIGKILL; returns the exit status."""
    if self.proc is None or self.proc.poll() is not None:
      return None if self.proc is None else self.proc.returncode
    self.proc.send_signal(signal.SIGKILL)
    return self.proc.wait(timeout=SERVER_STOP_TIMEOUT_S)

  def stop(self, timeout=SERVER_STOP_TIMEOUT_S):
    """SIGTERM, then the exit status (SIGKILL after timeout seconds: returns None)."""
    if self.proc is None or self.proc.poll() is not None:
      return None if self.proc is None else self.proc.returncode
    self.proc.terminate()
    try:
      return self.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
      self.kill()
      return None
