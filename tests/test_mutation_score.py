"""tests/mutation_score.py: per-folder scores and the seeded sample `make mutate MUTANT_SAMPLE=N`
runs, on a fake mutmut results tree."""

import json

import mutation_score


def write_meta(root, path, codes):
  meta = root / f"{path}.meta"
  meta.parent.mkdir(parents=True, exist_ok=True)
  meta.write_text(json.dumps({"exit_code_by_key": codes}), encoding="utf-8")


def test_scores_count_per_folder_and_leave_out_what_did_not_run(tmp_path):
  write_meta(tmp_path, "bert_ner/server/a.py", {"a1": 1, "a2": 0, "a3": None, "a4": 33})
  write_meta(tmp_path, "bert_ner/clients/b.py", {"b1": 1, "b2": 1})
  counts = mutation_score.tally(tmp_path)
  assert counts["bert_ner/server", "bert_ner/server/a.py"] == {
    "killed": 1,
    "survived": 1,
    "no tests": 1,
  }
  assert counts["bert_ner/clients", "bert_ner/clients/b.py"] == {"killed": 2}


def test_the_sample_takes_n_per_folder_the_same_each_time(tmp_path):
  write_meta(tmp_path, "bert_ner/server/a.py", {f"s{i}": None for i in range(50)})
  write_meta(tmp_path, "bert_ner/server/b.py", {f"t{i}": None for i in range(50)})
  write_meta(tmp_path, "bert_ner/clients/c.py", {f"c{i}": None for i in range(5)})
  drawn = mutation_score.sample(tmp_path, 10)
  assert drawn == mutation_score.sample(tmp_path, 10)
  assert len(drawn) == len(set(drawn)) == 15  # 10 of the server's 100, all 5 of the clients'
  assert sum(name.startswith("c") for name in drawn) == 5
