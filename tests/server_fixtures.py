"""Tiny TF1 SavedModels in TF Serving's layout, and python -m bert_ner.server run on free loopback
ports."""

import os
import pathlib

import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from bert_ner import head, model_base

REPO = pathlib.Path(__file__).resolve().parents[1]
MODEL = "bert_ner"
VOCAB, POSITIONS, POISON = 100, 32, 99  # POISON passes validation but makes the graph raise.
READY_TIMEOUT_S = 120


def expected(ids, mask, offset=0):
  """What the fixture model predicts for one row."""
  return [(i * m) % 7 + offset for i, m in zip(ids, mask)]


def build_model(path, offset=0, warmup_ids=(1, 2, 3)):
  """Writes a SavedModel: pred_label = (input_ids * input_mask) % 7 + offset after the real
  graph's input checks, signatures result and serving_default, BERT-named embedding tables
  and a one-request warm-up file. Unlike the real graph, padded positions get labels too."""
  graph = tf.Graph()
  with graph.as_default():
    ids = tf.compat.v1.placeholder(tf.int32, [None, None], name="input_ids")
    mask = tf.compat.v1.placeholder(tf.int32, [None, None], name="input_mask")
    words = tf.compat.v1.get_variable("bert/embeddings/word_embeddings", [VOCAB, 4])
    tf.compat.v1.get_variable("bert/embeddings/position_embeddings", [POSITIONS, 4])
    with tf.name_scope("ner_test"):
      # The real graph's request checks (bert_ner.head), so messages are the real ones.
      with tf.control_dependencies([head.check_shapes(ids, mask)]):
        checks = head.check_inputs(ids, mask, head.real_lengths(ids, mask, None), VOCAB, POSITIONS)
      checks.append(tf.compat.v1.debugging.assert_none_equal(ids, POISON, message="poison id"))
      with tf.control_dependencies(checks):
        used = tf.cast(tf.reduce_sum(tf.gather(words, ids), -1) * 0, tf.int32)
        pred = tf.identity((ids * mask) % 7 + offset + used, name="pred_label")
    signature = tf.compat.v1.saved_model.predict_signature_def(
      {"input_ids": ids, "input_mask": mask}, {"pred_label": pred}
    )
    with tf.compat.v1.Session(graph=graph) as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      builder = tf.compat.v1.saved_model.Builder(str(path))
      builder.add_meta_graph_and_variables(
        sess, ["serve"], signature_def_map={"result": signature, "serving_default": signature}
      )
      builder.save()
  request = predict_pb2.PredictRequest()
  request.model_spec.name = MODEL
  request.inputs["input_ids"].CopyFrom(tf.make_tensor_proto([list(warmup_ids)], tf.int32))
  request.inputs["input_mask"].CopyFrom(tf.make_tensor_proto([[1] * len(warmup_ids)], tf.int32))
  os.makedirs(os.path.join(path, model_base.ASSETS_DIR), exist_ok=True)
  warmup = os.path.join(path, model_base.ASSETS_DIR, model_base.WARMUP_FILE)
  with tf.io.TFRecordWriter(warmup) as w:
    w.write(
      prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
      ).SerializeToString()
    )
  return path
