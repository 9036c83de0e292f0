"""TF Serving's REST API (/v1/models/...) and its Prometheus page, on aiohttp."""

import asyncio
import json
import logging

import grpc
from aiohttp import web
from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from server.errors import ServingError, invalid
from server.tensors import from_json, to_json

# After /v1/models/<name>: latest, a version or a label, as in TF Serving's path regexes.
_MODEL = '/v1/models/{name:[^/:]+}'
_SPECS = ('', r'/versions/{version:\d{1,18}}', '/labels/{label:[^/:]+}')
PROMETHEUS_PATH = '/monitoring/prometheus/metrics'


def make_app(models, metrics, max_request_bytes, timeout_ms):
  """The aiohttp application; bodies above max_request_bytes are refused with 413."""
  app = web.Application(client_max_size=max_request_bytes, middlewares=[_json_errors])
  api = _RestApi(models, metrics, timeout_ms)
  for spec in _SPECS:
    app.router.add_post(_MODEL + spec + ':predict', api.predict)
    app.router.add_get(_MODEL + spec, api.status)
    app.router.add_get(_MODEL + spec + '/metadata', api.metadata)
  app.router.add_get(PROMETHEUS_PATH, api.prometheus)
  return app


@web.middleware
async def _json_errors(request, handler):
  """Answers every failure as TF Serving does, {"error": message}, never with a traceback."""
  try:
    return await handler(request)
  except ServingError as error:
    return web.json_response({'error': error.message}, status=error.http_status)
  except web.HTTPException as error:
    if error.status < 400:
      raise
    return web.json_response({'error': error.text or error.reason}, status=error.status)
  except Exception:
    logging.exception('REST %s %s failed', request.method, request.path)
    return web.json_response({'error': 'Internal server error'}, status=500)


class _RestApi:
  """Handlers for predict, model status, model metadata and metrics."""

  def __init__(self, models, metrics, timeout_ms):
    self._models = models
    self._metrics = metrics
    self._timeout_ms = timeout_ms

  async def predict(self, request):
    """POST .../<name>[/versions/N|/labels/L]:predict in row or columnar format."""
    spec = _model_spec(request)
    with self._metrics.track(spec.name, 'predict', 'REST'):
      body = await _read_json(request)
      with self._models.acquire(spec) as servable:
        name = body.get('signature_name', '')
        if not isinstance(name, str):
          raise invalid("'signature_name' key must be a string value.")
        signature = servable.signature(name)
        inputs, row_format = _inputs(body, signature)
        try:
          outputs = await asyncio.wait_for(
              servable.predict(signature, inputs, self._timeout_ms / 1000),
              self._timeout_ms / 1000)
        except TimeoutError:
          raise ServingError(grpc.StatusCode.DEADLINE_EXCEEDED,
                             f'Request timed out after {self._timeout_ms} ms')
      return web.json_response(_outputs(outputs, row_format))

  async def status(self, request):
    """GET .../<name>[/versions/N]: GetModelStatusResponse as JSON."""
    return web.json_response(_to_dict(self._models.status(_model_spec(request))))

  async def metadata(self, request):
    """GET .../<name>[/versions/N]/metadata: model_spec plus the SignatureDefMap as JSON."""
    with self._models.acquire(_model_spec(request)) as servable:
      response = servable.metadata()
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata['signature_def'].Unpack(signature_defs)
    return web.json_response({'model_spec': _to_dict(response.model_spec),
                              'metadata': {'signature_def': _to_dict(signature_defs)}})

  async def prometheus(self, request):
    """GET /monitoring/prometheus/metrics in Prometheus text format."""
    return web.Response(text=self._metrics.render(), content_type='text/plain')


def _model_spec(request):
  """ModelSpec from the URL, as TF Serving's REST handler builds it."""
  spec = model_pb2.ModelSpec(name=request.match_info['name'])
  if 'version' in request.match_info:
    spec.version.value = int(request.match_info['version'])
  if 'label' in request.match_info:
    spec.version_label = request.match_info['label']
  return spec


def _to_dict(message):
  """A proto as TF Serving prints it: proto field names, default values included."""
  return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                   always_print_fields_with_no_presence=True)


async def _read_json(request):
  """The request body as a JSON object; too large is 413, malformed is 400."""
  try:
    body = await request.read()
  except web.HTTPRequestEntityTooLarge as error:
    raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, error.text, http_status=413)
  try:
    document = json.loads(body)
  except (ValueError, RecursionError) as error:
    raise invalid(f'JSON Parse error: {error}')
  if not isinstance(document, dict):
    raise invalid('JSON Parse error: the request body is not a JSON object')
  return document


def _named(value):
  """Whether a JSON value is an object of named tensors (not a {"b64": ...} value)."""
  return isinstance(value, dict) and list(value) != ['b64']


def _inputs(body, signature):
  """Decodes "instances" (row format) or "inputs" (columnar format) as json_tensor.cc does."""
  if ('instances' in body) == ('inputs' in body):
    raise invalid("Missing 'inputs' or 'instances' key" if 'inputs' not in body else
                  "expecting only one of 'inputs' or 'instances' keys to exist")
  only = next(iter(signature.inputs)) if len(signature.inputs) == 1 else None
  if 'instances' in body:
    instances = body['instances']
    if not isinstance(instances, list) or not instances:
      raise invalid("Expecting 'instances' to be a non-empty list/array")
    if all(_named(i) for i in instances):
      for instance in instances:
        signature.check_names(instance)
      columns = {a: [i[a] for i in instances] for a in signature.inputs}
    elif only and not any(_named(i) for i in instances):
      columns = {only: instances}
    else:
      raise invalid('instances is a plain list, but expecting list of objects as multiple '
                    'input tensors required as per tensorinfo_map')
  elif _named(body['inputs']):
    columns = body['inputs']
    signature.check_names(columns)
  elif only:
    columns = {only: body['inputs']}
  else:
    raise invalid('inputs is a plain value/list, but expecting an object as multiple input '
                  'tensors required as per tensorinfo_map')
  inputs = {a: from_json(v, signature.inputs[a].dtype, a) for a, v in columns.items()}
  return inputs, 'instances' in body


def _outputs(outputs, row_format):
  """TF Serving's response layout: a single output tensor is written without its name."""
  values = {a: to_json(v, a) for a, v in sorted(outputs.items())}
  single = next(iter(values.values())) if len(values) == 1 else None
  if not row_format:
    return {'outputs': values if single is None else single}
  rows = {len(v) if getattr(v, 'ndim', 0) else None for v in outputs.values()}
  if len(rows) != 1 or None in rows:
    raise invalid('outputs have no common batch size; use the columnar "inputs" format')
  if single is not None:
    return {'predictions': single}
  return {'predictions': [{a: v[i] for a, v in values.items()} for i in range(rows.pop())]}
