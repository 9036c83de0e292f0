"""Mutation score per folder and per file from mutmut's results (`mutants/**/*.py.meta`).

    .venv/bin/python tests/mutation_score.py [MUTANTS_DIR]
    .venv/bin/python tests/mutation_score.py --sample N [MUTANTS_DIR]

--sample prints the names of N mutants per folder drawn at random with a fixed seed, for
`mutmut run NAMES...`: a whole run is hours on 2 cores, a sample of 150 per folder about 15
minutes, and its score estimates the folder's within about 8 points (95 %).

A mutant counts as killed when a test failed or timed out on it; the score is killed / judged,
where judged leaves out the mutants mutmut did not run. A mutant no fast test reaches ("no
tests") counts against the score: the code it changed is untested.
"""

import collections
import json
import random
import sys
from pathlib import Path

KILLED_CODES = {1, 3, 24, -24, 36, 37, 152, 255}  # mutmut's killed, timeout, type check
NOT_RUN = {None, 2, 34}  # not checked, interrupted, skipped
NO_TESTS = {5, 33}


def tally(mutants_dir):
  """{(folder, file): Counter(killed, survived, no tests)} of every mutant mutmut ran."""
  counts = collections.defaultdict(collections.Counter)
  for meta in sorted(Path(mutants_dir).rglob("*.py.meta")):
    source = meta.relative_to(mutants_dir).with_suffix("")
    codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
    for code in codes.values():
      if code in NOT_RUN:
        continue
      kind = "killed" if code in KILLED_CODES else "no tests" if code in NO_TESTS else "survived"
      counts[str(source.parent), str(source)][kind] += 1
  return counts


def score_line(name, counter):
  """One Markdown row: name, judged, killed, survived, no tests, score."""
  judged = sum(counter.values())
  score = f"{100 * counter['killed'] / judged:.1f} %" if judged else "-"
  return (
    f"| {name} | {judged} | {counter['killed']} | {counter['survived']} | "
    f"{counter['no tests']} | {score} |"
  )


def sample(mutants_dir, per_folder, seed=20261207):
  """Names of `per_folder` mutants of each folder, drawn with a fixed seed (all if fewer)."""
  names = collections.defaultdict(list)
  for meta in sorted(Path(mutants_dir).rglob("*.py.meta")):
    folder = str(meta.relative_to(mutants_dir).parent)
    codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key", {})
    names[folder] += sorted(codes)
  rng = random.Random(seed)
  return [n for f in sorted(names) for n in rng.sample(names[f], min(per_folder, len(names[f])))]


def main(argv):
  if argv[:1] == ["--sample"]:
    print("\n".join(sample(Path(argv[2] if len(argv) > 2 else "mutants"), int(argv[1]))))
    return 0
  mutants = Path(argv[0] if argv else "mutants")
  counts = tally(mutants)
  if not counts:
    print(f"no mutmut results under {mutants}", file=sys.stderr)
    return 2
  folders = collections.defaultdict(collections.Counter)
  for (folder, _), counter in counts.items():
    folders[folder] += counter
  print("| folder or file | judged | killed | survived | no tests | score |")
  print("|---|---|---|---|---|---|")
  for folder, counter in sorted(folders.items()):
    print(score_line(f"**{folder}/**", counter))
    for (owner, path), file_counter in sorted(counts.items()):
      if owner == folder:
        print(score_line(path, file_counter))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
