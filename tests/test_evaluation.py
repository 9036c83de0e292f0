"""python -m bert_ner.evaluation: CoNLL layouts, same scores in-process, over gRPC and REST,
errors."""

import json
import re
import shutil
import subprocess
import sys

import pytest

from bert_ner import conll, model_base
from bert_ner.evaluation import __main__ as evaluation
from bert_ner.evaluation.local import LocalModel
from bert_ner.featurizer import Featurizer
from bert_ner.server.process import ServerProcess
from conll_sample import write_first_sentences
from support.export import make_checkpoint

OVERALL = re.compile(r"^overall precision \d+\.\d\d recall \d+\.\d\d f1 \d+\.\d\d$")
FOUR_COLUMNS = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC
call NN I-NP O
. . O O

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER

-DOCSTART- -X- -X- O

BRUSSELS NNP B-NP I-LOC
1996-08-22 CD I-NP O
"""


def columns(text, keep):
  """The CoNLL text with only the columns at the `keep` indices."""
  return "".join(
    " ".join(line.split()[i] for i in keep) + "\n" if line.strip() else "\n"
    for line in text.splitlines()
  )


@pytest.fixture(scope="module")
def base(tiny_bert_dir, tmp_path_factory):
  """A model base holding version 1 of the tiny export."""
  from bert_ner.export import exporter

  work = tmp_path_factory.mktemp("evaluation")
  exporter.export_model(
    str(make_checkpoint(tiny_bert_dir, work / "ckpt")), work / "models", log=lambda message: None
  )
  return work / "models"


@pytest.fixture(scope="module")
def server(base):
  with ServerProcess(base, base.parent / "server.log") as running:
    yield running


@pytest.fixture(scope="module")
def sample(conll_dev_path, tmp_path_factory):
  """The first 60 sentences of the dev file, as a 2-column CoNLL file."""
  path = tmp_path_factory.mktemp("sample") / "sample.txt"
  return write_first_sentences(conll_dev_path, path, 60)


def evaluate(capsys, *args):
  """(exit status, stdout lines, stderr) of an in-process run."""
  status = evaluation.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return status, out.splitlines(), err


@pytest.mark.slow  # exports and starts the server
def test_transports_give_the_same_tags_and_scores(base, server, sample, capsys):
  addresses = {"local": None, "grpc": server.grpc, "rest": server.rest}
  outputs = {}
  for transport, address in addresses.items():
    flags = ["--server", address] if address else []
    status, lines, err = evaluate(
      capsys,
      "--data",
      sample,
      "--transport",
      transport,
      "--model_base_path",
      base,
      "--batch_size",
      7,
      *flags,
    )
    assert status == 0, err
    assert OVERALL.match(lines[-1]), lines
    assert re.search(r"60 sentences via .* sentences/s", err)
    outputs[transport] = lines
  assert outputs["local"] == outputs["grpc"] == outputs["rest"]
  model = LocalModel(base)
  featurizer = Featurizer.from_dir(str(model.assets))
  sentences = conll.read_conll(sample)
  tags = evaluation.tag(featurizer, model.run, sentences, 64)
  assert len({tag for sentence in tags for tag in sentence}) > 1  # a real, non-constant tagger
  for transport in ("grpc", "rest"):
    client = evaluation.CLIENTS[transport](
      addresses[transport], signature="result", assets=model.assets
    )
    assert evaluation.tag(client.featurizer, client.run, sentences, 5) == tags


@pytest.mark.slow  # exports a model (the base fixture)
def test_one_two_and_four_columns(base, tmp_path, capsys):
  four, two, one = tmp_path / "four.txt", tmp_path / "two.txt", tmp_path / "one.txt"
  four.write_text(FOUR_COLUMNS)
  two.write_text(columns(FOUR_COLUMNS, (0, 3)))
  one.write_text(columns(FOUR_COLUMNS, (0,)))
  sentences = [s for d in evaluation.read_documents(four) for s in d]
  assert [s.words for s in sentences] == [
    ["EU", "rejects", "German", "call", "."],
    ["Peter", "Blackburn"],
    ["BRUSSELS", "1996-08-22"],
  ]
  assert sentences[2].tags == ["B-LOC", "O"]  # IOB1 -> IOB2
  assert [s for d in evaluation.read_documents(two) for s in d] == sentences
  assert [s.words for s in conll.read_conll(one)] == [s.words for s in sentences]
  results = [
    evaluate(capsys, "--data", path, "--transport", "local", "--model_base_path", base)
    for path in (four, two)
  ]
  assert results[0][0] == 0 and results[0][1] == results[1][1]
  assert OVERALL.match(results[0][1][-1])
  status, lines, err = evaluate(capsys, "--data", one, "--transport", "local")
  assert (status, lines) == (2, [])
  assert err == f"error: {one} has no tag column: nothing to score against\n"


@pytest.mark.slow  # exports a model (the base fixture)
def test_document_mode_tags_each_document_as_one_text(base, tmp_path, capsys):
  four = tmp_path / "four.txt"
  four.write_text(FOUR_COLUMNS)
  status, lines, err = evaluate(
    capsys, "--data", four, "--transport", "local", "--model_base_path", base, "--document"
  )
  assert status == 0 and OVERALL.match(lines[-1]), err
  assert re.search(r"3 sentences in 2 documents via .* sentences/s", err)
  documents = evaluation.read_documents(four)
  model = LocalModel(base)
  featurizer = Featurizer.from_dir(str(model.assets))
  rows = []

  def run_fn(input_ids, input_mask):
    rows.extend(input_mask.sum(1).tolist())
    return model.run(input_ids, input_mask)

  tags = evaluation.tag_documents(featurizer, run_fn, documents, 64)
  assert [len(t) for t in tags] == [len(s.words) for d in documents for s in d]
  assert len(rows) == 2  # one row per document: "EU rejects ... Blackburn" and "BRUSSELS ..."


@pytest.mark.parametrize(
  "case,pattern",
  [
    ("missing", r"data file not found: .*absent\.txt"),
    ("unreachable", r"server unreachable at 127\.0\.0\.1:1"),
    ("no model", r"no SavedModel version under .*empty"),
    ("malformed", r"cannot read .*bad\.txt: .*bad\.txt:1: last column 'Z' is not an IOB tag"),
  ],
)
@pytest.mark.slow  # exports a model (the base fixture)
def test_errors_are_one_line_and_exit_2(base, tmp_path, capsys, case, pattern):
  (tmp_path / "bad.txt").write_text("EU Z\n")
  (tmp_path / "empty").mkdir()
  args = {
    "missing": ["--data", tmp_path / "absent.txt", "--transport", "local"],
    "unreachable": [
      "--data",
      tmp_path / "ok.txt",
      "--transport",
      "grpc",
      "--server",
      "127.0.0.1:1",
      "--model_base_path",
      base,
    ],
    "no model": [
      "--data",
      tmp_path / "ok.txt",
      "--transport",
      "local",
      "--model_base_path",
      tmp_path / "empty",
    ],
    "malformed": ["--data", tmp_path / "bad.txt", "--transport", "rest"],
  }[case]
  (tmp_path / "ok.txt").write_text("EU B-ORG\n")
  status, lines, err = evaluate(capsys, *args)
  assert (status, lines) == (2, [])
  assert err.count("\n") == 1 and err.startswith("error: ") and re.search(pattern, err), err


@pytest.mark.slow  # exports and starts the server
@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_assets_of_another_version_are_refused(base, server, tmp_path, capsys, transport):
  # Scores from assets whose labels or vocab differ from the served model's would be garbage.
  skewed = tmp_path / model_base.ASSETS_DIR
  shutil.copytree(base / "1" / model_base.ASSETS_DIR, skewed)
  config = json.loads((skewed / "ner_config.json").read_text())
  config["fingerprint"] = "f" * 16
  (skewed / "ner_config.json").write_text(json.dumps(config))
  (tmp_path / "data.txt").write_text(FOUR_COLUMNS)
  status, lines, err = evaluate(
    capsys,
    "--data",
    tmp_path / "data.txt",
    "--transport",
    transport,
    "--server",
    getattr(server, transport),
    "--assets",
    skewed,
  )
  assert (status, lines) == (2, [])
  assert err.startswith("error: fingerprint mismatch (version skew): server has ") and (
    f"assets {skewed} have ffffffffffffffff" in err
  ), err


@pytest.mark.slow  # exports and starts the server
def test_cli_over_grpc_does_not_import_tensorflow(base, server, sample):
  code = (
    "import sys; from bert_ner.evaluation.__main__ import main; status = main(sys.argv[1:]); "
    "print('tensorflow' in sys.modules); sys.exit(status)"
  )
  result = subprocess.run(
    [
      sys.executable,
      "-c",
      code,
      "--data",
      sample,
      "--transport",
      "grpc",
      "--server",
      server.grpc,
      "--model_base_path",
      base,
    ],
    capture_output=True,
    text=True,
    timeout=120,
  )
  assert result.returncode == 0, result.stderr
  *report, imported = result.stdout.splitlines()
  assert OVERALL.match(report[-1]) and imported == "False"
