"""Command line of the trainer: `python -m bert_ner.train --help`."""

import dataclasses
import logging
import shlex
import sys
import typing

from bert_ner.cli import OneLineParser
from bert_ner.metrics import format_scores
from bert_ner.quiet import quiet_tensorflow

quiet_tensorflow()  # before train.trainer imports TensorFlow (BERT_NER_VERBOSE=1 keeps its logs)
from bert_ner.train import config as train_config  # pylint: disable=wrong-import-position
from bert_ner.train import trainer  # pylint: disable=wrong-import-position

# Dev F1 points below which a model finds almost no entities: a run that diverged or stopped far
# too early. The trainer still writes it (it may be wanted for debugging) but says so loudly.
NEAR_ZERO_F1 = 5.0

DESCRIPTION = (
  "Train a BERT (+BiLSTM) + CRF NER tagger on CoNLL files. BERT is frozen by default (its "
  "features are computed once and cached); --adapter_rank trains LoRA adapters on it, "
  "--fine_tune trains all of it. The best epoch on dev is kept and written as a checkpoint dir "
  "in the macanv/BERT-BiLSTM-CRF-NER layout."
)


def add_flag(parser, field, kind):
  """`--<field name>` for a dataclass field: its type, default, help and metadata's extras.

  A bool is a switch; a list of ints is one comma-separated value (`int_lists` reads it); a help
  ends with the default unless there is none to show (a required flag, a switch, "").
  """
  extras = dict(field.metadata)
  extras.pop("bound", None)  # check_config's, not argparse's
  names = [f"--{field.name}", *extras.pop("aliases", ())]
  if field.default is not dataclasses.MISSING:
    default = field.default
  elif field.default_factory is not dataclasses.MISSING:
    default = field.default_factory()
  else:
    parser.add_argument(*names, required=True, type=kind, **extras)
    return
  if kind is bool:
    parser.add_argument(*names, action="store_true", default=default, **extras)
    return
  if kind == list[int]:
    kind, default = str, ",".join(map(str, default))
  if default != "":
    extras["help"] += " (default: %(default)s)"
  parser.add_argument(*names, type=kind, default=default, **extras)


def int_lists(parser, args, config_class):
  """Reads the comma-separated values of the list-of-int flags; one clear line when one is not."""
  for name, kind in typing.get_type_hints(config_class).items():
    if kind == list[int]:
      value = getattr(args, name)
      try:
        setattr(args, name, [int(x) for x in value.split(",")])
      except ValueError:
        parser.error(f"--{name} must be comma-separated integers, got {value!r}")


def parse_args(argv):
  """Flags, one for each TrainConfig field (defaults: the frozen-BERT recipe; the shipped model's
  is in models/default/manifest.json); values out of bounds are refused here, before any data or
  model is read."""
  parser = OneLineParser(prog="python -m bert_ner.train", description=DESCRIPTION)
  kinds = typing.get_type_hints(train_config.TrainConfig)
  for field in dataclasses.fields(train_config.TrainConfig):
    add_flag(parser, field, kinds[field.name])
  args = parser.parse_args(argv)
  int_lists(parser, args, train_config.TrainConfig)
  args.logdir = args.logdir or f"{args.out}.tensorboard"
  config = train_config.TrainConfig(**vars(args))
  try:
    train_config.check_config(config)
  except ValueError as error:
    parser.error(str(error))
  return config


def main(argv=None):
  """Runs the trainer and prints the dev report; one clear line on bad input."""
  argv = sys.argv[1:] if argv is None else argv
  config = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  try:
    report = trainer.run(config, command="python -m bert_ner.train " + shlex.join(argv))
  except (ValueError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(
    f"best epoch {report['best_epoch']} of {config.epochs}, "
    f"{report['train_seconds']:.0f} s; dev (inference graph):"
  )
  print(format_scores(report["dev"]))
  if report["dev"]["f1"] < NEAR_ZERO_F1:
    print(near_zero_warning(report, config.out), file=sys.stderr)
  return 0


def near_zero_warning(report, out):
  """The warning for a model whose dev F1 is near zero: what it means and what to do."""
  return (
    f"train: WARNING: DEV F1 IS {report['dev']['f1']:.2f}: the model in {out} finds almost no "
    f"entities (too few steps, a diverged learning rate, or labels that do not match the data); "
    f"do not serve it (python -m bert_ner.export refuses it over a better served version)"
  )


if __name__ == "__main__":
  sys.exit(main())
