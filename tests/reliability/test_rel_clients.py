"""The client scripts against bad arguments, bad input and bad server answers: each must end in
one line on stderr and a non-zero exit, never a traceback or wrong tags given silently."""

import os
import signal
import subprocess
import sys
import time

import numpy as np

from bert_ner import model_base
from bert_ner.featurizer import Featurizer
from e2e_support import LABELS
from rel_support import excerpt
from support.clients import (
  HEADERS,
  SCRIPTS,
  BadServing,
  TrickleServer,
  answer_once,
  int_tensor,
  run_bytes,
  write_assets,
)

SENTENCE = "EU rejects German call"
TRICKLE_TIMEOUT_S = 5
TRICKLE_INTERVAL_S = 2.0
TIMEOUT_SLACK_S = 4.0  # interpreter start-up on a loaded machine and the last socket wait


def one_line_error(result):
  """(ok, what happened) for a script run that must fail with one stderr line."""
  lines = result.stderr.splitlines()
  ok = (
    result.returncode != 0
    and result.stdout == ""
    and len(lines) == 1
    and lines[0].startswith("error: ")
  )
  shown = lines[-1] if lines else "(no stderr)"
  return ok, f"exit {result.returncode}: {excerpt(shown, 120)}" + (
    "" if len(lines) <= 1 else f" (+{len(lines) - 1} more stderr lines)"
  )


def record(report, section, case, transport, result, seconds=None):
  ok, observed = one_line_error(result)
  if seconds is not None:
    observed += f"; {seconds:.1f} s"
  report.add(section, case, transport, "one line on stderr, non-zero exit", observed, ok)
  return ok


def test_bad_arguments_and_input(env, report):
  assets = str(env.assets)
  cases = [
    ("--server 127.0.0.1:99999", ["--server", "127.0.0.1:99999", SENTENCE], b""),
    ('--server ""', ["--server", "", SENTENCE], b""),
    ("--server ftp://example.org:21", ["--server", "ftp://example.org:21", SENTENCE], b""),
    ("--timeout nan", ["--timeout", "nan", SENTENCE], b""),
    ("--timeout inf", ["--timeout", "inf", SENTENCE], b""),
    ("--timeout -3", ["--timeout", "-3", SENTENCE], b""),
    ("invalid UTF-8 in argv (b'caf\\xe9')", [b"caf\xe9 Berlin"], b""),
    ("invalid UTF-8 on stdin (b'\\xff\\xfe')", ["--file", "-"], b"EU rejects\n\xff\xfe\n"),
  ]
  failed = []
  for transport in ("grpc", "rest"):
    server = ["--server", env.grpc if transport == "grpc" else env.rest]
    for name, args, stdin in cases:
      argv = ["--assets", assets] + (server if "--server" not in args else []) + args
      if not record(
        report, "bad texts", f"client {name}", transport, run_bytes(transport, argv, stdin)
      ):
        failed.append((transport, name))
  assert not failed


REST_ANSWERS = [
  ("{}", {}),
  ("[]", []),
  ("wrong shape [1, 5]", {"outputs": [[0] * 5]}),
  ("wrong row count (2 rows for 1)", {"outputs": [[0] * 6, [0] * 6]}),
  ("label -3", {"outputs": [[10, -3, 0, 0, 0, 11]]}),
  ("label 99", {"outputs": [[10, 99, 0, 0, 0, 11]]}),
  ("label 1.7", {"outputs": [[10, 1.7, 0, 0, 0, 11]]}),
]
GRPC_ANSWERS = [
  ("wrong shape [1, 5]", int_tensor([1, 5], [0] * 5)),
  ("wrong row count (2 rows for 1)", int_tensor([2, 6], [0] * 12)),
  ("label -3", int_tensor([1, 6], [10, -3, 0, 0, 0, 11])),
  ("label 99", int_tensor([1, 6], [10, 99, 0, 0, 0, 11])),
  ("shape [1, 6] holding 5 values", int_tensor([1, 6], [0] * 5)),
]


def test_bad_server_answers(report, tmp_path):
  server = BadServing()
  failed = []
  try:
    assets = str(write_assets(tmp_path / model_base.ASSETS_DIR))
    for transport, answers in (("rest", REST_ANSWERS), ("grpc", GRPC_ANSWERS)):
      for name, answer in answers:
        if transport == "rest":
          server.rest_answer, address = answer, server.rest_address
        else:
          server.grpc_answer, address = answer, server.grpc_address
        result = run_bytes(transport, ["--assets", assets, "--server", address, SENTENCE])
        if not record(report, "faults", f"server answers predict with {name}", transport, result):
          failed.append((transport, name))
  finally:
    server.close()
  assert not failed


def test_rest_timeout_bounds_a_trickling_server(env, report):
  server = TrickleServer(HEADERS + b"{" + b" " * 38 + b"}", interval=TRICKLE_INTERVAL_S)
  try:
    started = time.monotonic()
    result = run_bytes(
      "rest",
      [
        "--assets",
        str(env.assets),
        "--server",
        server.address,
        "--timeout",
        str(TRICKLE_TIMEOUT_S),
        SENTENCE,
      ],
    )
    seconds = time.monotonic() - started
  finally:
    server.close()
  ok, observed = one_line_error(result)
  ok = ok and seconds <= TRICKLE_TIMEOUT_S + TIMEOUT_SLACK_S
  report.add(
    "faults",
    f"REST --timeout {TRICKLE_TIMEOUT_S} vs a server sending one byte every "
    f"{TRICKLE_INTERVAL_S:g} s",
    "rest",
    f"gives up after ~{TRICKLE_TIMEOUT_S} s with one line on stderr",
    f"{observed}; {seconds:.1f} s",
    ok,
  )
  assert ok


def test_unknown_pieces_never_extend_an_entity(env, report):
  featurizer = Featurizer.from_dir(str(env.assets))
  text = (
    "Angela Merkel \U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 met Macron "
    "\U0001f1eb\U0001f1f7"
  )
  inverse = {i: token for token, i in featurizer.vocab.items()}
  # A model that reads names as PER and every other piece, [UNK] included, as a continuation.
  tags = {"angela": "B-PER", "mer": "I-PER", "macro": "B-PER", "[CLS]": "[CLS]", "[SEP]": "[SEP]"}

  def run_fn(input_ids, input_mask):
    return np.array(
      [[LABELS.index(tags.get(inverse[i], "X")) for i in row] for row in input_ids.tolist()],
      np.int32,
    )

  found = [(e.type, e.text) for e in featurizer.predict_texts([text], run_fn)[0]]
  expected = [("PER", "Angela Merkel"), ("PER", "Macron")]
  report.add(
    "bad texts",
    "'Angela Merkel <family emoji> met Macron <flag>', the emoji [UNK] "
    "pieces predicted X (continuation)",
    "featurizer",
    "PER Angela Merkel, PER Macron: [UNK] pieces never extend an entity",
    ", ".join(f"{t} {excerpt(s)}" for t, s in found),
    found == expected,
  )
  assert found == expected


PIPED_LINES = 3000  # about 150 KB of output: more than a pipe holds, so the writer meets the close


def test_output_piped_into_head_ends_quietly(env, report, tmp_path):
  lines = tmp_path / "lines.txt"
  lines.write_text("\n".join(SENTENCE for _ in range(PIPED_LINES)) + "\n")
  failed = []
  for transport in SCRIPTS:
    server = env.grpc if transport == "grpc" else env.rest
    argv = ["--assets", str(env.assets), "--server", server, "--file", str(lines)]
    proc = subprocess.Popen(
      [sys.executable, str(SCRIPTS[transport]), *argv],
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      env=dict(os.environ, LC_ALL="C.UTF-8"),
    )
    first = proc.stdout.readline()
    proc.stdout.close()  # what `head -n 1` does once it has its line
    stderr = proc.stderr.read().decode(errors="replace")
    proc.wait(timeout=60)
    proc.stderr.close()
    ok = first.startswith(SENTENCE.encode()) and stderr == ""
    ok = ok and proc.returncode == 128 + signal.SIGPIPE
    report.add(
      "faults",
      f"client --file of {PIPED_LINES} lines piped into `head -n 1`",
      transport,
      "no output on stderr, exit 141 (as a process ended by SIGPIPE)",
      f"exit {proc.returncode}; stderr: {excerpt(stderr, 100) or '(none)'}",
      ok,
    )
    if not ok:
      failed.append((transport, proc.returncode, stderr[-300:]))
  assert not failed


MALFORMED_ANSWERS = [
  ("a status line that is not HTTP", b"garbage\r\n\r\n"),
  ("a 70,000-byte header line", b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n"),
  ("200 headers", b"HTTP/1.1 200 OK\r\n" + b"X: a\r\n" * 200 + b"\r\n"),
  ("a bad chunk length", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
]


def test_a_malformed_http_answer_is_a_bad_answer(env, report):
  failed = []
  for name, raw in MALFORMED_ANSWERS:
    address = answer_once(raw)
    result = run_bytes("rest", ["--assets", str(env.assets), "--server", address, SENTENCE])
    ok, observed = one_line_error(result)
    ok = ok and result.stderr.startswith(f"error: bad answer from http://{address}/")
    report.add(
      "faults",
      f"REST server answers with {name}",
      "rest",
      "one line 'bad answer from <url>: <what>', non-zero exit (not 'server unreachable')",
      observed,
      ok,
    )
    if not ok:
      failed.append((name, result.stderr))
  assert not failed
