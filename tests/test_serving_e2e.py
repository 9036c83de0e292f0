"""Exporter + embedded server end to end: one request over REST and gRPC, and a new version
exported by `python -m bert_ner.export` while requests keep coming."""

import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
import requests
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from bert_ner.paths import REPO_ROOT
from bert_ner.server.process import ServerProcess
from e2e_support import make_checkpoint

pytestmark = pytest.mark.slow  # exports and starts the server

ROW = {"input_ids": [101, 7327, 19164, 2446, 2655, 102], "input_mask": [1, 1, 1, 1, 1, 1]}
LOAD_SECONDS = 60  # upper bound on the request loop


def export(checkpoint_dir, base):
  """`python -m bert_ner.export` as a user runs it; returns the completed process."""
  return subprocess.run(
    [
      sys.executable,
      "-m",
      "bert_ner.export",
      "--checkpoint",
      str(checkpoint_dir),
      "--model_base_path",
      str(base),
      "--verify_sentences",
      "8",
    ],
    cwd=REPO_ROOT,
    capture_output=True,
    text=True,
    timeout=300,
  )


@pytest.fixture(scope="module")
def served(tiny_bert_dir, tmp_path_factory):
  """A tiny model exported as version 1 and served on free loopback ports."""
  root = tmp_path_factory.mktemp("serving_e2e")
  checkpoint_dir = make_checkpoint(tiny_bert_dir, root / "ckpt")
  first = export(checkpoint_dir, root / "models")
  assert first.returncode == 0, first.stderr
  server = ServerProcess(
    root / "models", root / "server.log", flags=["--file_system_poll_wait_seconds", "0.5"]
  ).start()
  yield server, checkpoint_dir, root / "models"
  server.stop()


def rest_predict(server):
  """Row-format REST predict of ROW; (pred_label row, HTTP status)."""
  reply = requests.post(
    f"http://{server.rest}/v1/models/bert_ner:predict",
    timeout=10,
    json={"signature_name": "result", "instances": [ROW]},
  )
  return reply.json().get("predictions", [None])[0], reply.status_code


def grpc_predict(stub):
  """gRPC Predict of ROW with tensorflow-serving-api; (pred_label row, served version)."""
  import tensorflow as tf

  request = predict_pb2.PredictRequest()
  request.model_spec.name, request.model_spec.signature_name = "bert_ner", "result"
  for name, values in ROW.items():
    request.inputs[name].CopyFrom(tf.make_tensor_proto([values], dtype=tf.int32))
  response = stub.Predict(request, timeout=10)
  return (
    tf.make_ndarray(response.outputs["pred_label"])[0].tolist(),
    response.model_spec.version.value,
  )


def test_same_request_over_rest_and_grpc_gives_the_same_labels(served):
  server, _, _ = served
  with grpc.insecure_channel(server.grpc) as channel:
    grpc_labels, version = grpc_predict(prediction_service_pb2_grpc.PredictionServiceStub(channel))
  rest_labels, status = rest_predict(server)
  assert status == 200 and version == 1
  assert rest_labels == grpc_labels and len(rest_labels) == len(ROW["input_ids"])
  assert np.all(np.asarray(rest_labels) >= 0)


def test_export_of_version_2_under_requests_loses_none(served):
  server, checkpoint_dir, base = served
  failures, answers, stop = [], [], threading.Event()

  def hammer():
    """Alternates REST and gRPC requests until told to stop (bounded by LOAD_SECONDS)."""
    deadline = time.monotonic() + LOAD_SECONDS
    with grpc.insecure_channel(server.grpc) as channel:
      stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
      while not stop.is_set() and time.monotonic() < deadline:
        try:
          labels, status = rest_predict(server)
          if status != 200:
            failures.append(f"REST {status}")
          answers.append(("rest", labels))
          answers.append(("grpc", *grpc_predict(stub)))
        except Exception as error:  # every failure is the finding, whatever its type
          failures.append(repr(error))

  workers = [threading.Thread(target=hammer) for _ in range(4)]
  for worker in workers:
    worker.start()
  second = export(checkpoint_dir, base)
  deadline = time.monotonic() + 60
  while time.monotonic() < deadline:
    status = requests.get(f"http://{server.rest}/v1/models/bert_ner", timeout=5).json()
    if [v["version"] for v in status["model_version_status"] if v["state"] == "AVAILABLE"] == ["2"]:
      break
    time.sleep(0.2)
  time.sleep(1)  # requests keep flowing after the swap too
  stop.set()
  for worker in workers:
    worker.join(timeout=LOAD_SECONDS)
  assert second.returncode == 0, second.stderr
  assert "-> " in second.stdout and "/2 " in second.stdout
  assert failures == []
  served_versions = {a[2] for a in answers if a[0] == "grpc"}
  assert served_versions == {1, 2}, served_versions
  assert len({tuple(a[1]) for a in answers}) == 1  # same weights, same labels, every time
  with grpc.insecure_channel(server.grpc) as channel:
    _, version = grpc_predict(prediction_service_pb2_grpc.PredictionServiceStub(channel))
  assert version == 2
