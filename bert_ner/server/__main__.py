"""python -m bert_ner.server: TensorFlow Serving's gRPC and REST APIs for one model, without Docker.

Flags follow tensorflow_model_server (--port=8500 and --port 8500 both work). Port 0 picks a
free port; once the model is loaded, one line on stdout names both addresses. The flags become
`bert_ner.server.options.Options` and run `bert_ner.server.serving.serve`; a server that cannot
start prints one line on stderr and exits 1 (2 for a bad flag value).
"""

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from bert_ner import model_base
from bert_ner.quiet import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads: its C++ reads the log level once, at import
import tensorflow as tf  # pylint: disable=wrong-import-position

from bert_ner.server import connections
from bert_ner.server.batching import DEFAULT_PARAMETERS_FILE
from bert_ner.server.options import Options, StartError
from bert_ner.server.serving import serve


def _bool(text: str) -> bool:
  """Parses tensorflow_model_server's --flag=true|false booleans."""
  if text.lower() in ("true", "1"):
    return True
  if text.lower() in ("false", "0"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_flags(argv: Sequence[str] | None = None) -> Options:
  """The command line as Options (flags named as tensorflow_model_server names them); a bad
  value exits 2 with one line, as argparse does for a malformed flag."""
  parser = argparse.ArgumentParser(
    prog="python -m bert_ner.server",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  add = parser.add_argument
  add("--port", type=int, default=8500, help="gRPC port; 0 picks a free one (default 8500)")
  add(
    "--rest_api_port", type=int, default=8501, help="REST port; 0 picks a free one (default 8501)"
  )
  add(
    "--host",
    default="127.0.0.1",
    help="address both servers bind; 0.0.0.0 exposes them (default 127.0.0.1)",
  )
  add(
    "--model_name",
    default=model_base.MODEL_NAME,
    help="name clients address (default bert_ner; ignored with --model_config_file)",
  )
  add(
    "--model_base_path",
    default="models/bert_ner",
    help="directory of <version>/saved_model.pb; the latest version is served "
    "(ignored with --model_config_file)",
  )
  add(
    "--model_config_file",
    help="text ModelServerConfig: model_config_list of models (name, base_path, "
    'model_platform "tensorflow", model_version_policy, version_labels)',
  )
  add(
    "--model_config_file_poll_wait_seconds",
    type=int,
    default=0,
    help="seconds between reads of --model_config_file; 0 reads it once (default 0)",
  )
  add(
    "--allow_version_labels_for_unavailable_models",
    type=_bool,
    nargs="?",
    const=True,
    default=False,
    help="let a config label a version that has not loaded yet (default false)",
  )
  add(
    "--enable_model_reload_api",
    type=_bool,
    nargs="?",
    const=True,
    default=None,
    help="serve ModelService/HandleReloadConfigRequest, which loads any SavedModel path a caller "
    "names (and so runs its code); not a TF Serving flag, which always serves it (default: true "
    "with --model_config_file, else false)",
  )
  add(
    "--monitoring_config_file",
    help='text MonitoringConfig; prometheus_config { enable: true path: "..." } serves the '
    "Prometheus page on the REST port (no page without it, as in TF Serving)",
  )
  add(
    "--enable_batching",
    type=_bool,
    nargs="?",
    const=True,
    default=True,
    help="merge concurrent requests into shared session runs (default true)",
  )
  add(
    "--batching_parameters_file",
    default=DEFAULT_PARAMETERS_FILE,
    help="text BatchingParameters; fields it leaves unset take TF Serving's defaults "
    "(default: docker/batching_parameters.txt, the image's)",
  )
  add("--max_batch_size", type=int, help="overrides the file's max_batch_size")
  add("--batch_timeout_micros", type=int, help="overrides the file's batch_timeout_micros")
  add("--num_batch_threads", type=int, help="overrides the file's num_batch_threads")
  add(
    "--file_system_poll_wait_seconds",
    type=float,
    default=1,
    help="seconds between polls for new versions; 0 polls only at start-up (default 1)",
  )
  add(
    "--max_request_bytes",
    type=int,
    default=8 << 20,
    help="largest request body or message: REST 413, gRPC RESOURCE_EXHAUSTED (default 8 MiB)",
  )
  add(
    "--rest_api_timeout_in_ms",
    type=int,
    default=30000,
    help="REST predict deadline (default 30000)",
  )
  add(
    "--rest_api_read_timeout_in_ms",
    type=int,
    default=connections.DEFAULT_READ_TIMEOUT_MS,
    help="a REST request's line and headers must arrive this soon after the connection opens or "
    "the previous answer, and its body may pause this long: else the connection is closed "
    "(408 for a body); not a TF Serving flag (default 50000, libevent's timeout)",
  )
  add(
    "--rest_api_max_connections",
    type=int,
    default=connections.DEFAULT_MAX_CONNECTIONS,
    help="REST connections held at most; past it the longest idle one is closed; not a TF "
    "Serving flag (default 1024)",
  )
  add(
    "--tensorflow_intra_op_parallelism",
    type=int,
    default=0,
    help="threads inside one op; 0 lets TensorFlow choose",
  )
  add(
    "--tensorflow_inter_op_parallelism",
    type=int,
    default=0,
    help="ops run in parallel; 0 lets TensorFlow choose",
  )
  options = Options(**vars(parser.parse_args(argv)))
  problem = options.problem()
  if problem:
    parser.exit(2, f"{parser.prog}: error: {problem}\n")
  return options


def main(argv: Sequence[str] | None = None) -> None:
  """Entry point of python -m bert_ner.server: flags -> Options -> serve; StartError -> one line,
  exit 1."""
  options = parse_flags(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  for handler in logging.getLogger().handlers:
    handler.addFilter(connections.OutOfFilesOncePerInterval())
  tf.get_logger().propagate = False  # TensorFlow logs through its own handler already.
  try:
    asyncio.run(serve(options))
  except StartError as error:
    sys.exit(str(error))


if __name__ == "__main__":
  main()
