"""Writes that a reader sees whole or not at all: build beside the target, then one rename.

A rename within one directory is atomic on POSIX, so a reader (another training run reading the
feature cache, a server loading a checkpoint dir, a process converting the same backbone) never
sees half a file or half a directory. Replacing a dir is one `renameat2(RENAME_EXCHANGE)` on
Linux (two renames elsewhere, with a moment where the dir is missing). Temp and old entries carry
the writer's pid, so the next write to the same name deletes those of writers that died (kill -9)
before cleaning up. Nothing is fsync'd: this guards readers and crashed writers, not power loss.
The exporter's version dirs follow TF Serving's rules instead (`bert_ner.export.layout`: pid-named
temp dirs, a version that moves up when taken).
"""

import contextlib
import ctypes
import errno
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

StrPath = str | os.PathLike[str]


_KINDS = ("tmp", "old")
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
# ENOSYS: kernel < 3.15 or a seccomp filter; EINVAL: a filesystem without exchange support.
_NO_EXCHANGE = (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP)


def _temp_name(path: Path, kind: str) -> str:
  """Dot-prefixed (hidden from globs and version scans), named by the writer's pid; the caller
  appends a random part so that threads of one process do not collide."""
  return f".{path.name}.{kind}-{os.getpid()}-"


def alive(pid: int) -> bool:
  """Whether a process with this pid exists (so its temp entries may still be in use)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def clean_stale(path: StrPath) -> list[str]:
  """Deletes the temp/old siblings of `path` whose writer pid is gone; returns their names.

  Only `.NAME.tmp-<pid>-<random>` and `.NAME.old-<pid>-<random>` of this very NAME count, so a
  sibling of another name or a live writer's entry is never touched.
  """
  path = Path(path)
  pattern = re.compile(rf"\.{re.escape(path.name)}\.(?:{'|'.join(_KINDS)})-(\d+)-[0-9a-z_]+")
  stale = []
  with contextlib.suppress(FileNotFoundError):
    for entry in os.scandir(path.parent):
      match = pattern.fullmatch(entry.name)
      if match is None or alive(int(match.group(1))):
        continue
      if entry.is_dir(follow_symlinks=False):
        shutil.rmtree(entry.path, ignore_errors=True)
      else:
        with contextlib.suppress(FileNotFoundError):
          os.unlink(entry.path)
      stale.append(entry.name)
  return stale


@contextlib.contextmanager
def open_file(path: StrPath, mode: str = "w", encoding: str | None = None) -> Iterator[IO[Any]]:
  """Opens a new temp file beside `path` for writing; a clean exit renames it over `path`.

  An exception inside the block removes the temp file and leaves `path` as it was. The file gets
  the permissions of a plain `open` (umask), not mkstemp's 0600.
  """
  path = Path(path)
  if "w" not in mode:
    raise ValueError(f"mode must write a new file ('w' or 'wb'), got {mode!r}")
  clean_stale(path)
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
  another writer finished first. With `replace`, an existing `path` is exchanged with the new
  dir in one step (readers see the old dir or the new one, never none) and then deleted. An
  exception inside the block, or a failed rename, removes the temp dir and leaves `path` as it was.
  """
  path = Path(os.path.abspath(path))
  path.parent.mkdir(parents=True, exist_ok=True)
  clean_stale(path)
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


def _exchange(a: Path, b: Path) -> None:
  """Swaps two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); OSError if it cannot."""
  renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
  if renameat2 is None:  # glibc < 2.28, musl, macOS
    raise OSError(errno.ENOSYS, "renameat2 is not in this libc")
  flags = ctypes.c_uint(_RENAME_EXCHANGE)
  if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) != 0:
    code = ctypes.get_errno()
    raise OSError(code, os.strerror(code), str(a), None, str(b))


def _swap_dir(new_dir: Path, path: Path) -> None:
  """Moves a complete `new_dir` to `path`; the existing `path` is deleted only after that.

  Exchanging leaves the old tree in `new_dir` (a pid-named temp dir, so a crash before the
  delete leaves nothing `clean_stale` misses). Without exchange, the old tree goes aside first:
  a reader can find `path` missing between the two renames.
  """
  try:
    _exchange(new_dir, path)
  except OSError as error:
    if error.errno not in _NO_EXCHANGE:
      raise
  else:
    shutil.rmtree(new_dir)
    return
  trash = Path(tempfile.mkdtemp(prefix=_temp_name(path, "old"), dir=path.parent))
  os.rename(path, trash / "old")
  os.rename(new_dir, path)
  shutil.rmtree(trash)
