"""Runs under .venv-tf218 (TensorFlow 2.18, tensorflow-serving-api 2.18): the image's runtime view.

    python tests/tf218_runtime.py predict EXPORT_DIR BATCHES.npz OUT.npz
        loads the SavedModel through the TF1 loader TF Serving's SavedModelBundle mirrors and
        writes pred_label for every batch (ids_<i>, mask_<i> -> pred_<i>)
    python tests/tf218_runtime.py configs DOCKER_DIR
        parses models.config, batching_parameters.txt and monitoring_config.txt strictly (no
        unknown field) and prints, as JSON, which schema parsed which file

Only TensorFlow, numpy and protobuf are imported: nothing of the project, whose dependencies this
venv does not have.
"""

import json
import sys

import numpy as np
from google.protobuf import (
  descriptor_pb2,
  descriptor_pool,
  message_factory,
  text_format,
  wrappers_pb2,
)

# tensorflow-serving-api 2.18 carries ModelServerConfig but neither BatchingParameters
# (session_bundle_config.proto) nor MonitoringConfig (monitoring_config.proto). These are their
# fields in TF Serving 2.18.0, name and number and type as declared there (checked field by field
# against those .proto files compiled with protoc at tag 2.18.0): a field that 2.18 lacks fails
# the strict parse.
BATCHING_PARAMETERS_2_18 = [
  ("max_batch_size", 1, "Int64Value"),
  ("batch_timeout_micros", 2, "Int64Value"),
  ("max_enqueued_batches", 3, "Int64Value"),
  ("num_batch_threads", 4, "Int64Value"),
  ("thread_pool_name", 5, "StringValue"),
  ("allowed_batch_sizes", 6, "repeated int64"),
  ("pad_variable_length_inputs", 7, "bool"),
  ("enable_large_batch_splitting", 8, "BoolValue"),
  ("max_execution_batch_size", 9, "Int64Value"),
]
PROMETHEUS_CONFIG_2_18 = [("enable", 1, "bool"), ("path", 2, "string")]
MONITORING_CONFIG_2_18 = [("prometheus_config", 1, ".tensorflow.serving.PrometheusConfig")]

_SCALARS = {
  "bool": descriptor_pb2.FieldDescriptorProto.TYPE_BOOL,
  "string": descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
  "int64": descriptor_pb2.FieldDescriptorProto.TYPE_INT64,
}


def _add_message(file, name, fields):
  """Declares message `name` with (field, number, type) fields in `file`."""
  field_proto = descriptor_pb2.FieldDescriptorProto
  message = file.message_type.add(name=name)
  for field, number, kind in fields:
    label = field_proto.LABEL_OPTIONAL
    if kind.startswith("repeated "):
      label, kind = field_proto.LABEL_REPEATED, kind.split()[1]
    if kind in _SCALARS:
      message.field.add(name=field, number=number, type=_SCALARS[kind], label=label)
    else:
      type_name = kind if kind.startswith(".") else f".google.protobuf.{kind}"
      message.field.add(
        name=field, number=number, type=field_proto.TYPE_MESSAGE, type_name=type_name, label=label
      )


def declared_classes():
  """{message name: class} for the two TF Serving 2.18 messages the pip package lacks."""
  file = descriptor_pb2.FileDescriptorProto(
    name="tf218_runtime/serving_2_18.proto",
    package="tensorflow.serving",
    syntax="proto3",
    dependency=["google/protobuf/wrappers.proto"],
  )
  _add_message(file, "BatchingParameters", BATCHING_PARAMETERS_2_18)
  _add_message(file, "PrometheusConfig", PROMETHEUS_CONFIG_2_18)
  _add_message(file, "MonitoringConfig", MONITORING_CONFIG_2_18)
  pool = descriptor_pool.DescriptorPool()
  pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
  pool.Add(file)
  return {
    name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
    for name in ("BatchingParameters", "MonitoringConfig")
  }


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
  declared = declared_classes()
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
      schema = declared[message]
      source = f"{message} declared in tests/tf218_runtime.py ({package} lacks {module})"
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
    signature = meta.signature_def["serving_default"]
    fetch = signature.outputs["pred_label"].name
    ids, mask = (signature.inputs[k].name for k in ("input_ids", "input_mask"))
    for i in range(len(batches.files) // 2):
      outputs[f"pred_{i}"] = sess.run(fetch, {ids: batches[f"ids_{i}"], mask: batches[f"mask_{i}"]})
  np.savez(out_path, **outputs)
  print(json.dumps({"tensorflow": tf.__version__, "batches": len(outputs)}))


def main(argv):
  """Dispatches `predict` / `configs`."""
  if argv[:1] == ["predict"] and len(argv) == 4:
    predict(*argv[1:])
  elif argv[:1] == ["configs"] and len(argv) == 2:
    print(json.dumps(configs(argv[1])))
  else:
    sys.exit(__doc__)


if __name__ == "__main__":
  main(sys.argv[1:])
