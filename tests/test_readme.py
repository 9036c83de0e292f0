"""README's query examples run as written against the shipped model served by `python -m
bert_ner.server`."""

import json
import re
import shlex
import shutil
import subprocess
import sys

import pytest

from bert_ner.paths import REPO_ROOT
from e2e_support import served_shipped_model
from support.readme import code_blocks

pytestmark = pytest.mark.slow  # exports the shipped model (MiniLM) and starts the server


@pytest.fixture(scope="module")
def served(tmp_path_factory):
  """models/default exported into a temp model base and served on free loopback ports."""
  with served_shipped_model(tmp_path_factory.mktemp("readme") / "bert_ner") as served:
    yield served


def test_client_commands_print_what_the_readme_shows(served):
  server, assets = served
  commands = [
    line
    for block in code_blocks("bash")
    for line in block.splitlines()
    if re.match(r"(\.venv/bin/)?python clients/", line)
  ]
  expected = code_blocks("text")[0]
  assert len(commands) == 2
  for command in commands:
    argv = shlex.split(command)
    address = server.grpc if "grpc_client" in command else server.rest
    done = subprocess.run(
      [sys.executable, *argv[1:2], "--server", address, "--assets", str(assets), *argv[2:]],
      cwd=REPO_ROOT,
      capture_output=True,
      text=True,
      timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == expected


def rounded(value):
  """A JSON value with its floats to 4 decimals: scores differ in the last digits between
  TensorFlow builds, entities and ids do not."""
  if isinstance(value, float):
    return round(value, 4)
  if isinstance(value, list):
    return [rounded(v) for v in value]
  if isinstance(value, dict):
    return {k: rounded(v) for k, v in value.items()}
  return value


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_examples_answer_what_the_readme_shows(served):
  server, _ = served
  curls = [block for block in code_blocks("bash") if block.startswith("curl")]
  assert len(curls) == 2  # text in first, then ids
  for curl, expected in zip(curls, code_blocks("json")):
    argv = [arg for arg in shlex.split(curl.replace("\\\n", " "))]
    argv = [arg.replace("localhost:8501", server.rest) for arg in argv]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert rounded(json.loads(done.stdout)) == rounded(json.loads(expected))
