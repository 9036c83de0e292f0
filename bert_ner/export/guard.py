"""The export guard: a new version that would go live must not score far below the served one.

TF Serving serves the highest version of a model base as soon as it loads (the default `latest`
policy, and k8s/overlays/volume), so an export is a release. The exporter compares the dev F1 in
the checkpoint's train_report.json with the one recorded in the served version's assets.extra
and refuses the export when it is more than DEV_F1_MARGIN points lower; `--force` publishes it
anyway. No TensorFlow here.
"""

import json
import shutil
from pathlib import Path

from bert_ner import model_base
from bert_ner.export.errors import ExportError, ExportRefused

# F1 points (dev, by sentence). Retraining the shipped recipe moves dev F1 by a few tenths, and
# the other recipes of docs/QUALITY.md lie within 1.5 points of it; a model 2 points worse is a
# regression, not noise.
DEV_F1_MARGIN = 2.0


def dev_f1(directory):
  """Dev F1 (by sentence) of the train_report.json in `directory`, or None without one."""
  path = Path(directory) / model_base.TRAIN_REPORT
  if not path.is_file():
    return None
  try:
    return float(json.loads(path.read_text())["dev"]["f1"])
  except (ValueError, KeyError, TypeError) as e:
    raise ExportError(f"{path} holds no dev F1 (dev.f1): {e!r}") from e


def check_not_worse(checkpoint_dir, base, version, force=False, margin=DEV_F1_MARGIN):
  """Raises ExportRefused when `version` would become the served (highest) version of `base`
  with a dev F1 more than `margin` points below the current one's. Returns a note to log when
  the comparison could not be made or was overridden, else None."""
  found = model_base.version_dirs(base)
  if not found or version < max(found):
    return None  # nothing served yet, or the new version does not go live
  served = max(found)
  new, old = dev_f1(checkpoint_dir), dev_f1(model_base.assets(found[served]))
  if new is None or old is None:
    missing = checkpoint_dir if new is None else model_base.assets(found[served])
    return f"export guard: no {model_base.TRAIN_REPORT} in {missing}: dev F1 not compared"
  if new >= old - margin:
    return None
  verdict = (
    f"dev F1 {new:.2f} of {checkpoint_dir} is {old - new:.2f} points below served version "
    f"{served}'s {old:.2f} (margin {margin})"
  )
  if force:
    return f"export guard: {verdict}; published anyway (--force)"
  raise ExportRefused(
    f"{verdict}; a running server would switch to it. To try it: another --model_base_path, "
    f"or a canary version label (README: Trying a model); --force publishes it here"
  )


def keep_report(checkpoint_dir, assets_dir):
  """Copies the checkpoint's train_report.json (if any) into the export's assets.extra, where
  the next export's guard reads the served version's dev F1."""
  report = Path(checkpoint_dir) / model_base.TRAIN_REPORT
  if report.is_file():
    shutil.copyfile(report, Path(assets_dir) / model_base.TRAIN_REPORT)
