"""Client test helpers: tiny assets, the client scripts run as subprocesses, and loopback stand-ins
for TF Serving (a fake that tags, one answering canned or trickled bytes, one always busy)."""

import http.server
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from concurrent import futures

import grpc
import numpy as np

from bert_ner.clients import grpc_client
from bert_ner.clients.tfs_protos import tfs_lite_pb2 as lite
from bert_ner.paths import REPO_ROOT
from e2e_support import LABELS

SCRIPTS = {
  "grpc": REPO_ROOT / "clients" / "grpc_client.py",
  "rest": REPO_ROOT / "clients" / "rest_client.py",
}
VOCAB = [
  "[PAD]",
  "[UNK]",
  "[CLS]",
  "[SEP]",
  "eu",
  "rejects",
  "german",
  "call",
  "to",
  "boycott",
  "british",
  "lamb",
  ".",
]
FAKE_TAGS = {"eu": "B-ORG", "german": "B-MISC", "british": "B-MISC"}
FINGERPRINT = "0123456789abcdef"
SENTENCE = "EU rejects German call"
CALL_TIMEOUT = 60


def write_assets(path, fingerprint=FINGERPRINT, max_seq_length=16):
  """A tiny assets.extra: vocab, label map and ner_config with labels and fingerprint."""
  path.mkdir(parents=True, exist_ok=True)
  (path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
  (path / "label2id.json").write_text(json.dumps({label: i for i, label in enumerate(LABELS)}))
  (path / "ner_config.json").write_text(
    json.dumps(
      {
        "head": "dense",
        "do_lower_case": True,
        "max_seq_length": max_seq_length,
        "labels": LABELS,
        "fingerprint": fingerprint,
      }
    )
  )
  return path


def run_script(transport, *args, stdin=None, env=None, cwd=None, timeout=CALL_TIMEOUT):
  """Runs a client script; returns the CompletedProcess."""
  if env is None:
    env = {k: v for k, v in os.environ.items() if k != "BERT_NER_ASSETS"}
  command = [sys.executable, str(SCRIPTS[transport]), *map(str, args)]
  run_in = {"env": env, "cwd": cwd, "timeout": timeout}
  return subprocess.run(command, input=stdin, capture_output=True, text=True, **run_in)


def assert_one_line_error(result, pattern):
  assert result.returncode != 0 and result.stdout == ""
  assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr
  assert re.search(pattern, result.stderr), result.stderr


class FakeServing:
  """TF Serving stand-in on loopback: gRPC and REST, tags eu ORG and german/british MISC."""

  def __init__(self, vocab, fingerprint=FINGERPRINT):
    self.tag_of_id = np.zeros(len(vocab), np.int32)
    for token, tag in FAKE_TAGS.items():
      self.tag_of_id[vocab.index(token)] = LABELS.index(tag)
    self.output_name = f"ner_{fingerprint}/pred_label:0"
    self.delay, self.shapes, self.metadata_calls = 0.0, [], 0
    self.grpc = grpc.server(futures.ThreadPoolExecutor(4))
    self.grpc.add_generic_rpc_handlers(
      [
        grpc.method_handlers_generic_handler(
          "tensorflow.serving.PredictionService",
          {
            "Predict": grpc.unary_unary_rpc_method_handler(
              self._grpc_predict,
              lite.PredictRequest.FromString,
              lite.PredictResponse.SerializeToString,
            ),
            "GetModelMetadata": grpc.unary_unary_rpc_method_handler(
              self._grpc_metadata,
              lite.GetModelMetadataRequest.FromString,
              lite.GetModelMetadataResponse.SerializeToString,
            ),
          },
        )
      ]
    )
    self.grpc_address = f"127.0.0.1:{self.grpc.add_insecure_port('127.0.0.1:0')}"
    self.grpc.start()
    fake = self

    class Handler(http.server.BaseHTTPRequestHandler):
      """REST: GET /v1/models/<m>/metadata, POST /v1/models/<m>:predict."""

      def do_GET(self):
        self._answer(*fake.rest("GET", self.path, None))

      def do_POST(self):
        self._answer(
          *fake.rest("POST", self.path, self.rfile.read(int(self.headers["Content-Length"])))
        )

      def _answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

      def log_message(self, *args):
        pass

    self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.http.handle_error = lambda request, address: None  # a client that timed out and left
    self.rest_address = f"127.0.0.1:{self.http.server_port}"
    threading.Thread(target=self.http.serve_forever, daemon=True).start()

  def close(self):
    self.http.shutdown()
    self.grpc.stop(0)

  def address(self, transport):
    return self.grpc_address if transport == "grpc" else self.rest_address

  def check(self, model, signature=None):
    """(status name, message) of TF Serving for a bad request, else None."""
    time.sleep(self.delay)
    if model != "bert_ner":
      return "NOT_FOUND", f"Servable not found for request: Latest({model})"
    if signature is not None and signature not in ("result", "serving_default"):
      return "INVALID_ARGUMENT", f'Serving signature key "{signature}" not found.'
    return None

  def predict(self, input_ids):
    self.shapes.append(input_ids.shape)
    return self.tag_of_id[input_ids]

  def signature_def_map(self):
    signatures = lite.SignatureDefMap()
    for name in ("result", "serving_default"):
      signatures.signature_def[name].outputs["pred_label"].name = self.output_name
    return signatures

  def _grpc_predict(self, request, context):
    error = self.check(request.model_spec.name, request.model_spec.signature_name)
    if error:
      context.abort(getattr(grpc.StatusCode, error[0]), error[1])
    pred = self.predict(grpc_client.make_array(request.inputs["input_ids"]))
    return lite.PredictResponse(outputs={"pred_label": grpc_client.make_tensor(pred)})

  def _grpc_metadata(self, request, context):
    self.metadata_calls += 1
    error = self.check(request.model_spec.name)
    if error:
      context.abort(getattr(grpc.StatusCode, error[0]), error[1])
    response = lite.GetModelMetadataResponse(model_spec=request.model_spec)
    response.metadata[
      "signature_def"
    ].type_url = "type.googleapis.com/tensorflow.serving.SignatureDefMap"
    response.metadata["signature_def"].value = self.signature_def_map().SerializeToString()
    return response

  def rest(self, method, path, body):
    """(HTTP status, JSON body) the way TF Serving's REST API answers."""
    match = re.fullmatch(r"/v1/models/([^/:]+)(/metadata|:predict)", path)
    if not match:
      return 404, {"error": "Malformed request"}
    body = json.loads(body) if body else {}
    error = self.check(
      match.group(1), body.get("signature_name", "serving_default") if method == "POST" else None
    )
    if error:
      return {"NOT_FOUND": 404, "INVALID_ARGUMENT": 400}[error[0]], {"error": error[1]}
    if method == "POST":
      return 200, {"outputs": self.predict(np.array(body["inputs"]["input_ids"])).tolist()}
    self.metadata_calls += 1
    signatures = {
      name: {"outputs": {"pred_label": {"name": self.output_name}}}
      for name in self.signature_def_map().signature_def
    }
    return 200, {"metadata": {"signature_def": {"signature_def": signatures}}}


# A server trickling one byte this often is never idle for a whole socket read timeout.
TRICKLE_INTERVAL_S = 0.5


def int_tensor(shape, values):
  """An int32 TensorProto of `shape` holding `values` as int_val (not tensor_content)."""
  return lite.TensorProto(
    dtype=lite.DT_INT32,
    tensor_shape=lite.TensorShapeProto(dim=[lite.TensorShapeProto.Dim(size=n) for n in shape]),
    int_val=values,
  )


class BadServing(FakeServing):
  """A fake TF Serving whose Predict answers a canned body (REST) or tensor (gRPC)."""

  def __init__(self):
    super().__init__(VOCAB)
    self.rest_answer = self.grpc_answer = None

  def rest(self, method, path, body):
    if method == "POST" and self.rest_answer is not None:
      return 200, self.rest_answer
    return super().rest(method, path, body)

  def _grpc_predict(self, request, context):
    return lite.PredictResponse(outputs={"pred_label": self.grpc_answer})


def run_bytes(transport, args, stdin=b""):
  """A client script with raw bytes arguments and stdin; returns the CompletedProcess."""
  env = dict(os.environ, LC_ALL="C.UTF-8")
  env.pop("BERT_NER_ASSETS", None)
  result = subprocess.run(
    [sys.executable, str(SCRIPTS[transport]), *args],
    input=stdin,
    capture_output=True,
    env=env,
    timeout=CALL_TIMEOUT,
  )
  result.stdout, result.stderr = result.stdout.decode(), result.stderr.decode()
  return result


class TrickleServer:
  """Loopback TCP server that reads a request, sends `prefix` at once, then `answer` one byte at
  a time."""

  def __init__(self, answer, prefix=b"", interval=TRICKLE_INTERVAL_S):
    self.answer, self.prefix, self.interval = answer, prefix, interval
    self.listener = socket.create_server(("127.0.0.1", 0))
    self.address = f"127.0.0.1:{self.listener.getsockname()[1]}"
    self.stop = threading.Event()
    threading.Thread(target=self._serve, daemon=True).start()

  def _serve(self):
    while not self.stop.is_set():
      try:
        conn, _ = self.listener.accept()
      except OSError:
        return
      threading.Thread(target=self._trickle, args=(conn,), daemon=True).start()

  def _trickle(self, conn):
    with conn:
      try:
        conn.recv(65536)
        conn.sendall(self.prefix)
        for byte in self.answer:
          if self.stop.wait(self.interval):
            return
          conn.sendall(bytes([byte]))
      except OSError:
        return  # the client gave up and closed

  def close(self):
    self.stop.set()
    self.listener.close()


HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 40\r\n\r\n"


def answer_once(raw):
  """host:port of a loopback server that answers one connection with the bytes `raw`."""
  listener = socket.create_server(("127.0.0.1", 0))

  def serve():
    conn, _ = listener.accept()
    with conn, listener:
      conn.recv(65536)
      conn.sendall(raw)

  threading.Thread(target=serve, daemon=True).start()
  return f"127.0.0.1:{listener.getsockname()[1]}"


class ServiceUnavailable:
  """Answers every request 503, counting them."""

  def __init__(self):
    owner = self
    self.requests = 0

    class Handler(http.server.BaseHTTPRequestHandler):
      def do_GET(self):  # the client's first call: the fingerprint's metadata request
        owner.requests += 1
        self.send_response(503)
        self.send_header("Content-Length", "0")
        self.end_headers()

      def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.do_GET()

      def log_message(self, *args):
        pass

    self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    self.address = f"127.0.0.1:{self.http.server_port}"
    threading.Thread(target=self.http.serve_forever, daemon=True).start()

  def close(self):
    self.http.shutdown()
