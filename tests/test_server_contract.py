"""The embedded server's pure contract parts against TF Serving 2.18's rules: REST routes, config
files, version folder names, JSON bodies and TensorProto decoding (no server process)."""

import gzip

import grpc
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2

from bert_ner import model_base
from bert_ner.server import config
from bert_ner.server.__main__ import parse_flags
from bert_ner.server.errors import ServingError
from bert_ner.server.rest import _gunzip, _signature_name, parse_json, parse_route
from bert_ner.server.tensors import from_json, from_proto


def _error(call, *args):
  """The ServingError a call raises: (code, message)."""
  with pytest.raises(ServingError) as info:
    call(*args)
  return info.value.code, info.value.message


@pytest.mark.parametrize(
  "method, path, action, name, version, label",
  [
    ("POST", "/v1/models/bert_ner:predict", "predict", "bert_ner", None, ""),
    ("POST", "/V1/MODELS/bert_ner/VERSIONS/3:predict", "predict", "bert_ner", 3, ""),
    ("POST", "/v1/models/bert_ner/labels/canary:predict", "predict", "bert_ner", None, "canary"),
    ("POST", "/v1/models/bert_ner:classify", "classify", "bert_ner", None, ""),
    ("POST", "/v1/models/bert_ner:regress", "regress", "bert_ner", None, ""),
    ("POST", "/v1/models/b%65rt:predict", "predict", "bert", None, ""),
    ("GET", "/v1/models/bert_ner", "status", "bert_ner", None, ""),
    ("GET", "/v1/models/bert_ner/versions/1/metadata", "metadata", "bert_ner", 1, ""),
    ("GET", "/v1/models/bert_ner/labels/stable/metadata", "metadata", "bert_ner", None, "stable"),
    # libevent passes the query on: it becomes part of the model name (then 404 for the name).
    ("GET", "/v1/models/bert_ner?x=1", "status", "bert_ner?x=1", None, ""),
    # (?i) matches /METADATA but ProcessRequest compares "metadata" exactly: a status request.
    ("GET", "/v1/models/bert_ner/METADATA", "status", "bert_ner", None, ""),
  ],
)
def test_routes_match_tf_serving_regexes(method, path, action, name, version, label):
  got, spec = parse_route(method, path)
  assert (got, spec.name, spec.version_label) == (action, name, label)
  assert (spec.version.value if spec.HasField("version") else None) == version


@pytest.mark.parametrize(
  "method, path, message",
  [
    ("GET", "/v1/models/bert_ner:predict", "Malformed request: GET /v1/models/bert_ner:predict"),
    ("PUT", "/v1/models/bert_ner:predict", "Malformed request: PUT /v1/models/bert_ner:predict"),
    ("POST", "/v1/models/bert_ner:PREDICT", "Malformed request: POST /v1/models/bert_ner:PREDICT"),
    ("POST", "/v1/models/bert_ner", "Malformed request: POST /v1/models/bert_ner"),
    ("GET", "/v1/models/bert_ner/?x=1", "Malformed request: GET /v1/models/bert_ner/?x=1"),
    ("GET", "/v1/nothing", "Malformed request: GET /v1/nothing"),
    ("GET", "/v1/models", "Missing model name in request."),
    (
      "GET",
      "/v1/models/m/versions/99999999999999999999",
      "Failed to convert version: 99999999999999999999 to numeric.",
    ),
  ],
)
def test_unmatched_routes_are_tf_serving_400s(method, path, message):
  assert _error(parse_route, method, path) == (grpc.StatusCode.INVALID_ARGUMENT, message)


@pytest.mark.parametrize(
  "name, version",
  [
    ("1", 1),
    ("007", 7),
    (" 12 ", 12),
    ("-3", -3),
    (str(2**63 - 1), 2**63 - 1),
    (str(2**63), None),
    ("99999999999999999999", None),
    ("\u00b2", None),
    ("\u0663", None),
    ("+3", None),
    ("1.0", None),
    ("", None),
    ("v1", None),
    (".tmp-3-42", None),
    ("1 2", None),
  ],
)
def test_version_folder_names_parse_as_safe_strto64(name, version):
  assert model_base.parse_version(name) == version


def test_duplicate_version_folders_keep_the_last_listed():
  assert model_base.version_names(["007", "7", "x", "3"]) == {7: "7", 3: "3"}


@pytest.mark.parametrize(
  "text, on_disk, aspired",
  [
    ("", {1, 2, 3}, {3}),
    ("latest { num_versions: 2 }", {1, 2, 3}, {2, 3}),
    ("specific { versions: 1 versions: 5 }", {1, 2, 3}, {1}),
    ("all {}", {1, 2, 3}, {1, 2, 3}),
  ],
)
def test_version_policies(text, on_disk, aspired):
  from google.protobuf import text_format
  from tensorflow_serving.config import file_system_storage_path_source_pb2 as fs

  policy = text_format.Parse(text, fs.FileSystemStoragePathSourceConfig.ServableVersionPolicy())
  assert config.VersionPolicy.from_proto(policy).aspired(on_disk) == aspired


MODELS_CONFIG = """
model_config_list {
  config {
    name: "bert_ner"
    base_path: "/models/bert_ner"
    model_platform: "tensorflow"
    model_version_policy { specific { versions: 1 versions: 2 } }
    version_labels { key: "stable" value: 1 }
    version_labels { key: "canary" value: 2 }
  }
  config { name: "other" base_path: "/models/other" model_platform: "tensorflow" }
}
"""


def test_model_config_file_parses_with_tf_serving_proto(tmp_path):
  path = tmp_path / "models.config"
  path.write_text(MODELS_CONFIG)
  parsed = config.read_model_server_config(path)
  config.validate(parsed)
  first, second = parsed.model_config_list.config
  assert dict(first.version_labels) == {"stable": 1, "canary": 2}
  assert config.VersionPolicy.from_proto(first.model_version_policy).versions == {1, 2}
  assert second.name == "other"


def test_bad_config_files_are_one_line_errors(tmp_path):
  path = tmp_path / "models.config"
  path.write_text("model_config_list { config { nme: 'x' } }")
  with pytest.raises(config.ConfigError, match="models.config is not a text ModelServerConfig"):
    config.read_model_server_config(path)
  with pytest.raises(config.ConfigError, match="cannot read"):
    config.read_model_server_config(tmp_path / "missing")


@pytest.mark.parametrize(
  "text, code, message",
  [
    (
      'config { name: "a" base_path: "/a" model_platform: "tensorflow" } '
      'config { name: "a" base_path: "/b" model_platform: "tensorflow" }',
      grpc.StatusCode.INVALID_ARGUMENT,
      "Illegal to list model a multiple times in config list",
    ),
    (
      'config { name: "a" base_path: "/a" }',
      grpc.StatusCode.INVALID_ARGUMENT,
      "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
      "ModelServerConfig::model_platform, model name is a",
    ),
    (
      'config { name: "a" base_path: "/a" model_platform: "onnx" }',
      grpc.StatusCode.FAILED_PRECONDITION,
      "PlatformConfigMap has no entry for platform onnx",
    ),
  ],
)
def test_config_validation_matches_server_core(text, code, message):
  from google.protobuf import text_format

  parsed = text_format.Parse("model_config_list { %s }" % text, config.ModelServerConfig())
  assert _error(config.validate, parsed) == (code, message)


def test_monitoring_config_reads_the_image_file():
  from server_fixtures import REPO

  monitoring = config.read_monitoring_config(REPO / "docker/monitoring_config.txt")
  assert config.prometheus_path(monitoring) == "/monitoring/prometheus/metrics"
  assert config.prometheus_path(None) is None
  assert config.prometheus_path(config.MonitoringConfig()) is None


def test_json_bodies_parse_as_rapidjson():
  assert parse_json(b'{"a": 1, "a": 2}') == {"a": 1}  # FindMember: the first key wins
  assert parse_json(b'\xef\xbb\xbf{"a": 1} trailing') == {"a": 1}  # BOM skipped, rest ignored
  assert _error(parse_json, b"") == (
    grpc.StatusCode.INVALID_ARGUMENT,
    "JSON Parse error: The document is empty",
  )
  code, message = _error(parse_json, '{"a": 1}'.encode("utf-16"))
  assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("JSON Parse error")
  assert _error(parse_json, b"[1]")[1] == "JSON Value: [1] Is not object"


def test_gzip_bodies_uncompress_or_become_empty():
  assert _gunzip(gzip.compress(b'{"a": 1}'), 100) == b'{"a": 1}'
  assert _gunzip(b'{"a": 1}', 100) == b""  # not gzip: TF Serving reads no body
  with pytest.raises(ServingError) as info:
    _gunzip(gzip.compress(b"0" * 1000), 100)
  assert info.value.http_status == 413


@pytest.mark.parametrize(
  "value, message",
  [
    ([101, True, 102], "JSON Value: true Type: True is not of expected type: int32"),
    ([101, 2**63], "JSON Value: 9223372036854775808 Type: Number is not of expected type: int32"),
    ([101, 1.0], "JSON Value: 1.0 Type: Number is not of expected type: int32"),
    ([[1, 2], [3]], "Encountered list at unexpected size: 1 at level: 1 expected size: 2"),
    (
      [[1, 2], 3],
      "JSON Value: 3 found at incorrect level: 2 in the JSON DOM. Expected at level: 2",
    ),
    ([1, [2]], "Encountered list at unexpected level: 1 expected < 1"),
  ],
)
def test_json_values_are_checked_as_json_tensor_cc(value, message):
  assert _error(from_json, value, tf.int32, "input_ids") == (
    grpc.StatusCode.INVALID_ARGUMENT,
    message,
  )


def test_json_int64_and_float_accept_what_rapidjson_accepts():
  assert from_json([2**63 - 1], tf.int64, "x").tolist() == [2**63 - 1]
  assert from_json([1, 2.5], tf.float32, "x").tolist() == [1.0, 2.5]
  assert from_json([[1, 2], [3, 4]], tf.int32, "x").shape == (2, 2)


def _proto(dims, values=(), dtype=tf.int32.as_datatype_enum, content=b""):
  """A TensorProto with the given dims, int_val and tensor_content."""
  shape = tensor_shape_pb2.TensorShapeProto(dim=[{"size": d} for d in dims])
  return tensor_pb2.TensorProto(
    dtype=dtype, tensor_shape=shape, int_val=values, tensor_content=content
  )


def test_proto_values_fill_as_tensor_from_proto():
  # Measured with tf.io.parse_tensor (TensorFlow's Tensor::FromProto): the last value repeats,
  # no value means zeros, extra values are cut.
  assert from_proto(_proto([1, 5], [7]), tf.int32, "x").tolist() == [[7] * 5]
  assert from_proto(_proto([1, 5], [7, 8]), tf.int32, "x").tolist() == [[7, 8, 8, 8, 8]]
  assert from_proto(_proto([1, 3]), tf.int32, "x").tolist() == [[0, 0, 0]]
  assert from_proto(_proto([1, 2], [1, 2, 3, 4]), tf.int32, "x").tolist() == [[1, 2]]


def test_zero_element_shapes_cost_nothing():
  array = from_proto(_proto([2**31, 0]), tf.int32, "x")
  assert array.shape == (2**31, 0) and array.nbytes == 0


@pytest.mark.parametrize(
  "proto",
  [
    _proto([1, 2], [1, 2], dtype=9999),
    _proto([1, 2], [1, 2], dtype=0),
    _proto([-1, 2], [1]),
    _proto([2**62, 4, 0]),
    _proto([1, 3], content=b"\x01\x00\x00\x00"),
  ],
  ids=["dtype 9999", "DT_INVALID", "negative dim", "overflowing dims", "short content"],
)
def test_unparsable_protos_are_tensor_parsing_errors(proto):
  assert _error(from_proto, proto, tf.int32, "input_ids") == (
    grpc.StatusCode.INVALID_ARGUMENT,
    "tensor parsing error: input_ids",
  )


def test_declared_elements_are_bounded_before_allocation():
  code, message = _error(from_proto, _proto([64, 2**40], [1]), tf.int32, "input_ids")
  assert code == grpc.StatusCode.INVALID_ARGUMENT and "at most" in message


def test_wrong_dtype_is_the_session_message():
  proto = _proto([1, 1], dtype=tf.int64.as_datatype_enum)
  assert _error(from_proto, proto, tf.int32, "input_ids")[1] == (
    "Expects arg[input_ids] to be int32 but int64 is provided"
  )


def test_tensor_content_decodes():
  content = np.array([[1, 2, 3]], dtype=np.int32).tobytes()
  assert from_proto(_proto([1, 3], content=content), tf.int32, "x").tolist() == [[1, 2, 3]]


def test_a_signature_name_that_is_not_a_string_is_refused_as_tf_serving_does():
  assert _signature_name({}) == ""
  assert _signature_name({"signature_name": "result"}) == "result"
  assert _error(_signature_name, {"signature_name": 3}) == (
    grpc.StatusCode.INVALID_ARGUMENT,
    'JSON Value: {"signature_name": 3} not formatted correctly. '
    "'signature_name' key must be a string value.",
  )


@pytest.mark.parametrize(
  "argv, message",
  [
    ("--port 70000", "--port 70000 is not a TCP port (0-65535)"),
    ("--max_batch_size 0", "--max_batch_size must be at least 1, got 0"),
    ("--rest_api_timeout_in_ms -3", "--rest_api_timeout_in_ms must be at least 1, got -3"),
    ("--batch_timeout_micros -1", "--batch_timeout_micros must not be negative, got -1"),
    (
      "--max_request_bytes 0 --tensorflow_inter_op_parallelism -1",
      "--max_request_bytes must be at least 1, got 0",
    ),
  ],
)
def test_out_of_range_flags_are_one_line_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    parse_flags(argv.split())
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == f"python -m bert_ner.server: error: {message}\n"


def test_unset_batching_flags_and_zero_waits_are_accepted():
  flags = parse_flags(["--batch_timeout_micros", "0", "--file_system_poll_wait_seconds", "0"])
  assert flags.max_batch_size is None and flags.batch_timeout_micros == 0
