"""python -m bert_ner.demo: serve the tagging page on 127.0.0.1:8080; tags via the gRPC or REST
client."""

import argparse
import asyncio
import signal
import sys

from aiohttp import web

from bert_ner.clients.common import ClientError, add_model_flags, command_line_message
from bert_ner.clients.grpc_client import GrpcNerClient
from bert_ner.clients.rest_client import RestNerClient
from bert_ner.demo.app import DEFAULT_ALLOWED_HOSTS, allowed_hosts, build_app, make_runner

TRANSPORTS = {"grpc": (GrpcNerClient, "localhost:8500"), "rest": (RestNerClient, "localhost:8501")}


def parse_args(argv=None):
  """Command-line flags: the clients' connection flags plus where the page listens."""
  p = argparse.ArgumentParser(prog="python -m bert_ner.demo", description=__doc__)
  p.add_argument(
    "--transport",
    choices=sorted(TRANSPORTS),
    default="grpc",
    help="client used to reach the model server (default: %(default)s)",
  )
  p.add_argument(
    "--server",
    help="host:port of the model server (default: localhost:8500 for "
    "grpc, localhost:8501 for rest)",
  )
  add_model_flags(p)
  p.add_argument(
    "--host", default="127.0.0.1", help="address the page listens on (default: %(default)s)"
  )
  p.add_argument(
    "--port",
    type=int,
    default=8080,
    help="port of the page; 0 picks a free one (default: %(default)s)",
  )
  p.add_argument(
    "--allowed_host",
    action="append",
    default=[],
    metavar="NAME",
    help="also answer requests addressed to NAME (Host header); by default only "
    f"{', '.join(DEFAULT_ALLOWED_HOSTS)} and --host are, against DNS rebinding",
  )
  args = p.parse_args(argv)
  if args.timeout <= 0:
    p.error("--timeout must be positive")
  return args


async def serve(app, host, port, announce):
  """Serves app until SIGINT or SIGTERM; calls announce(url) once it listens."""
  runner = make_runner(app)
  await runner.setup()
  try:
    await web.TCPSite(runner, host, port).start()
    bound_host, bound_port = runner.addresses[0][:2]
    announce(f"http://{bound_host}:{bound_port}/")
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
      asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    await stop.wait()
  finally:
    await runner.cleanup()


def main(argv=None):
  """Runs the demo; exit 2 with one line on stderr when it cannot start."""
  args = parse_args(argv)
  client_class, default_server = TRANSPORTS[args.transport]
  try:
    client = client_class(
      args.server or default_server, args.model, args.signature, args.timeout, args.assets
    )
  except ClientError as e:
    print(f"demo: error: {command_line_message(e)}", file=sys.stderr)
    return 2
  try:
    client.check_fingerprint()
    status = f"model server {client.server} ({args.transport}) serves these assets"
  except ClientError as e:
    status = f"model server not usable yet, the page will say so: {command_line_message(e)}"

  def announce(url):
    print(f"demo: {url} ({status})", flush=True)

  try:
    app = build_app(client, args.transport, allowed_hosts(args.host, args.allowed_host))
    asyncio.run(serve(app, args.host, args.port, announce))
  except OSError as e:
    print(
      f"demo: error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr
    )
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
