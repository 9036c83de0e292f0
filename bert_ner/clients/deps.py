"""The clients run by a Python without their dependencies: one line saying how to get them.

Imports nothing beyond the standard library, so it works exactly where the clients' imports fail.
"""

import contextlib
import os
import sys
from collections.abc import Iterator


@contextlib.contextmanager
def imports_or_exit(module_name: str) -> Iterator[None]:
  """Runs a client's imports; a missing module exits with status 2 and one line saying how to get
  the dependencies when the client runs as a script (`module_name` "__main__"), else re-raises."""
  try:
    yield
  except ModuleNotFoundError as missing:  # e.g. the system python3 instead of the venv's
    if module_name != "__main__":
      raise
    script = os.path.basename(sys.argv[0])
    print(
      f"{script}: error: {sys.executable} has no module {missing.name!r}, which the clients "
      f"need: run `make setup`, then `.venv/bin/python clients/{script} ...` (or `. "
      f".venv/bin/activate` first), or `pip install '.[client]'`",
      file=sys.stderr,
    )
    sys.exit(2)
