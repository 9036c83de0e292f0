"""docker/ as the tests read it: the Dockerfile's instructions."""

import re

from bert_ner.paths import REPO_ROOT

DOCKER = REPO_ROOT / "docker"


def dockerfile_instructions():
  """(INSTRUCTION, arguments) pairs of docker/Dockerfile, continuation lines joined."""
  text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
  lines = [line.strip() for line in text.splitlines()]
  return [tuple(line.split(None, 1)) for line in lines if line and not line.startswith("#")]


def instruction(name):
  """Arguments of every `name` instruction."""
  return [args for inst, args in dockerfile_instructions() if inst.upper() == name]
