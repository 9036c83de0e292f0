"""Command line of the trainer: `python -m train --help`."""

import argparse
import logging
import shlex
import sys

from bert_ner.metrics import format_scores
from bert_ner.quiet import quiet_tensorflow

quiet_tensorflow()  # before train.trainer imports TensorFlow (BERT_NER_VERBOSE=1 keeps its logs)
from train import trainer  # pylint: disable=wrong-import-position

DATA = "../shared/data/conll2003"


def parse_args(argv):
  """Flags, defaulting to the recipe of the shipped model."""
  defaults = trainer.TrainConfig(train="", dev="", out="")
  parser = argparse.ArgumentParser(
    prog="python -m train",
    description="Train a BERT (+BiLSTM) + CRF NER tagger on CoNLL files. BERT is frozen by "
    "default (its features are computed once and cached); --adapter_rank trains "
    "LoRA adapters on it, --fine_tune trains all of it. The best epoch on dev is "
    "kept and written as a checkpoint dir in the macanv/BERT-BiLSTM-CRF-NER layout.",
  )
  parser.add_argument("--train", default=f"{DATA}/train.txt", help="CoNLL training file")
  parser.add_argument("--dev", default=f"{DATA}/dev.txt", help="CoNLL dev file (model selection)")
  parser.add_argument("--out", required=True, help="checkpoint dir to write (replaced atomically)")
  parser.add_argument(
    "--backbone",
    default="",
    help="Google-format BERT dir (bert_config.json, vocab.txt, "
    "bert_model.ckpt*); default: the pinned all-MiniLM-L6-v2",
  )
  parser.add_argument("--head", choices=("bilstm", "dense"), default=defaults.head)
  parser.add_argument("--lstm_size", type=int, default=defaults.lstm_size)
  parser.add_argument("--hidden_size", type=int, default=defaults.hidden_size)
  parser.add_argument(
    "--feature_layers",
    default=",".join(map(str, defaults.feature_layers)),
    help="encoder layers concatenated as features, e.g. -4,-3,-2,-1",
  )
  parser.add_argument("--max_seq_length", type=int, default=defaults.max_seq_length)
  parser.add_argument("--dropout", type=float, default=defaults.dropout)
  parser.add_argument("--epochs", type=int, default=defaults.epochs)
  parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
  parser.add_argument(
    "--learning_rate", type=float, default=defaults.learning_rate, help="head learning rate"
  )
  parser.add_argument(
    "--bert_learning_rate",
    type=float,
    default=defaults.bert_learning_rate,
    help="BERT learning rate with --fine_tune",
  )
  parser.add_argument(
    "--fine_tune", "--fine-tune", action="store_true", help="train BERT too (slow on a CPU)"
  )
  parser.add_argument(
    "--adapter_rank",
    type=int,
    default=defaults.adapter_rank,
    help="train LoRA adapters of this rank on BERT's dense kernels (BERT's "
    "weights stay frozen); 0 = none",
  )
  parser.add_argument(
    "--adapter_alpha",
    type=float,
    default=defaults.adapter_alpha,
    help="LoRA alpha: adapters add (alpha / rank) * A B to a kernel",
  )
  parser.add_argument(
    "--adapter_learning_rate",
    type=float,
    default=defaults.adapter_learning_rate,
    help="adapters' learning rate",
  )
  parser.add_argument(
    "--adapter_first_layer",
    type=int,
    default=defaults.adapter_first_layer,
    help="adapters on encoder layers from this one up (0 = all); the frozen "
    "layers below run once and are cached",
  )
  parser.add_argument(
    "--context",
    choices=trainer.CONTEXTS,
    default=defaults.context,
    help="training rows: sentences, or (mixed) documents' sliding windows as well",
  )
  parser.add_argument(
    "--document_stride",
    type=int,
    default=defaults.document_stride,
    help="with --context mixed: training document windows overlap by twice "
    "this many sub-tokens (tagging uses the featurizer's default)",
  )
  parser.add_argument(
    "--head_only",
    action="store_true",
    help="save only the head (+ adapters) and a manifest naming the pinned "
    "backbone (the layout of models/default)",
  )
  parser.add_argument(
    "--max_train_sentences",
    type=int,
    default=0,
    help="use only the first N training sentences (0 = all)",
  )
  parser.add_argument("--logdir", default="", help="TensorBoard dir (default: <out>.tensorboard)")
  parser.add_argument("--cache_dir", default=defaults.cache_dir, help="encoder feature cache")
  parser.add_argument("--seed", type=int, default=defaults.seed)
  args = parser.parse_args(argv)
  try:
    args.feature_layers = [int(x) for x in args.feature_layers.split(",")]
  except ValueError:
    parser.error(f"--feature_layers must be comma-separated integers, got {args.feature_layers!r}")
  args.logdir = args.logdir or f"{args.out}.tensorboard"
  return trainer.TrainConfig(**vars(args))


def main(argv=None):
  """Runs the trainer and prints the dev report; one clear line on bad input."""
  argv = sys.argv[1:] if argv is None else argv
  config = parse_args(argv)
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
  try:
    report = trainer.run(config, command="python -m train " + shlex.join(argv))
  except (ValueError, FileNotFoundError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  print(
    f"best epoch {report['best_epoch']} of {config.epochs}, "
    f"{report['train_seconds']:.0f} s; dev (inference graph):"
  )
  print(format_scores(report["dev"]))
  return 0


if __name__ == "__main__":
  sys.exit(main())
