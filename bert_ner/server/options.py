"""What the embedded server runs with, typed (as TF Serving's `Server::Options`).

`python -m bert_ner.server` parses its flags into `Options` (field names are
tensorflow_model_server's flag
names); a test or another program builds one directly and passes it to
`bert_ner.server.serving.serve`.
No TensorFlow here: the command line is checked before TensorFlow loads.
"""

import dataclasses
from pathlib import Path

from bert_ner import model_base
from bert_ner.server import connections
from bert_ner.server.batching import DEFAULT_PARAMETERS_FILE

MAX_PORT = 65535


class StartError(Exception):
  """The server cannot start; the message is one line naming the problem (`python -m
  bert_ner.server` prints it and exits 1)."""


class OptionsError(StartError):
  """An option value the server cannot run with (`python -m bert_ner.server` exits 2, as for a bad
  flag)."""


@dataclasses.dataclass(frozen=True)
class Options:
  """The server's options; defaults are tensorflow_model_server's (or the flag help's)."""

  port: int = 8500  # gRPC; 0 picks a free port
  rest_api_port: int = 8501  # 0 picks a free port
  host: str = "127.0.0.1"
  model_name: str = model_base.MODEL_NAME  # ignored with model_config_file
  model_base_path: str = "models/bert_ner"  # ignored with model_config_file
  model_config_file: str | None = None
  model_config_file_poll_wait_seconds: int = 0  # 0 reads the file once
  allow_version_labels_for_unavailable_models: bool = False
  # None: serve the reload API exactly when there is a model_config_file.
  enable_model_reload_api: bool | None = None
  monitoring_config_file: str | None = None
  enable_batching: bool = True
  batching_parameters_file: str | Path | None = DEFAULT_PARAMETERS_FILE
  # None: the batching parameters file (or TF Serving's default) decides.
  max_batch_size: int | None = None
  batch_timeout_micros: int | None = None
  num_batch_threads: int | None = None
  file_system_poll_wait_seconds: float = 1  # 0 polls only at start-up
  max_request_bytes: int = 8 << 20
  rest_api_timeout_in_ms: int = 30000
  rest_api_read_timeout_in_ms: int = connections.DEFAULT_READ_TIMEOUT_MS
  rest_api_max_connections: int = connections.DEFAULT_MAX_CONNECTIONS
  tensorflow_intra_op_parallelism: int = 0  # 0 lets TensorFlow choose
  tensorflow_inter_op_parallelism: int = 0

  @property
  def reload_api(self) -> bool:
    """Whether ModelService/HandleReloadConfigRequest is served."""
    if self.enable_model_reload_api is not None:
      return self.enable_model_reload_api
    return bool(self.model_config_file)

  def problem(self) -> str | None:
    """The first value the server cannot run with, as one line naming its flag, or None."""
    for name in ("port", "rest_api_port"):
      if not 0 <= getattr(self, name) <= MAX_PORT:
        return f"--{name} {getattr(self, name)} is not a TCP port (0-{MAX_PORT})"
    for minimum, rule, names in _MINIMUMS:
      for name in names:
        value = getattr(self, name)
        # The batching overrides default to None: unset, the parameters file decides.
        if value is not None and value < minimum:
          return f"--{name} {rule}, got {value}"
    return None

  def check(self) -> "Options":
    """Returns self, or raises OptionsError naming the first value the server cannot run with."""
    problem = self.problem()
    if problem:
      raise OptionsError(problem)
    return self


# (least value, how a smaller one is refused, options), checked in this order.
_MINIMUMS = (
  (
    1,
    "must be at least 1",
    (
      "num_batch_threads",
      "max_batch_size",
      "max_request_bytes",
      "rest_api_timeout_in_ms",
      "rest_api_read_timeout_in_ms",
      "rest_api_max_connections",
    ),
  ),
  (
    0,
    "must not be negative",
    (
      "batch_timeout_micros",
      "file_system_poll_wait_seconds",
      "model_config_file_poll_wait_seconds",
      "tensorflow_intra_op_parallelism",
      "tensorflow_inter_op_parallelism",
    ),
  ),
)
