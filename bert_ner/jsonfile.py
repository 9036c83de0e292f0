"""JSON config files read with one clear error (no TensorFlow: the clients read label maps too),
and the checks of their fields' values."""

import json
import math
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


def shown(value: Any) -> str:
  """A config value as an error message shows it: its repr, cut short."""
  text = repr(value)
  return text if len(text) <= 40 else text[:37] + "..."


def is_int(value: Any) -> bool:
  """An integer as JSON gives one: true/false and 1e9 are not sizes."""
  return type(value) is int


def is_number(value: Any) -> bool:
  """A finite number (not a boolean)."""
  return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def require_field(ok: bool, source: str, field: str, rule: str, value: Any) -> None:
  """ValueError `<source>: <field> must be <rule>, got <value>` unless ok."""
  if not ok:
    raise ValueError(f"{source}: {field} must be {rule}, got {shown(value)}")
