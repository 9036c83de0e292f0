"""JSON config files read with one clear error (no TensorFlow: the clients read label maps too)."""

import json
import os
from typing import Any


def read_json(path: str | os.PathLike[str]) -> Any:
  """The parsed JSON of a file; ValueError naming the file when it is not UTF-8 or not JSON.

  A document nested thousands of levels deep exhausts the parser's recursion: that is refused as
  bad JSON too instead of escaping as a RecursionError.
  """
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except UnicodeDecodeError as e:
    raise ValueError(f"{path}: not UTF-8 ({e.reason} at byte {e.start})") from e
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not JSON ({e.msg}, line {e.lineno} column {e.colno})") from e
  except RecursionError as e:
    raise ValueError(f"{path}: not a config: JSON nested too deep") from e
