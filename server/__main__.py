"""python -m server: TensorFlow Serving's gRPC and REST APIs for one model, without Docker.

Flags follow tensorflow_model_server (--port=8500 and --port 8500 both work). Port 0 picks a
free port; once the model is loaded, one line on stdout names both addresses.

gRPC runs on grpc.aio in the same asyncio loop as the aiohttp REST server: both front-ends
await one batcher, a waiting request holds no thread (so a batch can gather more requests than
there are threads), and the session runs on worker threads, never on the loop.
"""

import argparse
import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
import sys

import grpc

from bert_ner import model_base
from bert_ner.quiet import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads: its C++ reads the log level once, at import
import tensorflow as tf  # pylint: disable=wrong-import-position
from aiohttp import web

from server import config as server_config
from server import connections, grpc_service, ports, process, rest
from server.batching import (
  DEFAULT_PARAMETERS_FILE,
  BatchingConfigError,
  BatchingOptions,
  read_batching_parameters,
)
from server.errors import ServingError
from server.manager import ModelManager
from server.metrics import Metrics
from server.servable import Servable

SHUTDOWN_GRACE_S = 5
# HTTP/2 streams one gRPC connection may have open (nginx's http2_max_concurrent_streams is 128,
# Go's 250): unbounded, 40,000 streams that never sent their message held 300 MB, kept after.
MAX_CONCURRENT_STREAMS = 128
MAX_PORT = 65535


def _bool(text):
  """Parses tensorflow_model_server's --flag=true|false booleans."""
  if text.lower() in ("true", "1"):
    return True
  if text.lower() in ("false", "0"):
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def parse_flags(argv=None):
  """The command line, named as tensorflow_model_server names it."""
  parser = argparse.ArgumentParser(
    prog="python -m server",
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
  flags = parser.parse_args(argv)
  problem = _flag_problem(flags)
  if problem:
    parser.exit(2, f"{parser.prog}: error: {problem}\n")
  return flags


# (least value, how a smaller one is refused, flags), checked in this order.
_FLAG_MINIMUMS = (
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


def _flag_problem(flags):
  """The first flag value the server cannot run with, as one line, or None."""
  for name in ("port", "rest_api_port"):
    if not 0 <= getattr(flags, name) <= MAX_PORT:
      return f"--{name} {getattr(flags, name)} is not a TCP port (0-{MAX_PORT})"
  for minimum, rule, names in _FLAG_MINIMUMS:
    for name in names:
      value = getattr(flags, name)
      # The batching flags default to None: unset, docker/batching_parameters.txt decides.
      if value is not None and value < minimum:
        return f"--{name} {rule}, got {value}"
  return None


def _batching(flags):
  """Batching options: the parameters file, then the batching flags given on the command line."""
  overrides = {
    name: getattr(flags, name)
    for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads")
    if getattr(flags, name) is not None
  }
  try:
    options = (
      read_batching_parameters(flags.batching_parameters_file)
      if flags.batching_parameters_file
      else BatchingOptions()
    )
    return dataclasses.replace(options, enabled=flags.enable_batching, **overrides).check()
  except (OSError, BatchingConfigError) as error:
    sys.exit(f"batching parameters: {error}")


def _model_server_config(flags):
  """The models to serve: --model_config_file, else --model_name at --model_base_path."""
  if flags.model_config_file:
    return server_config.read_model_server_config(flags.model_config_file)
  return server_config.single_model_config(flags.model_name, flags.model_base_path)


async def _poll_config_file(models, path, interval):
  """Re-reads --model_config_file every interval seconds and applies it when it changed;
  a bad file or a refused config is logged and the running config kept (Server::
  PollFilesystemAndReloadConfig)."""
  applied = None
  while True:
    await asyncio.sleep(interval)
    try:
      config = await asyncio.to_thread(server_config.read_model_server_config, path)
      if config == applied:
        continue
      applied = config
      unavailable = await models.reload(config)
      if unavailable:
        logging.error("Models did not become available: %s", ", ".join(unavailable))
    except (server_config.ConfigError, ServingError) as error:
      logging.error("Failed to reload %s: %s", path, error)


async def _load_models(models, model_server_config, flags):
  """Applies the start-up config, then polls until every model serves a version; raises
  ServingError for a refused config."""
  await models.reload(model_server_config)
  await models.wait_until_available(flags.file_system_poll_wait_seconds)


async def serve(flags, model_server_config, monitoring):
  """Loads the configured models, serves gRPC and REST, polls until SIGTERM/SIGINT."""
  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for signum in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(signum, stop.set)

  batching = _batching(flags)
  metrics = Metrics(batching.max_batch_size)
  executor = concurrent.futures.ThreadPoolExecutor(batching.num_batch_threads, "session_run")
  session_config = tf.compat.v1.ConfigProto(
    intra_op_parallelism_threads=flags.tensorflow_intra_op_parallelism,
    inter_op_parallelism_threads=flags.tensorflow_inter_op_parallelism,
  )
  models = ModelManager(
    lambda name, version, path: Servable.load(
      name, version, path, session_config, batching, executor, metrics
    ),
    flags.allow_version_labels_for_unavailable_models,
  )
  stopping = asyncio.create_task(stop.wait())
  loading = asyncio.create_task(_load_models(models, model_server_config, flags))
  await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
  if stop.is_set():  # a load may still be running: its thread does not keep the process
    loading.cancel()
    await models.close()
    return
  try:
    loading.result()
  except ServingError as error:
    stopping.cancel()
    sys.exit(f"Failed to start server. Error: {error.code.name}: {error.message}")

  grpc_server = grpc.aio.server(
    interceptors=[grpc_service.RejectUndecodable()],
    options=[
      ("grpc.max_receive_message_length", flags.max_request_bytes),
      ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
      ("grpc.so_reuseport", 0),
    ],
  )
  reload_api = (
    flags.enable_model_reload_api
    if flags.enable_model_reload_api is not None
    else bool(flags.model_config_file)
  )
  grpc_service.add_services(grpc_server, models, metrics, reload_api)
  host = f"[{flags.host}]" if ":" in flags.host else flags.host
  limit = connections.ConnectionLimit(flags.rest_api_max_connections)
  app = rest.make_app(
    models,
    metrics,
    flags.max_request_bytes,
    flags.rest_api_timeout_in_ms,
    server_config.prometheus_path(monitoring),
    flags.rest_api_read_timeout_in_ms,
    [limit.track],
  )
  logging.getLogger("aiohttp.server").addFilter(rest.OneLineHttpErrors())
  runner = web.AppRunner(
    app,
    access_log=None,
    shutdown_timeout=SHUTDOWN_GRACE_S,
    keepalive_timeout=flags.rest_api_read_timeout_in_ms / 1000,
    **rest.PROTOCOL_OPTIONS,
  )
  await runner.setup()
  limit.install(runner.server)
  try:
    grpc_port = grpc_server.add_insecure_port(f"{host}:{flags.port}")
    await web.TCPSite(runner, flags.host, flags.rest_api_port).start()
  except (OSError, RuntimeError) as error:
    sys.exit(f"Cannot listen on {host}: {error}")
  await grpc_server.start()
  rest_port = runner.addresses[0][1]
  served = ", ".join(f"{name} version {models.latest_version(name)}" for name in models.names)
  print(process.ready_line(served, host, grpc_port, rest_port), flush=True)

  pollers = []
  if flags.file_system_poll_wait_seconds > 0:
    pollers.append(asyncio.create_task(models.poll_forever(flags.file_system_poll_wait_seconds)))
  if flags.model_config_file and flags.model_config_file_poll_wait_seconds > 0:
    pollers.append(
      asyncio.create_task(
        _poll_config_file(
          models, flags.model_config_file, flags.model_config_file_poll_wait_seconds
        )
      )
    )
  await stopping
  logging.info("Shutting down: finishing in-flight requests")
  for poller in pollers:
    poller.cancel()
  await asyncio.gather(grpc_server.stop(SHUTDOWN_GRACE_S), runner.cleanup())
  await models.close()
  executor.shutdown()


def exit_if_ports_unavailable(flags):
  """Exits with one line when a port cannot be listened on: now, not after the model loaded."""
  for flag, port in (("--port", flags.port), ("--rest_api_port", flags.rest_api_port)):
    problem = ports.listen_problem(flags.host, port)
    if problem:
      sys.exit(f"Cannot listen on {flags.host}:{port} ({flag}): {problem}")


def main(argv=None):
  """Entry point of python -m server."""
  flags = parse_flags(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
  for handler in logging.getLogger().handlers:
    handler.addFilter(connections.OutOfFilesOncePerInterval())
  tf.get_logger().propagate = False  # TensorFlow logs through its own handler already.
  try:
    model_server_config = _model_server_config(flags)
    monitoring = (
      server_config.read_monitoring_config(flags.monitoring_config_file)
      if flags.monitoring_config_file
      else None
    )
  except server_config.ConfigError as error:
    sys.exit(f"Failed to start server. Error: {error}")
  for model in model_server_config.model_config_list.config:
    problem = _base_path_problem(model.base_path)
    if problem:
      sys.exit(f"Failed to start server. Error: model {model.name}: {problem}")
  exit_if_ports_unavailable(flags)
  asyncio.run(serve(flags, model_server_config, monitoring))


def _base_path_problem(path):
  """Why a model base path cannot be listed, or None."""
  if not os.path.isdir(path):
    return f"base path {path} is not a directory"
  if not os.access(path, os.R_OK | os.X_OK):
    return f"base path {path} is not readable"
  return None


if __name__ == "__main__":
  main()
