"""python -m bert_ner.deploy image|up|serve: TF Serving in Docker, else the embedded server
(serve)."""

import argparse
import os
import signal
import subprocess
import sys

from bert_ner import deploy, model_base
from bert_ner.paths import REPO_ROOT
from bert_ner.quiet import VERBOSE_ENV, add_verbose_flag


def parse_args(argv=None):
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m bert_ner.deploy", description=__doc__)
  p.add_argument(
    "command",
    choices=["image", "up", "serve"],
    help="image: build the image; up: build, run and wait for health; "
    "serve: up if a Docker engine answers, else `python -m bert_ner.server`",
  )
  p.add_argument(
    "--checkpoint",
    default=deploy.DEFAULT_CHECKPOINT,
    help="the checkpoint dir to serve (default: %(default)s, the shipped model): "
    "the image build exports it (it must lie inside the repo, the Docker build "
    "context, not under an ignored folder such as build/); without Docker it is "
    "exported to --model_base_path when that has no version yet",
  )
  p.add_argument(
    "--model_base_path",
    default="models/bert_ner",
    help="serve without Docker: the exported model base the embedded server serves "
    "(default: %(default)s)",
  )
  p.add_argument("--host", default="127.0.0.1", help="address the ports are published/bound on")
  p.add_argument("--grpc_port", type=int, default=8500)
  p.add_argument("--rest_port", type=int, default=8501)
  p.add_argument(
    "--docker_timeout",
    type=float,
    default=3.0,
    help="seconds to wait for the Docker engine to answer a ping",
  )
  p.add_argument(
    "--health_timeout",
    type=float,
    default=180.0,
    help="seconds to wait for the served model to become AVAILABLE",
  )
  add_verbose_flag(p, "TensorFlow's start-up logs in the export and the server")
  return p.parse_args(argv)


def run_embedded_server(args, ports):
  """`python -m bert_ner.server` on the same model base and ports; how to query it once it is ready.

  A child, not exec: its ready line comes before the query commands. Ctrl-C reaches both (one
  process group), SIGTERM is passed on, and the exit status is the server's. Batching and
  monitoring are the image's: docker/batching_parameters.txt is the server's default batching
  file, the monitoring config is passed as the image passes it.
  """
  server = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "bert_ner.server",
      "--model_base_path",
      args.model_base_path,
      "--host",
      args.host,
      "--port",
      str(args.grpc_port),
      "--rest_api_port",
      str(args.rest_port),
      "--monitoring_config_file",
      str(REPO_ROOT / "docker/monitoring_config.txt"),
    ],
    stdout=subprocess.PIPE,
    text=True,
  )
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server stops on it and then so do we
  signal.signal(signal.SIGTERM, lambda *_: server.terminate())
  for line in server.stdout:
    print(line, end="", flush=True)
    if line.startswith("Serving "):
      print(deploy.how_to_query(args.model_base_path, *ports), flush=True)
  status = server.wait()
  return 128 - status if status < 0 else status  # killed by signal N: 128 + N, as a shell says


def serve(args, ports):
  """Free ports, an export, then Docker if its engine answers, else the embedded server."""
  try:
    client = deploy.engine(args.docker_timeout)
  except deploy.DeployError as no_engine:
    client = None
    engine_line = (
      f"{no_engine}; serving with the embedded server (python -m bert_ner.server) instead"
    )
  if client is None or not deploy.container_exists(client):
    deploy.check_ports(*ports)
  if client is not None:
    return up(client, args, ports)
  status = deploy.export_if_missing(args.checkpoint, args.model_base_path)
  if status:
    return status
  deploy.latest_version(args.model_base_path)
  print(engine_line, flush=True)
  return run_embedded_server(args, ports)


def up(client, args, ports):
  """Builds the image (it exports --checkpoint itself), runs it until healthy, prints how to
  query it with the assets copied out of the image."""
  deploy.build_image(client, args.checkpoint)
  container = deploy.run_container(client, *ports, args.health_timeout)
  served = deploy.copy_served_assets(container, REPO_ROOT / "build/docker" / model_base.MODEL_NAME)
  print(deploy.how_to_query(served, *ports))
  return 0


def main(argv=None):
  """Runs the command; exit 2 with one line on stderr when it cannot."""
  args = parse_args(argv)
  if args.verbose:
    os.environ[VERBOSE_ENV] = "1"  # inherited by the export and the server
  ports = (args.host, args.grpc_port, args.rest_port)
  try:
    if args.command == "serve":
      return serve(args, ports)
    client = deploy.engine(args.docker_timeout)
    if args.command == "up":
      return up(client, args, ports)
    deploy.build_image(client, args.checkpoint)
    return 0
  except deploy.DeployError as e:
    print(f"deploy: error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
