"""Writes that a reader sees whole or not at all: build beside the target, then one rename.

A rename within one directory is atomic on POSIX, so a reader (another training run reading the
feature cache, a server loading a checkpoint dir, a process converting the same backbone) never
sees half a file or half a directory. Nothing is fsync'd: this guards readers and crashed
writers, not power loss. The exporter's version dirs follow TF Serving's rules instead
(`export.layout`: pid-named temp dirs, a version that moves up when taken).
"""

import contextlib
import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

StrPath = str | os.PathLike[str]


def _temp_name(path: Path, kind: str) -> str:
  """Dot-prefixed (hidden from globs and version scans) and unique to this writer."""
  return f".{path.name}.{kind}-"


@contextlib.contextmanager
def open_file(path: StrPath, mode: str = "w", encoding: str | None = None) -> Iterator[IO[Any]]:
  """Opens a new temp file beside `path` for writing; a clean exit renames it over `path`.

  An exception inside the block removes the temp file and leaves `path` as it was. The file gets
  the permissions of a plain `open` (umask), not mkstemp's 0600.
  """
  path = Path(path)
  if "w" not in mode:
    raise ValueError(f"mode must write a new file ('w' or 'wb'), got {mode!r}")
  tmp = path.with_name(_temp_name(path, "tmp") + secrets.token_hex(4))
  try:
    with open(tmp, mode.replace("w", "x"), encoding=encoding) as f:
      yield f
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def write_text(path: StrPath, text: str) -> None:
  """Writes UTF-8 text to `path` atomically."""
  with open_file(path, "w", encoding="utf-8") as f:
    f.write(text)


@contextlib.contextmanager
def build_dir(path: StrPath, replace: bool = False) -> Iterator[Path]:
  """Yields a fresh temp dir beside `path` to fill; a clean exit renames it to `path` (0755).

  Without `replace`, a `path` that already exists (non-empty) makes the rename fail with OSError:
  another writer finished first. With `replace`, an existing `path` is moved aside just before
  the rename and deleted after it. An exception inside the block, or a failed rename, removes
  the temp dir and leaves `path` as it was.
  """
  path = Path(os.path.abspath(path))
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(prefix=_temp_name(path, "tmp"), dir=path.parent))
  try:
    tmp.chmod(0o755)
    yield tmp
    if replace and path.exists():
      _swap_dir(tmp, path)
    else:
      os.rename(tmp, path)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _swap_dir(new_dir: Path, path: Path) -> None:
  """Moves a complete `new_dir` to `path`; the existing `path` is deleted only after that."""
  trash = Path(tempfile.mkdtemp(prefix=_temp_name(path, "old"), dir=path.parent))
  os.rename(path, trash / "old")
  os.rename(new_dir, path)
  shutil.rmtree(trash)
