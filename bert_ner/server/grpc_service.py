"""TF Serving's gRPC PredictionService and ModelService.

Predict and GetModelMetadata run; Classify, Regress and MultiInference check their request and
the signature as TF Serving 2.18 does (a predict signature such as ours fails there with TF
Serving's INVALID_ARGUMENT); HandleReloadConfigRequest applies a ModelConfigList.
"""

import inspect
import logging

import grpc
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]
from tensorflow_serving.apis import (
  model_management_pb2,
  model_service_pb2_grpc,
  predict_pb2,
  prediction_service_pb2_grpc,
)

from bert_ner import model_base
from bert_ner.server.errors import ServingError, invalid
from bert_ner.server.tensors import to_proto

SIGNATURE_DEF = "signature_def"
_EXAMPLE_INPUT = "inputs"  # kClassifyInputs / kRegressInputs
_EXAMPLE_OUTPUTS = {"classify": ("classes", "scores"), "regress": ("outputs",)}


def check_example_signature(signature_defs, name, method):
  """Checks a Classify/Regress signature as classifier.cc / regressor.cc PreProcess* do; the
  embedded server has no Example parser, so a signature that passes is UNIMPLEMENTED here."""
  key = name or model_base.DEFAULT_SIGNATURE
  if key not in signature_defs:
    raise invalid(f"No signature was found with the name: {key}")
  signature = signature_defs[key]
  if len(signature.inputs) != 1:
    raise invalid("Expected one input Tensor.")
  outputs = len(signature.outputs)
  if method == "classify" and outputs not in (1, 2):
    raise invalid(f"Expected one or two output Tensors, found {outputs}")
  if method == "regress" and outputs != 1:
    raise invalid("Expected one output Tensor.")
  if _EXAMPLE_INPUT not in signature.inputs:
    kind = "classification" if method == "classify" else "regression"
    raise invalid(f"No {kind} inputs found in SignatureDef: {signature}")
  raise ServingError(
    grpc.StatusCode.UNIMPLEMENTED,
    f"the embedded server runs predict signatures only; {method} needs tensorflow_model_server",
  )


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict and GetModelMetadata; Classify, Regress and MultiInference stay UNIMPLEMENTED."""

  def __init__(self, models, metrics):
    self._models = models
    self._metrics = metrics

  async def Predict(self, request, context):
    """Validates, batches and runs one PredictRequest; honours output_filter."""
    try:
      with self._metrics.track(
        self._models.metric_label(request.model_spec.name), "predict", "GRPC"
      ):
        if not request.HasField("model_spec"):
          raise invalid("Missing ModelSpec")
        with self._models.acquire(request.model_spec) as servable:
          signature = servable.signature(request.model_spec.signature_name)
          aliases = _output_filter(request.output_filter, signature)
          outputs = await servable.predict(
            signature,
            signature.decode(request.inputs, servable.check_shapes),
            context.time_remaining(),
          )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.key
        for alias in aliases:
          response.outputs[alias].CopyFrom(to_proto(outputs[alias]))
        return response
    except ServingError as error:
      await context.abort(error.code, error.message)

  async def Classify(self, request, context):
    """ClassificationRequest: TF Serving's checks, then UNIMPLEMENTED (no Example parser)."""
    await self._examples(request, context, "classify")

  async def Regress(self, request, context):
    """RegressionRequest: TF Serving's checks, then UNIMPLEMENTED (no Example parser)."""
    await self._examples(request, context, "regress")

  async def _examples(self, request, context, method):
    """Classify/Regress: model spec, servable and signature checked in TF Serving's order."""
    try:
      with self._metrics.track(self._models.metric_label(request.model_spec.name), method, "GRPC"):
        if not request.HasField("model_spec"):
          raise invalid("Missing ModelSpec")
        with self._models.acquire(request.model_spec) as servable:
          check_example_signature(
            servable.signature_defs, request.model_spec.signature_name, method
          )
    except ServingError as error:
      await context.abort(error.code, error.message)

  async def MultiInference(self, request, context):
    """MultiInferenceRequest, checked task by task as multi_inference.cc does."""
    try:
      spec = request.tasks[0].model_spec if request.tasks else None
      with self._metrics.track(
        self._models.metric_label(spec.name if spec else ""), "multi_inference", "GRPC"
      ):
        if spec is None:
          raise invalid("ModelSpec has no name specified.")
        with self._models.acquire(spec) as servable:
          _check_tasks(request.tasks, servable.signature_defs)
    except ServingError as error:
      await context.abort(error.code, error.message)

  async def GetModelMetadata(self, request, context):
    """The served version's SignatureDefMap under metadata["signature_def"]."""
    try:
      if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
      if not request.metadata_field:  # get_model_metadata_impl.cc
        raise invalid("GetModelMetadataRequest must specify at least one metadata_field")
      for field in request.metadata_field:
        if field != SIGNATURE_DEF:
          raise invalid(f"Metadata field {field} is not supported")
      with self._models.acquire(request.model_spec) as servable:
        return servable.metadata()
    except ServingError as error:
      await context.abort(error.code, error.message)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus and HandleReloadConfigRequest (when reload_api)."""

  def __init__(self, models, reload_api=True):
    self._models = models
    self._reload_api = reload_api

  async def GetModelStatus(self, request, context):
    """Every version's state, or the requested version's."""
    try:
      if not request.HasField("model_spec"):
        raise invalid("Missing ModelSpec")
      return self._models.status(request.model_spec)
    except ServingError as error:
      await context.abort(error.code, error.message)

  async def HandleReloadConfigRequest(self, request, context):
    """Applies a ModelConfigList (model_service_impl.cc); the status goes in the response and
    in the call's code."""
    response = model_management_pb2.ReloadConfigResponse()
    try:
      if not self._reload_api:  # it loads (and runs) whatever SavedModel path a caller names
        raise ServingError(
          grpc.StatusCode.UNIMPLEMENTED,
          "HandleReloadConfigRequest is turned off: start the server with "
          "--enable_model_reload_api=true (the default with --model_config_file)",
        )
      if request.config.WhichOneof("config") != "model_config_list":
        raise invalid(
          "ServerModelConfig type not supported by HandleReloadConfigRequest. "
          "Only ModelConfigList is currently supported"
        )
      unavailable = await self._models.reload(request.config)
      if unavailable:
        raise ServingError(
          grpc.StatusCode.UNKNOWN,
          f"{len(unavailable)} model(s) did not become available: {{{', '.join(unavailable)}}}",
        )
    except ServingError as error:
      logging.error("ReloadConfig failed: %s", error.message)
      response.status.error_code = error.code.value[0]
      response.status.error_message = error.message
      context.set_code(error.code)
      context.set_details(error.message)
    return response


class _Undecodable:
  """Stands in for a request whose bytes do not parse as the method's message."""

  def __init__(self, error):
    self.message = f"cannot parse the request: {error}"


class RejectUndecodable(grpc.aio.ServerInterceptor):
  """Answers a request that is not a valid protobuf INVALID_ARGUMENT with the parse error.

  Without it grpc.aio reports a failing deserializer as UNKNOWN "Unexpected <class ...>" and
  logs a traceback per such request.
  """

  async def intercept_service(self, continuation, handler_call_details):
    handler = await continuation(handler_call_details)
    if handler is None or not inspect.iscoroutinefunction(handler.unary_unary):
      return handler  # streaming, or a sync stub of the base servicer (UNIMPLEMENTED)
    parse, behavior = handler.request_deserializer, handler.unary_unary

    def deserialize(data):
      try:
        return parse(data) if parse else data
      except DecodeError as error:
        return _Undecodable(error)

    async def unary_unary(request, context):
      if isinstance(request, _Undecodable):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
      return await behavior(request, context)

    return handler._replace(request_deserializer=deserialize, unary_unary=unary_unary)


def _output_filter(aliases, signature):
  """Output aliases to return: the filter, checked as TF Serving checks it, or all outputs."""
  aliases = list(aliases)
  for alias in aliases:
    if alias not in signature.outputs:
      raise invalid(
        f"output tensor alias not found in signature: {alias} Outputs expected "
        f"to be in the set {{{','.join(signature.outputs)}}}."
      )
  if len(set(aliases)) != len(aliases):
    duplicate = next(a for a in aliases if aliases.count(a) > 1)
    raise invalid(f"duplicate output tensor alias: {duplicate}")
  return list(aliases) or list(signature.outputs)


def _check_tasks(tasks, signature_defs):
  """MultiInference's per-task checks, in multi_inference.cc's order and wording."""
  name, seen = tasks[0].model_spec.name, set()
  for task in tasks:
    if not task.model_spec.name:
      raise invalid("Found ModelSpec with an empty model name.")
    if task.model_spec.name != name:
      raise invalid("All ModelSpecs in a MultiInferenceRequest must access the same model name.")
    key = task.model_spec.signature_name or model_base.DEFAULT_SIGNATURE
    if key in seen:
      raise invalid(f"Duplicate evaluation of signature: {key}")
    seen.add(key)
    if key not in signature_defs:
      raise invalid(f"Requested signature not found in model graph: {key}")
    if task.method_name not in ("tensorflow/serving/classify", "tensorflow/serving/regress"):
      raise ServingError(
        grpc.StatusCode.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}"
      )
    check_example_signature(signature_defs, key, task.method_name.rsplit("/", 1)[1])


def add_services(server, models, metrics, reload_api=True):
  """Registers both services on a grpc.aio server; reload_api: HandleReloadConfigRequest on."""
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
    PredictionService(models, metrics), server
  )
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(
    ModelService(models, reload_api), server
  )
