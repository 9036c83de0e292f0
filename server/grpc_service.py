"""TF Serving's gRPC PredictionService (Predict, GetModelMetadata) and ModelService."""

import inspect

import grpc
from google.protobuf.message import DecodeError
from tensorflow_serving.apis import model_service_pb2_grpc, predict_pb2
from tensorflow_serving.apis import prediction_service_pb2_grpc

from server.errors import ServingError, invalid
from server.tensors import to_proto

SIGNATURE_DEF = 'signature_def'


class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
  """Predict and GetModelMetadata; Classify, Regress and MultiInference stay UNIMPLEMENTED."""

  def __init__(self, models, metrics):
    self._models = models
    self._metrics = metrics

  async def Predict(self, request, context):
    """Validates, batches and runs one PredictRequest; honours output_filter."""
    try:
      with self._metrics.track(request.model_spec.name, 'predict', 'GRPC'):
        with self._models.acquire(request.model_spec) as servable:
          signature = servable.signature(request.model_spec.signature_name)
          aliases = _output_filter(request.output_filter, signature)
          outputs = await servable.predict(signature, signature.decode(request.inputs),
                                           context.time_remaining())
        response = predict_pb2.PredictResponse()
        response.model_spec.name = servable.name
        response.model_spec.version.value = servable.version
        response.model_spec.signature_name = signature.key
        for alias in aliases:
          response.outputs[alias].CopyFrom(to_proto(outputs[alias]))
        return response
    except ServingError as error:
      await context.abort(error.code, error.message)

  async def GetModelMetadata(self, request, context):
    """The served version's SignatureDefMap under metadata["signature_def"]."""
    try:
      if list(request.metadata_field) != [SIGNATURE_DEF]:
        raise invalid(f'Metadata field(s) {list(request.metadata_field)} not supported; '
                      f'ask for ["{SIGNATURE_DEF}"]')
      with self._models.acquire(request.model_spec) as servable:
        return servable.metadata()
    except ServingError as error:
      await context.abort(error.code, error.message)


class ModelService(model_service_pb2_grpc.ModelServiceServicer):
  """GetModelStatus; HandleReloadConfigRequest stays UNIMPLEMENTED (there is no model config)."""

  def __init__(self, models):
    self._models = models

  async def GetModelStatus(self, request, context):
    """Every version's state, or the requested version's."""
    try:
      return self._models.status(request.model_spec)
    except ServingError as error:
      await context.abort(error.code, error.message)


class _Undecodable:
  """Stands in for a request whose bytes do not parse as the method's message."""

  def __init__(self, error):
    self.message = f'cannot parse the request: {error}'


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
      raise invalid(f'output tensor alias not found in signature: {alias} Outputs expected '
                    f'to be in the set {{{",".join(signature.outputs)}}}.')
  if len(set(aliases)) != len(aliases):
    duplicate = next(a for a in aliases if aliases.count(a) > 1)
    raise invalid(f'duplicate output tensor alias: {duplicate}')
  return list(aliases) or list(signature.outputs)


def add_services(server, models, metrics):
  """Registers both services on a grpc.aio server."""
  prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
      PredictionService(models, metrics), server)
  model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelService(models), server)
