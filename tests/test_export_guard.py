"""The export guard (bert_ner/export/guard.py): a version that would be served must not score far
below
the served one. Unit tests on fake model bases, then the CLI refusing and forcing a real export."""

import json

import pytest

import e2e_support
from bert_ner import model_base
from bert_ner.export import guard
from bert_ner.export.errors import ExportError, ExportRefused

SERVED_F1, BAD_F1 = 92.02, 44.1


def report_dir(directory, f1):
  """A folder holding a train_report.json with that dev F1."""
  directory.mkdir(parents=True, exist_ok=True)
  (directory / model_base.TRAIN_REPORT).write_text(json.dumps({"dev": {"f1": f1}}))
  return directory


@pytest.fixture
def base(tmp_path):
  """A model base whose version 1 recorded dev F1 SERVED_F1."""
  report_dir(tmp_path / "bert_ner" / "1" / model_base.ASSETS_DIR, SERVED_F1)
  return tmp_path / "bert_ner"


def test_a_far_worse_model_is_refused_in_one_line(base, tmp_path):
  checkpoint = report_dir(tmp_path / "smoke", BAD_F1)
  with pytest.raises(ExportRefused) as refused:
    guard.check_not_worse(checkpoint, base, 2)
  message = str(refused.value)
  assert "\n" not in message
  assert f"dev F1 {BAD_F1:.2f} of {checkpoint} is 47.92 points below served version 1's" in message
  assert "--force" in message and "Trying a model" in message


def test_force_publishes_it_with_a_note(base, tmp_path):
  checkpoint = report_dir(tmp_path / "smoke", BAD_F1)
  note = guard.check_not_worse(checkpoint, base, 2, force=True)
  assert note.startswith("export guard: dev F1 44.10") and note.endswith("(--force)")


@pytest.mark.parametrize(
  "f1", [SERVED_F1 + 1, SERVED_F1 - guard.DEV_F1_MARGIN, SERVED_F1 - guard.DEV_F1_MARGIN / 2]
)
def test_models_within_the_margin_pass(base, tmp_path, f1):
  assert guard.check_not_worse(report_dir(tmp_path / "ckpt", f1), base, 2) is None


def test_a_version_that_does_not_go_live_is_not_compared(base, tmp_path):
  report_dir(base / "5" / model_base.ASSETS_DIR, SERVED_F1)
  assert guard.check_not_worse(report_dir(tmp_path / "smoke", BAD_F1), base, 3) is None


def test_an_empty_model_base_takes_any_model(tmp_path):
  assert guard.check_not_worse(report_dir(tmp_path / "smoke", 0.0), tmp_path / "none", 1) is None


def test_without_reports_the_guard_says_it_did_not_compare(base, tmp_path):
  note = guard.check_not_worse(tmp_path / "macanv", base, 2)
  assert note == (
    f"export guard: no train_report.json in {tmp_path / 'macanv'}: dev F1 not compared"
  )


def test_a_report_without_dev_f1_is_one_clear_error(base, tmp_path):
  (tmp_path / model_base.TRAIN_REPORT).write_text("{}")
  with pytest.raises(ExportError, match=r"holds no dev F1 \(dev\.f1\)"):
    guard.check_not_worse(tmp_path, base, 2)


@pytest.mark.slow  # exports through the CLI
def test_the_cli_refuses_a_bad_model_over_a_good_one_and_force_publishes_it(
  tiny_bert_dir, tmp_path, capsys
):
  good = report_dir(e2e_support.make_checkpoint(tiny_bert_dir, tmp_path / "good"), SERVED_F1)
  bad = report_dir(e2e_support.make_checkpoint(tiny_bert_dir, tmp_path / "bad", seed=2), BAD_F1)
  base = tmp_path / "models" / "bert_ner"
  assert e2e_support.run_export(good, base).returncode == 0
  assert guard.dev_f1(base / "1" / model_base.ASSETS_DIR) == SERVED_F1

  refused = e2e_support.run_export(bad, base)
  assert refused.returncode == 1 and refused.stdout == ""
  assert refused.stderr.count("\n") == 1, refused.stderr
  assert refused.stderr.startswith("export: refused: dev F1 44.10 of ")
  assert refused.stderr.endswith("; nothing was published\n")
  assert model_base.versions(base) == [1] and sorted(p.name for p in base.iterdir()) == ["1"]

  forced = e2e_support.run_export(bad, base, "--force")
  assert forced.returncode == 0, forced.stderr
  assert "published anyway (--force)" in forced.stdout
  assert model_base.versions(base) == [1, 2]
  with capsys.disabled():
    print(f"\n{refused.stderr}{forced.stdout}", end="")
