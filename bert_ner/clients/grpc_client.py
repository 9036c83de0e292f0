"""Tags sentences with the served bert_ner model over gRPC (TF Serving PredictionService)."""

import ipaddress
import json
import math
import socket
import sys
from typing import Any

from bert_ner.clients.deps import imports_or_exit

with imports_or_exit(__name__):
  import grpc
  import numpy as np
  import numpy.typing as npt
  from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

  from bert_ner import model_base
  from bert_ner.clients import common
  from bert_ner.clients.tfs_protos import tfs_lite_pb2 as pb
  from bert_ner.featurizer import IntArray

PREDICT = "/tensorflow.serving.PredictionService/Predict"
GET_MODEL_METADATA = "/tensorflow.serving.PredictionService/GetModelMetadata"
# int32 values an output may declare: a tensor's element count is an int32 in TF; more is hostile.
MAX_OUTPUT_VALUES = 2**31 - 1
# gRPC's reconnect backoff grows to 120 s while the server is down: after a 70 s outage a client
# kept failing UNAVAILABLE for 40 s once the server was back. Retry the connection every <= 2 s;
# calls still fail fast while it is down.
# Several replicas (--server a:p,b:p or dns:///headless-service:p): round robin sends each call
# to the next ready replica (pick_first, gRPC's default, would send all to one), and a call that
# fails UNAVAILABLE (a replica gone before answering) is retried on another; predictions are
# idempotent.
SERVICE_CONFIG = {
  "loadBalancingConfig": [{"round_robin": {}}],
  "methodConfig": [
    {
      "name": [{"service": "tensorflow.serving.PredictionService"}],
      "retryPolicy": {
        "maxAttempts": 5,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
      },
    }
  ],
}
CHANNEL_OPTIONS = [
  ("grpc.max_reconnect_backoff_ms", 2000),
  ("grpc.enable_retries", 1),
  ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
]
TARGET_SCHEMES = ("dns", "ipv4", "ipv6")
TEXT_OUTPUT_DTYPES = {
  model_base.ENTITY_TYPE: pb.DT_STRING,
  model_base.ENTITY_TEXT: pb.DT_STRING,
  model_base.ENTITY_START: pb.DT_INT32,
  model_base.ENTITY_END: pb.DT_INT32,
  model_base.ENTITY_SCORE: pb.DT_FLOAT,
  model_base.NUM_ENTITIES: pb.DT_INT32,
}


def _address(target: str) -> tuple[int, str]:
  """(family, host:port with a literal address) of one host:port; a name is resolved once."""
  host, _, port = target.rpartition(":")
  host = host.strip("[]")
  try:
    address = ipaddress.ip_address(host)
  except ValueError:
    try:
      infos = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    except OSError as e:
      raise common.ClientError(f"cannot resolve {host!r}: {e}") from None
    address = min(
      (ipaddress.ip_address(info[4][0]) for info in infos), key=lambda a: a.version
    )  # IPv4 first, as for a single target
  text = f"[{address}]" if address.version == 6 else str(address)
  return address.version, f"{text}:{port}"


def channel_target(server: str) -> str:
  """gRPC target of --server: one host:port or scheme:///... as given; several host:port as one
  ipv4:/// (or ipv6:///) list that round robin spreads calls over."""
  scheme, targets = common.split_servers(server, TARGET_SCHEMES)
  if scheme is not None:
    return f"{scheme}:///{','.join(targets)}"
  if len(targets) == 1:
    return targets[0]
  resolved = [_address(target) for target in targets]
  families = {family for family, _ in resolved}
  if len(families) > 1:
    raise common.ClientError(f"server={server!r} mixes IPv4 and IPv6 addresses")
  return f"ipv{families.pop()}:///{','.join(address for _, address in resolved)}"


def make_tensor(array: npt.ArrayLike) -> Any:
  """int32 TensorProto of a numpy array."""
  array = np.asarray(array, dtype="<i4")
  shape = pb.TensorShapeProto(dim=[pb.TensorShapeProto.Dim(size=n) for n in array.shape])
  return pb.TensorProto(dtype=pb.DT_INT32, tensor_shape=shape, tensor_content=array.tobytes())


def make_text_tensor(texts: list[str]) -> Any:
  """string TensorProto [B] of texts, UTF-8."""
  shape = pb.TensorShapeProto(dim=[pb.TensorShapeProto.Dim(size=len(texts))])
  return pb.TensorProto(
    dtype=pb.DT_STRING, tensor_shape=shape, string_val=[t.encode("utf-8") for t in texts]
  )


# Output dtypes the clients read: (name, numpy dtype of tensor_content, typed value field).
_OUTPUT_DTYPES = {
  pb.DT_INT32: ("an int32", "<i4", "int_val"),
  pb.DT_FLOAT: ("a float", "<f4", "float_val"),
  pb.DT_STRING: ("a string", None, "string_val"),
}


def make_array(tensor: Any, dtype: int = pb.DT_INT32) -> npt.NDArray[Any]:
  """numpy array of an output TensorProto of `dtype` (int32, float or string), from
  tensor_content or the typed values, checked against its declared shape."""
  if tensor.dtype != dtype:
    name = (
      pb.DataType.Name(tensor.dtype)
      if tensor.dtype in pb.DataType.values()
      else f"dtype {tensor.dtype}"
    )
    raise common.ClientError(f"expected {_OUTPUT_DTYPES[dtype][0]} output, got {name}")
  _, content_dtype, field = _OUTPUT_DTYPES[dtype]
  shape = [d.size for d in tensor.tensor_shape.dim]
  if any(n < 0 for n in shape):
    raise common.ClientError(f"output tensor has a negative dimension: {shape}")
  # Python ints: numpy's int64 product of [2**32, 2**32] wraps to 0 and passed the size check.
  declared = math.prod(shape)
  if declared > MAX_OUTPUT_VALUES:
    raise common.ClientError(f"output tensor of shape {shape} declares {declared} values")
  if tensor.tensor_content and (content_dtype is None or len(tensor.tensor_content) % 4):
    raise common.ClientError(
      f"output tensor_content of {len(tensor.tensor_content)} bytes is not "
      f"{_OUTPUT_DTYPES[dtype][0].split()[1]} values"
    )
  values = (
    np.frombuffer(tensor.tensor_content, dtype=content_dtype)
    if tensor.tensor_content
    else np.asarray(
      getattr(tensor, field), dtype=object if content_dtype is None else content_dtype
    )
  )
  if values.size == 1 and not tensor.tensor_content:  # TF's one-value form of a filled tensor
    return np.broadcast_to(values, shape)
  if values.size != declared:
    raise common.ClientError(f"output tensor of shape {shape} holds {values.size} values")
  return values.reshape(shape)


def make_predict_request(
  model: str,
  signature: str,
  input_ids: npt.ArrayLike,
  input_mask: npt.ArrayLike,
  word_shape: npt.ArrayLike | None = None,
) -> Any:
  """PredictRequest for one padded batch (word_shape: only for a signature that takes it)."""
  inputs = {"input_ids": make_tensor(input_ids), "input_mask": make_tensor(input_mask)}
  if word_shape is not None:
    inputs[model_base.WORD_SHAPE] = make_tensor(word_shape)
  return pb.PredictRequest(
    model_spec=pb.ModelSpec(name=model, signature_name=signature), inputs=inputs
  )


def output_names(response: Any) -> dict[str, list[str]]:
  """Output tensor names per signature of a GetModelMetadataResponse."""
  if "signature_def" not in response.metadata:
    raise common.ClientError("model metadata has no signature_def")
  try:
    signature_map = pb.SignatureDefMap.FromString(response.metadata["signature_def"].value)
  except DecodeError:
    raise common.ClientError("model metadata's signature_def is not a SignatureDefMap") from None
  signatures = signature_map.signature_def
  return {name: [info.name for info in sig.outputs.values()] for name, sig in signatures.items()}


class GrpcNerClient(common.NerClient):
  """bert_ner client over TensorFlow Serving's gRPC API."""

  def connect(self) -> None:
    """Opens the channel (several targets: round robin over them)."""
    self._channel = channel = grpc.insecure_channel(
      channel_target(self.server), options=CHANNEL_OPTIONS
    )
    self._predict = channel.unary_unary(
      PREDICT,
      request_serializer=pb.PredictRequest.SerializeToString,
      response_deserializer=pb.PredictResponse.FromString,
    )
    self._metadata = channel.unary_unary(
      GET_MODEL_METADATA,
      request_serializer=pb.GetModelMetadataRequest.SerializeToString,
      response_deserializer=pb.GetModelMetadataResponse.FromString,
    )

  def close(self) -> None:
    """Closes the channel and its connections."""
    self._channel.close()

  def run(
    self, input_ids: IntArray, input_mask: IntArray, word_shape: IntArray | None = None
  ) -> IntArray:
    """pred_label [B, T] for one padded batch; word_shape goes along when the served model
    takes it (`request_signature`)."""
    signature = self.request_signature(word_shape)
    shapes = word_shape if signature == self.shape_signature else None
    request = make_predict_request(self.model, signature, input_ids, input_mask, shapes)
    response = self._call(self._predict, request)
    if model_base.OUTPUT not in response.outputs:
      raise common.ClientError(f"response has no {model_base.OUTPUT!r} output")
    return self.checked_labels(make_array(response.outputs[model_base.OUTPUT]), input_ids)

  def run_text(self, texts: list[str]) -> dict[str, npt.NDArray[Any]]:
    """The text signature's outputs for a batch of texts."""
    request = pb.PredictRequest(
      model_spec=pb.ModelSpec(name=self.model, signature_name=self.signature),
      inputs={model_base.TEXT: make_text_tensor(texts)},
    )
    response = self._call(self._predict, request)
    return {
      key: make_array(response.outputs[key], TEXT_OUTPUT_DTYPES[key])
      for key in model_base.TEXT_OUTPUTS
      if key in response.outputs
    }

  def output_names(self) -> dict[str, list[str]]:
    """Output tensor names per signature, from GetModelMetadata."""
    request = pb.GetModelMetadataRequest(
      model_spec=pb.ModelSpec(name=self.model), metadata_field=["signature_def"]
    )
    return output_names(self._call(self._metadata, request))

  def _call(self, method: Any, request: Any) -> Any:
    try:
      return method(request, timeout=self.timeout)
    except grpc.RpcError as e:
      raise self.error(e.code().name, e.details()) from None


def main() -> int:
  """The command line (`bert-ner-grpc`, `python clients/grpc_client.py`): exit status 0, 1 or 2."""
  return common.main(GrpcNerClient, __doc__, "localhost:8500")


if __name__ == "__main__":
  sys.exit(main())
