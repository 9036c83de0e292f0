"""bert_ner.atomic: a file or dir appears whole or not at all; a failure leaves no temp."""

import errno
import os
import stat
import subprocess
import sys

import numpy as np
import pytest

from bert_ner import atomic


class Interrupted(Exception):
  """Raised inside a write block, as a crash or a full disk would."""


def _plain_open_mode(tmp_path):
  """The permission bits a plain open() gives a new file under this process's umask."""
  (tmp_path / "plain").write_text("")
  return stat.S_IMODE((tmp_path / "plain").stat().st_mode)


def test_file_content_replaces_the_old_and_nothing_else_is_left(tmp_path):
  path = tmp_path / "report.json"
  path.write_text("old", encoding="utf-8")
  atomic.write_text(path, "new ü\n")
  assert path.read_text(encoding="utf-8") == "new ü\n"
  assert os.listdir(tmp_path) == ["report.json"]


def test_binary_file_through_a_writer_that_needs_a_file_object(tmp_path):
  path = tmp_path / "features.npz"
  with atomic.open_file(path, "wb") as f:
    np.savez(f, flat=np.arange(3))
  with np.load(path) as data:
    assert data["flat"].tolist() == [0, 1, 2]
  assert os.listdir(tmp_path) == ["features.npz"]


def test_a_failed_write_leaves_the_old_file_and_no_partial_one(tmp_path):
  path = tmp_path / "report.json"
  path.write_text("old", encoding="utf-8")
  with pytest.raises(Interrupted), atomic.open_file(path) as f:
    f.write("half of the new")
    f.flush()
    assert path.read_text(encoding="utf-8") == "old"  # readers see the old file meanwhile
    raise Interrupted
  assert path.read_text(encoding="utf-8") == "old"
  assert os.listdir(tmp_path) == ["report.json"]
  with pytest.raises(Interrupted), atomic.open_file(tmp_path / "new.json") as f:
    f.write("half")
    raise Interrupted
  assert os.listdir(tmp_path) == ["report.json"]


def test_a_file_gets_the_permissions_of_a_plain_open(tmp_path):
  atomic.write_text(tmp_path / "f", "x")
  assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == _plain_open_mode(tmp_path)


def test_only_writing_modes_are_accepted(tmp_path):
  with pytest.raises(ValueError, match="mode must write"), atomic.open_file(tmp_path / "f", "r"):
    pass


def test_a_built_dir_appears_whole_with_0755(tmp_path):
  target = tmp_path / "parent" / "model"
  with atomic.build_dir(target) as tmp:
    (tmp / "a.txt").write_text("a")
    assert not target.exists()  # nothing at the target until the block completes
  assert sorted(os.listdir(target)) == ["a.txt"]
  assert stat.S_IMODE(target.stat().st_mode) == 0o755
  assert os.listdir(target.parent) == ["model"]


def test_without_replace_an_existing_dir_wins(tmp_path):
  target = tmp_path / "model"
  target.mkdir()
  (target / "theirs").write_text("1")
  with pytest.raises(OSError), atomic.build_dir(target) as tmp:
    (tmp / "ours").write_text("2")
  assert os.listdir(target) == ["theirs"]
  assert os.listdir(tmp_path) == ["model"]


def test_replace_swaps_the_whole_dir_and_removes_the_old_one(tmp_path):
  target = tmp_path / "model"
  target.mkdir()
  (target / "old").write_text("1")
  with atomic.build_dir(target, replace=True) as tmp:
    (tmp / "new").write_text("2")
    assert os.listdir(target) == ["old"]  # readers see the old dir meanwhile
  assert os.listdir(target) == ["new"]
  assert os.listdir(tmp_path) == ["model"]


@pytest.mark.parametrize("replace", [False, True])
def test_a_failed_build_leaves_the_target_and_no_temp_dir(tmp_path, replace):
  target = tmp_path / "model"
  target.mkdir()
  (target / "old").write_text("1")
  with pytest.raises(Interrupted), atomic.build_dir(target, replace=replace) as tmp:
    (tmp / "half").write_text("2")
    raise Interrupted
  assert os.listdir(target) == ["old"]
  assert os.listdir(tmp_path) == ["model"]


_REPLACER = """
import sys
from bert_ner import atomic
for i in range(int(sys.argv[2])):
  with atomic.build_dir(sys.argv[1], replace=True) as d:
    (d / "done").write_text(str(i))
"""


def _replace_while_polling(target, replaces):
  """Polls `target` while a child process replaces it `replaces` times; returns (polls, misses)."""
  target.mkdir()
  writer = subprocess.Popen([sys.executable, "-c", _REPLACER, str(target), str(replaces)])
  polls = misses = 0
  while writer.poll() is None:
    polls += 1
    misses += not os.path.isdir(target)
  assert writer.wait() == 0
  return polls, misses


@pytest.mark.skipif(sys.platform != "linux", reason="renameat2 is Linux's")
def test_a_reader_never_finds_a_replaced_dir_missing(tmp_path):
  # Two renames left the dir missing in ~1.6% of polls (11,189 of 683,275 in 10 s).
  polls, misses = _replace_while_polling(tmp_path / "ckpt", 1500)
  assert polls > 1000 and misses == 0
  assert os.listdir(tmp_path) == ["ckpt"]
  assert (tmp_path / "ckpt" / "done").read_text() == "1499"


@pytest.mark.parametrize("error", [errno.ENOSYS, errno.EACCES])
def test_an_exchange_that_fails(tmp_path, monkeypatch, error):
  """Unsupported (ENOSYS): two renames instead; any other error is raised, the old dir kept."""

  def failing(a, b):
    raise OSError(error, os.strerror(error))

  monkeypatch.setattr(atomic, "_exchange", failing)
  target = tmp_path / "model"
  target.mkdir()
  (target / "old").write_text("1")
  if error == errno.ENOSYS:
    with atomic.build_dir(target, replace=True) as tmp:
      (tmp / "new").write_text("2")
    assert os.listdir(target) == ["new"]
  else:
    with pytest.raises(PermissionError), atomic.build_dir(target, replace=True):
      pass
    assert os.listdir(target) == ["old"]
  assert os.listdir(tmp_path) == ["model"]


@pytest.fixture
def dead_and_live_pids():
  """A pid whose process has exited and one of a process that is still running."""
  dead = subprocess.Popen([sys.executable, "-c", ""])
  dead.wait()
  live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
  yield dead.pid, live.pid
  live.kill()
  live.wait()


@pytest.mark.parametrize("write", ["file", "dir"])
def test_a_write_removes_leftovers_of_dead_writers_only(tmp_path, dead_and_live_pids, write):
  dead, live = dead_and_live_pids
  stale_dir = tmp_path / f".model.old-{dead}-k3_x9"
  (stale_dir / "old").mkdir(parents=True)
  (tmp_path / f".model.tmp-{dead}-ab12cd34").write_bytes(b"half")
  kept = [
    f".model.tmp-{live}-ab12cd34",  # a writer still at work
    f".other.tmp-{dead}-ab12cd34",  # another name's: its own next write cleans it
    f".model.tmp-{dead}",  # not a name atomic makes
  ]
  for name in kept:
    (tmp_path / name).write_bytes(b"")
  if write == "file":
    atomic.write_text(tmp_path / "model", "new")
  else:
    with atomic.build_dir(tmp_path / "model", replace=True) as d:
      (d / "new").write_text("2")
  assert sorted(os.listdir(tmp_path)) == sorted([*kept, "model"])


def test_temp_names_carry_the_writer_pid(tmp_path):
  with atomic.build_dir(tmp_path / "model") as d:
    assert d.name.startswith(f".model.tmp-{os.getpid()}-")
  with atomic.open_file(tmp_path / "report") as f:
    assert os.path.basename(f.name).startswith(f".report.tmp-{os.getpid()}-")
