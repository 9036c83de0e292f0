"""`python -m bert_ner.train` flags: one per TrainConfig field, with its type, default and help."""

import dataclasses

import pytest

from bert_ner.train import config as train_config
from bert_ner.train import trainer
from bert_ner.train.__main__ import parse_args

# A value other than the default for every field that takes one, as typed on the command line.
VALUES = {
  "train": ("t.txt", "t.txt"),
  "dev": ("d.txt", "d.txt"),
  "out": ("o", "o"),
  "backbone": ("bert", "bert"),
  "head": ("dense", "dense"),
  "lstm_size": ("7", 7),
  "hidden_size": ("9", 9),
  "feature_layers": ("-1,-3", [-1, -3]),
  "max_seq_length": ("32", 32),
  "dropout": ("0.25", 0.25),
  "epochs": ("2", 2),
  "batch_size": ("5", 5),
  "learning_rate": ("0.5", 0.5),
  "bert_learning_rate": ("0.25", 0.25),
  "adapter_rank": ("4", 4),
  "adapter_alpha": ("2", 2.0),
  "adapter_learning_rate": ("0.125", 0.125),
  "adapter_first_layer": ("3", 3),
  "word_shape_dim": ("16", 16),
  "word_shape_dropout": ("0.25", 0.25),
  "head_warmup_steps": ("100", 100),
  "min_f1_without_word_shape": ("92.5", 92.5),
  "context": ("centred", "centred"),
  "centred_fraction": ("0.25", 0.25),
  "context_loss": ("sentence", "sentence"),
  "document_stride": ("6", 6),
  "max_train_sentences": ("10", 10),
  "logdir": ("tb", "tb"),
  "cache_dir": ("cache", "cache"),
  "seed": ("1", 1),
}
SWITCHES = {"fine_tune", "head_only"}


def test_defaults_are_the_configs_and_logdir_follows_out():
  assert parse_args(["--out", "m"]) == train_config.TrainConfig(out="m", logdir="m.tensorboard")


def test_every_field_has_a_flag_of_its_type(monkeypatch):
  # Every flag at once makes settings that do not go together (--fine_tune with --adapter_rank);
  # this test is about parsing, the checks have tests of their own below.
  monkeypatch.setattr(train_config, "check_config", lambda config: None)
  assert set(VALUES) | SWITCHES == {f.name for f in dataclasses.fields(train_config.TrainConfig)}
  argv = [f"--{name}={text}" for name, (text, _) in VALUES.items()]  # "=": values like -1,-3
  config = parse_args(argv + ["--fine_tune", "--head_only"])
  assert {name: getattr(config, name) for name in VALUES} == {
    name: value for name, (_, value) in VALUES.items()
  }
  assert config.fine_tune and config.head_only
  assert parse_args(["--out", "m", "--fine-tune"]).fine_tune  # the alias


def test_help_shows_every_default(capsys, monkeypatch):
  monkeypatch.setenv("COLUMNS", "1000")  # one line a flag: nothing wrapped
  with pytest.raises(SystemExit):
    parse_args(["--help"])
  text = capsys.readouterr().out
  defaults = train_config.TrainConfig(out="m")
  for field in dataclasses.fields(train_config.TrainConfig):
    value = getattr(defaults, field.name)
    assert f"--{field.name}" in text
    if field.type is not bool and field.name not in ("out", "backbone", "logdir"):
      shown = ",".join(map(str, value)) if isinstance(value, list) else value
      assert f"(default: {shown})" in text, field.name
  # The empty defaults are explained in words; choices are listed.
  assert "default: the pinned all-MiniLM-L6-v2" in text
  assert "(default: <out>.tensorboard)" in text
  assert "--head {bilstm,dense}" in text and "--context {sentence,mixed,centred}" in text
  assert "--context_loss {all,sentence}" in text


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--feature_layers", "a,b"], "--feature_layers must be comma-separated integers, got 'a,b'"),
    (["--head", "crf"], "argument --head: invalid choice: 'crf'"),
    (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
  ],
)
def test_bad_values_are_one_line_errors(capsys, argv, message):
  _assert_refused(capsys, ["--out", "m", *argv], message)


def _assert_refused(capsys, argv, message):
  """parse_args exits 2 with exactly one stderr line, `error: <message>...`."""
  with pytest.raises(SystemExit) as exit_info:
    parse_args(argv)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith(f"error: {message}"), err


# "<flags> -> <message>", one bad setting per line.
OUT_OF_BOUNDS = """
  --epochs 0 -> --epochs must be >= 1, got 0
  --batch_size 0 -> --batch_size must be >= 1, got 0
  --batch_size=-3 -> --batch_size must be >= 1, got -3
  --dropout 1 -> --dropout must be in [0.0, 1.0), got 1.0
  --dropout=-0.1 -> --dropout must be in [0.0, 1.0), got -0.1
  --dropout nan -> --dropout must be in [0.0, 1.0), got nan
  --learning_rate 0 -> --learning_rate must be a finite number > 0.0, got 0.0
  --learning_rate inf -> --learning_rate must be a finite number > 0.0, got inf
  --bert_learning_rate nan -> --bert_learning_rate must be a finite number > 0.0
  --adapter_learning_rate=-1e-3 -> --adapter_learning_rate must be a finite number
  --adapter_alpha 0 -> --adapter_alpha must be a finite number > 0.0, got 0.0
  --adapter_alpha inf -> --adapter_alpha must be a finite number > 0.0, got inf
  --adapter_rank=-1 -> --adapter_rank must be >= 0, got -1
  --max_seq_length 2 -> --max_seq_length must be in [3, 512], got 2
  --max_seq_length 513 -> --max_seq_length must be in [3, 512], got 513
  --lstm_size 0 -> --lstm_size must be >= 1, got 0
  --hidden_size 0 -> --hidden_size must be >= 1, got 0
  --document_stride=-1 -> --document_stride must be >= 0, got -1
  --centred_fraction 1.5 -> --centred_fraction must be in [0.0, 1.0], got 1.5
  --context_loss sentence -> --context_loss sentence needs --context centred
  --word_shape_dim=-1 -> --word_shape_dim must be >= 0, got -1
  --word_shape_dropout 1.5 -> --word_shape_dropout must be in [0.0, 1.0], got 1.5
  --head_warmup_steps=-1 -> --head_warmup_steps must be >= 0, got -1
  --min_f1_without_word_shape 101 -> --min_f1_without_word_shape must be in [0.0, 100.0], got 101.0
  --min_f1_without_word_shape 92 -> --min_f1_without_word_shape needs --word_shape_dim
  --max_train_sentences=-1 -> --max_train_sentences must be >= 0, got -1
  --seed=-1 -> --seed must be in [0, 4294967295], got -1
  --seed 4294967296 -> --seed must be in [0, 4294967295], got 4294967296
"""


@pytest.mark.parametrize(
  "argv, message",
  [
    (line.split(" -> ")[0].split(), line.split(" -> ")[1])
    for line in OUT_OF_BOUNDS.strip().splitlines()
  ],
)
def test_out_of_bounds_values_are_refused_up_front(capsys, argv, message):
  _assert_refused(capsys, ["--out", "m", *argv], message)


def test_an_empty_out_is_refused(capsys):
  _assert_refused(capsys, ["--out", ""], "--out must name the checkpoint dir to write")


@pytest.mark.parametrize(
  "argv, message",
  [
    ([], "the following arguments are required: --out"),
    (["--out", "m", "--nope"], "unrecognized arguments: --nope"),
    (["--out", "m", "--feature_layers", "-4,-3"], "argument --feature_layers: expected one"),
  ],
)
def test_argparse_own_errors_are_one_line_too(capsys, argv, message):
  _assert_refused(capsys, argv, message)


@pytest.mark.parametrize(
  "flag, value",
  [
    ("epochs", 1),
    ("batch_size", 1),
    ("dropout", 0.0),
    ("max_seq_length", 3),
    ("max_seq_length", 512),
    ("seed", 0),
    ("seed", 2**32 - 1),
    ("document_stride", 0),
    ("learning_rate", 1e-9),
  ],
)
def test_the_bounds_admit_their_edges(flag, value):
  assert getattr(parse_args(["--out", "m", f"--{flag}={value}"]), flag) == value


def test_the_help_says_how_to_pass_negative_feature_layers(capsys, monkeypatch):
  monkeypatch.setenv("COLUMNS", "1000")
  with pytest.raises(SystemExit):
    parse_args(["--help"])
  assert "--feature_layers=-4,-3" in capsys.readouterr().out


@pytest.mark.parametrize("f1,warned", [(0.0, True), (4.99, True), (5.0, False), (92.0, False)])
def test_a_near_zero_dev_f1_is_reported_loudly(capsys, monkeypatch, f1, warned):
  from bert_ner.train.__main__ import main

  report = {"best_epoch": 1, "train_seconds": 1.0, "dev": {"f1": f1}}
  monkeypatch.setattr(trainer, "run", lambda config, command: report)
  monkeypatch.setattr("bert_ner.train.__main__.format_scores", lambda scores: "scores")
  monkeypatch.setattr("bert_ner.train.__main__.logging.basicConfig", lambda **kwargs: None)
  assert main(["--out", "m"]) == 0
  err = capsys.readouterr().err
  assert (
    f"train: WARNING: DEV F1 IS {f1:.2f}: the model in m finds almost no entities" in err
  ) == (warned)
  assert err.count("\n") == int(warned)
