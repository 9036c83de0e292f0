"""k8s/ and k8s/kserve/, offline: kustomize renders, Kubernetes and KServe schemas of pinned
versions, agreement with docker/ and docker-compose.yml, and the readiness probe run for real."""

import http.server
import json
import re
import shutil
import subprocess
import threading

import jsonschema
import kubernetes_validate
import pytest
import yaml

import k8s_support
from bert_ner.paths import REPO_ROOT
from e2e_support import free_port
from support.docker import instruction

K8S = REPO_ROOT / "k8s"
KUSTOMIZATIONS = [K8S, K8S / "base", K8S / "overlays" / "volume"]
# Resources of CRDs the pinned Kubernetes schemas do not hold, checked by their own tests here.
CUSTOM_KINDS = {"ServiceMonitor"}
IMAGE = "bert-ner-serving:latest"
ISVC_PATH = K8S / "kserve" / "inferenceservice.yaml"
CONFIG_FILES = ("models.config", "batching_parameters.txt", "monitoring_config.txt")
PROBE_TIMEOUT_S = 10


def rendered(directory):
  return k8s_support.by_kind_and_name(k8s_support.render(directory))


@pytest.fixture(scope="module")
def base():
  return rendered(K8S / "base")


@pytest.fixture(scope="module")
def container(base):
  (only,) = base["Deployment", "bert-ner"]["spec"]["template"]["spec"]["containers"]
  return only


@pytest.fixture(scope="module")
def isvc():
  (document,) = k8s_support.load_yaml_documents(ISVC_PATH)
  return document


def flags(args):
  """{--flag: value} of --flag=value arguments."""
  return dict(arg.split("=", 1) for arg in args if "=" in arg)


# ---------------------------------------------------------------- rendering and schemas


def kubectl_kustomize(directory):
  """`kubectl kustomize directory` as resources, or None when no kubectl binary can run it."""
  kubectl = shutil.which("kubectl")
  if kubectl is None:
    return None
  result = subprocess.run(
    [kubectl, "kustomize", str(directory)], capture_output=True, text=True, timeout=120
  )
  if result.returncode != 0:
    raise AssertionError(f"kubectl kustomize {directory} failed: {result.stderr}")
  return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.mark.slow  # runs a subprocess
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_the_loader_renders_what_kustomize_builds(directory):
  built = kubectl_kustomize(directory)
  if built is None:
    pytest.skip("no kubectl binary: the manifests are validated as the loader renders them")
  assert k8s_support.by_kind_and_name(built) == rendered(directory)


def test_the_loader_refuses_what_it_does_not_implement(tmp_path):
  (tmp_path / "kustomization.yaml").write_text("resources: []\nnamePrefix: x-\n")
  with pytest.raises(ValueError, match="namePrefix"):
    k8s_support.render(tmp_path)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_every_manifest_fits_the_pinned_kubernetes_schema(directory):
  resources = rendered(directory)
  kinds = {kind for kind, _ in resources}
  assert {
    "Deployment",
    "Service",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "ConfigMap",
    "NetworkPolicy",
  } <= kinds
  for (kind, _), resource in resources.items():
    if kind not in CUSTOM_KINDS:
      assert k8s_support.validate_kubernetes(resource) == "1.33"


def test_the_kubernetes_schema_refuses_a_misspelt_field(base):
  deployment = json.loads(json.dumps(base["Deployment", "bert-ner"]))
  deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
  with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
    k8s_support.validate_kubernetes(deployment)


@pytest.fixture(scope="module")
def kserve_schema():
  return k8s_support.kserve_schema()


def test_the_inference_service_fits_kserve_schema(isvc, kserve_schema):
  assert k8s_support.kserve_version() == "0.21.0"
  k8s_support.validate_kserve(isvc, kserve_schema)
  tensorflow = isvc["spec"]["predictor"]["tensorflow"]
  assert tensorflow["runtimeVersion"] == "2.18.0"
  assert tensorflow["storageUri"].endswith("/bert_ner")


@pytest.mark.parametrize(
  "breakage,message",
  [
    (lambda p: p.update(tensorflw=p.pop("tensorflow")), "'tensorflw' was unexpected"),
    (lambda p: p["tensorflow"].update(runtimeVersion=2.18), "2.18 is not of type 'string'"),
    (lambda p: p["tensorflow"]["resources"]["limits"].update(memory=[2]), "is not valid"),
    (lambda p: p["securityContext"].update(runAsUsr=1), "'runAsUsr' was unexpected"),
  ],
)
def test_the_kserve_schema_refuses_broken_services(isvc, kserve_schema, breakage, message):
  broken = json.loads(json.dumps(isvc))
  breakage(broken["spec"]["predictor"])
  with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
    k8s_support.validate_kserve(broken, kserve_schema)


def test_the_kserve_schema_requires_a_predictor(isvc, kserve_schema):
  broken = json.loads(json.dumps(isvc))
  del broken["spec"]["predictor"]
  with pytest.raises(jsonschema.ValidationError, match="'predictor' is a required property"):
    k8s_support.validate_kserve(broken, kserve_schema)


# ---------------------------------------------------------------- agreement with docker/


def test_config_files_are_docker_s(base):
  data = base["ConfigMap", "bert-ner-config"]["data"]
  assert sorted(data) == sorted(CONFIG_FILES)
  docker = {name: (REPO_ROOT / "docker" / name).read_text() for name in CONFIG_FILES}
  assert data["monitoring_config.txt"] == docker["monitoring_config.txt"], (
    "k8s/base/monitoring_config.txt differs from docker/monitoring_config.txt: copy it again"
  )
  assert data["batching_parameters.txt"].startswith(docker["batching_parameters.txt"]), (
    "k8s/base/batching_parameters.txt does not start with docker/batching_parameters.txt"
  )
  added = data["batching_parameters.txt"].removeprefix(docker["batching_parameters.txt"])
  assert re.findall(r"^\w+", added, re.M) == ["num_batch_threads"]
  if (REPO_ROOT / "docker" / "models.config").exists():
    assert data["models.config"] == (REPO_ROOT / "docker" / "models.config").read_text()


def test_models_config_serves_the_image_s_model(base):
  config = base["ConfigMap", "bert-ner-config"]["data"]["models.config"]
  (copy,) = [args for args in instruction("COPY") if "/models/" in args]
  model_dir = copy.split()[-1].rstrip("/")
  (healthcheck,) = instruction("HEALTHCHECK")
  model_name = re.search(r"/v1/models/(\w+)", healthcheck).group(1)
  assert re.findall(r'name:\s*"([^"]+)"', config) == [model_name] == ["bert_ner"]
  assert re.findall(r'base_path:\s*"([^"]+)"', config) == [model_dir] == ["/models/bert_ner"]
  overlay = rendered(K8S / "overlays" / "volume")["Deployment", "bert-ner"]
  mounts = overlay["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
  assert {"name": "models", "mountPath": model_dir, "readOnly": True} in mounts


def test_ports_agree(base, container):
  (expose,) = instruction("EXPOSE")
  image_ports = sorted(map(int, expose.split()))
  compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
  compose_ports = sorted(int(p.split(":")[-1]) for p in compose["services"]["bert_ner"]["ports"])
  pod_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
  assert image_ports == compose_ports == sorted(pod_ports.values()) == [8500, 8501]
  assert pod_ports == {"grpc": 8500, "http": 8501}
  assert flags(container["args"])["--port"] == "8500"
  assert flags(container["args"])["--rest_api_port"] == "8501"
  rest, grpc = base["Service", "bert-ner-rest"]["spec"], base["Service", "bert-ner-grpc"]["spec"]
  assert rest["type"] == "ClusterIP" and "clusterIP" not in rest
  assert rest["ports"] == [{"name": "http", "port": 8501, "targetPort": "http", "protocol": "TCP"}]
  assert grpc["clusterIP"] == "None"
  assert grpc["ports"] == [{"name": "grpc", "port": 8500, "targetPort": "grpc", "protocol": "TCP"}]


def test_config_paths_agree(base, container):
  (entrypoint,) = instruction("ENTRYPOINT")
  image_flags = flags(json.loads(entrypoint))
  pod_flags = flags(container["args"])
  for flag in ("--batching_parameters_file", "--monitoring_config_file"):
    assert pod_flags[flag] == image_flags[flag]
  assert pod_flags["--model_config_file"] == "/etc/tfserving/models.config"
  assert "--enable_batching" in container["args"]
  (mount,) = [m for m in container["volumeMounts"] if m["name"] == "config"]
  assert mount["mountPath"] == "/etc/tfserving" and mount["readOnly"]
  for flag in ("--batching_parameters_file", "--monitoring_config_file", "--model_config_file"):
    directory, _, name = pod_flags[flag].rpartition("/")
    assert directory == mount["mountPath"] and name in CONFIG_FILES
  monitoring = base["ConfigMap", "bert-ner-config"]["data"]["monitoring_config.txt"]
  metrics_path = re.search(r'path:\s*"([^"]+)"', monitoring).group(1)
  annotations = base["Deployment", "bert-ner"]["spec"]["template"]["metadata"]["annotations"]
  assert annotations == {
    "prometheus.io/scrape": "true",
    "prometheus.io/port": "8501",
    "prometheus.io/path": metrics_path,
  }
  assert container["livenessProbe"]["httpGet"] == {"path": metrics_path, "port": "http"}


def test_user_and_image_agree(base, container, isvc):
  (user,) = instruction("USER")
  uid, gid = map(int, user.split(":"))
  pod = base["Deployment", "bert-ner"]["spec"]["template"]["spec"]["securityContext"]
  assert (
    (pod["runAsUser"], pod["runAsGroup"], pod["runAsNonRoot"])
    == (uid, gid, True)
    == (10001, 10001, True)
  )
  kserve = isvc["spec"]["predictor"]["securityContext"]
  assert (kserve["runAsUser"], kserve["runAsGroup"]) == (uid, gid)
  assert container["securityContext"]["readOnlyRootFilesystem"] is True
  assert container["securityContext"]["allowPrivilegeEscalation"] is False
  compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
  assert container["image"] == compose["services"]["bert_ner"]["image"]
  assert container["image"] == IMAGE
  serving_image = instruction("FROM")[-1]  # the final stage; the first one exports
  assert (
    serving_image.split(":")[1].split("@")[0]
    == isvc["spec"]["predictor"]["tensorflow"]["runtimeVersion"]
  )


def test_rollout_keeps_every_replica_and_scaling_is_bounded(base):
  spec = base["Deployment", "bert-ner"]["spec"]
  assert spec["strategy"] == {
    "type": "RollingUpdate",
    "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
  }
  hpa = base["HorizontalPodAutoscaler", "bert-ner"]["spec"]
  assert (
    hpa["scaleTargetRef"]["name"] == "bert-ner" and 2 <= hpa["minReplicas"] < hpa["maxReplicas"]
  )
  pdb = base["PodDisruptionBudget", "bert-ner"]["spec"]
  assert pdb["maxUnavailable"] == 1 and pdb["selector"] == spec["selector"]


def mebibytes(quantity):
  units = {"Mi": 1, "Gi": 1024}
  return int(quantity[:-2]) * units[quantity[-2:]]


def test_resources_cover_the_benchmarked_peak(container, isvc):
  results = (REPO_ROOT / "bench" / "results.md").read_text()
  peaks = [
    int(m) for m in re.findall(r"^\| batching (?:on|off) \| [^|]+ \| (\d+) \|$", results, re.M)
  ]
  cores = int(re.search(r"Machine: (\d+) cores usable", results).group(1))
  assert len(peaks) == 2
  for resources in (container["resources"], isvc["spec"]["predictor"]["tensorflow"]["resources"]):
    assert mebibytes(resources["requests"]["memory"]) >= 1.3 * max(peaks)
    assert resources["requests"]["memory"] == resources["limits"]["memory"]
    assert int(resources["requests"]["cpu"]) == int(resources["limits"]["cpu"]) == cores


# ---------------------------------------------------------------- the readiness probe, run


class StatusServer(http.server.ThreadingHTTPServer):
  """Answers GET /v1/models/bert_ner with a TF Serving status body of the given state."""

  def __init__(self, port, state):
    self.state = state
    super().__init__(("127.0.0.1", port), StatusHandler)


class StatusHandler(http.server.BaseHTTPRequestHandler):
  def do_GET(self):
    if self.path != "/v1/models/bert_ner" or self.server.state is None:
      body, code = b'{ "error": "Could not find any versions of model bert_ner" }', 404
    else:
      body, code = (
        json.dumps(
          {
            "model_version_status": [
              {
                "version": "1",
                "state": self.server.state,
                "status": {"error_code": "OK", "error_message": ""},
              }
            ]
          },
          indent=1,
        ).encode(),
        200,
      )
    self.send_response(code)
    self.send_header("Content-Length", str(len(body)))
    self.end_headers()
    self.wfile.write(body)

  def log_message(self, *args):
    pass


@pytest.mark.parametrize(
  "state,ready", [("AVAILABLE", True), ("LOADING", False), ("UNLOADING", False), (None, False)]
)
@pytest.mark.slow  # runs the probe script
def test_the_readiness_probe_passes_only_for_an_available_version(container, state, ready):
  probe = container["readinessProbe"]["exec"]["command"]
  assert probe == container["startupProbe"]["exec"]["command"]
  port = free_port()
  command = [
    part.replace("/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{port}") for part in probe
  ]
  assert command != probe
  with StatusServer(port, state) as server:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
      result = subprocess.run(command, capture_output=True, timeout=PROBE_TIMEOUT_S)
    finally:
      server.shutdown()
  assert (result.returncode == 0) == ready, result.stderr


# ---------------------------------------------------------------- operating properties, rendered


def pod_spec(resources):
  return resources["Deployment", "bert-ner"]["spec"]["template"]["spec"]


def all_containers(resources):
  spec = pod_spec(resources)
  return spec["containers"] + spec.get("initContainers", [])


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_every_container_is_guaranteed_qos_and_takes_the_kustomize_image(directory):
  resources = rendered(directory)
  for container in all_containers(resources):
    assert container["resources"]["requests"] == container["resources"]["limits"], container["name"]
    assert set(container["resources"]["limits"]) == {"cpu", "memory"}, container["name"]
    assert container["image"] == IMAGE, container["name"]
  # The manifests name the image without a tag: `images:` is the one place that sets it.
  for path in K8S.rglob("*.yaml"):
    assert not re.search(r"image: bert-ner-serving:", path.read_text()), path


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_thread_pools_are_sized_from_the_cpu_limit(directory):
  resources = rendered(directory)
  (server,) = pod_spec(resources)["containers"]
  cores = int(server["resources"]["limits"]["cpu"])
  (env,) = [e for e in server["env"] if e["name"] == "CPU_LIMIT"]
  assert env["valueFrom"]["resourceFieldRef"] == {
    "containerName": server["name"],
    "resource": "limits.cpu",
    "divisor": "1",
  }
  args = flags(server["args"])
  assert args["--tensorflow_intra_op_parallelism"] == "$(CPU_LIMIT)"
  assert args["--tensorflow_inter_op_parallelism"] == "$(CPU_LIMIT)"
  batching = resources["ConfigMap", "bert-ner-config"]["data"]["batching_parameters.txt"]
  assert re.findall(r"^num_batch_threads \{ value: (\d+) \}$", batching, re.M) == [str(cores)]


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda d: d.name)
def test_the_network_policy_admits_the_two_ports_only(directory):
  resources = rendered(directory)
  policy = resources["NetworkPolicy", "bert-ner"]["spec"]
  labels = resources["Deployment", "bert-ner"]["spec"]["template"]["metadata"]["labels"]
  assert policy["podSelector"]["matchLabels"].items() <= labels.items()
  assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"] and policy["egress"] == []
  (rule,) = policy["ingress"]
  (server,) = pod_spec(resources)["containers"]
  assert sorted(p["port"] for p in rule["ports"]) == sorted(p["name"] for p in server["ports"])


def test_the_service_monitor_scrapes_the_rest_service_s_metrics_page():
  resources = rendered(K8S)
  monitor = resources["ServiceMonitor", "bert-ner"]
  assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
  selector = monitor["spec"]["selector"]["matchLabels"]
  selected = [
    name
    for (kind, name), r in resources.items()
    if kind == "Service" and selector.items() <= r["metadata"]["labels"].items()
  ]
  assert selected == ["bert-ner-rest"]
  (endpoint,) = monitor["spec"]["endpoints"]
  rest_ports = [p["name"] for p in resources["Service", "bert-ner-rest"]["spec"]["ports"]]
  monitoring = resources["ConfigMap", "bert-ner-config"]["data"]["monitoring_config.txt"]
  assert endpoint["port"] in rest_ports
  assert endpoint["path"] == re.search(r'path:\s*"([^"]+)"', monitoring).group(1)
  assert set(endpoint) == {"port", "path", "interval"}
  job = resources["Service", "bert-ner-rest"]["metadata"]["labels"][monitor["spec"]["jobLabel"]]
  rules = (REPO_ROOT / "monitoring" / "rules.yml").read_text()
  assert set(re.findall(r'\bjob="([^"]+)"', rules)) == {job} == {"bert-ner"}


def model_version_policy(resources):
  """The model_version_policy of models.config, parsed as TF Serving's ModelServerConfig."""
  from google.protobuf import text_format
  from tensorflow_serving.config import model_server_config_pb2

  text = resources["ConfigMap", "bert-ner-config"]["data"]["models.config"]
  config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
  (model,) = config.model_config_list.config
  return model


def test_the_volume_overlay_loads_each_new_version():
  model = model_version_policy(rendered(K8S / "overlays" / "volume"))
  assert model.model_version_policy.WhichOneof("policy_choice") == "latest"
  assert model.model_version_policy.latest.num_versions == 1
  assert not model.version_labels


def test_the_image_s_own_config_pins_the_one_version_it_holds(base, container):
  model = model_version_policy(base)
  assert list(model.model_version_policy.specific.versions) == [1]
  assert flags(container["args"])["--allow_version_labels_for_unavailable_models"] == "true"


def seed_command(tmp_path):
  """The volume overlay's init container as a local command: its paths moved under tmp_path."""
  resources = rendered(K8S / "overlays" / "volume")
  (init,) = pod_spec(resources)["initContainers"]
  script = resources["ConfigMap", "bert-ner-seed"]["data"]["seed.sh"]
  assert init["command"] == ["bash", "/seed/seed.sh"]
  mounts = {m["name"]: m["mountPath"] for m in init["volumeMounts"]}
  assert mounts == {"models": "/volume", "seed": "/seed"}
  (server,) = pod_spec(resources)["containers"]
  served = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}["models"]
  local = script.replace("/volume", str(tmp_path / "claim")).replace(
    served, str(tmp_path / "image")
  )
  return ["bash", "-c", local], tmp_path / "claim", tmp_path / "image"


def fake_version(directory):
  directory.mkdir(parents=True)
  (directory / "saved_model.pb").write_bytes(b"graph")


@pytest.mark.slow  # runs the init container's script
@pytest.mark.parametrize("claim_holds", [[], ["3"]], ids=["empty claim", "claim with version 3"])
def test_the_init_container_seeds_only_an_empty_claim(tmp_path, claim_holds):
  command, claim, image = seed_command(tmp_path)
  fake_version(image / "1")
  claim.mkdir()
  for version in claim_holds:
    fake_version(claim / version)
  env = {"PATH": "/usr/bin:/bin", "HOSTNAME": "bert-ner-0"}
  for _ in range(2):  # a restarted init container finds its own copy and leaves it
    done = subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)
    assert done.returncode == 0, done.stderr
  expected = claim_holds or ["1"]
  assert sorted(p.name for p in claim.iterdir()) == expected
  assert all((claim / v / "saved_model.pb").exists() for v in expected)
