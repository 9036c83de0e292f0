"""The clients run by a Python without their dependencies: one line saying how to get them.

Imports nothing beyond the standard library, so it works exactly where the clients' imports fail.
"""

import os
import sys
from typing import NoReturn


def exit_without(missing: ModuleNotFoundError) -> NoReturn:
  """Exits with status 2 saying how to get the clients' dependencies (`missing`: the error)."""
  script = os.path.basename(sys.argv[0])
  print(
    f"{script}: error: {sys.executable} has no module {missing.name!r}, which the clients "
    f"need: run `make setup`, then `.venv/bin/python clients/{script} ...` (or `. "
    f".venv/bin/activate` first), or `pip install '.[client]'`",
    file=sys.stderr,
  )
  sys.exit(2)
