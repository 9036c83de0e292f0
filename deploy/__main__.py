"""python -m deploy image|up|serve: TF Serving in Docker, else the embedded server (serve)."""

import argparse
import os
import sys

import deploy


def parse_args(argv=None):
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m deploy", description=__doc__)
  p.add_argument("command", choices=["image", "up", "serve"],
                 help="image: build the image; up: build, run and wait for health; "
                      "serve: up if a Docker engine answers, else `python -m server`")
  p.add_argument("--model_base_path", default="models/bert_ner",
                 help="exported model base; must lie inside the repo (the Docker build context)")
  p.add_argument("--host", default="127.0.0.1", help="address the ports are published/bound on")
  p.add_argument("--grpc_port", type=int, default=8500)
  p.add_argument("--rest_port", type=int, default=8501)
  p.add_argument("--docker_timeout", type=float, default=3.0,
                 help="seconds to wait for the Docker engine to answer a ping")
  p.add_argument("--health_timeout", type=float, default=180.0,
                 help="seconds to wait for the served model to become AVAILABLE")
  return p.parse_args(argv)


def main(argv=None):
  """Runs the command; exit 2 with one line on stderr when it cannot."""
  args = parse_args(argv)
  ports = (args.host, args.grpc_port, args.rest_port)
  try:
    deploy.latest_version(args.model_base_path)
    try:
      client = deploy.engine(args.docker_timeout)
    except deploy.DeployError as e:
      if args.command != "serve":
        raise
      print(f"{e}; serving with the embedded server (python -m server) instead")
      print(deploy.how_to_query(args.model_base_path, *ports), flush=True)
      os.execv(sys.executable, [
          sys.executable, "-m", "server", "--model_base_path", args.model_base_path,
          "--host", args.host, "--port", str(args.grpc_port), "--rest_api_port", str(args.rest_port),
          "--batching_parameters_file", str(deploy.ROOT / "docker/batching_parameters.txt"),
          "--monitoring_config_file", str(deploy.ROOT / "docker/monitoring_config.txt")])
    deploy.build_image(client, args.model_base_path)
    if args.command != "image":
      deploy.run_container(client, *ports, args.health_timeout)
      print(deploy.how_to_query(args.model_base_path, *ports))
  except deploy.DeployError as e:
    print(f"deploy: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
