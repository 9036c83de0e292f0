"""Training test helpers: a quick TrainConfig on the tiny BERT."""

from bert_ner.train.config import TrainConfig


def train_config(tiny_bert_dir, sample_files, out, **overrides):
  """A quick TrainConfig on the tiny BERT (its position table holds 64)."""
  train_path, dev_path = sample_files
  values = dict(
    train=train_path,
    dev=dev_path,
    out=str(out),
    backbone=str(tiny_bert_dir),
    max_seq_length=64,
    epochs=2,
    batch_size=8,
    lstm_size=8,
    hidden_size=8,
    feature_layers=[-2, -1],
    cache_dir=str(out) + ".cache",
    logdir=str(out) + ".tb",
  )
  values.update(overrides)
  return TrainConfig(**values)
