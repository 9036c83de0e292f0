"""The README's text and its fenced code blocks, for the tests that run its examples."""

import re

from bert_ner.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def code_blocks(language):
  """Bodies of the README's fenced code blocks of one language, in order."""
  return re.findall(rf"```{language}\n(.*?)```", README, re.S)
