"""Runs under .venv-tf218 (TensorFlow 2.18, tensorflow-serving-api 2.18): the image's runtime view.

    python tests/tf218_runtime.py predict EXPORT_DIR BATCHES.npz OUT.npz
        loads the SavedModel through the TF1 loader TF Serving's SavedModelBundle mirrors and
        writes pred_label for every batch (ids_<i>, mask_<i> -> pred_<i>)
    python tests/tf218_runtime.py text EXPORT_DIR REQUESTS.json OUT.json
        runs the text signature (serving_default) on each request's texts and writes the
        outputs' rows as JSON
    python tests/tf218_runtime.py ops EXPORT_DIR
        prints every op type of the SavedModel's graph (functions included) and those TF 2.18
        does not register, as JSON
    python tests/tf218_runtime.py configs DOCKER_DIR
        parses models.config, batching_parameters.txt and monitoring_config.txt strictly (no
        unknown field) and prints, as JSON, which schema parsed which file

Only TensorFlow, numpy, protobuf and bert_ner/server/tfs_config_pb2.py (protobuf only) are
imported: nothing else of the project, whose dependencies this venv does not have.
"""

import json
import sys
from pathlib import Path

import numpy as np
from google.protobuf import text_format

# tensorflow-serving-api 2.18 carries ModelServerConfig but neither BatchingParameters
# (session_bundle_config.proto) nor MonitoringConfig (monitoring_config.proto): those come from
# bert_ner/server/tfs_config.proto, whose fields are TF Serving 2.18.0's
# (tests/test_tfs_config_proto.py).
# Its generated module needs protobuf only, and regen.sh writes gencode this venv's protobuf loads.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bert_ner.server import tfs_config_pb2  # noqa: E402


def packaged_schema(module, message):
  """The message class from tensorflow-serving-api's compiled protos, or None if it lacks it."""
  try:
    return getattr(__import__(module, fromlist=[message]), message)
  except ImportError:
    return None


def configs(docker_dir):
  """Parses the three config files strictly; returns {file: how it was parsed}."""
  from importlib.metadata import version

  package = f"tensorflow-serving-api {version('tensorflow-serving-api')}"
  schemas = {
    "models.config": ("tensorflow_serving.config.model_server_config_pb2", "ModelServerConfig"),
    "batching_parameters.txt": (
      "tensorflow_serving.servables.tensorflow.session_bundle_config_pb2",
      "BatchingParameters",
    ),
    "monitoring_config.txt": (
      "tensorflow_serving.config.monitoring_config_pb2",
      "MonitoringConfig",
    ),
  }
  report = {}
  for name, (module, message) in schemas.items():
    schema = packaged_schema(module, message)
    source = f"{package} {module}.{message}"
    if schema is None:
      schema = getattr(tfs_config_pb2, message)
      source = f"{message} declared in bert_ner/server/tfs_config.proto ({package} lacks {module})"
    with open(f"{docker_dir}/{name}", encoding="utf-8") as f:
      parsed = text_format.Parse(f.read(), schema())
    report[name] = {
      "schema": source,
      "fields": sorted(f.name for f, _ in parsed.ListFields()),
      "text": text_format.MessageToString(parsed, as_one_line=True),
    }
  return report


def predict(export_dir, batches_path, out_path):
  """pred_label of every batch in `batches_path`, from the SavedModel loaded by the TF1 loader."""
  import tensorflow as tf

  batches = np.load(batches_path)
  outputs = {}
  with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
    signature = meta.signature_def["result"]
    fetch = signature.outputs["pred_label"].name
    ids, mask = (signature.inputs[k].name for k in ("input_ids", "input_mask"))
    for i in range(len(batches.files) // 2):
      outputs[f"pred_{i}"] = sess.run(fetch, {ids: batches[f"ids_{i}"], mask: batches[f"mask_{i}"]})
  np.savez(out_path, **outputs)
  print(json.dumps({"tensorflow": tf.__version__, "batches": len(outputs)}))


def text(export_dir, requests_path, out_path):
  """The text signature's outputs for requests of texts (a JSON list of lists), one session call
  per request, as JSON lists: each output's rows, request after request."""
  import tensorflow as tf

  with open(requests_path, encoding="utf-8") as f:
    requests = json.load(f)
  rows = {}
  with tf.compat.v1.Session(graph=tf.Graph()) as sess:
    meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], export_dir)
    signature = meta.signature_def["serving_default"]
    for texts in requests:
      got = sess.run(
        {key: info.name for key, info in signature.outputs.items()},
        {signature.inputs["text"].name: [t.encode("utf-8") for t in texts]},
      )
      for key, value in got.items():
        if value.dtype == object:
          value = np.vectorize(lambda b: b.decode("utf-8"), otypes=[object])(value)
        rows.setdefault(key, []).extend(value.tolist())
  with open(out_path, "w", encoding="utf-8") as f:
    json.dump(rows, f)
  texts = [t for request in requests for t in request]
  print(json.dumps({"tensorflow": tf.__version__, "texts": len(texts)}))


def ops(export_dir):
  """{"ops": every op type in the graph and its functions, "unregistered": those TF lacks}."""
  import tensorflow as tf
  from tensorflow.core.protobuf import saved_model_pb2
  from tensorflow.python.framework import op_def_registry

  saved = saved_model_pb2.SavedModel()
  with open(f"{export_dir}/saved_model.pb", "rb") as f:
    saved.ParseFromString(f.read())
  found = set()
  for meta in saved.meta_graphs:
    found.update(node.op for node in meta.graph_def.node)
    for function in meta.graph_def.library.function:
      found.update(node.op for node in function.node_def)
  return {
    "tensorflow": tf.__version__,
    "ops": sorted(found),
    "unregistered": sorted(op for op in found if op_def_registry.get(op) is None),
  }


def main(argv):
  """Dispatches `predict` / `text` / `ops` / `configs`."""
  if argv[:1] == ["predict"] and len(argv) == 4:
    predict(*argv[1:])
  elif argv[:1] == ["text"] and len(argv) == 4:
    text(*argv[1:])
  elif argv[:1] == ["ops"] and len(argv) == 2:
    print(json.dumps(ops(argv[1])))
  elif argv[:1] == ["configs"] and len(argv) == 2:
    print(json.dumps(configs(argv[1])))
  else:
    sys.exit(__doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
