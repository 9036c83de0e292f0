"""Shared by the reliability case modules: the deployment's constants and raw REST/gRPC senders.

See conftest.py in this folder for the collector (docs/RELIABILITY.md) and the served deployment.
"""

import dataclasses
import json
import re
import time
from concurrent import futures

import grpc
import numpy as np
import requests

from bert_ner.clients import grpc_client
from bert_ner.clients.tfs_protos import tfs_lite_pb2 as lite

MODEL = "bert_ner"
VOCAB_SIZE, POSITIONS = 30522, 64  # conftest.TINY_BERT_CONFIG
CLS, SEP = 101, 102
GOOD_IDS = [[CLS, 7327, 19164, 2446, 2655, 102]]  # [CLS] eu rejects german call [SEP]
PREDICT_PATH = f"/v1/models/{MODEL}:predict"
PREDICT_RPC = "/tensorflow.serving.PredictionService/Predict"
HTTP_TIMEOUT_S = 30
CLIENT_TIMEOUT_S = 5.0
CASE_TIME_LIMIT_S = 10.0
HUGE_ROWS, HUGE_LEN = 10_000, 8
OVERSIZE_BYTES = 10 << 20  # the server's default --max_request_bytes is 8 MiB
LOAD_THREADS, LOAD_REQUESTS, WARMUP_REQUESTS = 32, 5000, 320
LOAD_TIME_LIMIT_S = 150
# The server's anonymous RSS grew by 14.9 to 18.0 MB over the 5,000 requests in six runs on this
# machine (each a fresh server: 15.1, 15.5, 15.5, 14.9, 18.0, 16.4). 40 MB leaves over 2x that
# as headroom and still fails a leak of 4.5 KB per request ((40 - 18) MB / 5,000 requests).
RSS_GROWTH_LIMIT_MB = 40
RECOVERY_LIMIT_S = 60
RECONNECT_LIMIT_S = 3.0  # a restarted server is usable by existing clients this soon
# The server stays down about this long: gRPC's default reconnect backoff (1 s x 1.6 per try,
# +-20 %) next retries ~26 s after the kill, so a client without a backoff cap waits ~9 s more.
OUTAGE_S = 17.0
EXPORT_TIMEOUT_S = 300
VERSION_SWAP_LIMIT_S = 120
SENTENCES = [
  "EU rejects German call to boycott British lamb .",
  "Peter Blackburn",
  "BRUSSELS 1996-08-22",
  "Japan began the defence of their Asian Cup title .",
]


def excerpt(text, limit=110):
  """One line of at most limit characters; pytest's temp dirs read <tmp>."""
  text = re.sub(r"/\S*?/pytest-\d+/", "<tmp>/", " ".join(str(text).split()))
  return text if len(text) <= limit else text[: limit - 3] + "..."


# ---------------------------------------------------------------- raw requests


@dataclasses.dataclass
class Observed:
  code: object  # HTTP status (int) or gRPC status name (str)
  message: str
  seconds: float
  body: object = None


def rest_send(env, body, path=PREDICT_PATH, headers=None, method="POST"):
  """One raw REST request; a dict body goes as JSON, bytes as they are."""
  data = json.dumps(body).encode() if isinstance(body, dict) else body
  headers = headers or {"Content-Type": "application/json"}
  started = time.monotonic()
  try:
    response = requests.request(
      method, f"http://{env.rest}{path}", data=data, headers=headers, timeout=HTTP_TIMEOUT_S
    )
  except requests.RequestException as e:
    return Observed(f"no HTTP answer ({type(e).__name__})", str(e), time.monotonic() - started)
  seconds = time.monotonic() - started
  try:
    document = response.json()
  except ValueError:
    return Observed(response.status_code, response.text[:300], seconds)
  message = document.get("error", "") if isinstance(document, dict) else ""
  return Observed(response.status_code, message, seconds, document)


def grpc_send(env, request, timeout=HTTP_TIMEOUT_S):
  """One raw Predict call; request is a lite PredictRequest or raw bytes."""
  payload = request if isinstance(request, bytes) else request.SerializeToString()
  started = time.monotonic()
  with grpc.insecure_channel(env.grpc) as channel:
    predict = channel.unary_unary(PREDICT_RPC)
    try:
      raw = predict(payload, timeout=timeout)
    except grpc.RpcError as e:
      return Observed(e.code().name, e.details() or "", time.monotonic() - started)
  return Observed("OK", "", time.monotonic() - started, lite.PredictResponse.FromString(raw))


def int_tensor(values):
  """int32 TensorProto (tensor_content) of a rectangular list."""
  return grpc_client.make_tensor(np.asarray(values, dtype=np.int64))


def tensor(dtype, shape, **values):
  return lite.TensorProto(
    dtype=dtype,
    tensor_shape=lite.TensorShapeProto(dim=[lite.TensorShapeProto.Dim(size=n) for n in shape]),
    **values,
  )


def mask_of(ids):
  return [[1] * len(row) for row in ids] if isinstance(ids[0], list) else [1] * len(ids)


def grpc_inputs(ids, mask=None):
  """Predict inputs as int32 TensorProtos: ids and their mask (default: mask_of(ids))."""
  return {
    "input_ids": int_tensor(ids),
    "input_mask": int_tensor(mask_of(ids) if mask is None else mask),
  }


def good_inputs():
  """The Predict inputs of one good row (GOOD_IDS and its mask) as TensorProtos."""
  return grpc_inputs(GOOD_IDS)


def grpc_request(inputs, name=MODEL, signature="result", version=None, label=None):
  spec = lite.ModelSpec(name=name, signature_name=signature)
  if version is not None:
    spec.version.value = version
  if label is not None:
    spec.version_label = label
  return lite.PredictRequest(model_spec=spec, inputs=inputs)


def rest_columnar(ids, mask=None, **extra):
  inputs = {"input_ids": ids, "input_mask": mask_of(ids) if mask is None else mask, **extra}
  return {"signature_name": "result", "inputs": inputs}


def good(env, transport):
  """A good one-row request on a transport; returns Observed (code 200 / OK on success)."""
  if transport == "rest":
    return rest_send(env, rest_columnar(GOOD_IDS))
  return grpc_send(
    env,
    grpc_request(good_inputs()),
  )


def served_version(env):
  """The version number a gRPC Predict answers from (None if the call fails)."""
  observed = good(env, "grpc")
  return observed.body.model_spec.version.value if observed.code == "OK" else None


def entities_sensible(text, entities):
  """Entities lie inside the text, name their own span and carry one of the label types."""
  return isinstance(entities, list) and all(
    0 <= e.start < e.end <= len(text)
    and text[e.start : e.end] == e.text
    and e.type in {"LOC", "MISC", "ORG", "PER"}
    for e in entities
  )


def oversize_rest():
  row = b"[" + b",".join([b"1000"] * 1000) + b"]"
  rows = b",".join([row] * (OVERSIZE_BYTES // len(row) + 1))
  return (
    b'{"signature_name": "result", "inputs": {"input_ids": [' + rows + b'], "input_mask": [[1]]}}'
  )


def oversize_grpc():
  ids = np.full((OVERSIZE_BYTES // 4 // 1000 + 1, 1000), 1000, np.int32)
  return grpc_request(
    {"input_ids": grpc_client.make_tensor(ids), "input_mask": grpc_client.make_tensor([[1]])}
  )


def polling_server(env, work, poll_s):
  """A server of its own on a copy of version 1 under work/models, polling it every poll_s
  seconds (started); returns (model base, ServerProcess)."""
  import shutil

  from bert_ner.server.process import ServerProcess

  base = work / "models"
  shutil.copytree(env.base / "1", base / "1")
  server = ServerProcess(
    base, work / "server.log", flags=["--file_system_poll_wait_seconds", str(poll_s)]
  ).start()
  return base, server


def call_all(server, requests_, concurrency):
  """Sends the Predict requests with `concurrency` in flight; their status names."""
  with grpc.insecure_channel(server.grpc) as channel:
    predict = channel.unary_unary(
      PREDICT_RPC,
      request_serializer=lite.PredictRequest.SerializeToString,
      response_deserializer=lite.PredictResponse.FromString,
    )

    def one(request):
      try:
        predict(request, timeout=HTTP_TIMEOUT_S)
      except grpc.RpcError as error:
        return error.code().name, error.details() or ""
      return "OK", ""

    with futures.ThreadPoolExecutor(concurrency) as pool:
      return list(pool.map(one, requests_))
