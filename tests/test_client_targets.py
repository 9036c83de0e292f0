"""Clients: several --server targets (gRPC round robin list, REST fail-over), one-line errors for
bad arguments, bad input and bad server answers, and a REST --timeout that bounds the whole
request. Fast: fake servers on loopback; the replicas test is tests/reliability."""

import contextlib
import json
import socket
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from bert_ner import model_base
from bert_ner.clients import common, grpc_client, rest_client
from bert_ner.clients.tfs_protos import tfs_lite_pb2 as lite
from bert_ner.featurizer import pad_batch
from e2e_support import free_port
from support.clients import (
  HEADERS,
  SCRIPTS,
  SENTENCE,
  VOCAB,
  BadServing,
  FakeServing,
  ServiceUnavailable,
  TrickleServer,
  answer_once,
  assert_one_line_error,
  int_tensor,
  run_bytes,
  run_script,
  write_assets,
)

TRICKLE_TIMEOUT_S = 2.0
TIMEOUT_SLACK_S = 1.5
SCRIPT_START_S = 3.0  # interpreter and imports on a loaded 2-core machine


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
  return write_assets(tmp_path_factory.mktemp("targets") / model_base.ASSETS_DIR)


# ---------------------------------------------------------------- --server parsing


@pytest.mark.parametrize(
  "server,schemes,expected",
  [
    ("h:1", (), (None, ["h:1"])),
    ("127.0.0.1:8500,127.0.0.1:8501", (), (None, ["127.0.0.1:8500", "127.0.0.1:8501"])),
    (" a:1 , b:2 ", (), (None, ["a:1", "b:2"])),
    ("[::1]:8500", (), (None, ["[::1]:8500"])),
    (
      "dns:///bert-ner-grpc.default.svc.cluster.local:8500",
      grpc_client.TARGET_SCHEMES,
      ("dns", ["bert-ner-grpc.default.svc.cluster.local:8500"]),
    ),
    ("http://h:8501,h2:8501", rest_client.SCHEMES, ("http", ["h:8501", "h2:8501"])),
    ("https://h:443/", rest_client.SCHEMES, ("https", ["h:443"])),
  ],
)
def test_split_servers(server, schemes, expected):
  assert common.split_servers(server, schemes) == expected


@pytest.mark.parametrize(
  "server,error",
  [
    ("", "--server is empty"),
    ("   ", "--server is empty"),
    ("127.0.0.1:99999", "port 99999 is not in 1-65535"),
    ("127.0.0.1:0", "port 0 is not in 1-65535"),
    ("ftp://example.org:21", "scheme 'ftp' not supported"),
    ("localhost", "'localhost' is not host:port"),
    ("a:1,,b:2", "'' is not host:port"),
    ("h:port", "'h:port' is not host:port"),
  ],
)
def test_split_servers_refuses(server, error):
  with pytest.raises(common.ClientError, match=error.replace("(", r"\(")):
    common.split_servers(server, grpc_client.TARGET_SCHEMES)


@pytest.mark.parametrize(
  "server,target",
  [
    ("h:1", "h:1"),
    ("dns:///svc.ns:8500", "dns:///svc.ns:8500"),
    ("127.0.0.1:1,127.0.0.2:2", "ipv4:///127.0.0.1:1,127.0.0.2:2"),
    ("localhost:1,127.0.0.1:2", "ipv4:///127.0.0.1:1,127.0.0.1:2"),
    ("[::1]:1,[::1]:2", "ipv6:///[::1]:1,[::1]:2"),
  ],
)
def test_grpc_channel_target(server, target):
  assert grpc_client.channel_target(server) == target


def test_grpc_channel_target_refuses_mixed_families():
  with pytest.raises(common.ClientError, match="mixes IPv4 and IPv6"):
    grpc_client.channel_target("127.0.0.1:1,[::1]:2")


def test_the_grpc_service_config_balances_and_retries_unavailable():
  options = dict(grpc_client.CHANNEL_OPTIONS)
  config = json.loads(options["grpc.service_config"])
  assert config["loadBalancingConfig"] == [{"round_robin": {}}]
  (method,) = config["methodConfig"]
  assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
  assert options["grpc.enable_retries"] == 1


# ---------------------------------------------------------------- pred_label checks


IDS = np.array([[101, 5, 102], [101, 6, 102]], np.int32)


@pytest.mark.parametrize(
  "pred,error",
  [
    ([[10, 0, 11], [10, 0, 11]], None),
    ([[10, 0, 11]], r"shape \[1, 3\] for input_ids of shape \[2, 3\]"),
    ([[10, 0], [10, 0]], r"shape \[2, 2\]"),
    ([10, 0, 11], r"shape \[3\]"),
    ([[10, -3, 11], [10, 0, 11]], "label id -3, outside the 12 labels"),
    ([[10, 99, 11], [10, 0, 11]], "label id 99, outside the 12 labels"),
    ([[10, 1.7, 11], [10, 0, 11]], "non-integer label id: 1.7"),
    ([[10, True, 11], [10, False, 11]], "non-integer label id: true"),
    ([[10, "1", 11], [10, 0, 11]], 'non-integer label id: "1"'),
    ([[10, None, 11], [10, 0, 11]], "non-integer label id: null"),
    ([[10, 0, 11], [10, 0]], "ragged"),
    (np.zeros([2, 3], np.float32), "float32 label ids, not integers"),
  ],
)
def test_check_labels(pred, error):
  if error is None:
    checked = common.check_labels(pred, IDS, 12)
    assert checked.dtype == np.int32 and checked.tolist() == pred
  else:
    with pytest.raises(common.ClientError, match=error):
      common.check_labels(pred, IDS, 12)


@pytest.mark.parametrize(
  "tensor,error",
  [
    (
      lite.TensorProto(
        dtype=lite.DT_INT32,
        tensor_shape=lite.TensorShapeProto(
          dim=[lite.TensorShapeProto.Dim(size=2), lite.TensorShapeProto.Dim(size=3)]
        ),
        tensor_content=np.zeros(5, "<i4").tobytes(),
      ),
      r"shape \[2, 3\] holds 5 values",
    ),
    (
      lite.TensorProto(
        dtype=lite.DT_INT32,
        tensor_shape=lite.TensorShapeProto(dim=[lite.TensorShapeProto.Dim(size=-1)]),
        int_val=[1, 2],
      ),
      "negative dimension",
    ),
    # The declared size is a product: in int64, [2**32, 2**32] wraps to 0 and would pass a check.
    (int_tensor([2**32, 2**32], []), r"declares 18446744073709551616 values"),
    (int_tensor([2**62, 4], [0]), r"declares 18446744073709551616 values"),
    (
      lite.TensorProto(
        dtype=lite.DT_INT32,
        tensor_shape=lite.TensorShapeProto(dim=[lite.TensorShapeProto.Dim(size=1)]),
        tensor_content=b"\0" * 5,
      ),
      "tensor_content of 5 bytes is not int32 values",
    ),
    (lite.TensorProto(dtype=9999), "expected an int32 output, got dtype 9999"),
    (lite.TensorProto(dtype=lite.DT_FLOAT), "expected an int32 output, got DT_FLOAT"),
  ],
)
def test_grpc_output_tensor_checks(tensor, error):
  with pytest.raises(common.ClientError, match=error):
    grpc_client.make_array(tensor)


# ---------------------------------------------------------------- bad answers, end to end


@pytest.fixture(scope="module")
def bad_server():
  server = BadServing()
  yield server
  server.close()


# The sentence is one row of 6 sub-tokens: [CLS] eu rejects german call [SEP].
REST_ANSWERS = [
  ({}, "server answer has no 'pred_label' outputs: {}"),
  ([], "server answer has no 'pred_label' outputs: \\[\\]"),
  ({"outputs": {"other": [[0] * 6]}}, "no 'pred_label' outputs"),
  ({"outputs": [[0] * 5]}, r"shape \[1, 5\] for input_ids of shape \[1, 6\]"),
  ({"outputs": [[0] * 6, [0] * 6]}, r"shape \[2, 6\]"),
  ({"outputs": [[10, -3, 0, 0, 0, 11]]}, "label id -3"),
  ({"outputs": [[10, 99, 0, 0, 0, 11]]}, "label id 99"),
  ({"outputs": [[10, 1.7, 0, 0, 0, 11]]}, "non-integer label id: 1.7"),
]


@pytest.mark.slow  # runs the client scripts
@pytest.mark.parametrize("answer,error", REST_ANSWERS, ids=lambda v: json.dumps(v)[:30])
def test_rest_bad_answers_are_one_line_errors(bad_server, assets, answer, error):
  bad_server.rest_answer = answer
  result = run_script("rest", "--server", bad_server.rest_address, "--assets", assets, SENTENCE)
  assert_one_line_error(result, error)


@pytest.mark.parametrize(
  "tensor,error",
  [
    (int_tensor([1, 5], [0] * 5), r"shape \[1, 5\] for input_ids of shape \[1, 6\]"),
    (int_tensor([1, 6], [10, -3, 0, 0, 0, 11]), "label id -3"),
    (int_tensor([1, 6], [10, 99, 0, 0, 0, 11]), "label id 99"),
    (int_tensor([2, 6], [0] * 11), r"shape \[2, 6\] holds 11 values"),
  ],
)
@pytest.mark.slow  # runs the client scripts
def test_grpc_bad_answers_are_one_line_errors(bad_server, assets, tensor, error):
  bad_server.grpc_answer = tensor
  result = run_script("grpc", "--server", bad_server.grpc_address, "--assets", assets, SENTENCE)
  assert_one_line_error(result, error)


# ---------------------------------------------------------------- bad arguments and input


@pytest.mark.parametrize("transport", SCRIPTS)
@pytest.mark.parametrize(
  "args,error",
  [
    (["--server", "127.0.0.1:99999"], "port 99999 is not in 1-65535"),
    (["--server", ""], "--server is empty"),
    (["--server", "ftp://example.org:21"], "scheme 'ftp' not supported"),
    (["--timeout", "nan"], "--timeout finite"),
    (["--timeout", "inf"], "--timeout finite"),
    (["--timeout", "-1"], "must be positive"),
    (["--timeout", "soon"], "invalid float value: 'soon'"),
    (["--no_such_flag"], "unrecognized arguments: --no_such_flag"),
  ],
)
@pytest.mark.slow  # runs the client scripts
def test_bad_arguments_are_one_line_errors(assets, transport, args, error):
  result = run_script(transport, "--assets", assets, *args, SENTENCE)
  assert_one_line_error(result, error)


@pytest.mark.slow  # runs the client scripts
@pytest.mark.parametrize("transport", SCRIPTS)
def test_invalid_utf8_in_argv_is_a_one_line_error(assets, transport):
  result = run_bytes(
    transport, ["--assets", str(assets), "--server", "127.0.0.1:9", "EU", b"caf\xe9 Berlin"]
  )
  assert_one_line_error(
    result,
    r"sentence argument 2 is not valid UTF-8 \(byte 0xe9 at "
    r"character 3\)",
  )


@pytest.mark.slow  # runs the client scripts
@pytest.mark.parametrize("transport", SCRIPTS)
def test_invalid_utf8_on_stdin_is_a_one_line_error(assets, transport):
  result = run_bytes(
    transport,
    ["--assets", str(assets), "--server", "127.0.0.1:9", "--file", "-"],
    stdin=b"EU rejects\nGerman \xff\xfe call\n",
  )
  assert_one_line_error(result, r"stdin is not valid UTF-8 \(byte 0xff at byte offset 18\)")


# ---------------------------------------------------------------- REST --timeout, whole request


@pytest.mark.parametrize(
  "prefix,answer",
  [(b"", HEADERS + b"{" + b" " * 38 + b"}"), (HEADERS, b"{" + b" " * 38 + b"}")],
  ids=["headers trickled", "body trickled"],
)
@pytest.mark.slow  # 2 s by design (a trickling server)
def test_rest_timeout_bounds_the_whole_request(assets, prefix, answer):
  server = TrickleServer(answer, prefix)
  try:
    client = rest_client.RestNerClient(
      server.address, signature="result", timeout=TRICKLE_TIMEOUT_S, assets=assets
    )
    started = time.monotonic()
    with pytest.raises(common.ClientError, match="timeout: no answer from .* within 2s"):
      client.output_names()
    elapsed = time.monotonic() - started
  finally:
    server.close()
  assert TRICKLE_TIMEOUT_S - 0.1 <= elapsed <= TRICKLE_TIMEOUT_S + TIMEOUT_SLACK_S


@pytest.mark.slow  # runs the client scripts, 3-4 s
def test_rest_script_abandons_a_trickling_server(assets):
  server = TrickleServer(HEADERS + b"{" + b" " * 38 + b"}", interval=2.0)
  try:
    started = time.monotonic()
    result = run_script(
      "rest", "--server", server.address, "--assets", assets, "--timeout", "3", SENTENCE
    )
    elapsed = time.monotonic() - started
  finally:
    server.close()
  assert_one_line_error(result, "timeout: no answer from .* within 3s")
  assert elapsed < 3 + TIMEOUT_SLACK_S + SCRIPT_START_S


def test_rest_refuses_an_endless_answer(assets, monkeypatch):
  """A server streaming a body without end costs the client MAX_ANSWER_BYTES, not its memory."""
  monkeypatch.setattr(rest_client, "MAX_ANSWER_BYTES", 1 << 20)
  listener = socket.create_server(("127.0.0.1", 0))

  def flood():
    conn, _ = listener.accept()
    with conn, listener:
      conn.recv(65536)
      conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
      with contextlib.suppress(OSError):  # until the client hangs up
        while True:
          conn.sendall(b" " * 65536)

  threading.Thread(target=flood, daemon=True).start()
  address = f"127.0.0.1:{listener.getsockname()[1]}"
  client = rest_client.RestNerClient(address, signature="result", timeout=5, assets=assets)
  with pytest.raises(
    common.ClientError, match=rf"^http://{address}/v1/.* answered more than 1 MiB$"
  ):
    client.output_names()


@pytest.mark.parametrize(
  "raw,error",
  [
    # TF Serving never redirects; requests followed the Location (ftp:// gave a traceback).
    (
      b"HTTP/1.1 307 Temporary Redirect\r\nLocation: ftp://x/\r\nContent-Length: 0\r\n\r\n",
      r"^server error HTTP 307$",
    ),
    (
      b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: 4\r\n\r\n{}{}",
      r"answered a body its Content-Encoding does not decode$",
    ),
    (b"garbage\r\n\r\n", r"^bad answer from http://\S+: BadStatusLine"),
    (b"HTTP/1.1 abc OK\r\n\r\n", r"^bad answer from http://\S+: BadStatusLine"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", r": LineTooLong \"got more"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 200 + b"\r\n", r": HTTPException \"got more"),
    (
      b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      r"^bad answer from http://\S+: InvalidChunkLength",
    ),
  ],
  ids=[
    "redirect",
    "gzip that is not gzip",
    "not HTTP",
    "bad status code",
    "header line too long",
    "too many headers",
    "bad chunk length",
  ],
)
def test_rest_odd_answers_are_one_line_errors(assets, raw, error):
  client = rest_client.RestNerClient(answer_once(raw), signature="result", timeout=5, assets=assets)
  with pytest.raises(common.ClientError, match=error):
    client.output_names()


@pytest.mark.parametrize(
  "status,code,error",
  [
    ("404 Not Found", "NOT_FOUND", r"^not found on .*: no such model$"),
    ("504 Gateway Timeout", "DEADLINE_EXCEEDED", r"^timeout: no answer from .*: no such model$"),
    ("502 Bad Gateway", "UNAVAILABLE", r"^server unreachable at .*: no such model$"),
    ("500 Internal Server Error", "INTERNAL", r"^server error HTTP 500: no such model$"),
    ("418 I'm a teapot", "UNKNOWN", r"^server error HTTP 418: no such model$"),
  ],
)
def test_rest_error_answers_carry_the_status_as_a_code(assets, status, code, error):
  body = b'{"error": "no such model"}'
  raw = b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s" % (status.encode(), len(body), body)
  client = rest_client.RestNerClient(answer_once(raw), signature="result", timeout=5, assets=assets)
  with pytest.raises(common.ClientError, match=error) as caught:
    client.output_names()
  assert caught.value.code == code


class NotToBeEncoded:
  def __str__(self):
    raise AssertionError("excerpt encoded the whole answer")


def test_excerpt_encodes_only_the_start_of_a_large_answer():
  text = common.excerpt({"outputs": [[]] * 100_000 + [NotToBeEncoded()]})
  assert len(text) == 80 and text.startswith('{"outputs": [[], [], ') and text.endswith("...")


# ---------------------------------------------------------------- REST fail-over


def test_rest_fails_over_to_the_next_target_and_stays_there(assets):
  server = FakeServing(VOCAB)
  try:
    dead = f"127.0.0.1:{free_port()}"
    client = rest_client.RestNerClient(
      f"{dead},{server.rest_address}", signature="result", assets=assets
    )
    client.check_fingerprint()
    assert [[e.text for e in entities] for entities in client.predict([SENTENCE])] == [
      ["EU", "German"]
    ]
    assert client.current == 1
  finally:
    server.close()


def test_rest_fails_over_on_503(assets):
  good = FakeServing(VOCAB)
  busy = ServiceUnavailable()
  try:
    client = rest_client.RestNerClient(
      f"{busy.address},{good.rest_address}", signature="result", assets=assets
    )
    assert client.predict([SENTENCE])[0][0].text == "EU" and client.current == 1
    assert busy.requests == 1
  finally:
    busy.close()
    good.close()


@pytest.mark.slow  # 1.3-1.9 s measured
def test_all_targets_down_is_one_line_error(assets):
  servers = f"127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
  for transport in SCRIPTS:
    result = run_script(
      transport, "--server", servers, "--assets", assets, "--timeout", "5", SENTENCE
    )
    assert_one_line_error(result, "server unreachable at 127.0.0.1:")


def test_grpc_retries_unavailable_calls(assets):
  """A call failing UNAVAILABLE is retried by the channel (the service config's policy)."""
  calls = []

  def predict(request, context):
    calls.append(time.monotonic())
    if len(calls) == 1:
      context.abort(grpc.StatusCode.UNAVAILABLE, "going away")
    return lite.PredictResponse(
      outputs={"pred_label": grpc_client.make_tensor(np.zeros([1, 6], np.int32))}
    )

  server = grpc.server(futures.ThreadPoolExecutor(2))
  server.add_generic_rpc_handlers(
    [
      grpc.method_handlers_generic_handler(
        "tensorflow.serving.PredictionService",
        {
          "Predict": grpc.unary_unary_rpc_method_handler(
            predict, lite.PredictRequest.FromString, lite.PredictResponse.SerializeToString
          )
        },
      )
    ]
  )
  port = server.add_insecure_port("127.0.0.1:0")
  server.start()
  try:
    client = grpc_client.GrpcNerClient(f"127.0.0.1:{port}", signature="result", assets=assets)
    assert client.run(*pad_batch(client.featurizer.encode_text(SENTENCE)[1])).shape == (1, 6)
    assert len(calls) == 2
  finally:
    server.stop(0)


def test_grpc_dns_target_reaches_the_server(assets):
  server = FakeServing(VOCAB)
  try:
    port = server.grpc_address.rpartition(":")[2]
    client = grpc_client.GrpcNerClient(
      f"dns:///localhost:{port}", signature="result", assets=assets
    )
    client.check_fingerprint()
    assert [e.text for e in client.predict([SENTENCE])[0]] == ["EU", "German"]
  finally:
    server.close()


def test_a_wider_pred_label_is_read_in_its_own_columns():
  # TF Serving's batching answers a request merged with longer ones at the batch's width (rows
  # split, columns not): found when bench's concurrent clients refused the merged answers.
  ids = np.array([[101, 7327, 102]], np.int32)
  assert common.check_labels([[10, 5, 11, 0, 0, 0]], ids, 12).tolist() == [[10, 5, 11]]
  assert common.check_labels(np.array([[10, 5, 11, 10]]), ids, 12).tolist() == [[10, 5, 11]]
  with pytest.raises(common.ClientError, match=r"shape \[1, 2\] for input_ids of shape \[1, 3\]"):
    common.check_labels([[10, 5]], ids, 12)
  with pytest.raises(common.ClientError, match=r"shape \[2, 3\]"):
    common.check_labels([[10, 5, 11], [10, 5, 11]], ids, 12)
