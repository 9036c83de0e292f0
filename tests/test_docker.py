"""Docker packaging: static checks always; image build + query where a Docker engine answers."""

import fnmatch
import io
import json
import os
import queue
import re
import shlex
import subprocess
import sys
import tarfile
import threading
import urllib.request
from pathlib import Path

import pytest
import yaml

from bert_ner.paths import REPO_ROOT
from e2e_support import free_port
from support.docker import DOCKER, instruction
from support.export import load_saved_model, make_checkpoint
from support.readme import code_blocks


def text_proto(name):
  """{field: value} of a flat `field { value: X }` / `field: X` text proto under docker/."""
  text = (DOCKER / name).read_text()
  return dict(re.findall(r"(\w+)\s*(?:\{\s*value:\s*|:\s*)(\w+)", text))


def stages():
  """[(base image, stage name or None)] of every FROM, in order."""
  return [
    (m.group(1), m.group(2))
    for m in (re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", args, re.I) for args in instruction("FROM"))
  ]


def entrypoint_flags():
  """The ENTRYPOINT's argv (exec form)."""
  (entrypoint,) = instruction("ENTRYPOINT")
  return json.loads(entrypoint)


def test_dockerfile_exports_in_a_pinned_python_stage_then_serves_on_pinned_tf_serving():
  (python, name), (serving, _) = stages()
  assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", python) and name == "export"
  assert serving == "tensorflow/serving:2.18.0"
  runs = " ".join(instruction("RUN"))
  assert "-c requirements.lock" in runs
  assert "--no-deps --require-hashes -r requirements-nodeps.txt" in runs
  assert re.search(
    r"python -m bert_ner.export --checkpoint \S+ --model_base_path /models/bert_ner "
    r"--version 1\b",
    runs,
  )
  assert "CHECKPOINT=models/default" in instruction("ARG")
  assert "--from=export /models/bert_ner/ /models/bert_ner/" in instruction("COPY")


def test_dockerfile_serves_models_config_as_non_root():
  assert sorted(" ".join(instruction("EXPOSE")).split()) == ["8500", "8501"]
  (user,) = instruction("USER")
  uid = user.split(":")[0]
  assert uid.isdigit() and int(uid) == 10001
  (healthcheck,) = instruction("HEALTHCHECK")
  assert "/dev/tcp/127.0.0.1/8501" in healthcheck and "GET /v1/models/bert_ner" in healthcheck
  flags = entrypoint_flags()
  assert flags[0] == "tensorflow_model_server"
  for flag in (
    "--port=8500",
    "--rest_api_port=8501",
    "--enable_batching",
    "--model_config_file=/etc/tfserving/models.config",
    "--model_config_file_poll_wait_seconds=10",
    "--allow_version_labels_for_unavailable_models=true",
    "--batching_parameters_file=/etc/tfserving/batching_parameters.txt",
    "--monitoring_config_file=/etc/tfserving/monitoring_config.txt",
  ):
    assert flag in flags
  # TF Serving ignores these when --model_config_file is set: they would only mislead.
  assert not [f for f in flags if f.startswith(("--model_name", "--model_base_path"))]


def test_every_config_flag_points_at_a_file_the_image_copies():
  copies = [args.split() for args in instruction("COPY") if not args.startswith("--")]
  copied = {f"{dest}{Path(src).name}" for *sources, dest in copies for src in sources}
  files = [f.split("=", 1)[1] for f in entrypoint_flags() if re.match(r"--\w+_file=", f)]
  assert len(files) == 3 and set(files) <= copied
  for path in files:
    assert (DOCKER / Path(path).name).is_file()


def test_models_config_labels_the_version_the_image_exports_stable():
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2

  config = text_format.Parse(
    (DOCKER / "models.config").read_text(), model_server_config_pb2.ModelServerConfig()
  )
  (model,) = config.model_config_list.config
  assert (model.name, model.base_path, model.model_platform) == (
    "bert_ner",
    "/models/bert_ner",
    "tensorflow",
  )
  assert list(model.model_version_policy.specific.versions) == [1]
  assert dict(model.version_labels) == {"stable": 1}


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


def test_compose_builds_the_dockerfile_and_publishes_on_loopback_by_default():
  compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
  service = compose["services"]["bert_ner"]
  assert service["build"] == {"context": ".", "dockerfile": "docker/Dockerfile"}
  assert service["image"] == "bert-ner-serving:latest"
  assert sorted(service["ports"]) == [
    "${BERT_NER_BIND:-127.0.0.1}:8500:8500",
    "${BERT_NER_BIND:-127.0.0.1}:8501:8501",
  ]
  assert service["restart"] == "unless-stopped"


def dockerignored(path, patterns):
  """Whether Docker leaves `path` (or a folder above it) out of the build context."""
  parts = Path(path).parts
  prefixes = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
  return any(fnmatch.fnmatchcase(prefix, pattern) for prefix in prefixes for pattern in patterns)


def test_dockerignore_sends_the_sources_and_checkpoint_but_no_venvs_or_exports():
  patterns = [
    line.strip()
    for line in (REPO_ROOT / ".dockerignore").read_text().splitlines()
    if line.strip() and not line.startswith("#")
  ]
  needed = [
    "requirements.lock",
    "requirements-nodeps.txt",
    "bert_ner/featurizer.py",
    "bert_ner/export/__main__.py",
    "docker/models.config",
    "models/default/vocab.txt",
  ]
  left_out = [
    ".venv/bin/python",
    ".venv-tf218/bin/python",
    ".git/HEAD",
    ".cache/x",
    "build/x",
    "models/bert_ner/1/saved_model.pb",
    "bert_ner/__pycache__/x.pyc",
  ]
  assert [p for p in needed if dockerignored(p, patterns)] == []
  assert [p for p in left_out if not dockerignored(p, patterns)] == []


def venv_tool(name, *args):
  """Runs a linter installed in this venv (pinned in requirements.lock); no download at run time."""
  return subprocess.run(
    [str(Path(sys.executable).parent / name), *map(str, args)],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=120,
  )


@pytest.mark.slow  # runs hadolint
def test_hadolint_passes_the_dockerfile():
  done = venv_tool("hadolint", "--no-color", DOCKER / "Dockerfile")
  assert (done.returncode, done.stdout + done.stderr) == (0, "")


@pytest.mark.parametrize(
  "schema, path",
  [
    ("vendor.compose-spec", "docker-compose.yml"),
    ("vendor.github-workflows", ".github/workflows/docker.yml"),
  ],
)
@pytest.mark.slow  # runs check-jsonschema
def test_file_matches_its_schema(schema, path):
  done = venv_tool("check-jsonschema", "--builtin-schema", schema, REPO_ROOT / path)
  assert done.returncode == 0, done.stdout + done.stderr


def test_workflow_builds_with_compose_waits_for_health_and_runs_the_docker_tests():
  workflow = yaml.safe_load((REPO_ROOT / ".github/workflows/docker.yml").read_text())
  (job,) = workflow["jobs"].values()
  runs = [step.get("run", "") for step in job["steps"]]
  assert "docker compose up --detach --build --wait --wait-timeout 300" in runs
  assert ".venv/bin/python -m pytest -q -rs -m docker tests/test_docker.py" in runs
  assert job["env"]["BERT_NER_REQUIRE_DOCKER"] == "1" and job["timeout-minutes"] <= 25


@pytest.mark.slow  # runs python -m bert_ner.deploy
def test_deploy_help_and_no_engine_errors(tmp_path):
  env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
  run = lambda *a: subprocess.run(
    [sys.executable, "-m", "bert_ner.deploy", *a],
    cwd=REPO_ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=120,
  )
  result = run("--help")
  assert result.returncode == 0 and "image,up,serve" in result.stdout
  for command in ("image", "up"):
    result = run(command)
    assert result.returncode == 2
    assert result.stderr.startswith("deploy: error: no Docker engine answers at unix://")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
  # No version yet: serve exports --checkpoint first, and stops with the export's one line.
  result = run(
    "serve",
    "--model_base_path",
    str(tmp_path / "empty"),
    "--checkpoint",
    str(tmp_path / "missing"),
    "--grpc_port",
    str(free_port()),
    "--rest_port",
    str(free_port()),
  )
  assert result.returncode != 0
  assert result.stderr.strip().splitlines() == [
    f"export: error: checkpoint dir not found: {tmp_path / 'missing'}"
  ], result.stderr


def test_build_image_refuses_a_checkpoint_outside_the_build_context(tmp_path):
  from bert_ner import deploy

  with pytest.raises(deploy.DeployError, match="outside .*the Docker build context"):
    deploy.build_image(None, tmp_path)
  with pytest.raises(deploy.DeployError, match="no checkpoint dir"):
    deploy.build_image(None, tmp_path / "missing")


class ArchiveContainer:
  """Stands in for a container: get_archive answers as the Docker API does (a tar stream)."""

  def __init__(self, files):
    self.files, self.asked = files, []

  def get_archive(self, path):
    self.asked.append(path)
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
      for name, content in self.files.items():
        info = tarfile.TarInfo(f"{Path(path).name}/{name}")
        info.size = len(content)
        tar.addfile(info, io.BytesIO(content))
    return iter([data.getvalue()]), {}


def test_copy_served_assets_gives_the_clients_the_images_version(tmp_path):
  from bert_ner import deploy

  container = ArchiveContainer({"vocab.txt": b"[PAD]\n", "ner_config.json": b"{}"})
  base = deploy.copy_served_assets(container, tmp_path / "bert_ner")
  assert container.asked == ["/models/bert_ner/1/assets.extra"]
  assert deploy.latest_version(base) == base / "1"
  assert (base / "1/assets.extra/vocab.txt").read_bytes() == b"[PAD]\n"


@pytest.fixture(scope="module")
def model_base(tiny_bert_dir, tmp_path_factory):
  """A model base holding the tiny model's export as version 1."""
  from bert_ner.export.exporter import export_model

  ckpt = make_checkpoint(tiny_bert_dir, tmp_path_factory.mktemp("ckpt") / "ckpt")
  base = tmp_path_factory.mktemp("context") / "models/bert_ner"
  export_model(ckpt, base, log=lambda *_: None)
  return base


@pytest.mark.slow  # exports a model
def test_how_to_query_prints_a_text_request(model_base):
  from bert_ner import deploy

  text = deploy.how_to_query(model_base, "127.0.0.1", 8500, 8501)
  assert "clients/grpc_client.py --server 127.0.0.1:8500" in text
  assert "clients/rest_client.py --server 127.0.0.1:8501" in text
  body = json.loads(re.search(r"-d '(.*)'", text).group(1))
  assert body == {"instances": ["EU rejects German call"]}
  assert "curl -s -X POST http://127.0.0.1:8501/v1/models/bert_ner:predict" in text


def assert_serves_the_export(rest_port, model_base, body):
  """REST predict of `body` (texts, row format) on the server gives the SavedModel's own
  entities."""
  url = f"http://127.0.0.1:{rest_port}/v1/models/bert_ner:predict"
  with urllib.request.urlopen(
    urllib.request.Request(url, json.dumps(body).encode()), timeout=30
  ) as r:
    [served] = json.load(r)["predictions"]
  sess, sig = load_saved_model(model_base / "1", "serving_default")
  with sess:
    want = sess.run(
      {k: v.name for k, v in sig.outputs.items()},
      {sig.inputs["text"].name: [t.encode() for t in body["instances"]]},
    )
  assert served["num_entities"] == want["num_entities"][0]
  assert served["entity_start"] == want["entity_start"][0].tolist()
  assert served["entity_text"] == [t.decode() for t in want["entity_text"][0]]


@pytest.mark.slow  # exports and starts the server
def test_serve_without_engine_runs_the_embedded_server(model_base, tmp_path):
  from bert_ner import deploy

  grpc_port, rest_port = free_port(), free_port()
  env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock")
  proc = subprocess.Popen(
    [
      sys.executable,
      "-m",
      "bert_ner.deploy",
      "serve",
      "--model_base_path",
      str(model_base),
      "--grpc_port",
      str(grpc_port),
      "--rest_port",
      str(rest_port),
    ],
    cwd=REPO_ROOT,
    env=env,
    stdout=subprocess.PIPE,
    stderr=subprocess.DEVNULL,
    text=True,
  )
  lines = queue.Queue()
  threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
  try:
    seen = []
    while not seen or "curl -s -X POST" not in seen[-1]:
      seen.append(lines.get(timeout=120))
    assert seen[0].startswith("no Docker engine answers at unix://")
    assert (
      seen[0]
      .rstrip()
      .endswith("; serving with the embedded server (python -m bert_ner.server) instead")
    )
    ready = next(i for i, line in enumerate(seen) if line.startswith("Serving bert_ner version 1"))
    assert f"clients/grpc_client.py --server 127.0.0.1:{grpc_port}" in "".join(seen[ready:])
    curl = next(line for line in seen if "curl -s -X POST" in line)
    body = json.loads(re.search(r"-d '(.*)'", curl).group(1))
    assert body == deploy.example_request()
    assert_serves_the_export(rest_port, model_base, body)
  finally:
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def image_server(tmp_path_factory):
  """(container, grpc address, REST URL, assets base) of the image serving on loopback.

  Uses a healthy running container of the image (the compose service the CI workflow starts),
  else builds the image and runs it on free ports. Skips where no Docker engine answers.
  """
  import docker

  from bert_ner import deploy

  try:
    client = deploy.engine(timeout=3)
  except deploy.DeployError as e:
    reason = f"{e}: docker-marked tests need an engine (.github/workflows/docker.yml runs them)"
    if os.environ.get("BERT_NER_REQUIRE_DOCKER"):
      pytest.fail(reason)
    pytest.skip(reason)
  running = client.containers.list(filters={"ancestor": deploy.IMAGE, "health": "healthy"})
  started = None
  if running:
    container = running[0]
    host_port = lambda port: int(container.ports[f"{port}/tcp"][0]["HostPort"])
    grpc_port, rest_port = host_port(8500), host_port(8501)
  else:
    deploy.build_image(client)
    grpc_port, rest_port = free_port(), free_port()
    name = f"bert-ner-test-{os.getpid()}"
    container = started = deploy.run_container(
      client, "127.0.0.1", grpc_port, rest_port, 300, name=name
    )
  base = deploy.copy_served_assets(container, tmp_path_factory.mktemp("image") / "bert_ner")
  yield container, f"127.0.0.1:{grpc_port}", f"http://127.0.0.1:{rest_port}", base
  if started is not None:
    try:
      started.remove(force=True)
    except docker.errors.NotFound:
      pass


def get_json(url, body=None):
  """The JSON answer of a GET (or of a POST of `body`)."""
  data = None if body is None else json.dumps(body).encode()
  with urllib.request.urlopen(urllib.request.Request(url, data), timeout=30) as r:
    return json.load(r)


@pytest.mark.docker
def test_image_answers_the_readme_example_over_both_transports(image_server):
  _, grpc_address, rest_url, base = image_server
  commands = [
    line
    for block in code_blocks("bash")
    for line in block.splitlines()
    if line.startswith(".venv/bin/python clients/")
  ]
  assert len(commands) == 2
  for command in commands:
    argv = shlex.split(command)
    server = grpc_address if "grpc_client" in command else rest_url.removeprefix("http://")
    done = subprocess.run(
      [
        sys.executable,
        argv[1],
        "--server",
        server,
        "--assets",
        str(base / "1/assets.extra"),
        *argv[2:],
      ],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == code_blocks("text")[0]
  [curl] = [block for block in code_blocks("bash") if block.startswith("curl")]
  body = json.loads(re.search(r"-d '(.*?)'", curl).group(1))
  answer = get_json(f"{rest_url}/v1/models/bert_ner:predict", body)
  assert answer == json.loads(code_blocks("json")[0])


@pytest.mark.docker
def test_image_warms_up_from_the_exports_warmup_file(image_server):
  container = image_server[0]
  logs = container.logs().decode(errors="replace")
  found = re.search(
    r"Finished reading warmup data for model at /models/bert_ner/1/assets\.extra/"
    r"tf_serving_warmup_requests\. Number of warmup records read: (\d+)",
    logs,
  )
  assert found and int(found.group(1)) > 0, logs[-2000:]


@pytest.mark.docker
def test_image_serves_the_stable_label_and_prometheus_metrics(image_server):
  _, _, rest_url, base = image_server
  status = get_json(f"{rest_url}/v1/models/bert_ner/labels/stable")["model_version_status"]
  assert [(s["version"], s["state"]) for s in status] == [("1", "AVAILABLE")]
  body = json.loads((base / "1/assets.extra/ner_config.json").read_text())
  signature = get_json(f"{rest_url}/v1/models/bert_ner/labels/stable/metadata")["metadata"]
  outputs = signature["signature_def"]["signature_def"]["result"]["outputs"]
  assert outputs["pred_label"]["name"] == f"ner_{body['fingerprint']}/pred_label:0"
  with urllib.request.urlopen(f"{rest_url}/monitoring/prometheus/metrics", timeout=30) as r:
    metrics = r.read().decode()
  assert ":tensorflow:serving:" in metrics
