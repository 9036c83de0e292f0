"""python -m bert_ner.bench --quick end to end on a tiny model, into a temp dir (not
bench/results.*)."""

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from bert_ner.bench import measure, report
from support.export import make_checkpoint

pytestmark = pytest.mark.slow  # exports and starts servers

HEADERS = [
  "| step | seconds |",
  "| transport | variable-length sent/s | run | padded to 32 sent/s | run | variable / fixed |",
  "| transport | batching | concurrency | p50 ms | p95 ms | p99 ms | sent/s | rows/run | "
  "server CPU ms/sent | client CPU ms/sent |",
  "| mode | sentences/s | document / sentence |",
  "| server | served | peak RSS MiB |",
  "| ratio | measured | target | met |",
  "| tagger | F1 | sentences/s | what is timed |",
]


def test_padded_to_pads_every_row_and_trims_the_output():
  shapes = []

  def run(input_ids, input_mask):
    shapes.append((input_ids.shape, int(input_mask.sum())))
    return input_ids + 1

  ones = np.ones((2, 3), np.int32)
  pred = measure.padded_to(8, run)(ones, ones)
  assert shapes == [((2, 8), 6)] and pred.tolist() == [[2, 2, 2]] * 2


def test_quick_run_writes_both_files(tiny_bert_dir, conll_dev_path, tmp_path):
  checkpoint = make_checkpoint(tiny_bert_dir, tmp_path / "ckpt")
  started = time.monotonic()
  result = subprocess.run(
    [
      sys.executable,
      "-m",
      "bert_ner.bench",
      "--quick",
      "--checkpoint",
      checkpoint,
      "--data",
      conll_dev_path,
      "--out",
      tmp_path / "out",
    ],
    capture_output=True,
    text=True,
    timeout=600,
  )
  seconds = time.monotonic() - started
  assert result.returncode == 0, result.stderr[-3000:]
  text = (tmp_path / "out" / "results.md").read_text()
  for header in HEADERS:
    assert header in text, header
  for row in (
    "| in-process |",
    "| document |",
    "| gRPC | on | 32 |",
    "| REST | off | 1 |",
    "| gRPC / in-process throughput (variable-length) |",
    "| batching on / off throughput at concurrency 32 (REST) |",
    "| this model, model call only |",
  ):
    assert row in text, row
  figures = json.loads((tmp_path / "out" / "results.json").read_text())
  assert set(report.scaling_blocks(figures)) == {"scaling", "replicas"}
  assert "nan" not in text and (tmp_path / "out" / "results.png").read_bytes()[:4] == b"\x89PNG"
  assert seconds < 300, f"--quick took {seconds:.0f}s"
