"""Request failures carried as TF Serving status codes, mapped to HTTP as TF Serving maps them."""

from typing import Any

import grpc

# tensorflow_serving/model_servers/http_server.cc ToHTTPStatusCode; anything else is 500.
_HTTP_STATUS = {
  grpc.StatusCode.CANCELLED: 499,
  grpc.StatusCode.INVALID_ARGUMENT: 400,
  grpc.StatusCode.FAILED_PRECONDITION: 400,
  grpc.StatusCode.OUT_OF_RANGE: 400,
  grpc.StatusCode.DEADLINE_EXCEEDED: 504,
  grpc.StatusCode.NOT_FOUND: 404,
  grpc.StatusCode.ALREADY_EXISTS: 409,
  grpc.StatusCode.ABORTED: 409,
  grpc.StatusCode.PERMISSION_DENIED: 403,
  grpc.StatusCode.UNAUTHENTICATED: 401,
  grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
  grpc.StatusCode.UNIMPLEMENTED: 501,
  grpc.StatusCode.UNAVAILABLE: 503,
}
_BY_NUMBER = {code.value[0]: code for code in grpc.StatusCode}
# OpError message lines around the op's own message: preamble, node names, Python stack.
_NOT_THE_MESSAGE = (" ", "\t", "Graph execution error", "Detected at node", "Node:")


class ServingError(Exception):
  """A failed request: the gRPC status code and the message both front-ends return."""

  def __init__(self, code: grpc.StatusCode, message: str, http_status: int | None = None) -> None:
    super().__init__(message)
    self.code = code
    self.message = message
    self._http_status = http_status

  @classmethod
  def from_op_error(cls, error: Any) -> "ServingError":
    """Keeps an OpError's code (TF and gRPC share numbers) and the op's message, no stack."""
    lines = [
      line
      for line in error.message.splitlines()
      if line.strip() and not line.startswith(_NOT_THE_MESSAGE)
    ]
    return cls(
      _BY_NUMBER.get(error.error_code, grpc.StatusCode.UNKNOWN),
      lines[0] if lines else error.message.strip(),
    )

  @property
  def http_status(self) -> int:
    """The HTTP status TF Serving's REST API answers with for this code, unless overridden."""
    return self._http_status or _HTTP_STATUS.get(self.code, 500)


def invalid(message: str) -> ServingError:
  """INVALID_ARGUMENT: the client sent something the signature does not accept."""
  return ServingError(grpc.StatusCode.INVALID_ARGUMENT, message)


def not_found(message: str) -> ServingError:
  """NOT_FOUND: unknown model, version or signature."""
  return ServingError(grpc.StatusCode.NOT_FOUND, message)
