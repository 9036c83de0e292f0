"""python -m bert_ner.export: checkpoint dir (ours, macanv or head-only default) -> TF Serving
model base."""

import argparse
import sys

from bert_ner import conll
from bert_ner.export.errors import ExportError, ExportRefused
from bert_ner.quiet import add_verbose_flag, quiet_tensorflow, verbose

DEFAULT_VERIFY_FILE = conll.DEFAULT_DIR / "dev.txt"


def parse_args(argv=None):
  """Command-line flags."""
  p = argparse.ArgumentParser(prog="python -m bert_ner.export", description=__doc__)
  p.add_argument(
    "--checkpoint",
    required=True,
    help="checkpoint dir: ours, macanv's, or a head-only dir such as models/default",
  )
  p.add_argument(
    "--model_base_path",
    required=True,
    help="TF Serving model base; the export lands in <base>/<version>/",
  )
  p.add_argument(
    "--version",
    type=int,
    default=None,
    help="version number (default: highest existing + 1); refused if it exists",
  )
  p.add_argument(
    "--verify_file",
    default=None,
    help=f"CoNLL file whose sentences check the SavedModel against the checkpoint "
    f"(default: {DEFAULT_VERIFY_FILE} if present, else built-in samples)",
  )
  p.add_argument("--verify_sentences", type=int, default=64, help="verification sentences; 0 = all")
  p.add_argument(
    "--force",
    action="store_true",
    help="publish even when the new version's dev F1 (train_report.json) is more than "
    "2 points below the served version's (bert_ner/export/guard.py); refused otherwise",
  )
  add_verbose_flag(p, "also print the signatures and TensorFlow's start-up logs")
  args = p.parse_args(argv)
  if args.version is not None and args.version < 1:
    p.error("--version must be >= 1")
  if args.verify_sentences < 0:
    p.error("--verify_sentences must be >= 0")
  return args


def main(argv=None):
  """Runs the export; exit 2 on bad input, 1 when the model is refused (ExportRefused)."""
  args = parse_args(argv)
  quiet_tensorflow(args.verbose)  # TF loads after --help, and quietly
  from bert_ner.export import exporter  # pylint: disable=import-outside-toplevel

  verify_file = args.verify_file or (DEFAULT_VERIFY_FILE if DEFAULT_VERIFY_FILE.is_file() else None)
  try:
    sentences = (
      [s.words for s in conll.read_conll(verify_file)] if verify_file else exporter.SAMPLES
    )[: args.verify_sentences or None]
    if not sentences:
      raise ExportError(f"no sentences in {verify_file}")
    if verbose():
      print(f"verification: {len(sentences)} sentences of {verify_file or 'built-in samples'}")
    exporter.export_model(
      args.checkpoint,
      args.model_base_path,
      args.version,
      sentences,
      signatures_shown=verbose(),
      force=args.force,
    )
  except (ExportError, conll.ConllError, OSError) as e:
    print(f"export: error: {e}", file=sys.stderr)
    return 2
  except ExportRefused as e:
    print(f"export: refused: {e}; nothing was published", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
