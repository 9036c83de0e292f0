"""Trains the NER head on CoNLL data: frozen BERT, LoRA adapters, or full fine-tuning.

Frozen (default, as macanv users ran it on small GPUs): the encoder runs once over every window,
its chosen layers are cached in memory (and on disk, keyed by backbone, data and layers), so each
epoch costs only the head. `--adapter_rank R` keeps BERT's weights frozen but trains low-rank
adapters on its dense kernels together with the head (the checkpoint holds head + adapters; the
exporter merges them). `--fine_tune` trains all of BERT and the head together.
`--context mixed` trains on documents' sliding windows as well as on single sentences, so the
model tags both ways (`Featurizer.predict_documents` / `predict_words`). `--word_shape_dim D`
gives the head a learned embedding of each word's shape (bert_ner.word_shape) as an optional
input; `--head_warmup_steps N` trains the head alone for its first N steps.
Dev is scored in both modes every epoch; the best epoch (mean of the two entity F1s) is kept, and
the final scores are recomputed with the exported inference graph
(`bert_ner.head.build_inference_graph`, adapters merged) on the saved checkpoint, so they are the
figures a served model reproduces.

The parts: `config` (settings), `data` (rows and batches), `features` (the encoder cache and the
layer numbering), `graphs` (each mode's graph), `loop` (the epochs), `outputs` (checkpoint,
report, manifest); `run` here ties them together.
"""

import logging
import time
from typing import Any

from bert_ner import checkpoint as ckpt
from bert_ner import modeling
from bert_ner.featurizer import Featurizer
from bert_ner.train import graphs, outputs
from bert_ner.train.config import TrainConfig, check_config, mode_name
from bert_ner.train.data import Context, bert_files, load_data
from bert_ner.train.features import layer_index
from bert_ner.train.loop import score_dev, summary_writer

TRAINERS = {
  "frozen": graphs.train_frozen,
  "adapters": graphs.train_adapters,
  "fine-tune": graphs.train_fine_tuned,
}


def ner_config_of(config: TrainConfig, vocab_path: str) -> ckpt.NerConfig:
  """The `ner_config.json` the trained model will carry."""
  return ckpt.NerConfig(
    head=config.head,
    lstm_size=config.lstm_size,
    hidden_size=config.hidden_size,
    feature_layers=list(config.feature_layers),
    do_lower_case=not ckpt.vocab_is_cased(vocab_path),
    max_seq_length=config.max_seq_length,
    dropout=config.dropout,
    adapter_rank=config.adapter_rank,
    adapter_alpha=config.adapter_alpha if config.adapter_rank else 0.0,
    adapter_first_layer=config.adapter_first_layer if config.adapter_rank else 0,
    word_shape_dim=config.word_shape_dim,
    word_shape_dropout=config.word_shape_dropout if config.word_shape_dim else 0.0,
  )


def run(config: TrainConfig, command: str = "") -> dict[str, Any]:
  """Trains, selects the best dev epoch, saves the checkpoint dir and returns the report."""
  check_config(config)
  started = time.time()
  bert = bert_files(config)
  ner_config = ner_config_of(config, bert.vocab)
  train, dev, id2label, featurizer = load_data(
    config,
    lambda id2label: Featurizer(
      bert.vocab,
      ner_config.do_lower_case,
      ner_config.max_seq_length,
      id2label,
      word_shape=ner_config.word_shape_dim > 0,
    ),
  )
  num_layers = modeling.BertConfig.from_json_file(bert.config).num_hidden_layers
  for layer in config.feature_layers:
    layer_index(layer, num_layers)  # refused now rather than after encoding the data
  logging.info("train %d documents, dev %d, labels %s", len(train), len(dev), id2label)
  ctx = Context(
    config, ner_config, bert, featurizer, train, dev, id2label, summary_writer(config.logdir)
  )
  best, history = TRAINERS[mode_name(config)](ctx)
  train_seconds = round(time.time() - started, 1)
  prefix, adapter_tags = outputs.save_best(ctx, best)
  predicted = outputs.score_saved(ctx, prefix)
  outcome = outputs.Outcome(
    mode_name(config),
    best,
    history,
    score_dev(dev, predicted),
    train_seconds,
    round(time.time() - started, 1),
  )
  report = outputs.train_report(config, command, outcome, train, dev)
  if adapter_tags is not None:
    report["merge_check"] = outputs.merge_agreement(adapter_tags, predicted["sentence"])
    logging.info(
      "dev words tagged differently by the adapter graph and the merged graph: "
      "%(differing)d of %(words)d",
      report["merge_check"],
    )
  head_manifest = outputs.manifest(config, command, outcome) if config.head_only else None
  outputs.write_outputs(config, report, head_manifest)
  return report
