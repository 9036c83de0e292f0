"""Wire compatibility of the lite TF Serving protos (bert_ner/clients/tfs_protos) with the real
ones."""

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import any_pb2, wrappers_pb2
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tensorflow.core.protobuf import meta_graph_pb2
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2, predict_pb2

from bert_ner.clients import common, grpc_client
from bert_ner.clients.tfs_protos import tfs_lite_pb2 as lite

IDS = np.array([[101, 7327, 102, 0], [101, 2446, 2655, 102]], np.int32)
MASK = (IDS != 0).astype(np.int32)
OUTPUT_NAME = "ner_0123456789abcdef/pred_label:0"
SIGNATURE_DEF_MAP_URL = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
REAL = {
  lite.TensorShapeProto: tensor_shape_pb2.TensorShapeProto,
  lite.TensorProto: tensor_pb2.TensorProto,
  lite.ModelSpec: model_pb2.ModelSpec,
  lite.PredictRequest: predict_pb2.PredictRequest,
  lite.PredictResponse: predict_pb2.PredictResponse,
  lite.TensorInfo: meta_graph_pb2.TensorInfo,
  lite.SignatureDef: meta_graph_pb2.SignatureDef,
  lite.SignatureDefMap: get_model_metadata_pb2.SignatureDefMap,
  lite.GetModelMetadataRequest: get_model_metadata_pb2.GetModelMetadataRequest,
  lite.GetModelMetadataResponse: get_model_metadata_pb2.GetModelMetadataResponse,
}


def assert_same_fields(lite_descriptor, real_descriptor):
  """Every lite field exists in the real message with the same number, name, type and label."""
  for field in lite_descriptor.fields:
    real = real_descriptor.fields_by_number[field.number]
    assert (field.name, field.type, field.is_repeated) == (real.name, real.type, real.is_repeated)
    if field.message_type is None:
      continue
    if field.message_type.full_name.startswith("google.protobuf."):  # Any, Int64Value
      assert field.message_type.full_name == real.message_type.full_name
    else:  # a lite message or a map entry
      assert_same_fields(field.message_type, real.message_type)


@pytest.mark.parametrize("lite_class", list(REAL), ids=lambda c: c.DESCRIPTOR.name)
def test_field_numbers_and_types_match(lite_class):
  assert_same_fields(lite_class.DESCRIPTOR, REAL[lite_class].DESCRIPTOR)


def test_lite_protos_live_beside_the_real_ones():
  assert lite.DESCRIPTOR.package == "bertner.tfs"
  assert lite.DESCRIPTOR.name not in {m.DESCRIPTOR.file.name for m in REAL.values()}
  assert {name: types_pb2.DataType.Value(name) for name in lite.DataType.keys()} == dict(
    lite.DataType.items()
  )


def test_predict_request_lite_to_real():
  request = grpc_client.make_predict_request("bert_ner", "result", IDS, MASK)
  request.model_spec.version.value = 3
  request.output_filter.append("pred_label")
  real = predict_pb2.PredictRequest.FromString(request.SerializeToString())
  assert (real.model_spec.name, real.model_spec.signature_name) == ("bert_ner", "result")
  assert real.model_spec.version.value == 3 and list(real.output_filter) == ["pred_label"]
  assert real.inputs["input_ids"].dtype == types_pb2.DT_INT32
  np.testing.assert_array_equal(tf.make_ndarray(real.inputs["input_ids"]), IDS)
  np.testing.assert_array_equal(tf.make_ndarray(real.inputs["input_mask"]), MASK)


@pytest.mark.parametrize("encoding", ["tensor_content", "int_val"])
def test_predict_request_real_to_lite(encoding):
  real = predict_pb2.PredictRequest(
    model_spec=model_pb2.ModelSpec(name="bert_ner", signature_name="result", version_label="stable")
  )
  if encoding == "tensor_content":
    real.inputs["input_ids"].CopyFrom(tf.make_tensor_proto(IDS))
  else:
    real.inputs["input_ids"].CopyFrom(
      tensor_pb2.TensorProto(
        dtype=types_pb2.DT_INT32,
        int_val=IDS.ravel().tolist(),
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
          dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in IDS.shape]
        ),
      )
    )
  request = lite.PredictRequest.FromString(real.SerializeToString())
  assert (request.model_spec.name, request.model_spec.version_label) == ("bert_ner", "stable")
  assert request.model_spec.WhichOneof("version_choice") == "version_label"
  np.testing.assert_array_equal(grpc_client.make_array(request.inputs["input_ids"]), IDS)


def test_predict_response_both_ways():
  real = predict_pb2.PredictResponse(
    model_spec=model_pb2.ModelSpec(
      name="bert_ner", signature_name="result", version=wrappers_pb2.Int64Value(value=7)
    )
  )
  real.outputs["pred_label"].CopyFrom(tf.make_tensor_proto(IDS % 12))
  response = lite.PredictResponse.FromString(real.SerializeToString())
  assert response.model_spec.version.value == 7
  np.testing.assert_array_equal(grpc_client.make_array(response.outputs["pred_label"]), IDS % 12)

  back = predict_pb2.PredictResponse.FromString(response.SerializeToString())
  assert back == real
  response.outputs["pred_label"].CopyFrom(grpc_client.make_tensor(MASK))
  again = predict_pb2.PredictResponse.FromString(response.SerializeToString())
  np.testing.assert_array_equal(tf.make_ndarray(again.outputs["pred_label"]), MASK)


def test_make_array_reads_a_single_int_val_as_a_fill_and_refuses_other_dtypes():
  fill = lite.TensorProto(
    dtype=lite.DT_INT32,
    int_val=[4],
    tensor_shape=lite.TensorShapeProto(
      dim=[lite.TensorShapeProto.Dim(size=2), lite.TensorShapeProto.Dim(size=3)]
    ),
  )
  np.testing.assert_array_equal(grpc_client.make_array(fill), np.full((2, 3), 4))
  with pytest.raises(common.ClientError, match="DT_FLOAT"):
    grpc_client.make_array(
      lite.TensorProto.FromString(tf.make_tensor_proto(np.zeros(3, np.float32)).SerializeToString())
    )


def real_signature_def_map():
  """What TF Serving packs into GetModelMetadataResponse.metadata["signature_def"]."""
  shape = tensor_shape_pb2.TensorShapeProto(
    dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=-1)] * 2
  )
  signature = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
  for key in ("input_ids", "input_mask"):
    signature.inputs[key].CopyFrom(
      meta_graph_pb2.TensorInfo(name=f"{key}:0", dtype=types_pb2.DT_INT32, tensor_shape=shape)
    )
  signature.outputs["pred_label"].CopyFrom(
    meta_graph_pb2.TensorInfo(name=OUTPUT_NAME, dtype=types_pb2.DT_INT32, tensor_shape=shape)
  )
  signatures = get_model_metadata_pb2.SignatureDefMap()
  signatures.signature_def["result"].CopyFrom(signature)
  signatures.signature_def["serving_default"].CopyFrom(signature)
  return signatures


def test_metadata_real_to_lite():
  real = get_model_metadata_pb2.GetModelMetadataResponse(
    model_spec=model_pb2.ModelSpec(name="bert_ner", version=wrappers_pb2.Int64Value(value=2))
  )
  real.metadata["signature_def"].Pack(real_signature_def_map())
  response = lite.GetModelMetadataResponse.FromString(real.SerializeToString())
  assert response.metadata["signature_def"].type_url == SIGNATURE_DEF_MAP_URL
  assert grpc_client.output_names(response) == {
    "result": [OUTPUT_NAME],
    "serving_default": [OUTPUT_NAME],
  }
  signature = lite.SignatureDefMap.FromString(
    response.metadata["signature_def"].value
  ).signature_def["result"]
  assert signature.method_name == "tensorflow/serving/predict"
  assert signature.inputs["input_mask"].name == "input_mask:0"
  assert signature.outputs["pred_label"].dtype == lite.DT_INT32
  assert [d.size for d in signature.outputs["pred_label"].tensor_shape.dim] == [-1, -1]


def test_metadata_lite_to_real():
  lite_map = lite.SignatureDefMap.FromString(real_signature_def_map().SerializeToString())
  response = lite.GetModelMetadataResponse(model_spec=lite.ModelSpec(name="bert_ner"))
  response.metadata["signature_def"].CopyFrom(
    any_pb2.Any(type_url=SIGNATURE_DEF_MAP_URL, value=lite_map.SerializeToString())
  )
  real = get_model_metadata_pb2.GetModelMetadataResponse.FromString(response.SerializeToString())
  signatures = get_model_metadata_pb2.SignatureDefMap()
  assert real.metadata["signature_def"].Unpack(signatures)
  assert signatures == real_signature_def_map()
  assert real.model_spec.name == "bert_ner"


def test_metadata_request_both_ways():
  request = lite.GetModelMetadataRequest(
    model_spec=lite.ModelSpec(name="bert_ner"), metadata_field=["signature_def"]
  )
  real = get_model_metadata_pb2.GetModelMetadataRequest.FromString(request.SerializeToString())
  assert real.model_spec.name == "bert_ner" and list(real.metadata_field) == ["signature_def"]
  assert lite.GetModelMetadataRequest.FromString(real.SerializeToString()) == request
