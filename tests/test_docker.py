"""Docker packaging: static checks always; image build + query where a Docker engine answers."""

import json
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from test_export import load_saved_model, make_checkpoint

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCKER = REPO_ROOT / "docker"


def dockerfile_instructions():
  """(INSTRUCTION, arguments) pairs of docker/Dockerfile, continuation lines joined."""
  text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
  lines = [line.strip() for line in text.splitlines()]
  return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def instruction(name):
  """Arguments of every `name` instruction."""
  return [args for inst, args in dockerfile_instructions() if inst.upper() == name]


def text_proto(name):
  """{field: value} of a flat `field { value: X }` / `field: X` text proto under docker/."""
  text = (DOCKER / name).read_text()
  return dict(re.findall(r"(\w+)\s*(?:\{\s*value:\s*|:\s*)(\w+)", text))


def test_dockerfile_pins_the_base_image():
  (base,) = instruction("FROM")
  assert re.fullmatch(r"tensorflow/serving:\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?", base), base


def test_dockerfile_serves_bert_ner_as_non_root():
  assert any(re.search(r"\bMODEL_NAME=bert_ner\b", args) for args in instruction("ENV"))
  assert sorted(" ".join(instruction("EXPOSE")).split()) == ["8500", "8501"]
  (user,) = instruction("USER")
  uid = user.split(":")[0]
  assert uid.isdigit() and int(uid) != 0
  assert any("/models/bert_ner/" in args for args in instruction("COPY"))
  (healthcheck,) = instruction("HEALTHCHECK")
  assert "/dev/tcp/127.0.0.1/8501" in healthcheck and "GET /v1/models/bert_ner" in healthcheck
  (entrypoint,) = instruction("ENTRYPOINT")
  flags = json.loads(entrypoint)
  assert flags[0] == "tensorflow_model_server"
  for flag in ("--enable_batching", "--model_name=bert_ner", "--model_base_path=/models/bert_ner",
               "--batching_parameters_file=/etc/tfserving/batching_parameters.txt",
               "--monitoring_config_file=/etc/tfserving/monitoring_config.txt"):
    assert flag in flags


def test_config_files_are_copied_where_the_flags_point():
  copies = " ".join(instruction("COPY"))
  for name in ("batching_parameters.txt", "monitoring_config.txt"):
    assert f"docker/{name}" in copies
  assert "/etc/tfserving/" in copies


def test_batching_parameters():
  params = text_proto("batching_parameters.txt")
  for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches"):
    assert int(params[field]) > 0
  assert "num_batch_threads" not in params  # TF Serving then runs one batch thread per core
  assert params["pad_variable_length_inputs"] == "true"


def test_monitoring_config():
  text = (DOCKER / "monitoring_config.txt").read_text()
  assert re.search(r"prometheus_config\s*\{[^}]*enable:\s*true", text)
  assert 'path: "/monitoring/prometheus/metrics"' in text


def test_compose_file():
  compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
  service = compose["services"]["bert_ner"]
  assert service["build"]["context"] == "."
  assert service["build"]["dockerfile"] == "docker/Dockerfile"
  assert (REPO_ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
  assert sorted(service["ports"]) == ["8500:8500", "8501:8501"]
  assert service["restart"] == "unless-stopped"
  test = " ".join(service["healthcheck"]["test"])
  assert "/dev/tcp/localhost/8501" in test and "GET /v1/models/bert_ner" in test


def test_dockerignore_keeps_the_context_small_but_the_models_in():
  patterns = (REPO_ROOT / ".dockerignore").read_text().split()
  for pattern in (".venv", ".git", "build", ".cache"):
    assert pattern in patterns
  assert not [p for p in patterns if p.startswith("models") and "tmp" not in p]


def test_deploy_help_and_no_engine_errors(tmp_path):
  env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
  run = lambda *a: subprocess.run([sys.executable, "-m", "deploy", *a], cwd=REPO_ROOT, env=env,
                                  capture_output=True, text=True, timeout=120)
  result = run("--help")
  assert result.returncode == 0 and "image,up,serve" in result.stdout
  base = tmp_path / "bert_ner"
  (base / "1").mkdir(parents=True)
  for command in ("image", "up"):
    result = run(command, "--model_base_path", str(base))
    assert result.returncode == 2
    assert result.stderr.startswith("deploy: error: no Docker engine answers at unix://")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  result = run("image", "--model_base_path", str(tmp_path / "empty"))
  assert result.returncode == 2 and "no exported version under" in result.stderr


@pytest.fixture(scope="module")
def model_base(tiny_bert_dir, tmp_path_factory):
  """A build context (docker/ + models/bert_ner/1) holding the tiny model's export."""
  from export.exporter import export_model
  context = tmp_path_factory.mktemp("context")
  shutil.copytree(DOCKER, context / "docker")
  ckpt = make_checkpoint(tiny_bert_dir, tmp_path_factory.mktemp("ckpt") / "ckpt")
  export_model(ckpt, context / "models/bert_ner", log=lambda *_: None)
  return context / "models/bert_ner"


def test_how_to_query_prints_real_features(model_base):
  import deploy
  from bert_ner.featurizer import Featurizer
  featurizer = Featurizer.from_dir(str(model_base / "1/assets.extra"))
  ids = [w.input_ids for w in featurizer.encode_words("EU rejects German call".split())]
  text = deploy.how_to_query(model_base, "127.0.0.1", 8500, 8501)
  assert "clients/grpc_client.py --server 127.0.0.1:8500" in text
  assert "clients/rest_client.py --server 127.0.0.1:8501" in text
  body = json.loads(re.search(r"-d '(.*)'", text).group(1))
  assert body["inputs"]["input_ids"] == ids and ids[0][0] == 101
  assert "curl -s -X POST http://127.0.0.1:8501/v1/models/bert_ner:predict" in text


def free_port():
  """A TCP port nothing listens on right now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def assert_serves_the_export(rest_port, model_base, body):
  """REST predict of `body` on the server equals the SavedModel's own predictions."""
  url = f"http://127.0.0.1:{rest_port}/v1/models/bert_ner:predict"
  with urllib.request.urlopen(urllib.request.Request(url, json.dumps(body).encode()),
                              timeout=30) as r:
    served = json.load(r)["outputs"]
  sess, sig = load_saved_model(model_base / "1")
  with sess:
    want = sess.run(sig.outputs["pred_label"].name,
                    {sig.inputs[k].name: body["inputs"][k] for k in ("input_ids", "input_mask")})
  assert served == want.tolist()


def test_serve_without_engine_runs_the_embedded_server(model_base, tmp_path):
  import deploy
  grpc_port, rest_port = free_port(), free_port()
  env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
  proc = subprocess.Popen([sys.executable, "-m", "deploy", "serve", "--model_base_path",
                           str(model_base), "--grpc_port", str(grpc_port), "--rest_port",
                           str(rest_port)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  lines = queue.Queue()
  threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
  try:
    seen = []
    while not seen or not seen[-1].startswith("Serving bert_ner version 1"):
      seen.append(lines.get(timeout=120))
    assert seen[0].startswith("no Docker engine answers at unix://")
    assert seen[0].rstrip().endswith("; serving with the embedded server (python -m server) "
                                     "instead")
    assert f"clients/grpc_client.py --server 127.0.0.1:{grpc_port}" in "".join(seen)
    curl = next(line for line in seen if "curl -s -X POST" in line)
    body = json.loads(re.search(r"-d '(.*)'", curl).group(1))
    assert body == deploy.example_request(model_base)
    assert_serves_the_export(rest_port, model_base, body)
  finally:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def docker_client():
  """A docker client whose engine answered a ping (bounded wait), else skip."""
  import deploy
  try:
    return deploy.engine(timeout=3)
  except deploy.DeployError as e:
    pytest.skip(str(e))


@pytest.mark.docker
def test_image_serves_the_export(docker_client, model_base):
  import docker

  import deploy
  tag, name = "bert-ner-serving:test", f"bert-ner-test-{os.getpid()}"
  deploy.build_image(docker_client, model_base, tag=tag, context=model_base.parent.parent)
  rest_port = free_port()
  try:
    deploy.run_container(docker_client, "127.0.0.1", free_port(), rest_port, 180, image=tag,
                         name=name)
    assert_serves_the_export(rest_port, model_base, deploy.example_request(model_base))
    url = f"http://127.0.0.1:{rest_port}"
    with urllib.request.urlopen(f"{url}/v1/models/bert_ner/metadata", timeout=30) as r:
      signatures = json.load(r)["metadata"]["signature_def"]["signature_def"]
    config = json.loads((model_base / "1/assets.extra/ner_config.json").read_text())
    assert signatures["serving_default"]["outputs"]["pred_label"]["name"] == \
        f"ner_{config['fingerprint']}/pred_label:0"
    with urllib.request.urlopen(f"{url}/monitoring/prometheus/metrics", timeout=30) as r:
      assert b":tensorflow:serving:" in r.read()
  finally:
    try:
      docker_client.containers.get(name).remove(force=True)
    except docker.errors.NotFound:
      pass
    docker_client.images.remove(tag, force=True)
