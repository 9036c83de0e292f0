"""`serve(options)`: TensorFlow Serving's gRPC and REST APIs for the configured models, in-process.

gRPC runs on grpc.aio in the same asyncio loop as the aiohttp REST server: both front-ends
await one batcher, a waiting request holds no thread (so a batch can gather more requests than
there are threads), and the session runs on worker threads, never on the loop.

Nothing here exits the process: a server that cannot start raises `StartError` (one line), and
`python -m bert_ner.server` (bert_ner/server/__main__.py) turns that into its exit status.
"""

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
import signal
from collections.abc import Callable

import grpc
import tensorflow as tf
from aiohttp import web

from bert_ner.server import config as server_config
from bert_ner.server import connections, grpc_service, ports, process, rest
from bert_ner.server.batching import BatchingConfigError, BatchingOptions, read_batching_parameters
from bert_ner.server.errors import ServingError
from bert_ner.server.manager import ModelManager
from bert_ner.server.metrics import Metrics
from bert_ner.server.options import Options, StartError
from bert_ner.server.servable import Servable

SHUTDOWN_GRACE_S = 5
# HTTP/2 streams one gRPC connection may have open (nginx's http2_max_concurrent_streams is 128,
# Go's 250): unbounded, 40,000 streams that never sent their message held 300 MB, kept after.
MAX_CONCURRENT_STREAMS = 128


@dataclasses.dataclass(frozen=True)
class Ready:
  """What a started server serves and where: the ready line's parts."""

  served: str  # "<name> version <n>, ..."
  host: str  # as it goes into an address: an IPv6 host is [bracketed]
  grpc_port: int
  rest_port: int


def print_ready_line(ready: Ready) -> None:
  """Prints the line tests, bench and deploy wait for (bert_ner/server/process.py parses it)."""
  print(process.ready_line(ready.served, ready.host, ready.grpc_port, ready.rest_port), flush=True)


async def serve(
  options: Options,
  stop: asyncio.Event | None = None,
  on_ready: Callable[[Ready], None] = print_ready_line,
) -> None:
  """Loads the configured models, serves gRPC and REST until `stop` is set (None: until
  SIGTERM/SIGINT), then finishes in-flight requests and unloads. Raises StartError (OptionsError
  for a bad option) when the server cannot start."""
  options.check()
  model_server_config, monitoring = read_configs(options)
  check_ports(options)
  batching = batching_options(options)
  if stop is None:
    stop = _stop_on_signals()
  metrics = Metrics(batching.max_batch_size)
  executor = concurrent.futures.ThreadPoolExecutor(batching.num_batch_threads, "session_run")
  session_config = tf.compat.v1.ConfigProto(
    intra_op_parallelism_threads=options.tensorflow_intra_op_parallelism,
    inter_op_parallelism_threads=options.tensorflow_inter_op_parallelism,
  )
  models = ModelManager(
    lambda name, version, path: Servable.load(
      name, version, path, session_config, batching, executor, metrics
    ),
    options.allow_version_labels_for_unavailable_models,
  )
  try:
    if await _load_unless_stopped(models, model_server_config, options, stop):
      await _serve_loaded(options, models, metrics, monitoring, stop, on_ready)
  finally:
    await models.close()
    executor.shutdown()


def read_configs(
  options: Options,
) -> tuple[server_config.ModelServerConfig, server_config.MonitoringConfig | None]:
  """(the models to serve, the monitoring config or None); StartError for a file that cannot be
  read or a base path that cannot be listed."""
  try:
    if options.model_config_file:
      models = server_config.read_model_server_config(options.model_config_file)
    else:
      models = server_config.single_model_config(options.model_name, options.model_base_path)
    monitoring = (
      server_config.read_monitoring_config(options.monitoring_config_file)
      if options.monitoring_config_file
      else None
    )
  except server_config.ConfigError as error:
    raise StartError(f"Failed to start server. Error: {error}") from None
  for model in models.model_config_list.config:
    problem = _base_path_problem(model.base_path)
    if problem:
      raise StartError(f"Failed to start server. Error: model {model.name}: {problem}")
  return models, monitoring


def _base_path_problem(path: str) -> str | None:
  """Why a model base path cannot be listed, or None."""
  if not os.path.isdir(path):
    return f"base path {path} is not a directory"
  if not os.access(path, os.R_OK | os.X_OK):
    return f"base path {path} is not readable"
  return None


def check_ports(options: Options) -> None:
  """StartError when a port cannot be listened on: now, not after the model loaded."""
  for flag, port in (("--port", options.port), ("--rest_api_port", options.rest_api_port)):
    problem = ports.listen_problem(options.host, port)
    if problem:
      raise StartError(f"Cannot listen on {options.host}:{port} ({flag}): {problem}")


def batching_options(options: Options) -> BatchingOptions:
  """The parameters file, then the batching options set explicitly; StartError if unusable."""
  overrides = {
    name: getattr(options, name)
    for name in ("max_batch_size", "batch_timeout_micros", "num_batch_threads")
    if getattr(options, name) is not None
  }
  try:
    parameters = (
      read_batching_parameters(options.batching_parameters_file)
      if options.batching_parameters_file
      else BatchingOptions()
    )
    return dataclasses.replace(parameters, enabled=options.enable_batching, **overrides).check()
  except (OSError, BatchingConfigError) as error:
    raise StartError(f"batching parameters: {error}") from None


def _stop_on_signals() -> asyncio.Event:
  """An event SIGTERM and SIGINT set (the loop's handlers replace the default exit)."""
  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for signum in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(signum, stop.set)
  return stop


async def _load_unless_stopped(
  models: ModelManager,
  model_server_config: server_config.ModelServerConfig,
  options: Options,
  stop: asyncio.Event,
) -> bool:
  """Applies the start-up config and polls until every model serves a version (True), or until
  stop is set first (False; a load still running on its thread does not keep the process).
  StartError for a refused config."""
  stopping = asyncio.create_task(stop.wait())
  loading = asyncio.create_task(_load_models(models, model_server_config, options))
  await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
  stopping.cancel()
  if stop.is_set():
    loading.cancel()
    return False
  try:
    loading.result()
  except ServingError as error:
    raise StartError(f"Failed to start server. Error: {error.code.name}: {error.message}") from None
  return True


async def _load_models(
  models: ModelManager, model_server_config: server_config.ModelServerConfig, options: Options
) -> None:
  """Applies the start-up config, then polls until every model serves a version; raises
  ServingError for a refused config."""
  await models.reload(model_server_config)
  await models.wait_until_available(options.file_system_poll_wait_seconds)


async def _serve_loaded(
  options: Options,
  models: ModelManager,
  metrics: Metrics,
  monitoring: server_config.MonitoringConfig | None,
  stop: asyncio.Event,
  on_ready: Callable[[Ready], None],
) -> None:
  """Serves both front-ends and the pollers until stop is set, then drains both."""
  grpc_server = grpc.aio.server(
    interceptors=[grpc_service.RejectUndecodable()],
    options=[
      ("grpc.max_receive_message_length", options.max_request_bytes),
      ("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS),
      ("grpc.so_reuseport", 0),
    ],
  )
  grpc_service.add_services(grpc_server, models, metrics, options.reload_api)
  host = f"[{options.host}]" if ":" in options.host else options.host
  limit = connections.ConnectionLimit(options.rest_api_max_connections)
  app = rest.make_app(
    models,
    metrics,
    options.max_request_bytes,
    options.rest_api_timeout_in_ms,
    server_config.prometheus_path(monitoring),
    options.rest_api_read_timeout_in_ms,
    [limit.track],
  )
  logging.getLogger("aiohttp.server").addFilter(rest.OneLineHttpErrors())
  runner = web.AppRunner(
    app,
    access_log=None,
    shutdown_timeout=SHUTDOWN_GRACE_S,
    keepalive_timeout=options.rest_api_read_timeout_in_ms / 1000,
    **rest.PROTOCOL_OPTIONS,
  )
  await runner.setup()
  pollers: list[asyncio.Task[None]] = []
  try:
    limit.install(runner.server)
    try:
      grpc_port = grpc_server.add_insecure_port(f"{host}:{options.port}")
      await web.TCPSite(runner, options.host, options.rest_api_port).start()
    except (OSError, RuntimeError) as error:
      raise StartError(f"Cannot listen on {host}: {error}") from None
    await grpc_server.start()
    rest_port = runner.addresses[0][1]
    served = ", ".join(f"{name} version {models.latest_version(name)}" for name in models.names)
    on_ready(Ready(served, host, grpc_port, rest_port))
    pollers = _start_pollers(options, models)
    await stop.wait()
    logging.info("Shutting down: finishing in-flight requests")
  finally:
    for poller in pollers:
      poller.cancel()
    await asyncio.gather(grpc_server.stop(SHUTDOWN_GRACE_S), runner.cleanup())


def _start_pollers(options: Options, models: ModelManager) -> list[asyncio.Task[None]]:
  """The model base path poller and the config file poller, where their intervals ask for them."""
  pollers = []
  if options.file_system_poll_wait_seconds > 0:
    pollers.append(asyncio.create_task(models.poll_forever(options.file_system_poll_wait_seconds)))
  if options.model_config_file and options.model_config_file_poll_wait_seconds > 0:
    pollers.append(
      asyncio.create_task(
        _poll_config_file(
          models, options.model_config_file, options.model_config_file_poll_wait_seconds
        )
      )
    )
  return pollers


async def _poll_config_file(models: ModelManager, path: str, interval: float) -> None:
  """Re-reads the model config file every interval seconds and applies it when it changed;
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
