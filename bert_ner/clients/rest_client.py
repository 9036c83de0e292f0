"""Tags sentences with the served bert_ner model over REST (TF Serving's /v1/models API)."""

import concurrent.futures
import http.client
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from bert_ner.clients.deps import imports_or_exit

with imports_or_exit(__name__):
  import requests
  import urllib3.exceptions

  from bert_ner import model_base
  from bert_ner.clients import common
  from bert_ner.featurizer import IntArray

# Canonical status of an HTTP error answer: the inverse of TF Serving's mapping of its status to
# HTTP (400 also stands for FAILED_PRECONDITION and OUT_OF_RANGE there), plus the statuses a proxy
# in front of it answers (502 for a dead backend, 413 for a body over its limit). Others: UNKNOWN.
HTTP_CODES = {
  400: "INVALID_ARGUMENT",
  401: "UNAUTHENTICATED",
  403: "PERMISSION_DENIED",
  404: "NOT_FOUND",
  409: "ABORTED",
  413: "RESOURCE_EXHAUSTED",
  429: "RESOURCE_EXHAUSTED",
  499: "CANCELLED",
  500: "INTERNAL",
  501: "UNIMPLEMENTED",
  502: "UNAVAILABLE",
  503: "UNAVAILABLE",
  504: "DEADLINE_EXCEEDED",
}
# Answers after which the same request goes to the next --server target: the replica is gone
# or refuses work for now (a proxy's 502 for a dead backend); predictions are idempotent.
FAIL_OVER_STATUSES = (502, 503)
# The largest answer read: pred_label of a 64 x 512 batch is about 100 KB of JSON. A server
# streaming a body without end had the client at 1.2 GB before --timeout stopped it; and parsed
# JSON takes up to 24 times its text ([[],[],...]: 10 MiB became 240 MB), so the cap stays small.
MAX_ANSWER_BYTES = 8 << 20
# Error answers are parsed for their "error" only up to this size (TF Serving's are a line).
MAX_ERROR_JSON_BYTES = 64 << 10
SCHEMES = ("http", "https")
T = TypeVar("T")


def within(seconds: float, exchange: Callable[[], T]) -> T:
  """exchange()'s result, or TimeoutError once `seconds` have passed.

  requests' timeout bounds each socket operation, not the exchange: a server trickling a byte
  a second keeps a request alive forever. The exchange runs on a daemon thread of its own and
  the caller waits for it at most `seconds`; an exchange given up on finishes there, unobserved,
  once its own per-read timeout, the answer size cap or the server ends it (closing it from here
  would wait for the read it is blocked in).
  """
  future: concurrent.futures.Future[T] = concurrent.futures.Future()

  def run() -> None:
    try:
      future.set_result(exchange())
    except BaseException as error:  # handed to the caller, who raises it
      future.set_exception(error)

  threading.Thread(target=run, name="rest-exchange", daemon=True).start()
  return future.result(timeout=seconds)


def error_detail(body: bytes) -> object:
  """The "error" TF Serving puts in a failed response, else the start of the body."""
  try:
    if len(body) <= MAX_ERROR_JSON_BYTES:
      return json.loads(body)["error"]
  except (ValueError, KeyError, TypeError, RecursionError):
    pass
  return body[:200].decode("utf-8", "replace")


def malformed_part(error: BaseException) -> BaseException | None:
  """The parse error of a malformed HTTP answer inside what requests raised (it wraps
  http.client's BadStatusLine or LineTooLong in a ConnectionError), or None when the exchange
  failed otherwise: refused, reset, closed before answering or cut short mid-body."""
  pending: list[BaseException] = [error]
  while pending:
    cause = pending.pop()
    if isinstance(cause, urllib3.exceptions.InvalidChunkLength) or (
      isinstance(cause, http.client.HTTPException)
      and not isinstance(cause, http.client.RemoteDisconnected | http.client.IncompleteRead)
    ):
      return cause
    pending += [arg for arg in cause.args if isinstance(arg, BaseException)]
  return None


def read_body(response: requests.Response, url: str) -> bytes:
  """The whole body of a streamed response, refused beyond MAX_ANSWER_BYTES."""
  body = bytearray()
  with response:
    for chunk in response.iter_content(1 << 16):
      body += chunk
      if len(body) > MAX_ANSWER_BYTES:
        raise common.ClientError(f"{url} answered more than {MAX_ANSWER_BYTES >> 20} MiB")
  return bytes(body)


class RestNerClient(common.NerClient):
  """bert_ner client over TensorFlow Serving's REST API."""

  def connect(self) -> None:
    """The target URLs and the HTTP session (its connection pool)."""
    scheme, targets = common.split_servers(self.server, SCHEMES)
    self.urls = [f"{scheme or 'http'}://{target}" for target in targets]
    self.current = 0  # the target that answered last; requests start there
    self.session = requests.Session()

  def close(self) -> None:
    """Closes the session's pooled connections."""
    self.session.close()

  def run(
    self, input_ids: IntArray, input_mask: IntArray, word_shape: IntArray | None = None
  ) -> IntArray:
    """pred_label [B, T] for one padded batch; word_shape goes along when the served model
    takes it (`request_signature`)."""
    signature = self.request_signature(word_shape)
    inputs = {"input_ids": input_ids.tolist(), "input_mask": input_mask.tolist()}
    if word_shape is not None and signature == self.shape_signature:
      inputs[model_base.WORD_SHAPE] = word_shape.tolist()
    body = {"signature_name": signature, "inputs": inputs}
    answer = self._call("POST", f"/v1/models/{self.model}:predict", json=body)
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if isinstance(outputs, dict):  # TF Serving names the outputs only when there are several
      outputs = outputs.get(model_base.OUTPUT)
    if not isinstance(outputs, list):
      raise common.ClientError(
        f"server answer has no {model_base.OUTPUT!r} outputs: {common.excerpt(answer)}"
      )
    return self.checked_labels(outputs, input_ids)

  def run_text(self, texts: list[str]) -> dict[str, Any]:
    """The text signature's outputs (JSON lists) for a batch of texts."""
    body = {"signature_name": self.signature, "inputs": {model_base.TEXT: texts}}
    answer = self._call("POST", f"/v1/models/{self.model}:predict", json=body)
    outputs = answer.get("outputs") if isinstance(answer, dict) else None
    if not isinstance(outputs, dict):
      raise common.ClientError(f"server answer has no named outputs: {common.excerpt(answer)}")
    return outputs

  def output_names(self) -> dict[str, list[str]]:
    """Output tensor names per signature, from GET /v1/models/<model>/metadata."""
    answer = self._call("GET", f"/v1/models/{self.model}/metadata")
    try:
      signatures = answer["metadata"]["signature_def"]["signature_def"]
      return {
        name: [info["name"] for info in sig.get("outputs", {}).values()]
        for name, sig in signatures.items()
      }
    except (KeyError, TypeError, AttributeError):
      raise common.ClientError(
        f"model metadata without signature_def outputs: {common.excerpt(answer)}"
      ) from None

  def _call(self, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer of one request, within self.timeout in all, failing over target by
    target (starting at the last one that answered) while a target is unreachable."""
    deadline = time.monotonic() + self.timeout
    # Read once: threads sharing this client move `current` as they fail over, and re-reading it
    # mid-loop sent a retry back to the dead target (a request lost when a replica was killed).
    start = self.current
    for attempt in range(len(self.urls)):
      index = (start + attempt) % len(self.urls)
      try:
        status, body = self._send(method, self.urls[index] + path, deadline, **kwargs)
      except common.ClientError:
        if attempt == len(self.urls) - 1:
          raise
        continue
      if status in FAIL_OVER_STATUSES and attempt < len(self.urls) - 1:
        continue
      self.current = index
      return self._answer(status, body, self.urls[index] + path)

  def _send(self, method: str, url: str, deadline: float, **kwargs: Any) -> tuple[int, bytes]:
    """(status, body) of one HTTP exchange ended by time.monotonic() `deadline`; ClientError
    when the target is unreachable, the deadline passes or the body is too large."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
      raise self.error("DEADLINE_EXCEEDED")

    def exchange() -> tuple[int, bytes]:
      # TF Serving never redirects: a Location header is answered as the error it is.
      response = self.session.request(
        method, url, timeout=remaining, stream=True, allow_redirects=False, **kwargs
      )
      return response.status_code, read_body(response, url)

    try:
      return within(remaining, exchange)
    except (TimeoutError, requests.Timeout):
      raise self.error("DEADLINE_EXCEEDED") from None
    except requests.exceptions.ContentDecodingError:
      raise common.ClientError(
        f"{url} answered a body its Content-Encoding does not decode"
      ) from None
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as e:
      if time.monotonic() >= deadline:  # a body read that timed out comes wrapped so
        raise self.error("DEADLINE_EXCEEDED") from None
      malformed = malformed_part(e)
      if malformed is not None:  # the server is there, but did not speak HTTP
        raise common.ClientError(
          f"bad answer from {url}: {type(malformed).__name__} {common.excerpt(str(malformed))}"
        ) from None
      reason = re.search(r"\[Errno [^\]]*\] [^'\")]*", str(e))
      raise self.error("UNAVAILABLE", reason.group(0) if reason else type(e).__name__) from None

  def _answer(self, status: int, body: bytes, url: str) -> Any:
    """The JSON document of a 200 answer, else the ClientError its status maps to."""
    if status != 200:
      raise self.error(HTTP_CODES.get(status, "UNKNOWN"), error_detail(body), f"HTTP {status}")
    try:
      return json.loads(body)
    except ValueError:
      raise common.ClientError(f"{url} did not answer JSON") from None
    except RecursionError:
      raise common.ClientError(f"{url} answered JSON nested too deeply") from None


def main() -> int:
  """The command line (`bert-ner-rest`, `python clients/rest_client.py`): exit status 0, 1 or 2."""
  return common.main(RestNerClient, __doc__, "localhost:8501")


if __name__ == "__main__":
  sys.exit(main())
