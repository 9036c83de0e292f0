"""monitoring/: promtool checks and unit tests of the rules, and a real Prometheus (Debian's
`prometheus` package) scraping the embedded server under load, evaluating every recording rule
and every dashboard query. Without the binaries these tests skip and say how to get them."""

import json
import math
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest
import yaml

import server_fixtures
from bert_ner.paths import REPO_ROOT
from bert_ner.server.process import ServerProcess
from e2e_support import free_port

MONITORING = REPO_ROOT / "monitoring"
RULES = MONITORING / "rules.yml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
INSTALL = "apt-get install prometheus (Debian's 2.42; .ci/run installs it as root)"
LOAD_SECONDS = 4
SETTLE_TIMEOUT_S = 60


def binary(name):
  """Path of a Prometheus binary, or a skip naming the package that brings it."""
  path = shutil.which(name)
  if path is None:
    pytest.skip(f"no `{name}` on PATH: {INSTALL}")
  return path


def recording_rules():
  """{recorded name: expression} of rules.yml."""
  groups = yaml.safe_load(RULES.read_text())["groups"]
  return {r["record"]: r["expr"] for g in groups for r in g["rules"] if "record" in r}


def dashboard_targets():
  """(panel title, expr, legendFormat) of every query of the Grafana dashboard."""
  panels = json.loads(DASHBOARD.read_text())["panels"]
  return [(p["title"], t["expr"], t["legendFormat"]) for p in panels for t in p["targets"]]


def grouping_labels(expr):
  """The labels a rule keeps: its first `by (...)` clause, without the histogram's `le`."""
  return set(re.search(r"\bby \(([^)]*)\)", expr).group(1).replace(" ", "").split(",")) - {"le"}


def legend_labels(legend):
  """The labels a Grafana legend names ({{model_name}} ...)."""
  return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", legend))


# ---------------------------------------------------------------- promtool


@pytest.mark.slow  # runs promtool
def test_promtool_accepts_the_rules_and_their_unit_tests_pass():
  promtool = binary("promtool")
  checked = subprocess.run(
    [promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
  )
  assert checked.returncode == 0, checked.stdout + checked.stderr
  count = sum(len(group["rules"]) for group in yaml.safe_load(RULES.read_text())["groups"])
  assert f"SUCCESS: {count} rules found" in checked.stdout
  tested = subprocess.run(
    [promtool, "test", "rules", "rules_test.yml"],
    cwd=MONITORING,
    capture_output=True,
    text=True,
    timeout=60,
  )
  assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr


def test_every_dashboard_query_names_labels_in_its_legend():
  targets = dashboard_targets()
  assert len(targets) >= 8
  for title, expr, legend in targets:
    assert expr and legend, title
  used = " ".join(expr for _, expr, _ in targets)
  assert all(name in used for name in recording_rules()), "a recording rule no panel shows"


# ---------------------------------------------------------------- a real Prometheus


def api_query(prometheus_url, expr):
  """The instant vector Prometheus' HTTP API answers for expr: [(labels, value)]."""
  url = f"{prometheus_url}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
  with urllib.request.urlopen(url, timeout=10) as response:
    body = json.load(response)
  assert body["status"] == "success", body
  return [(series["metric"], float(series["value"][1])) for series in body["data"]["result"]]


def send_load(server, seconds):
  """Predict requests over REST and gRPC, and a few for a version that does not exist (NOT_FOUND),
  for `seconds`; returns how many were sent."""
  import grpc
  import tensorflow as tf
  from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

  body = json.dumps(
    {"signature_name": "result", "instances": [{"input_ids": [1, 5, 6], "input_mask": [1, 1, 1]}]}
  )
  rest = f"{server.rest_url}/v1/models/{server_fixtures.MODEL}"
  request = predict_pb2.PredictRequest()
  request.model_spec.name = server_fixtures.MODEL
  request.model_spec.signature_name = "result"
  request.inputs["input_ids"].CopyFrom(tf.make_tensor_proto([[1, 5, 6]], tf.int32))
  request.inputs["input_mask"].CopyFrom(tf.make_tensor_proto([[1, 1, 1]], tf.int32))
  sent, deadline = 0, time.monotonic() + seconds
  with grpc.insecure_channel(server.grpc) as channel:
    stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
    while time.monotonic() < deadline:
      stub.Predict(request, timeout=10)
      urllib.request.urlopen(f"{rest}:predict", body.encode(), timeout=10).read()
      sent += 2
      if sent % 20 == 0:
        with pytest.raises(urllib.error.HTTPError, match="404"):
          urllib.request.urlopen(f"{rest}/versions/99:predict", body.encode(), timeout=10)
        sent += 1
  return sent


def wait_for_data(prometheus_url, expr):
  """Polls expr until it returns series (bounded); returns them."""
  deadline = time.monotonic() + SETTLE_TIMEOUT_S
  while not (result := api_query(prometheus_url, expr)) and time.monotonic() < deadline:
    time.sleep(0.5)
  return result


def wait_until_ready(prometheus, url, log):
  """Waits (bounded) for Prometheus' /-/ready; fails with its log if it exits or never is."""
  deadline = time.monotonic() + SETTLE_TIMEOUT_S
  while time.monotonic() < deadline and prometheus.poll() is None:
    try:
      with urllib.request.urlopen(f"{url}/-/ready", timeout=5):
        return
    except (urllib.error.URLError, ConnectionError):
      time.sleep(0.2)
  raise AssertionError(f"Prometheus not ready: {log.read_text()[-2000:]}")


@pytest.fixture(scope="module")
def prometheus_under_load(tmp_path_factory):
  """A Prometheus scraping the embedded server every second while it served a short load, with
  monitoring/rules.yml loaded: yields (Prometheus URL, requests sent)."""
  executable = binary("prometheus")
  tmp = tmp_path_factory.mktemp("prometheus")
  server_fixtures.build_model(tmp / "models" / "1")
  monitoring = (REPO_ROOT / "docker" / "monitoring_config.txt").read_text()
  metrics_path = re.search(r'path:\s*"([^"]+)"', monitoring).group(1)
  with ServerProcess(
    tmp / "models",
    tmp / "server.log",
    flags=["--monitoring_config_file", str(REPO_ROOT / "docker" / "monitoring_config.txt")],
  ) as server:
    config = {
      "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
      "rule_files": [str(RULES)],
      "scrape_configs": [
        {
          "job_name": "bert-ner",
          "metrics_path": metrics_path,
          "static_configs": [{"targets": [server.rest.replace("localhost", "127.0.0.1")]}],
        }
      ],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with open(tmp / "prometheus.log", "w") as log:
      prometheus = subprocess.Popen(
        [
          executable,
          f"--config.file={tmp / 'prometheus.yml'}",
          f"--storage.tsdb.path={tmp / 'data'}",
          f"--web.listen-address=127.0.0.1:{port}",
          "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
      )
    url = f"http://127.0.0.1:{port}"
    try:
      wait_until_ready(prometheus, url, tmp / "prometheus.log")
      assert wait_for_data(url, 'up{job="bert-ner"} == 1'), (tmp / "prometheus.log").read_text()
      sent = send_load(server, LOAD_SECONDS)
      time.sleep(2)  # two more scrapes after the last request
      yield url, sent
    finally:
      prometheus.terminate()
      prometheus.wait(timeout=30)


@pytest.mark.slow  # starts the embedded server and Prometheus
def test_every_recording_rule_returns_data_with_its_labels(prometheus_under_load, capsys):
  url, sent = prometheus_under_load
  rules = recording_rules()
  for name, expr in rules.items():
    result = wait_for_data(url, name)
    assert result, f"{name}: no data after {sent} requests"
    for labels, value in result:
      assert set(labels) - {"__name__", "job", "instance"} == grouping_labels(expr), (name, labels)
      assert math.isfinite(value), (name, labels, value)
    assert any(labels.get("model_name") == server_fixtures.MODEL for labels, _ in result), name
  with capsys.disabled():
    print(f"\nPrometheus: {len(rules)} recording rules evaluated with data after {sent} requests")


@pytest.mark.slow  # starts the embedded server and Prometheus
def test_every_dashboard_query_returns_data_with_its_legend_labels(prometheus_under_load, capsys):
  url, sent = prometheus_under_load
  targets = dashboard_targets()
  for title, expr, legend in targets:
    result = wait_for_data(url, expr)
    assert result, f"{title}: {expr} returned no data"
    for labels, value in result:
      assert legend_labels(legend) <= set(labels), (title, legend, labels)
      assert math.isfinite(value), (title, labels, value)
  with capsys.disabled():
    print(f"\nPrometheus: {len(targets)} dashboard queries evaluated with data")
