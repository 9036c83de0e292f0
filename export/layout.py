"""Model base layout shared by export and deploy (no TensorFlow): version dirs, dot-temp dirs."""

import os
import shutil
from pathlib import Path

TMP_PREFIX = ".tmp-"  # leading dot + non-integer name: TF Serving and our server never load it


def versions(base):
  """Sorted integer version numbers under `base` (what TF Serving would load)."""
  base = Path(base)
  if not base.is_dir():
    return []
  return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and p.is_dir())


def latest(base):
  """Path of the highest version under `base`, or None."""
  found = versions(base)
  return Path(base) / str(found[-1]) if found else None


def next_version(base):
  """Max existing version + 1 (1 for an empty base)."""
  return (versions(base) or [0])[-1] + 1


def tmp_dir(base, version):
  """Private build dir of this process for `version`; `clean_stale` recognises it by its pid."""
  return Path(base) / f"{TMP_PREFIX}{version}-{os.getpid()}"


def _alive(pid):
  """Whether a process with this pid exists (so its temp dir may still be in use)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def clean_stale(base):
  """Delete temp dirs left by crashed exports (owner pid gone); returns their names."""
  stale = []
  for p in Path(base).glob(f"{TMP_PREFIX}*"):
    pid = p.name.rsplit("-", 1)[-1]
    if not pid.isdigit() or not _alive(int(pid)):
      shutil.rmtree(p, ignore_errors=True)
      stale.append(p.name)
  return stale


def publish(tmp, base, version, fixed):
  """Renames `tmp` to `<base>/<version>` (atomic); an unfixed version moves up if it was taken."""
  while True:
    target = Path(base) / str(version)
    try:
      os.rename(tmp, target)
      return target
    except OSError:
      if fixed or not target.exists():
        raise
      version = next_version(base)
