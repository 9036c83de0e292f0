"""`python -m train` flags: one per TrainConfig field, with its type, default and help."""

import dataclasses

import pytest

from train import trainer
from train.__main__ import parse_args

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
  "context": ("mixed", "mixed"),
  "document_stride": ("6", 6),
  "max_train_sentences": ("10", 10),
  "logdir": ("tb", "tb"),
  "cache_dir": ("cache", "cache"),
  "seed": ("1", 1),
}
SWITCHES = {"fine_tune", "head_only"}


def test_defaults_are_the_configs_and_logdir_follows_out():
  assert parse_args(["--out", "m"]) == trainer.TrainConfig(out="m", logdir="m.tensorboard")


def test_every_field_has_a_flag_of_its_type():
  assert set(VALUES) | SWITCHES == {f.name for f in dataclasses.fields(trainer.TrainConfig)}
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
  defaults = trainer.TrainConfig(out="m")
  for field in dataclasses.fields(trainer.TrainConfig):
    value = getattr(defaults, field.name)
    assert f"--{field.name}" in text
    if field.type is not bool and field.name not in ("out", "backbone", "logdir"):
      shown = ",".join(map(str, value)) if isinstance(value, list) else value
      assert f"(default: {shown})" in text, field.name
  # The empty defaults are explained in words; choices are listed.
  assert "default: the pinned all-MiniLM-L6-v2" in text
  assert "(default: <out>.tensorboard)" in text
  assert "--head {bilstm,dense}" in text and "--context {sentence,mixed}" in text


@pytest.mark.parametrize(
  "argv, message",
  [
    (["--feature_layers", "a,b"], "--feature_layers must be comma-separated integers, got 'a,b'"),
    (["--head", "crf"], "argument --head: invalid choice: 'crf'"),
    (["--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
  ],
)
def test_bad_values_are_one_line_errors(capsys, argv, message):
  with pytest.raises(SystemExit):
    parse_args(["--out", "m", *argv])
  last = capsys.readouterr().err.strip().splitlines()[-1]
  assert last.startswith(f"python -m train: error: {message}")
