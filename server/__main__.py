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
import tensorflow as tf
from aiohttp import web

from server import grpc_service, rest
from server.batching import (DEFAULT_PARAMETERS_FILE, BatchingConfigError, BatchingOptions,
                            read_batching_parameters)
from server.manager import ModelManager
from server.metrics import Metrics
from server.servable import Servable

SHUTDOWN_GRACE_S = 5


def _bool(text):
  """Parses tensorflow_model_server's --flag=true|false booleans."""
  if text.lower() in ('true', '1'):
    return True
  if text.lower() in ('false', '0'):
    return False
  raise argparse.ArgumentTypeError(f'expected true or false, got {text!r}')


def parse_flags(argv=None):
  """The command line, named as tensorflow_model_server names it."""
  parser = argparse.ArgumentParser(
      prog='python -m server', description=__doc__,
      formatter_class=argparse.RawDescriptionHelpFormatter)
  add = parser.add_argument
  add('--port', type=int, default=8500, help='gRPC port; 0 picks a free one (default 8500)')
  add('--rest_api_port', type=int, default=8501,
      help='REST port; 0 picks a free one (default 8501)')
  add('--host', default='127.0.0.1',
      help='address both servers bind; 0.0.0.0 exposes them (default 127.0.0.1)')
  add('--model_name', default='bert_ner', help='name clients address (default bert_ner)')
  add('--model_base_path', default='models/bert_ner',
      help='directory of <version>/saved_model.pb; the latest version is served')
  add('--enable_batching', type=_bool, nargs='?', const=True, default=True,
      help='merge concurrent requests into shared session runs (default true)')
  add('--batching_parameters_file', default=DEFAULT_PARAMETERS_FILE,
      help='text BatchingParameters; fields it leaves unset take TF Serving\'s defaults '
           '(default: docker/batching_parameters.txt, the image\'s)')
  add('--max_batch_size', type=int, help='overrides the file\'s max_batch_size')
  add('--batch_timeout_micros', type=int, help='overrides the file\'s batch_timeout_micros')
  add('--num_batch_threads', type=int, help='overrides the file\'s num_batch_threads')
  add('--file_system_poll_wait_seconds', type=float, default=1,
      help='seconds between polls for new versions; 0 polls only at start-up (default 1)')
  add('--max_request_bytes', type=int, default=8 << 20,
      help='largest request body or message: REST 413, gRPC RESOURCE_EXHAUSTED (default 8 MiB)')
  add('--rest_api_timeout_in_ms', type=int, default=30000,
      help='REST predict deadline (default 30000)')
  add('--tensorflow_intra_op_parallelism', type=int, default=0,
      help='threads inside one op; 0 lets TensorFlow choose')
  add('--tensorflow_inter_op_parallelism', type=int, default=0,
      help='ops run in parallel; 0 lets TensorFlow choose')
  return parser.parse_args(argv)


def _batching(flags):
  """Batching options: the parameters file, then the batching flags given on the command line."""
  overrides = {name: getattr(flags, name) for name in
               ('max_batch_size', 'batch_timeout_micros', 'num_batch_threads')
               if getattr(flags, name) is not None}
  try:
    options = (read_batching_parameters(flags.batching_parameters_file)
               if flags.batching_parameters_file else BatchingOptions())
    return dataclasses.replace(options, enabled=flags.enable_batching, **overrides).check()
  except (OSError, BatchingConfigError) as error:
    sys.exit(f'batching parameters: {error}')


async def serve(flags):
  """Loads the latest version, serves gRPC and REST, polls for versions until SIGTERM/SIGINT."""
  stop = asyncio.Event()
  loop = asyncio.get_running_loop()
  for signum in (signal.SIGTERM, signal.SIGINT):
    loop.add_signal_handler(signum, stop.set)

  batching = _batching(flags)
  metrics = Metrics(batching.max_batch_size)
  executor = concurrent.futures.ThreadPoolExecutor(batching.num_batch_threads, 'session_run')
  session_config = tf.compat.v1.ConfigProto(
      intra_op_parallelism_threads=flags.tensorflow_intra_op_parallelism,
      inter_op_parallelism_threads=flags.tensorflow_inter_op_parallelism)
  models = ModelManager(flags.model_name, flags.model_base_path, lambda version, path: (
      Servable.load(flags.model_name, version, path, session_config, batching, executor,
                    metrics)))

  loading = asyncio.create_task(models.wait_until_available(flags.file_system_poll_wait_seconds))
  stopping = asyncio.create_task(stop.wait())
  await asyncio.wait([loading, stopping], return_when=asyncio.FIRST_COMPLETED)
  if stop.is_set():
    loading.cancel()
    await models.close()
    return

  grpc_server = grpc.aio.server(interceptors=[grpc_service.RejectUndecodable()], options=[
      ('grpc.max_receive_message_length', flags.max_request_bytes),
      ('grpc.so_reuseport', 0)])
  grpc_service.add_services(grpc_server, models, metrics)
  host = f'[{flags.host}]' if ':' in flags.host else flags.host
  runner = web.AppRunner(
      rest.make_app(models, metrics, flags.max_request_bytes, flags.rest_api_timeout_in_ms),
      access_log=None, shutdown_timeout=SHUTDOWN_GRACE_S)
  await runner.setup()
  try:
    grpc_port = grpc_server.add_insecure_port(f'{host}:{flags.port}')
    await web.TCPSite(runner, flags.host, flags.rest_api_port).start()
  except (OSError, RuntimeError) as error:
    sys.exit(f'Cannot listen on {host}: {error}')
  await grpc_server.start()
  rest_port = runner.addresses[0][1]
  print(f'Serving {flags.model_name} version {loading.result().version}: '
        f'gRPC {host}:{grpc_port} REST http://{host}:{rest_port}', flush=True)

  poller = (asyncio.create_task(models.poll_forever(flags.file_system_poll_wait_seconds))
            if flags.file_system_poll_wait_seconds > 0 else None)
  await stopping
  logging.info('Shutting down: finishing in-flight requests')
  if poller:
    poller.cancel()
  await asyncio.gather(grpc_server.stop(SHUTDOWN_GRACE_S), runner.cleanup())
  await models.close()
  executor.shutdown()


def main(argv=None):
  """Entry point of python -m server."""
  flags = parse_flags(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  tf.get_logger().propagate = False  # TensorFlow logs through its own handler already.
  if not os.path.isdir(flags.model_base_path):
    sys.exit(f'--model_base_path {flags.model_base_path} is not a directory')
  asyncio.run(serve(flags))


if __name__ == '__main__':
  main()
