"""Bad requests over REST and gRPC: each answered with TF Serving's code and a message
naming the problem."""

import dataclasses
import json
import re
import socket
import time

import numpy as np
import pytest

from bert_ner.clients.tfs_protos import tfs_lite_pb2 as lite
from rel_support import (
  CASE_TIME_LIMIT_S,
  CLS,
  GOOD_IDS,
  HTTP_TIMEOUT_S,
  HUGE_LEN,
  HUGE_ROWS,
  MODEL,
  OVERSIZE_BYTES,
  POSITIONS,
  PREDICT_PATH,
  PREDICT_RPC,
  SEP,
  VOCAB_SIZE,
  Observed,
  excerpt,
  good,
  good_inputs,
  grpc_inputs,
  grpc_request,
  grpc_send,
  int_tensor,
  mask_of,
  oversize_grpc,
  oversize_rest,
  rest_columnar,
  rest_send,
  tensor,
)


@dataclasses.dataclass
class Case:
  """A bad request: how to send it on each transport and what must come back."""

  name: str
  rest: object = None  # dict | bytes | callable(env) -> Observed | None (not applicable)
  grpc: object = None  # lite.PredictRequest | bytes | callable(env) -> Observed | None
  rest_status: tuple = (400,)
  grpc_code: tuple = ("INVALID_ARGUMENT",)
  message: str = ""  # regex the error message must match
  rest_path: str = PREDICT_PATH
  rest_headers: dict = None
  time_limit: float = CASE_TIME_LIMIT_S
  check: object = None  # callable(transport, Observed) -> bool for accepted answers


def both(inputs_rest, inputs_grpc, **kwargs):
  return dict(rest=inputs_rest, grpc=inputs_grpc, **kwargs)


def empty_batch_ok(transport, observed):
  """an empty prediction, or refused with a message naming the empty batch or shape"""
  if observed.code in (200, "OK"):
    if transport == "rest":
      return np.asarray(observed.body["outputs"]).size == 0
    return [d.size for d in observed.body.outputs["pred_label"].tensor_shape.dim][0] == 0
  return observed.code in (400, "INVALID_ARGUMENT") and re.search(
    r"(?i)empty|non-empty|shape|rows|batch", observed.message
  )


def curl_json_ok(transport, observed):
  """accepted as TF Serving accepts it, which ignores Content-Type: one row of 6 predictions"""
  return np.asarray(observed.body["outputs"]).shape == (1, 6)


def http11_to_grpc_port(env):
  """A plain HTTP/1.1 JSON POST to the gRPC port: what comes back before the socket closes."""
  host, port = env.grpc.rsplit(":", 1)
  body = json.dumps(rest_columnar(GOOD_IDS)).encode()
  started = time.monotonic()
  with socket.create_connection((host, int(port)), timeout=HTTP_TIMEOUT_S) as s:
    s.sendall(
      b"POST " + PREDICT_RPC.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: "
      b"application/json\r\nContent-Length: "
      + str(len(body)).encode()
      + b"\r\nConnection: close\r\n\r\n"
      + body
    )
    answer = b""
    while len(answer) < 4096 and (chunk := s.recv(4096)):
      answer += chunk
  seconds = time.monotonic() - started
  status = re.match(rb"HTTP/1\.[01] (\d{3})", answer)
  if status:
    return Observed(int(status.group(1)), excerpt(answer.decode("latin-1")), seconds)
  # An HTTP/2 frame header: 3 bytes length, 1 byte type (4 SETTINGS, 7 GOAWAY).
  kinds = {4: "SETTINGS", 7: "GOAWAY", 8: "WINDOW_UPDATE"}
  frames, at = [], 0
  while at + 9 <= len(answer):
    frames.append(kinds.get(answer[at + 3], f"type {answer[at + 3]}"))
    at += 9 + int.from_bytes(answer[at : at + 3], "big")
  return Observed(
    "connection closed",
    f"{len(answer)} bytes back: HTTP/2 frames {', '.join(frames) or 'none'}, no HTTP/1 response",
    seconds,
  )


def nested_json(depth):
  return (
    b'{"signature_name": "result", "inputs": {"input_ids": ' + b"[" * depth + b"]" * depth + b"}}"
  )


def huge_ids():
  return np.random.default_rng(0).integers(1000, 2000, (HUGE_ROWS, HUGE_LEN)).tolist()


ONE_D = [CLS, 7327, SEP]
LONG_IDS = [[CLS] + [7327] * (POSITIONS - 1) + [SEP]]  # POSITIONS + 1 long
CASES = [
  Case(
    "malformed body (truncated JSON / undecodable protobuf)",
    rest=b'{"signature_name": "result", "inputs": {"input_ids": [[101, 102]',
    grpc=b"\x0a\xff\x01garbage",
    message=r"JSON Parse error|cannot parse the request",
  ),
  # rapidjson does not validate UTF-8 (no kParseValidateEncodingFlag): the string parses and
  # the request fails on its shape, as in TF Serving.
  Case(
    "body not UTF-8",
    rest=b'{"signature_name": "result", "inputs": "\xff\xfe"}',
    message=r"inputs is a plain value/list, but expecting an object",
  ),
  Case(
    "body is a JSON array, not an object",
    rest=b"[[101, 102]]",
    message=r"^JSON Value: \[\[101, 102\]\] Is not object$",
  ),
  Case(
    "deeply nested JSON (100,000 levels)",
    rest=nested_json(100_000),
    message=r"(?i)JSON Parse error|nested|recursion",
  ),
  Case(
    "wrong content type, non-JSON body (form-encoded)",
    rest=b"input_ids=101&input_mask=1",
    rest_headers={"Content-Type": "application/x-www-form-urlencoded"},
    message=r"JSON Parse error",
  ),
  Case(
    "JSON body sent with curl -d's default content type (form-urlencoded)",
    rest=json.dumps(rest_columnar(GOOD_IDS)).encode(),
    rest_headers={"Content-Type": "application/x-www-form-urlencoded"},
    rest_status=(200,),
    check=curl_json_ok,
  ),
  Case(
    "wrong HTTP method (GET on :predict)",
    rest=lambda env: rest_send(env, b"", method="GET"),
    rest_status=(400,),
    message=rf"^Malformed request: GET {PREDICT_PATH}$",
  ),
  Case(
    "both 'inputs' and 'instances'",
    rest=dict(rest_columnar(GOOD_IDS), instances=[]),
    message=r"only one of 'inputs' or 'instances'",
  ),
  Case(
    "wrong protocol: HTTP/1.1 JSON POST to the gRPC port",
    grpc=http11_to_grpc_port,
    grpc_code=("connection closed", 400, 403, 404, 405, 415, 426, 505),
    message="",
  ),
  Case(
    "missing input (no input_mask)",
    **both(
      {"signature_name": "result", "inputs": {"input_ids": GOOD_IDS}},
      grpc_request({"input_ids": int_tensor(GOOD_IDS)}),
    ),
    message=r"Missing but required: \{input_mask\}",
  ),
  Case(
    "extra input (token_type_ids)",
    **both(
      rest_columnar(GOOD_IDS, token_type_ids=[[0] * 6]),
      grpc_request(
        {
          "input_ids": int_tensor(GOOD_IDS),
          "input_mask": int_tensor(mask_of(GOOD_IDS)),
          "token_type_ids": int_tensor([[0] * 6]),
        }
      ),
    ),
    message=r"Sent extra: \{token_type_ids\}",
  ),
  Case(
    "wrong dtype: float ids",
    **both(
      rest_columnar([[101.5, 102.0]]),
      grpc_request(
        {
          "input_ids": tensor(lite.DT_FLOAT, [1, 2], float_val=[101.5, 102]),
          "input_mask": int_tensor([[1, 1]]),
        }
      ),
    ),
    message=r"^JSON Value: 101.5 Type: Number is not of expected type: int32$|"
    r"int32 but float",
  ),
  Case(
    "wrong dtype: string ids",
    **both(
      rest_columnar([["101", "102"]]),
      grpc_request(
        {
          "input_ids": tensor(lite.DT_STRING, [1, 2], string_val=[b"101", b"102"]),
          "input_mask": int_tensor([[1, 1]]),
        }
      ),
    ),
    message=r'^JSON Value: "101" Type: String is not of expected type: int32$|'
    r"int32 but string",
  ),
  Case(
    "wrong rank: 1-D ids",
    **both(
      rest_columnar(ONE_D, [1, 1, 1]),
      grpc_request(grpc_inputs(ONE_D, [1] * 3)),
    ),
    message=r"input_ids has shape \[3\] but the signature expects \[-1,-1\]",
  ),
  Case(
    "wrong rank: 3-D ids",
    **both(
      rest_columnar([GOOD_IDS], [mask_of(GOOD_IDS)]),
      grpc_request(grpc_inputs([GOOD_IDS], [mask_of(GOOD_IDS)])),
    ),
    message=r"input_ids has shape \[1,1,6\] but the signature expects \[-1,-1\]",
  ),
  # gRPC with fewer values than the shape is filled as Tensor::FromProto fills it (the last
  # value repeats): test_rel_contract.py.
  Case(
    "ragged rows",
    rest=rest_columnar([[CLS, 7327, SEP], [CLS, SEP]], [[1, 1, 1], [1, 1]]),
    message=r"^Encountered list at unexpected size: 2 at level: 1 expected size: 3$",
  ),
  Case(
    "tensor_content shorter than its shape",
    grpc=grpc_request(
      {
        "input_ids": tensor(lite.DT_INT32, [2, 3], tensor_content=b"\x01\x00\x00\x00" * 5),
        "input_mask": int_tensor([[1, 1, 1], [1, 1, 0]]),
      }
    ),
    message=r"^tensor parsing error: input_ids$",
  ),
  Case(
    "input_mask shape != input_ids shape",
    **both(
      rest_columnar(GOOD_IDS, [[1, 1, 1, 1]]),
      grpc_request(grpc_inputs(GOOD_IDS, [[1, 1, 1, 1]])),
    ),
    message=r"input_mask shape \[1,4\] does not match input_ids shape \[1,6\]",
  ),
  Case(
    "negative ids",
    **both(
      rest_columnar([[CLS, -5, SEP]]),
      grpc_request(grpc_inputs([[CLS, -5, SEP]], [[1, 1, 1]])),
    ),
    message=rf"-5, outside the vocabulary \[0, {VOCAB_SIZE}\)",
  ),
  Case(
    "ids >= vocabulary size",
    **both(
      rest_columnar([[CLS, VOCAB_SIZE, SEP]]),
      grpc_request(grpc_inputs([[CLS, VOCAB_SIZE, SEP]], [[1, 1, 1]])),
    ),
    message=rf"{VOCAB_SIZE}, outside the vocabulary",
  ),
  Case(
    "ids beyond int32 (2**40)",
    rest=rest_columnar([[CLS, 2**40, SEP]]),
    message=r"^JSON Value: 1099511627776 Type: Number is not of expected type: int32$",
  ),
  Case(
    f"sequence longer than the position table ({POSITIONS + 1} > {POSITIONS})",
    **both(
      rest_columnar(LONG_IDS),
      grpc_request(grpc_inputs(LONG_IDS)),
    ),
    message=rf"length {POSITIONS + 1} but the model has only {POSITIONS} positions",
  ),
  Case("empty batch: 'instances': []", rest={"instances": []}, message=r"non-empty"),
  Case(
    "empty batch: 0 rows ([] / shape [0,8])",
    **both(
      rest_columnar([], []),
      grpc_request(
        {"input_ids": tensor(lite.DT_INT32, [0, 8]), "input_mask": tensor(lite.DT_INT32, [0, 8])}
      ),
    ),
    rest_status=(200, 400),
    grpc_code=("OK", "INVALID_ARGUMENT"),
    check=empty_batch_ok,
  ),
  Case(
    f"huge batch: {HUGE_ROWS:,} rows x {HUGE_LEN}",
    **both(
      lambda env: rest_send(env, rest_columnar(huge_ids())),
      lambda env: grpc_send(
        env,
        grpc_request(grpc_inputs(huge_ids(), np.ones((HUGE_ROWS, HUGE_LEN)))),
      ),
    ),
    message=rf"^Task size {HUGE_ROWS} is larger than maximum input batch size \d+$",
  ),
  Case(
    f"body over the limit ({OVERSIZE_BYTES >> 20} MiB > 8 MiB default)",
    **both(
      lambda env: rest_send(env, oversize_rest()), lambda env: grpc_send(env, oversize_grpc())
    ),
    rest_status=(413,),
    grpc_code=("RESOURCE_EXHAUSTED",),
    message=r"(?i)too large|larger than max|exceeds|maximum",
  ),
  *(
    Case(
      what,
      **both(rest_columnar(GOOD_IDS), grpc_request(good_inputs(), **spec)),
      rest_path=rest_path,
      rest_status=(status,),
      grpc_code=(code,),
      message=message,
    )
    for what, spec, rest_path, status, code, message in [
      (
        "unknown model",
        {"name": "nope"},
        "/v1/models/nope:predict",
        404,
        "NOT_FOUND",
        r"Servable not found for request: Latest\(nope\)",
      ),
      (
        "unknown version (99)",
        {"version": 99},
        f"/v1/models/{MODEL}/versions/99:predict",
        404,
        "NOT_FOUND",
        rf"Specific\({MODEL}, 99\)",
      ),
      (
        "unknown version label",
        {"label": "canary"},
        f"/v1/models/{MODEL}/labels/canary:predict",
        400,
        "INVALID_ARGUMENT",
        r"^Unrecognized servable version label: canary$",
      ),
    ]
  ),
  Case(
    "unknown signature",
    **both(
      dict(rest_columnar(GOOD_IDS), signature_name="nope"),
      grpc_request(good_inputs(), signature="nope"),
    ),
    rest_status=(400,),
    grpc_code=("FAILED_PRECONDITION",),
    message=r'^Serving signature name: "nope" not found in signature def$|'
    r'^Serving signature key "nope" not found\.$',
  ),
  Case(
    "unknown REST route (:explode)",
    rest=rest_columnar(GOOD_IDS),
    rest_path=f"/v1/models/{MODEL}:explode",
    rest_status=(400,),
    message=rf"^Malformed request: POST /v1/models/{MODEL}:explode$",
  ),
]


def expected_text(case, transport):
  codes = case.rest_status if transport == "rest" else case.grpc_code
  text = " or ".join(map(str, codes))
  if case.check is not None:
    text += f" ({case.check.__doc__.strip()})"
  elif case.message:
    text += f", message ~ /{case.message}/"
  return text + f", < {case.time_limit:g} s; then a good request succeeds"


def send(env, case, transport):
  spec = case.rest if transport == "rest" else case.grpc
  if callable(spec):
    return spec(env)
  if transport == "rest":
    return rest_send(env, spec, case.rest_path, case.rest_headers)
  return grpc_send(env, spec)


@pytest.mark.parametrize(
  "case,transport",
  [
    pytest.param(case, transport, id=f"{transport}-{re.sub(r'[^a-z0-9]+', '_', case.name.lower())}")
    for case in CASES
    for transport in ("rest", "grpc")
    if (case.rest if transport == "rest" else case.grpc) is not None
  ],
)
def test_bad_request(env, report, case, transport):
  observed = send(env, case, transport)
  after = good(env, transport)
  codes = case.rest_status if transport == "rest" else case.grpc_code
  accepted = observed.code in codes and (
    case.check(transport, observed)
    if case.check
    else re.search(case.message, observed.message) is not None
  )
  fast = observed.seconds < case.time_limit
  alive = after.code in (200, "OK") and env.server.proc.poll() is None
  text = f"{observed.code}: {excerpt(observed.message) or '(no message)'}"
  if observed.code in (200, "OK") and case.check is empty_batch_ok:
    text = f"{observed.code}: empty prediction"
  report.add(
    "bad requests",
    case.name,
    transport,
    expected_text(case, transport),
    f"{text}; {observed.seconds * 1000:.0f} ms; next good request: {after.code}",
    accepted and fast and alive,
  )
  assert observed.code in codes, observed
  assert accepted, observed
  assert fast, f"took {observed.seconds:.1f}s"
  assert alive, (after, env.server.log()[-3000:])
