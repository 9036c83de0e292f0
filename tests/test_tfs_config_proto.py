"""bert_ner/server/tfs_config.proto declares TF Serving 2.18.0's BatchingParameters and
MonitoringConfig.

TF_SERVING_2_18 holds those messages' fields as TF Serving 2.18.0 declares them, read once from its
session_bundle_config.proto and monitoring_config.proto at tag 2.18.0. The embedded server's
reading of --batching_parameters_file and --monitoring_config_file, and the strict parse of the
image's config files under TF 2.18 (tests/test_tf218_runtime.py), stand for TF Serving's only while
the generated messages have exactly these fields: one TF Serving lacks would let a config file
pass here that the image refuses at start-up.
"""

from google.protobuf.descriptor import FieldDescriptor

from bert_ner.server import tfs_config_pb2

TF_SERVING_2_18 = {
  "BatchingParameters": [
    ("max_batch_size", 1, "google.protobuf.Int64Value"),
    ("batch_timeout_micros", 2, "google.protobuf.Int64Value"),
    ("max_enqueued_batches", 3, "google.protobuf.Int64Value"),
    ("num_batch_threads", 4, "google.protobuf.Int64Value"),
    ("thread_pool_name", 5, "google.protobuf.StringValue"),
    ("allowed_batch_sizes", 6, "repeated int64"),
    ("pad_variable_length_inputs", 7, "bool"),
    ("enable_large_batch_splitting", 8, "google.protobuf.BoolValue"),
    ("max_execution_batch_size", 9, "google.protobuf.Int64Value"),
  ],
  "PrometheusConfig": [("enable", 1, "bool"), ("path", 2, "string")],
  "MonitoringConfig": [("prometheus_config", 1, "tensorflow.serving.PrometheusConfig")],
}
SCALARS = {
  FieldDescriptor.TYPE_BOOL: "bool",
  FieldDescriptor.TYPE_STRING: "string",
  FieldDescriptor.TYPE_INT64: "int64",
}


def declared_type(field):
  """A field's type as a .proto spells it: a scalar or a message's full name, maybe repeated."""
  kind = field.message_type.full_name if field.message_type else SCALARS[field.type]
  return f"repeated {kind}" if field.is_repeated else kind


def test_the_messages_have_tf_serving_2_18_fields_and_no_other():
  assert tfs_config_pb2.DESCRIPTOR.package == "tensorflow.serving"
  messages = tfs_config_pb2.DESCRIPTOR.message_types_by_name
  assert sorted(messages) == sorted(TF_SERVING_2_18)
  for name, fields in TF_SERVING_2_18.items():
    declared = [(f.name, f.number, declared_type(f)) for f in messages[name].fields]
    assert sorted(declared) == sorted(fields), name
