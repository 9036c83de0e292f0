"""The demo's aiohttp app: the static page, GET /api/info and POST /api/tag.

Tagging goes through a clients.common.NerClient (gRPC or REST), so the page sees exactly what the
command-line clients print, against TF Serving or `python -m bert_ner.server` alike.
"""

import asyncio
import concurrent.futures
import dataclasses
import json
import time
from pathlib import Path

from aiohttp import web
from yarl import URL

from bert_ner.clients.common import ClientError, entity_json

STATIC = Path(__file__).resolve().parent / "static"
# 10,000 characters of CoNLL dev text are about 1,900 words: tagged in 1.3 s (a sentence per line)
# to 1.9 s (one line) through the shipped model and the embedded server on 2 shared cores, a wait
# a page can show. Longer texts belong to the clients' --file.
MAX_TEXT_CHARS = 10_000
# The longest JSON spelling of one character is 12 bytes (escaped surrogate pair \\ud83d\\ude00).
MAX_BODY_BYTES = 12 * MAX_TEXT_CHARS + 1024
# A few taggings at once: the model server batches them; more would only queue in threads here.
TAG_WORKERS = 4
# Taggings running or waiting for a worker; beyond this a request is answered 503 at once rather
# than queued behind minutes of others' work.
MAX_PENDING_TAGS = 4 * TAG_WORKERS
# Host header names the page answers by default. Any other name is refused, so a page on another
# site whose name was rebound to this address (DNS rebinding) cannot read or drive the demo.
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "::1")
# The page's status for a tagging the model server failed, by its canonical status
# (ClientError.code), so a wrong model name, a slow server and an absent one read apart; any other
# failure, a bad answer included, is the gateway's: 502.
TAG_ERROR_STATUS = {
  "NOT_FOUND": 404,
  "INVALID_ARGUMENT": 400,
  "UNAVAILABLE": 503,
  "DEADLINE_EXCEEDED": 504,
}
JSON_TYPE = "application/json"
RESPONSE_HEADERS = {
  # Only the demo's own files run: even an injected element could not load or run anything.
  "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
  "connect-src 'self'; base-uri 'none'; form-action 'none'; "
  "frame-ancestors 'none'",
  "X-Content-Type-Options": "nosniff",
  "Referrer-Policy": "no-referrer",
  # Revalidate (ETag, 304) on every load, so a restarted demo never runs an old demo.js.
  "Cache-Control": "no-cache",
}


class RequestError(Exception):
  """A bad /api/tag request: its HTTP status and a one-line message for the page."""

  def __init__(self, status, message):
    super().__init__(message)
    self.status = status


def parse_tag_request(body):
  """The text of a POST /api/tag body (JSON {"text": "..."}); RequestError when it is unusable."""
  try:
    request = json.loads(body.decode("utf-8"))
  except (UnicodeDecodeError, ValueError):
    raise RequestError(400, 'request body is not JSON: send {"text": "..."}') from None
  if not isinstance(request, dict) or not isinstance(request.get("text"), str):
    raise RequestError(400, 'request needs a "text" string: send {"text": "..."}')
  text = request["text"]
  if not text.strip():
    raise RequestError(400, "the text is empty: type a sentence to tag")
  if len(text) > MAX_TEXT_CHARS:
    raise RequestError(
      413,
      f"the text has {len(text):,} characters; the demo tags at most "
      f"{MAX_TEXT_CHARS:,} (use the clients' --file for longer texts)",
    )
  try:
    text.encode("utf-8")
  except UnicodeEncodeError as e:
    raise RequestError(
      400, f"the text is not valid Unicode (a lone surrogate at character {e.start})"
    ) from None
  return text


async def read_body(request):
  """The request's body; RequestError beyond MAX_BODY_BYTES (aiohttp stops reading there)."""
  try:
    return await request.read()
  except web.HTTPRequestEntityTooLarge:
    raise RequestError(
      413, f"request body is over {MAX_BODY_BYTES:,} bytes, the most the demo accepts"
    ) from None


def split_lines(text):
  """(offset, line) of each line with a word in it: every line is tagged as one sentence, as
  the clients tag the lines of --file."""
  offset = 0
  for line in text.split("\n"):
    if line.strip():
      yield offset, line
    offset += len(line) + 1


def tag_text(client, text):
  """Entities of every line of text, offsets into the whole text, after checking that the served
  model is the one the client's assets describe (it can change while the demo runs)."""
  client.check_fingerprint()
  lines = list(split_lines(text))
  found = client.predict([line for _, line in lines])
  return [
    dataclasses.replace(e, start=e.start + offset, end=e.end + offset)
    for (offset, _), entities in zip(lines, found)
    for e in entities
  ]


def tag_error_status(error):
  """The HTTP status the page gets for a failed tagging: TAG_ERROR_STATUS of the model server's
  status code, 502 for anything else."""
  return TAG_ERROR_STATUS.get(getattr(error, "code", None), 502)


def host_name(value):
  """The name part of a Host or Origin header value (no scheme, no port), lower-cased; None when
  it is not a host."""
  try:
    url = URL(value if "://" in value else f"http://{value}")
  except ValueError:
    return None
  return url.host.lower() if url.host else None


def allowed_hosts(listen_host, extra=()):
  """Host names the page answers: the loopback names, the address it listens on (unless it is a
  wildcard, which names no host) and any the operator adds."""
  names = {*DEFAULT_ALLOWED_HOSTS, *(name.lower() for name in extra)}
  if listen_host not in ("", "0.0.0.0", "::"):
    names.add(listen_host.lower())
  return frozenset(names)


def request_origin_error(headers, hosts):
  """Why a request comes from outside (a foreign Host, or a foreign Origin), or None.

  Browsers send Origin with every cross-site POST; a request without one (curl, the clients) is
  judged by its Host alone.
  """
  host = headers.get("Host")
  if host is None or host_name(host) not in hosts:
    return f"host {host!r} is not served here (the demo answers {', '.join(sorted(hosts))})"
  origin = headers.get("Origin")
  if origin is not None and host_name(origin) not in hosts:
    return f"cross-site request from {origin!r} refused"
  return None


def error_response(status, message):
  """A JSON {"error": message} the page shows as it is."""
  return web.json_response({"error": message}, status=status)


@web.middleware
async def response_headers(request, handler):
  """Adds RESPONSE_HEADERS to every answer, errors included."""
  try:
    response = await handler(request)
  except web.HTTPException as e:
    e.headers.update(RESPONSE_HEADERS)
    raise
  response.headers.update(RESPONSE_HEADERS)
  return response


def same_site_only(hosts):
  """Middleware answering 403 to a request with a foreign Host or Origin (see allowed_hosts)."""

  @web.middleware
  async def check(request, handler):
    problem = request_origin_error(request.headers, hosts)
    if problem:
      return error_response(403, problem)
    return await handler(request)

  return check


def make_runner(app):
  """The AppRunner the demo is served by: a handler whose client went away is cancelled, and
  with it the tagging still waiting for a worker."""
  return web.AppRunner(app, handler_cancellation=True)


def build_app(client, transport, hosts=frozenset(DEFAULT_ALLOWED_HOSTS)):
  """The demo app tagging through `client` (a GrpcNerClient or RestNerClient), answering only
  requests addressed to one of `hosts`."""
  executor = concurrent.futures.ThreadPoolExecutor(TAG_WORKERS, thread_name_prefix="tag")
  pending = 0  # taggings running or queued; only the event loop's thread changes it
  info = {
    "server": client.server,
    "transport": transport,
    "model": client.model,
    "fingerprint": client.fingerprint,
    "types": client.entity_types(),
    "max_chars": MAX_TEXT_CHARS,
  }

  async def index(_):
    return web.FileResponse(STATIC / "index.html")

  async def get_info(_):
    # The client switches assets when the served version changes (reload): show the current.
    return web.json_response({**info, "fingerprint": client.fingerprint})

  async def tag(request):
    nonlocal pending
    # A JSON content type makes a cross-site fetch ask first (CORS preflight), which the demo
    # never grants; text/plain or a form would be sent blind.
    if request.content_type != JSON_TYPE:
      return error_response(415, f"send the request as Content-Type: {JSON_TYPE}")
    try:
      text = parse_tag_request(await read_body(request))
    except RequestError as e:
      return error_response(e.status, str(e))
    if pending >= MAX_PENDING_TAGS:
      response = error_response(503, "the demo is busy tagging other texts: try again shortly")
      response.headers["Retry-After"] = "1"
      return response
    started = time.perf_counter()
    pending += 1
    try:
      # Cancelling this await (the client went away) also drops the job if no worker took it.
      entities = await asyncio.get_running_loop().run_in_executor(executor, tag_text, client, text)
    except (ClientError, ValueError) as e:
      return error_response(tag_error_status(e), f"cannot tag: {e}")
    finally:
      pending -= 1
    return web.json_response(
      {
        "text": text,
        "entities": [entity_json(e) for e in entities],
        "tag_ms": round((time.perf_counter() - started) * 1000, 1),
        "fingerprint": client.fingerprint,
      }
    )

  async def stop_executor(_):
    executor.shutdown(wait=False, cancel_futures=True)

  app = web.Application(
    middlewares=[response_headers, same_site_only(hosts)], client_max_size=MAX_BODY_BYTES
  )
  app.router.add_get("/", index)
  app.router.add_get("/api/info", get_info)
  app.router.add_post("/api/tag", tag)
  app.router.add_static("/static", STATIC)
  app.on_cleanup.append(stop_executor)
  return app
