"""TF Serving in Docker through the docker SDK (no TensorFlow): engine, image, container, health."""

import io
import json
import os
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

import docker
import requests

from bert_ner import model_base
from bert_ner.paths import REPO_ROOT
from bert_ner.server import ports

IMAGE = "bert-ner-serving:latest"
CONTAINER = "bert-ner-serving"
DEFAULT_CHECKPOINT = "models/default"
# docker/Dockerfile exports its checkpoint as this version of this model base.
IMAGE_VERSION_DIR = "/models/bert_ner/1"
EXAMPLE = "EU rejects German call"


class DeployError(Exception):
  """A one-line reason to stop with exit 2 (no engine, no exported version, build/run failure)."""


def engine(timeout=3.0):
  """A docker client whose engine answered a ping within `timeout` s, else DeployError."""
  where = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
  try:
    client = docker.from_env(timeout=timeout)
    client.ping()
    return client
  except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
    raise DeployError(f"no Docker engine answers at {where} ({os_reason(e)})") from e


def os_reason(error):
  """The operating system's words for why a docker/requests call failed, else the error's text.

  docker-py nests them three deep ("Error while fetching server API version: ('Connection
  aborted.', FileNotFoundError(2, 'No such file or directory'))"); the innermost is what matters.
  """
  pending, seen = [error], set()
  while pending:
    cause = pending.pop(0)
    if id(cause) in seen:
      continue
    seen.add(id(cause))
    if isinstance(cause, OSError) and cause.strerror:
      return cause.strerror
    pending += [
      c for c in (cause.__cause__, cause.__context__, *cause.args) if isinstance(c, BaseException)
    ]
  return str(error)


def container_exists(client, name=CONTAINER):
  """True when a container `name` exists: its published ports are ours, it will be replaced."""
  return bool(client.containers.list(all=True, filters={"name": f"^{name}$"}))


def check_ports(host, grpc_port, rest_port):
  """DeployError naming the holder when a port cannot be listened on: before any model loads."""
  for api, port in (("grpc", grpc_port), ("rest", rest_port)):
    problem = ports.listen_problem(host, port)
    if problem:
      raise DeployError(
        f"{api} port {host}:{port} is not free: {problem}; stop it or choose "
        f"another (make serve {api.upper()}_PORT=N, or --{api}_port N)"
      )


def export_if_missing(checkpoint, base):
  """Exports `checkpoint` as version 1 of `base` (python -m bert_ner.export) unless a version
  exists.

  Returns the export's exit status (0 also when nothing had to be exported).
  """
  if model_base.latest(base) is not None:
    return 0
  return subprocess.call(
    [
      sys.executable,
      "-m",
      "bert_ner.export",
      "--checkpoint",
      str(checkpoint),
      "--model_base_path",
      str(base),
    ]
  )


def latest_version(base):
  """Path of the newest exported version under `base`, or DeployError."""
  found = model_base.latest(base)
  if found is None:
    raise DeployError(
      f"no exported version under {base}: run `python -m bert_ner.export` (make export)"
    )
  return found


def build_context_path(path, context=REPO_ROOT):
  """`path` relative to the Docker build context (the repo root), or DeployError."""
  try:
    return Path(path).resolve().relative_to(Path(context).resolve())
  except ValueError:
    raise DeployError(f"{path} is outside {context}, the Docker build context") from None


def build_image(client, checkpoint=DEFAULT_CHECKPOINT, tag=IMAGE, context=REPO_ROOT):
  """Builds `tag` from `<context>/docker/Dockerfile`, which exports `checkpoint` in the build."""
  if not Path(checkpoint).is_dir():
    raise DeployError(f"no checkpoint dir {checkpoint}")
  context_checkpoint = build_context_path(checkpoint, context).as_posix()
  print(f"building {tag} from docker/Dockerfile, exporting {context_checkpoint} ...", flush=True)
  try:
    image, _ = client.images.build(
      path=str(context),
      dockerfile="docker/Dockerfile",
      tag=tag,
      buildargs={"CHECKPOINT": context_checkpoint},
      rm=True,
    )
  except (docker.errors.BuildError, docker.errors.APIError) as e:
    raise DeployError(f"image build failed: {e}") from e
  print(f"built {tag} ({image.short_id})")
  return image


def copy_served_assets(container, base):
  """Copies the image's export assets to `base`/1/assets.extra, so clients match what it serves."""
  try:
    stream, _ = container.get_archive(f"{IMAGE_VERSION_DIR}/{model_base.ASSETS_DIR}")
  except docker.errors.APIError as e:
    raise DeployError(f"cannot copy the served assets out of the container: {e}") from e
  target = Path(base) / Path(IMAGE_VERSION_DIR).name
  target.mkdir(parents=True, exist_ok=True)
  with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
    tar.extractall(target, filter="data")
  return Path(base)


def wait_available(url, timeout, container=None):
  """Polls the REST model status until a version is AVAILABLE; DeployError on timeout or exit."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    try:
      with urllib.request.urlopen(url, timeout=2) as r:
        if any(v["state"] == "AVAILABLE" for v in json.load(r).get("model_version_status", [])):
          return
    except (OSError, ValueError):
      pass
    if container is not None:
      container.reload()
      if container.status == "exited":
        logs = container.logs(tail=20).decode(errors="replace")
        raise DeployError(f"container exited before serving:\n{logs}")
    time.sleep(1)
  raise DeployError(f"{url} reported no AVAILABLE version within {timeout:.0f}s")


def run_container(client, host, grpc_port, rest_port, timeout, image=IMAGE, name=CONTAINER):
  """Replaces container `name` by one of `image` publishing both ports on `host`; waits."""
  try:
    client.containers.get(name).remove(force=True)
  except docker.errors.NotFound:
    pass
  ports = {"8500/tcp": (host, grpc_port), "8501/tcp": (host, rest_port)}
  try:
    container = client.containers.run(
      image, name=name, detach=True, ports=ports, restart_policy={"Name": "unless-stopped"}
    )
  except docker.errors.APIError as e:
    raise DeployError(f"cannot start {image}: {e}") from e
  url = f"http://{host}:{rest_port}/v1/models/{model_base.MODEL_NAME}"
  print(f"started container {name} ({container.short_id}); waiting for {url} ...", flush=True)
  wait_available(url, timeout, container)
  print(f"{model_base.MODEL_NAME} is AVAILABLE (stop it: docker rm -f {name})")
  return container


def example_request():
  """REST predict body for EXAMPLE: raw text to the default (text) signature."""
  return {"instances": [EXAMPLE]}


def how_to_query(base, host, grpc_port, rest_port):
  """The gRPC and REST client commands and a curl line sending EXAMPLE as text.

  --assets only when the clients would not find the export themselves (models/bert_ner here).
  """
  assets = model_base.assets(latest_version(base))
  found = Path(base).resolve() == (REPO_ROOT / "models" / model_base.MODEL_NAME).resolve()
  assets_flag = "" if found else f" --assets {assets}"
  body = json.dumps(example_request(), separators=(",", ":"))
  return "\n".join(
    [
      "query it with:",
      f"  .venv/bin/python clients/grpc_client.py --server {host}:{grpc_port}{assets_flag} "
      f'"{EXAMPLE}"',
      f"  .venv/bin/python clients/rest_client.py --server {host}:{rest_port}{assets_flag} "
      f'"{EXAMPLE}"',
      f"  curl -s -X POST http://{host}:{rest_port}/v1/models/{model_base.MODEL_NAME}:predict "
      f"-d '{body}'",
      f"  in a browser: .venv/bin/python -m bert_ner.demo --server {host}:{grpc_port}{assets_flag}"
      " (then open http://127.0.0.1:8080)",
    ]
  )
