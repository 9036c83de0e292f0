"""TF Serving's REST API (/v1/models/...) and its Prometheus page, on aiohttp.

Requests are dispatched as TF Serving 2.18's http_server.cc and http_rest_api_handler.cc do: a
path (with its query) outside (?i)/v1/.* is libevent's 404 page; inside it, the method and path
must match the predict or status regexes (case-insensitive, http_rest_api_util.cc), anything else
is 400 "Malformed request: <METHOD> <path>".
"""

import asyncio
import json
import logging
import re
import urllib.parse
import zlib
from typing import Any

import grpc
from aiohttp import http_exceptions, web
from google.protobuf import json_format  # type: ignore[import-untyped]
from tensorflow_serving.apis import get_model_metadata_pb2, model_pb2

from bert_ner import model_base
from bert_ner.server.connections import DEFAULT_READ_TIMEOUT_MS, read_body
from bert_ner.server.errors import ServingError, invalid
from bert_ner.server.grpc_service import check_example_signature
from bert_ner.server.tensors import dense_shape, from_json, to_json

_REST_PATH = re.compile(r"(?i)/v1/.*", re.DOTALL)
_PREDICT_PATH = re.compile(
  r"(?i)/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?"
  r":(classify|regress|predict)"
)
_STATUS_PATH = re.compile(
  r"(?i)/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?"
)
_INT64_MAX = 2**63 - 1
# libevent's evhttp_send_error page (TF Serving answers unmatched paths with it).
_NOT_FOUND_PAGE = (
  "<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
)
# aiohttp refuses request lines over 8,190 bytes with a logged traceback; libevent has no such
# limit by default, so long URLs reach the handler as in TF Serving. Bodies are not uncompressed
# by aiohttp (it answers a bad gzip body 500): _json_body does it as TF Serving does.
PROTOCOL_OPTIONS: dict[str, Any] = {
  "max_line_size": 1 << 20,
  "max_field_size": 1 << 16,
  "auto_decompress": False,
}


def make_app(
  models,
  metrics,
  max_request_bytes,
  timeout_ms,
  prometheus_path=None,
  read_timeout_ms=DEFAULT_READ_TIMEOUT_MS,
  middlewares=(),
):
  """The aiohttp application; bodies above max_request_bytes are refused with 413, bodies that
  stall for read_timeout_ms with 408. The Prometheus page is served at prometheus_path only when
  given (--monitoring_config_file)."""
  app = web.Application(client_max_size=max_request_bytes, middlewares=[*middlewares, _json_errors])
  api = _RestApi(models, metrics, timeout_ms, prometheus_path, read_timeout_ms / 1000)
  app.router.add_route("*", "/{path:.*}", api.dispatch)
  return app


@web.middleware
async def _json_errors(request, handler):
  """Answers every failure as TF Serving does, {"error": message}, never with a traceback."""
  try:
    return await handler(request)
  except ServingError as error:
    return web.json_response({"error": error.message}, status=error.http_status)
  except web.HTTPException as error:
    if error.status < 400:
      raise
    return web.json_response({"error": error.text or error.reason}, status=error.status)
  except ConnectionError as error:  # the client went away mid-request: nobody reads an answer
    logging.info("REST %s %s: client gone (%s)", request.method, request.path, error)
    return web.json_response({"error": "client closed the connection"}, status=400)
  except Exception:
    logging.exception("REST %s %s failed", request.method, request.path)
    return web.json_response({"error": "Internal server error"}, status=500)


class OneLineHttpErrors(logging.Filter):
  """aiohttp logs a malformed HTTP request (answered 400) or a dropped connection with its
  traceback: one line tells an operator what happened, and no client can fill the log with
  tracebacks (200 abandoned uploads logged 3,800 lines)."""

  def filter(self, record):
    error = record.exc_info[1] if record.exc_info else None
    if isinstance(error, (http_exceptions.HttpProcessingError, ConnectionError)):
      record.msg, record.args = f"{record.getMessage()}: {error!r}"[:300], ()
      record.exc_info = record.exc_text = None
    return True


def _path_and_query(request):
  """The undecoded path plus ?query, as libevent hands it to TF Serving's dispatcher."""
  query = request.rel_url.raw_query_string
  return request.rel_url.raw_path + ("?" + query if query else "")


def parse_route(method, path):
  """(handler name, ModelSpec) for a REST request, as ParseModelInfo and ProcessRequest pick it;
  raises ServingError for what TF Serving answers 400."""
  malformed = invalid(f"Malformed request: {method} {path}")
  regex = {"POST": _PREDICT_PATH, "GET": _STATUS_PATH}.get(method)
  match = regex.fullmatch(path) if regex else None
  name, version, label, action = match.groups() if match else (None,) * 4
  # TF Serving keeps a decoded name's bytes as they are; a proto string must be UTF-8, so bytes
  # that are not (%FF) become U+FFFD: the lookup fails with NOT_FOUND either way.
  spec = model_pb2.ModelSpec(name=urllib.parse.unquote(name or "", errors="replace"))
  if version:
    if int(version) > _INT64_MAX:
      raise invalid(f"Failed to convert version: {version} to numeric.")
    spec.version.value = int(version)
  if label:
    spec.version_label = urllib.parse.unquote(label, errors="replace")
  if not match:
    raise malformed
  if method == "POST":
    if action not in ("predict", "classify", "regress"):  # the regex matched :PREDICT etc.
      raise malformed
    return action, spec
  if not spec.name:
    raise invalid("Missing model name in request.")
  return ("metadata" if action == "metadata" else "status"), spec


class _RestApi:
  """Handlers for predict, classify/regress, model status, model metadata and metrics."""

  def __init__(self, models, metrics, timeout_ms, prometheus_path, read_timeout_s):
    self._models = models
    self._metrics = metrics
    self._timeout_ms = timeout_ms
    self._prometheus_path = prometheus_path
    self._read_timeout_s = read_timeout_s
    # JSON is parsed and converted on a worker thread, so a large body never holds the event
    # loop that gRPC shares; one at a time, as the parser holds the GIL while it runs.
    self._decoding = asyncio.Semaphore(1)

  async def dispatch(self, request):
    """Routes one request the way TF Serving's HTTP server does."""
    path = _path_and_query(request)
    if self._prometheus_path and request.rel_url.raw_path == self._prometheus_path:
      return self.prometheus(path)
    if not _REST_PATH.fullmatch(path):
      return web.Response(status=404, text=_NOT_FOUND_PAGE, content_type="text/html")
    if request.method == "OPTIONS":  # CORS preflight: only the Origin header is checked
      ok = re.search("https?://", request.headers.get("Origin", ""))
      return web.Response(status=200 if ok else 400)
    action, spec = parse_route(request.method, path)
    if action == "status":
      return web.json_response(_to_dict(self._models.status(spec)))
    if action == "metadata":
      return self.metadata(spec)
    with self._metrics.track(self._models.metric_label(spec.name), action, "REST"):
      body = await self._read_json(request, spec)
      if action == "predict":
        return await self.predict(spec, body)
      return self.classify_or_regress(spec, body, action)

  async def predict(self, spec, body):
    """POST .../<name>[/versions/N|/labels/L]:predict in row or columnar format."""
    name = _signature_name(body)
    with self._models.acquire(spec) as servable:
      signature = _signature(servable, name)
      inputs, row_format = await self._off_loop(_inputs, body, signature, servable.check_shapes)
      try:
        outputs = await asyncio.wait_for(
          servable.predict(signature, inputs, self._timeout_ms / 1000), self._timeout_ms / 1000
        )
      except TimeoutError:
        raise ServingError(
          grpc.StatusCode.DEADLINE_EXCEEDED, f"Request timed out after {self._timeout_ms} ms"
        ) from None
    return web.json_response(_outputs(outputs, row_format))

  async def _read_json(self, request, spec):
    """The request body as a JSON object, parsed as TF Serving's ParseJson does, off the loop.
    A body holding far more arrays and objects than a valid request is refused unparsed."""
    try:
      body = await read_body(request, self._read_timeout_s)
    except web.HTTPRequestEntityTooLarge as error:
      raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED, error.text, http_status=413) from None
    try:
      with self._models.acquire(spec) as servable:
        max_containers = servable.max_json_containers
    except ServingError:  # answered after parsing, as TF Serving orders it
      max_containers = None
    gzipped = "gzip" in request.headers.get("Content-Encoding", "")
    return await self._off_loop(
      _json_body, body, gzipped, request.app._client_max_size, max_containers
    )

  async def _off_loop(self, function, *args):
    """function(*args) on a worker thread, one call at a time."""
    async with self._decoding:
      return await asyncio.to_thread(function, *args)

  def classify_or_regress(self, spec, body, action):
    """POST ...:classify / :regress: TF Serving checks the signature before the examples."""
    name = _signature_name(body)
    with self._models.acquire(spec) as servable:
      check_example_signature(servable.signature_defs, name, action)
    raise invalid(
      "JSON Value: "
      + _debug(body)
      + " When method is "
      + action
      + ", key 'examples' is expected and was not found"
    )

  def metadata(self, spec):
    """GET .../<name>[/versions/N|/labels/L]/metadata: model_spec plus the SignatureDefMap."""
    with self._models.acquire(spec) as servable:
      response = servable.metadata()
    signature_defs = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signature_defs)
    return web.json_response(
      {
        "model_spec": _to_dict(response.model_spec),
        "metadata": {"signature_def": _to_dict(signature_defs)},
      }
    )

  def prometheus(self, path):
    """The Prometheus page; a query string is TF Serving's 400 "Unexpected path"."""
    if path != self._prometheus_path:
      return web.Response(
        status=400,
        content_type="text/plain",
        text=f"Unexpected path: {path}. Should be {self._prometheus_path}",
      )
    return web.Response(text=self._metrics.render(), content_type="text/plain")


def _to_dict(message):
  """A proto as TF Serving prints it: proto field names, default values included."""
  return json_format.MessageToDict(
    message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
  )


def _json_body(body, gzipped, max_bytes, max_containers=None):
  """A (gzip) body's JSON object; refused unparsed if it holds more than max_containers arrays
  and objects (brackets in strings count too: a bound, not a parse).

  Parsing holds the GIL, and so the event loop gRPC shares, for as long as it runs: 8 MiB of
  empty rows took 5 s. Brackets are counted in C, about 10 ms for 8 MiB.
  """
  if gzipped:
    body = _gunzip(body, max_bytes)
  if max_containers is not None:
    count = body.count(b"[") + body.count(b"{")
    if count > max_containers:
      raise invalid(
        f"JSON body holds {count} arrays and objects; a valid request for this model holds "
        f"far fewer (limit {max_containers})"
      )
  return parse_json(body)


def _gunzip(body, max_bytes):
  """A gzip body uncompressed as libevent's handler does it: a body that is not valid gzip
  becomes empty (so JSON parsing answers 400); over max_bytes uncompressed is 413."""
  inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
  try:
    data = inflater.decompress(body, max_bytes + 1)
  except zlib.error:
    return b""
  if len(data) > max_bytes:
    raise ServingError(
      grpc.StatusCode.RESOURCE_EXHAUSTED,
      f"Maximum request body size {max_bytes} exceeded once uncompressed",
      http_status=413,
    )
  return data if inflater.eof else b""


def _first_wins(pairs):
  """A JSON object whose duplicated keys keep their first value (rapidjson's FindMember)."""
  document = {}
  for key, value in pairs:
    document.setdefault(key, value)
  return document


_DECODER = json.JSONDecoder(object_pairs_hook=_first_wins)


def parse_json(body):
  """Bytes -> JSON object like TF Serving's rapidjson flags: UTF-8 only (a UTF-8 BOM skipped,
  UTF-16 is a parse error), NaN/Infinity allowed, text after the document ignored."""
  if not body:
    raise invalid("JSON Parse error: The document is empty")
  text = body.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
  start = len(text) - len(text.lstrip(" \t\n\r"))
  try:
    document, _ = _DECODER.raw_decode(text, start)
  except json.JSONDecodeError as error:
    raise invalid(f"JSON Parse error: {error.msg} at offset: {error.pos}") from None
  except RecursionError:
    raise invalid(f"JSON Parse error: nested too deeply at offset: {start}") from None
  except ValueError:  # an integer over Python's 4,300 digits; rapidjson: too big for a double
    raise invalid("JSON Parse error: Number too big to be stored in double.") from None
  if not isinstance(document, dict):
    raise invalid(f"JSON Value: {_debug(document)} Is not object")
  return document


def _debug(value):
  """A JSON value for an error message, cut at 256 bytes (json_tensor.cc
  JsonValueToDebugString)."""
  return json.dumps(value, ensure_ascii=False)[:256]


def _signature_name(body):
  """The request's signature_name ("" when absent: the default signature); must be a string."""
  name = body.get("signature_name", "")
  if not isinstance(name, str):
    raise invalid(
      f"JSON Value: {_debug(body)} not formatted correctly. "
      "'signature_name' key must be a string value."
    )
  return name


def _signature(servable, name):
  """The signature a REST body names (HttpRestApiHandler::GetInfoMap: INVALID_ARGUMENT)."""
  key = name or model_base.DEFAULT_SIGNATURE
  if key not in servable.signatures:
    raise invalid(f'Serving signature name: "{key}" not found in signature def')
  return servable.signatures[key]


def _named(value):
  """Whether a JSON value is an object of named tensors (not a {"b64": ...} value)."""
  return isinstance(value, dict) and list(value) != ["b64"]


def _inputs(body, signature, check_shapes):
  """Decodes "instances" (row format) or "inputs" (columnar format) as json_tensor.cc does;
  check_shapes(signature, {alias: shape}) sees each input's shape (its first elements') before
  any is converted: 8 MiB of empty rows took seconds to convert before the row count was seen."""
  if ("instances" in body) == ("inputs" in body):
    raise invalid(
      "Missing 'inputs' or 'instances' key"
      if "inputs" not in body
      else "expecting only one of 'inputs' or 'instances' keys to exist"
    )
  only = next(iter(signature.inputs)) if len(signature.inputs) == 1 else None
  if "instances" in body:
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
      raise invalid("Expecting 'instances' to be a non-empty list/array")
    if all(_named(i) for i in instances):
      for instance in instances:
        signature.check_names(instance)
      columns = {a: [i[a] for i in instances] for a in signature.inputs}
    elif only and not any(_named(i) for i in instances):
      columns = {only: instances}
    else:
      raise invalid(
        "instances is a plain list, but expecting list of objects as multiple "
        "input tensors required as per tensorinfo_map"
      )
  elif _named(body["inputs"]):
    columns = body["inputs"]
    signature.check_names(columns)
  elif only:
    columns = {only: body["inputs"]}
  else:
    raise invalid(
      "inputs is a plain value/list, but expecting an object as multiple input "
      "tensors required as per tensorinfo_map"
    )
  check_shapes(signature, {a: dense_shape(v) for a, v in columns.items()})
  inputs = {a: from_json(v, signature.inputs[a].dtype, a) for a, v in columns.items()}
  return inputs, "instances" in body


def _outputs(outputs, row_format):
  """TF Serving's response layout: a single output tensor is written without its name."""
  values = {a: to_json(v, a) for a, v in sorted(outputs.items())}
  single = next(iter(values.values())) if len(values) == 1 else None
  if not row_format:
    return {"outputs": values if single is None else single}
  rows = {len(v) if getattr(v, "ndim", 0) else None for v in outputs.values()}
  if len(rows) != 1 or None in rows:
    raise invalid('outputs have no common batch size; use the columnar "inputs" format')
  if single is not None:
    return {"predictions": single}
  return {"predictions": [{a: v[i] for a, v in values.items()} for i in range(rows.pop())]}
