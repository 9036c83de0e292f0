"""`make mutate`: named mutations the test suite must kill, each run on its own copy of the tree.

Every mutation breaks one thing a test is there to guard: it names the file, the original snippet
(which must occur exactly once), the mutated snippet and the test selection that must fail. For
each, the tracked files are copied into a temporary directory, the snippet is replaced, and pytest
runs the selection there (PYTHONPATH points at the copy, so subprocesses such as
`python -m bert_ner.export` run the mutated code too). A mutation is killed when a
selected test fails, survived when they all pass. A baseline run of every selection on the
unmutated copy comes first: a test that fails anyway kills nothing.

    .venv/bin/python tests/mutate.py                  # all mutations
    .venv/bin/python tests/mutate.py --only publish-copy-then-delete --no-baseline
    .venv/bin/python tests/mutate.py --list
"""

import argparse
import dataclasses
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bert_ner.paths import REPO_ROOT

TIMEOUT_S = 1800  # per selection run; the slow shipped-model tests take minutes on 2 cores
NO_DATA = "/nonexistent/conll2003"  # CONLL2003_DIR for rows that must be caught without data
INPROCESS = "tests/test_server_inprocess.py"
PINNED = "tests/test_pinned_rules.py"


@dataclasses.dataclass(frozen=True)
class Mutation:
  name: str
  breaks: str  # the promise the mutation breaks, in a few words
  file: str
  original: str
  mutated: str
  selection: tuple  # pytest node ids or paths
  env: tuple = ()  # extra (name, value) pairs for the pytest run


MUTATIONS = [
  Mutation(
    "trainer-never-applies-gradients",
    "frozen trainer never applies gradients",
    "bert_ner/train/graphs.py",
    "    train_op = minimize(trained.loss, head_variables, config.learning_rate)\n",
    "    train_op = tf.no_op()\n",
    ("tests/test_train.py",),
  ),
  Mutation(
    "trainer-cache-never-read",
    "feature cache written but never read",
    "bert_ner/train/features.py",
    "    if path.is_file():\n      with np.load(path) as data:\n",
    "    if False:\n      with np.load(path) as data:\n",
    ("tests/test_train.py",),
  ),
  Mutation(
    "trainer-saves-last-epoch",
    "last epoch's weights saved instead of the best",
    "bert_ner/train/loop.py",
    '    if best is None or history[-1]["dev_f1"] > best["dev_f1"]:\n',
    "    if True:\n",
    ("tests/test_train.py",),
  ),
  Mutation(
    "publish-copy-then-delete",
    "publish a version by copy-then-delete (non-atomic)",
    "bert_ner/export/layout.py",
    "      os.rename(tmp, target)\n",
    "      shutil.copytree(tmp, target)\n      shutil.rmtree(tmp)\n",
    ("tests/test_export.py::test_a_version_appears_whole_or_not_at_all",),
  ),
  Mutation(
    "fingerprint-ignores-labels",
    "fingerprint ignores labels",
    "bert_ner/export/exporter.py",
    "  h.update(json.dumps(model_dir.id2label).encode())\n",
    "",
    ("tests/test_export.py::test_fingerprint_covers_labels_vocab_and_config",),
  ),
  Mutation(
    "fingerprint-ignores-vocab",
    "fingerprint ignores vocab",
    "bert_ner/export/exporter.py",
    "  h.update(Path(model_dir.vocab_path).read_bytes())\n",
    "",
    ("tests/test_export.py::test_fingerprint_covers_labels_vocab_and_config",),
  ),
  Mutation(
    "fingerprint-ignores-config",
    "fingerprint ignores config",
    "bert_ner/export/exporter.py",
    "  h.update(json.dumps(asdict(model_dir.ner_config), sort_keys=True).encode())\n",
    "",
    ("tests/test_export.py::test_fingerprint_covers_labels_vocab_and_config",),
  ),
  Mutation(
    "no-entities-for-multi-window-texts",
    "client returns no entities for multi-window texts",
    "bert_ner/featurizer.py",
    "      results.append(entities(text, words, tags))\n",
    "      results.append(entities(text, words, tags) if len(windows) == 1 else [])\n",
    (
      "tests/test_featurizer.py::test_a_long_text_keeps_every_entity_of_every_window",
      "tests/reliability/test_rel_texts.py",
      "tests/test_default_model.py::test_a_long_text_keeps_the_entities_of_every_sentence",
    ),
  ),
  Mutation(
    "featurizer-last-word-o",
    'featurizer tags the last word "O" (no CoNLL data)',
    "bert_ner/featurizer.py",
    "    for label_id, unk in zip(best_id, is_unk):\n",
    "    for label_id, unk in zip(best_id[:-1] + [None], is_unk):\n",
    ("tests/test_featurizer.py",),
    (("CONLL2003_DIR", NO_DATA),),
  ),
  Mutation(
    "evaluation-skips-fingerprint",
    "evaluation skips the fingerprint check",
    "bert_ner/evaluation/__main__.py",
    "  client.check_fingerprint()\n  return client.featurizer",
    "  return client.featurizer",
    ("tests/test_evaluation.py::test_assets_of_another_version_are_refused",),
  ),
  # Further guards: what the clients, server, batching, demo, bench and export promise.
  Mutation(
    "predict-skips-fingerprint",
    "NerClient.predict() never checks the fingerprint",
    "bert_ner/clients/common.py",
    "    if not self.fingerprint_checked:\n      self.check_fingerprint()\n    if self.text_in:",
    "    if self.text_in:",
    ("tests/test_clients.py::test_predict_checks_the_fingerprint_once_per_client",),
  ),
  Mutation(
    "server-imports-unpickler",
    "server unpickles (from pickle import loads, aliased)",
    "bert_ner/server/rest.py",
    "import json\n",
    "import json\nfrom pickle import loads as decode\n",
    ("tests/reliability/test_rel_security.py::test_server_and_clients_never_unpickle",),
  ),
  Mutation(
    "server-leaks-per-request",
    "server keeps 16 KB per request (a leak)",
    "bert_ner/server/servable.py",
    "    signature.validate(inputs)\n    return await self._batcher.run(",
    "    signature.validate(inputs)\n"
    "    self.__dict__.setdefault('leaked', []).append(b'x' * (16 << 10))\n"
    "    return await self._batcher.run(",
    ("tests/reliability/test_rel_load.py",),
  ),
  Mutation(
    "served-windows-shorter",
    "the shipped model is served with shorter windows "
    "than it was trained with (less context): dev F1 moves off the manifest's",
    "models/default/ner_config.json",
    ' "max_seq_length": 128,',
    ' "max_seq_length": 24,',
    ("tests/test_default_model.py::test_dev_scores_through_the_served_model_match_the_manifest",),
  ),
  # Rules pinned by in-process tests: a one-line slip in each went unnoticed by every test once.
  Mutation(
    "manager-serves-lowest-version",
    "the lowest loaded version serves a request naming none (TF Serving: the newest)",
    "bert_ner/server/manager.py",
    "    return self.loaded[max(self.loaded)] if self.loaded else None\n",
    "    return self.loaded[min(self.loaded)] if self.loaded else None\n",
    (f"{INPROCESS}::test_a_request_without_a_version_gets_the_newest_loaded",),
  ),
  Mutation(
    "grpc-predict-ignores-deadline",
    "gRPC Predict runs without the caller's deadline",
    "bert_ner/server/grpc_service.py",
    "            context.time_remaining(),\n",
    "            None,\n",
    (f"{INPROCESS}::test_grpc_predict_passes_the_callers_deadline_on",),
  ),
  Mutation(
    "batch-takes-earliest-deadline",
    "a merged batch runs with its earliest caller's deadline instead of the latest",
    "bert_ner/server/batching.py",
    "    deadline = None if None in deadlines else max(deadlines, default=None)\n",
    "    deadline = None if None in deadlines else min(deadlines, default=None)\n",
    (f"{INPROCESS}::test_a_merged_batch_runs_until_its_latest_callers_deadline",),
  ),
  Mutation(
    "max-batch-size-refuses-its-own-size",
    "max_batch_size checked with >=",
    "bert_ner/server/batching.py",
    "    if signature.batchable and rows > self._options.max_batch_size:\n",
    "    if signature.batchable and rows >= self._options.max_batch_size:\n",
    (f"{INPROCESS}::test_max_batch_size_admits_its_own_size_and_refuses_one_more",),
  ),
  Mutation(
    "tensor-elements-refuses-its-own-size",
    "the per-tensor element limit checked with >=",
    "bert_ner/server/tensors.py",
    "  if count > max_elements:\n",
    "  if count >= max_elements:\n",
    (f"{INPROCESS}::test_tensor_element_limit_admits_its_own_size_and_refuses_one_more",),
  ),
  Mutation(
    "gzip-limit-refuses-its-own-size",
    "the uncompressed REST body limit checked with >=",
    "bert_ner/server/rest.py",
    "  if len(data) > max_bytes:\n",
    "  if len(data) >= max_bytes:\n",
    (f"{INPROCESS}::test_uncompressed_body_limit_admits_its_own_size_and_refuses_one_more",),
  ),
  Mutation(
    "run-splitting-rounds-down",
    "bert_ner/server/stacking.py counts a merged batch's runs rounding down",
    "bert_ner/server/stacking.py",
    "math.ceil(len(index) * width / MAX_RUN_POSITIONS) or 1",
    "len(index) * width // MAX_RUN_POSITIONS or 1",
    (f"{INPROCESS}::test_a_batch_over_max_run_positions_splits_into_enough_runs",),
  ),
  Mutation(
    "histogram-bound-in-next-bucket",
    "a latency exactly on a bucket bound counts in the next bucket (buckets are le)",
    "bert_ner/server/metrics.py",
    "bisect.bisect_left(self.bounds, value)",
    "bisect.bisect_right(self.bounds, value)",
    (f"{INPROCESS}::test_a_value_on_a_bucket_bound_counts_in_that_bucket",),
  ),
  Mutation(
    "atomic-rename-before-close",
    "bert_ner/atomic.py renames a file into place before closing it",
    "bert_ner/atomic.py",
    "      yield f\n    os.replace(tmp, path)\n",
    "      yield f\n      os.replace(tmp, path)\n",
    (f"{PINNED}::test_a_file_is_closed_before_it_is_renamed_into_place",),
  ),
  Mutation(
    "window-tie-to-the-later",
    "a word tied between two windows is read from the later one",
    "bert_ner/featurizer.py",
    "        if min(left, right) > best_score[word]:\n",
    "        if min(left, right) >= best_score[word]:\n",
    (f"{PINNED}::test_a_word_tied_between_two_windows_is_read_from_the_earlier",),
  ),
  Mutation(
    "client-accepts-label-id-equal-to-count",
    "the clients accept a label id equal to the label count",
    "bert_ner/clients/common.py",
    "  bad = pred[(pred < 0) | (pred >= num_labels)]\n",
    "  bad = pred[(pred < 0) | (pred > num_labels)]\n",
    (f"{PINNED}::test_a_label_id_equal_to_the_label_count_is_refused",),
  ),
  Mutation(
    "rest-skips-the-last-targets-503",
    "the REST client fails over past its last target (nothing left to report)",
    "clients/rest_client.py",
    "      if status in FAIL_OVER_STATUSES and attempt < len(self.urls) - 1:\n",
    "      if status in FAIL_OVER_STATUSES:\n",
    (f"{PINNED}::test_rest_reports_the_last_targets_503_after_trying_each_once",),
  ),
  Mutation(
    "rest-fail-over-never-wraps",
    "the REST client's fail-over stops at the last target instead of wrapping to the first",
    "clients/rest_client.py",
    "      index = (start + attempt) % len(self.urls)\n",
    "      index = min(start + attempt, len(self.urls) - 1)\n",
    (f"{PINNED}::test_rest_fails_over_from_the_last_target_back_to_the_first",),
  ),
  Mutation(
    "rest-bad-answer-as-unreachable",
    "a REST answer that is not HTTP reported as 'server unreachable'",
    "clients/rest_client.py",
    "      if malformed is not None:",
    "      if False:",
    ("tests/test_client_targets.py::test_rest_odd_answers_are_one_line_errors",),
  ),
  Mutation(
    "demo-inserts-html",
    "the demo page inserts text with innerHTML",
    "bert_ner/demo/static/demo.js",
    "  if (text !== undefined) node.textContent = text;\n",
    "  if (text !== undefined) node.innerHTML = text;\n",
    (
      f"{PINNED}::test_the_page_puts_text_in_only_as_text",
      "tests/test_demo_browser.py::test_markup_in_the_input_shows_as_text",
    ),
  ),
  Mutation(
    "demo-answers-any-host",
    "the demo answers a foreign Host or Origin (DNS rebinding, blind cross-site posts)",
    "bert_ner/demo/app.py",
    "    if problem:\n",
    "    if False:\n",
    ("tests/test_demo.py", "tests/reliability/test_rel_demo.py"),
  ),
  Mutation(
    "demo-queue-unbounded",
    "the demo queues every tagging request (no 503 beyond its bound)",
    "bert_ner/demo/app.py",
    "    if pending >= MAX_PENDING_TAGS:\n",
    "    if False:\n",
    ("tests/reliability/test_rel_demo.py",),
  ),
  Mutation(
    "trainer-global-step-frozen",
    "the trainer's global step never advances (the learning rate never decays)",
    "bert_ner/train/graphs.py",
    "    global_step.assign_add(1),\n",
    "",
    (f"{PINNED}::test_the_decayed_train_op_advances_the_global_step",),
  ),
  Mutation(
    "trainer-epoch-step-frozen",
    "the epoch loop's step never advances (every checkpoint is model.ckpt-0)",
    "bert_ner/train/loop.py",
    "      step += 1\n",
    "      step += 0\n",
    (f"{PINNED}::test_the_best_epoch_records_the_step_it_ended_at",),
  ),
  Mutation(
    "bench-ratio-upside-down",
    "a bench ratio computed upside down",
    "bert_ner/bench/report.py",
    '      thr[t, "variable"].rate / thr["local", "variable"].rate,\n',
    '      thr["local", "variable"].rate / thr[t, "variable"].rate,\n',
    (f"{PINNED}::test_bench_ratios_put_the_named_side_on_top",),
  ),
  Mutation(
    "label-bound-admits-the-bound",
    "a label id equal to labels.MAX_LABELS accepted (and allocated)",
    "bert_ner/labels.py",
    "  if max(label2id.values()) >= MAX_LABELS:\n",
    "  if max(label2id.values()) > MAX_LABELS:\n",
    (f"{PINNED}::test_label_ids_up_to_the_bound_are_read_and_the_bound_is_refused",),
  ),
  Mutation(
    "vocab-bound-refuses-a-full-table",
    "a vocabulary of exactly vocab_size lines refused",
    "bert_ner/model_checks.py",
    "        if count > vocab_size:\n",
    "        if count >= vocab_size:\n",
    (f"{PINNED}::test_a_vocab_of_vocab_size_lines_passes_and_one_more_is_refused",),
  ),
  Mutation(
    "export-skips-the-checkpoint-checks",
    "a checkpoint dir's configs not checked against its variables before the graph is built",
    "bert_ner/checkpoint.py",
    "  check_model_dir(model_dir)\n  return model_dir\n",
    "  return model_dir\n",
    (
      "tests/reliability/test_rel_files.py::test_hostile_checkpoint_dir_is_refused"
      "[hidden_size 64 (checkpoint 32)]",
    ),
  ),
  Mutation(
    "conll-keeps-the-byte-order-mark",
    "a UTF-8 byte order mark turns -DOCSTART- into a sentence",
    "bert_ner/conll.py",
    'encoding="utf-8-sig"',
    'encoding="utf-8"',
    ("tests/test_conll.py::test_a_byte_order_mark_is_skipped",),
  ),
]


def copy_tree(dest):
  """Tracked files (as they are in the work tree) into dest/repo; beside it the data, as here."""
  repo = dest / "repo"
  files = (
    subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True)
    .stdout.decode()
    .split("\0")
  )
  for name in filter(None, files):
    source = REPO_ROOT / name
    if source.is_file():
      (repo / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy2(source, repo / name)
  (repo / ".venv").symlink_to((REPO_ROOT / ".venv").resolve())
  shared = (REPO_ROOT / ".." / "shared").resolve()
  if shared.is_dir():  # tests and the exporter look for ../shared/data beside the repo
    (dest / "shared").symlink_to(shared)
  return repo


def run_selection(repo, selection, extra_env):
  """(exit status, failing test ids, seconds) of pytest on the selection in the copy."""
  env = dict(os.environ, PYTHONPATH=str(repo), **dict(extra_env))
  env.setdefault("BERT_NER_CACHE", str(REPO_ROOT / ".cache"))  # one backbone conversion
  started = time.monotonic()
  try:
    result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-rfE", "-p", "no:cacheprovider", *selection],
      cwd=repo,
      env=env,
      capture_output=True,
      text=True,
      timeout=TIMEOUT_S,
    )
  except subprocess.TimeoutExpired:
    return None, [f"timeout after {TIMEOUT_S} s"], time.monotonic() - started
  failed = re.findall(r"^(?:FAILED|ERROR) (\S+)", result.stdout, re.M)
  summary = (result.stdout.strip().splitlines() or [""])[-1]
  return result.returncode, failed or [summary], time.monotonic() - started


def apply(repo, mutation):
  """Replaces the mutation's snippet in the copy; False if the snippet is not there once."""
  path = repo / mutation.file
  text = path.read_text(encoding="utf-8")
  if text.count(mutation.original) != 1:
    return False
  path.write_text(text.replace(mutation.original, mutation.mutated), encoding="utf-8")
  return True


def main(argv=None):
  """Runs the baseline and the mutations; exit 1 if any survived or could not run."""
  parser = argparse.ArgumentParser(
    description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument("--only", nargs="+", metavar="NAME", help="run these mutations only")
  parser.add_argument(
    "--no-baseline",
    action="store_true",
    help="skip the run of the selections on the unmutated tree",
  )
  parser.add_argument("--list", action="store_true", help="list the mutations and exit")
  args = parser.parse_args(argv)
  chosen = [m for m in MUTATIONS if not args.only or m.name in args.only]
  unknown = set(args.only or ()) - {m.name for m in MUTATIONS}
  if unknown:
    parser.error(f"unknown mutations: {', '.join(sorted(unknown))}")
  if args.list:
    for m in MUTATIONS:
      print(f"{m.name}: {m.breaks} ({m.file}) <- {' '.join(m.selection)}")
    return 0
  rows, bad = [], 0
  with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
    environments = [] if args.no_baseline else sorted({m.env for m in chosen})
    for k, extra_env in enumerate(environments):
      selection = sorted({s for m in chosen if m.env == extra_env for s in m.selection})
      repo = copy_tree(Path(tmp) / f"baseline-{k}")
      status, failed, seconds = run_selection(repo, selection, extra_env)
      print(f"baseline {' '.join(selection)}: exit {status} in {seconds:.0f} s", flush=True)
      if status != 0:
        print(f"baseline fails, nothing can be judged: {failed}", file=sys.stderr)
        return 2
      shutil.rmtree(repo.parent)
    for m in chosen:
      repo = copy_tree(Path(tmp) / m.name)
      if not apply(repo, m):
        rows.append((m, "NOT RUN: original snippet not found once in " + m.file, 0.0))
        bad += 1
        continue
      status, failed, seconds = run_selection(repo, m.selection, m.env)
      if status == 1:
        verdict = "killed by " + ", ".join(failed)
      elif status == 0:
        verdict, bad = "SURVIVED", bad + 1
      else:
        verdict, bad = f"NOT JUDGED: pytest exit {status}: {', '.join(failed)}", bad + 1
      rows.append((m, verdict, seconds))
      print(f"{m.name}: {verdict} ({seconds:.0f} s)", flush=True)
      shutil.rmtree(repo.parent)
  print("\n| mutation | what breaks | file | result | s |\n|---|---|---|---|---|")
  for m, verdict, seconds in rows:
    print(f"| {m.name} | {m.breaks} | {m.file} | {verdict} | {seconds:.0f} |")
  return 1 if bad else 0


if __name__ == "__main__":
  sys.exit(main())
