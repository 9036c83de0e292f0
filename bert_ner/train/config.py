"""The trainer's settings: `TrainConfig` (one field per `python -m bert_ner.train` flag), the
bounds of its numbers and the checks that run before any file is read."""

import dataclasses
import math
from typing import Any

from bert_ner import backbone, conll
from bert_ner import head as ner_head

FEATURE_CACHE = backbone.CACHE_ROOT / "features"
CONTEXTS = ("sentence", "mixed", "centred")
CONTEXT_LOSSES = ("all", "sentence")


@dataclasses.dataclass(frozen=True)
class Bound:
  """The values a numeric setting allows; `check_config` refuses others before any work starts
  (a run with --batch_size 0 would encode for minutes and grow past 2 GB first)."""

  low: float
  high: float = math.inf
  low_open: bool = False  # low itself is not allowed
  high_open: bool = False

  def allows(self, value: float) -> bool:
    """Whether `value` is a finite number within the bound."""
    above = value > self.low if self.low_open else value >= self.low
    below = value < self.high if self.high_open else value <= self.high
    return math.isfinite(value) and above and below

  def __str__(self) -> str:
    if self.high == math.inf:
      number = "a finite number " if isinstance(self.low, float) else ""
      return f"{number}{'>' if self.low_open else '>='} {self.low}"
    return (
      f"in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
    )


def setting(default: Any, help_text: str, bound: Bound | None = None, **flag: Any) -> Any:
  """A TrainConfig field: its default, the `Bound` of its values if any, and for its `--flag` the
  help and any argparse extras (`choices`, `aliases`)."""
  metadata = {"help": help_text, **flag}
  if bound is not None:
    metadata["bound"] = bound
  return dataclasses.field(default=default, metadata=metadata)


POSITIVE = Bound(1)
RATE = Bound(0.0, low_open=True)


@dataclasses.dataclass(kw_only=True)
class TrainConfig:
  """Trainer settings; `python -m bert_ner.train` has a flag for each field, named, typed,
  defaulted and explained by it (bert_ner/train/__main__.py)."""

  train: str = setting(str(conll.DEFAULT_DIR / "train.txt"), "CoNLL training file")
  dev: str = setting(str(conll.DEFAULT_DIR / "dev.txt"), "CoNLL dev file (model selection)")
  out: str = dataclasses.field(metadata={"help": "checkpoint dir to write (replaced atomically)"})
  backbone: str = setting(
    "",
    "Google-format BERT dir (bert_config.json, vocab.txt, bert_model.ckpt*); default: the "
    "pinned all-MiniLM-L6-v2",
  )
  head: str = setting(
    "bilstm",
    "layers between BERT's features and the CRF (dense: the linear projection only)",
    choices=ner_head.HEADS,
  )
  lstm_size: int = setting(128, "LSTM units per direction (bilstm head)", POSITIVE)
  hidden_size: int = setting(
    128, "tanh layer between the BiLSTM and the logits (bilstm head)", POSITIVE
  )
  feature_layers: list[int] = dataclasses.field(
    default_factory=lambda: [-4, -3, -2, -1],
    metadata={
      "help": "encoder layers concatenated as features, comma-separated (-1 = top); a leading "
      "minus needs the = form, --feature_layers=-4,-3 (argparse reads -4,-3 as a flag)"
    },
  )
  # [CLS] + a sub-token + [SEP] at least; BERT checkpoints have at most 512 positions.
  max_seq_length: int = setting(
    128, "sub-tokens per window, [CLS] and [SEP] included", Bound(3, 512)
  )
  dropout: float = setting(
    0.5, "dropout rate on the features while training", Bound(0.0, 1.0, high_open=True)
  )
  epochs: int = setting(12, "training epochs (the best on dev is kept)", POSITIVE)
  batch_size: int = setting(64, "training rows per step", POSITIVE)
  learning_rate: float = setting(1e-3, "head learning rate", RATE)
  bert_learning_rate: float = setting(5e-5, "BERT learning rate with --fine_tune", RATE)
  fine_tune: bool = setting(False, "train BERT too (slow on a CPU)", aliases=("--fine-tune",))
  adapter_rank: int = setting(
    0,
    "train LoRA adapters of this rank on BERT's dense kernels (BERT's weights stay frozen); "
    "0 = none",
    Bound(0),
  )
  adapter_alpha: float = setting(
    8.0, "LoRA alpha: adapters add (alpha / rank) * A B to a kernel", RATE
  )
  adapter_learning_rate: float = setting(1e-3, "adapters' learning rate", RATE)
  adapter_first_layer: int = setting(
    0,
    "adapters on encoder layers from this one up (0 = all); the frozen layers below run once "
    "and are cached",
  )
  word_shape_dim: int = setting(
    0,
    "width of a learned embedding of each word's shape (case, digits, first word, all-caps "
    "sentence: bert_ner.word_shape), an optional model input concatenated to the head's input; "
    "0 = none",
    Bound(0),
  )
  word_shape_dropout: float = setting(
    0.5,
    "with --word_shape_dim: probability that a training row's word shapes are fed as 0, so the "
    "model also tags well without them",
    Bound(0.0, 1.0),
  )
  head_warmup_steps: int = setting(
    0,
    "train only the head (adapters or BERT frozen) for this many steps first; the encoder's "
    "learning rate then decays over the remaining steps",
    Bound(0),
  )
  min_f1_without_word_shape: float = setting(
    0.0,
    "with --word_shape_dim: the dev F1 by sentence without word shapes (what `result` gives a "
    "caller sending ids alone) an epoch must reach to be kept; among the epochs that reach it, "
    "the best mean of sentence and document mode wins (if none does, the best mean of all)",
    Bound(0.0, 100.0),
  )
  context: str = setting(
    "sentence",
    "training rows: sentences, or sentences and (mixed) documents' sliding windows or (centred) "
    "sampled sentences centred in a window of their document's words",
    choices=CONTEXTS,
  )
  centred_fraction: float = setting(
    0.4,
    "with --context centred: the part of the training sentences that also get a centred row",
    Bound(0.0, 1.0),
  )
  context_loss: str = setting(
    "all",
    "with --context centred: the centred rows teach every word's tag (all) or only their "
    "sentence's, summing over the context words' tags in the CRF (sentence, as FLERT does)",
    choices=CONTEXT_LOSSES,
  )
  document_stride: int = setting(
    0,
    "with --context mixed: training document windows overlap by twice this many sub-tokens "
    "(tagging uses the featurizer's default)",
    Bound(0),
  )
  head_only: bool = setting(
    False,
    "save only the head (+ adapters) and a manifest naming the pinned backbone (the layout of "
    "models/default)",
  )
  max_train_sentences: int = setting(
    0, "use only the first N training sentences (0 = all; a few make a quick smoke run)", Bound(0)
  )
  # "" writes no summaries; the CLI's default is <out>.tensorboard.
  logdir: str = setting("", "TensorBoard dir (default: <out>.tensorboard)")
  cache_dir: str = setting(str(FEATURE_CACHE), "encoder feature cache")
  seed: int = setting(
    13, "random seed of initialisation, dropout and batch order", Bound(0, 2**32 - 1)
  )


def mode_name(config: TrainConfig) -> str:
  """The training mode: frozen, adapters or fine-tune."""
  return "fine-tune" if config.fine_tune else "adapters" if config.adapter_rank else "frozen"


def check_config(config: TrainConfig) -> None:
  """Clear errors for values out of their fields' bounds and for settings that do not go together;
  cheap (no file is read), so the CLI runs it before anything else."""
  if not config.out:
    raise ValueError("--out must name the checkpoint dir to write, got ''")
  for field in dataclasses.fields(config):
    bound, value = field.metadata.get("bound"), getattr(config, field.name)
    if bound is not None and not bound.allows(value):
      raise ValueError(f"--{field.name} must be {bound}, got {value}")
  if config.head_only and config.backbone:
    raise ValueError("--head_only needs the pinned default backbone: its manifest names it")
  if config.head_only and config.fine_tune:
    raise ValueError("--head_only cannot hold a fine-tuned BERT: drop one of the two flags")
  if config.fine_tune and config.adapter_rank:
    raise ValueError(
      "--adapter_rank trains adapters on a frozen BERT; --fine_tune trains all "
      "of it: drop one of the two flags"
    )
  if config.min_f1_without_word_shape and not config.word_shape_dim:
    raise ValueError(
      "--min_f1_without_word_shape needs --word_shape_dim: without word shapes every path is "
      "the one it would bound"
    )
  if config.context not in CONTEXTS:
    raise ValueError(f"--context must be one of {CONTEXTS}, got {config.context!r}")
  if config.context_loss not in CONTEXT_LOSSES:
    raise ValueError(f"--context_loss must be one of {CONTEXT_LOSSES}, got {config.context_loss!r}")
  if config.context_loss != "all" and config.context != "centred":
    raise ValueError(
      f"--context_loss {config.context_loss} needs --context centred: only its rows hold a "
      "sentence in context"
    )
