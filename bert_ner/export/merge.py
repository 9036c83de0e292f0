"""python -m bert_ner.export.merge: any checkpoint dir (adapters or not) -> an ordinary full
checkpoint dir.

LoRA adapters are added into BERT's kernels (W + alpha / rank * A B), the head is copied, and
the result is a macanv-layout dir (`model.ckpt-N.*`, `checkpoint`, `bert_config.json`,
`vocab.txt`, `label2id.json`, `ner_config.json`) holding only google-research/bert and macanv
variable names, for tools that know nothing of adapters.
"""

import argparse
import dataclasses
import os
import re
import sys


def write_merged(checkpoint_dir, out_dir):
  """Writes the merged checkpoint dir of `checkpoint_dir`; returns its checkpoint prefix."""
  import tensorflow.compat.v1 as tf  # pylint: disable=import-outside-toplevel  (fast --help)

  from bert_ner import checkpoint, head  # pylint: disable=import-outside-toplevel

  model_dir = checkpoint.resolve(checkpoint_dir)
  step = re.search(r"-(\d+)$", model_dir.init_checkpoints[0])
  with tf.Graph().as_default(), tf.Session() as sess:
    head.build_inference_graph(model_dir, *head.input_placeholders())
    checkpoint.restore_model(sess, model_dir)
    merged_config = dataclasses.replace(
      model_dir.ner_config, adapter_rank=0, adapter_alpha=0.0, adapter_first_layer=0
    )
    return checkpoint.save_checkpoint_dir(
      sess,
      out_dir,
      int(step.group(1)) if step else 0,
      model_dir.bert_config_path,
      model_dir.vocab_path,
      model_dir.id2label,
      merged_config,
    )


def main(argv=None):
  """Command line; exit 2 with one line on bad input."""
  parser = argparse.ArgumentParser(prog="python -m bert_ner.export.merge", description=__doc__)
  parser.add_argument(
    "--checkpoint",
    required=True,
    help="checkpoint dir: ours (with or without adapters), macanv's, or a "
    "head-only dir such as models/default",
  )
  parser.add_argument("--out", required=True, help="merged checkpoint dir to write (replaced)")
  args = parser.parse_args(argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from bert_ner import backbone  # pylint: disable=import-outside-toplevel

  try:
    prefix = write_merged(args.checkpoint, args.out)
  except (OSError, ValueError, backbone.BackboneError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"merged {args.checkpoint} -> {prefix}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
