"""How the exporter publishes a version into a model base (no TensorFlow): dot-temp dirs, then
an atomic rename. What counts as a version is bert_ner.model_base's."""

import os
import shutil
from pathlib import Path

from bert_ner import atomic, model_base

TMP_PREFIX = ".tmp-"  # leading dot + non-integer name: TF Serving and our server never load it


def next_version(base):
  """Max existing version + 1 (1 for an empty base)."""
  return max(model_base.versions(base), default=0) + 1


def tmp_dir(base, version):
  """Private build dir of this process for `version`; `clean_stale` recognises it by its pid."""
  return Path(base) / f"{TMP_PREFIX}{version}-{os.getpid()}"


def clean_stale(base):
  """Delete temp dirs left by crashed exports (owner pid gone); returns their names."""
  stale = []
  for p in Path(base).glob(f"{TMP_PREFIX}*"):
    pid = p.name.rsplit("-", 1)[-1]
    if not pid.isdigit() or not atomic.alive(int(pid)):
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
