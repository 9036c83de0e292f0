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
import logging
import os
import signal
import sys

import grpc
from bert_ner.quiet import quiet_tensorflow

quiet_tensorflow()  # before TensorFlow loads: its C++ reads the log level once, at import
import tensorflow as tf  # pylint: disable=wrong-import-position
from aiohttp import web

from server import grpc_service, ports, rest
from server.batching import BatchingOptions, read_batching_parameters
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
  add('--batching_parameters_file',
      help='text BatchingParameters (max_batch_size, batch_timeout_micros, num_batch_threads, '
           'pad_variable_length_inputs); overrides the batching flags below')
  add('--max_batch_size', type=int, default=64, help='rows per merged run (default 64)')
  add('--batch_timeout_micros', type=int, default=2000,
      help='longest wait for a batch to fill (default 2000)')
  add('--num_batch_threads', type=int, default=os.cpu_count(),
      help='session runs at once (default: CPU count)')
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
  """Batching options from the flags, or from --batching_parameters_file when given."""
  options = BatchingOptions(
      enabled=flags.enable_batching, max_batch_size=flags.max_batch_size,
      batch_timeout_micros=flags.batch_timeout_micros,
      num_batch_threads=flags.num_batch_threads)
  if flags.batching_parameters_file:
    options = read_batching_parameters(flags.batching_parameters_file, options)
  return options


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


def exit_if_ports_unavailable(flags):
  """Exits with one line when a port cannot be listened on: now, not after the model loaded."""
  for flag, port in (('--port', flags.port), ('--rest_api_port', flags.rest_api_port)):
    problem = ports.listen_problem(flags.host, port)
    if problem:
      sys.exit(f'Cannot listen on {flags.host}:{port} ({flag}): {problem}')


def main(argv=None):
  """Entry point of python -m server."""
  flags = parse_flags(argv)
  logging.basicConfig(level=logging.INFO, format='%(asctime)s %(levelname)s %(message)s')
  tf.get_logger().propagate = False  # TensorFlow logs through its own handler already.
  if not os.path.isdir(flags.model_base_path):
    sys.exit(f'--model_base_path {flags.model_base_path} is not a directory')
  exit_if_ports_unavailable(flags)
  asyncio.run(serve(flags))


if __name__ == '__main__':
  main()
