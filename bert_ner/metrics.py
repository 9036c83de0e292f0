"""Entity-level seqeval scores (conlleval-equivalent) and their report; no TensorFlow."""

from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2


def seqeval_scores(gold, pred):
  """Entity-level micro P/R/F1 (percent) and the per-type report, conlleval-equivalent."""
  kwargs = dict(mode="strict", scheme=IOB2, zero_division=0)
  return {
    "precision": 100 * precision_score(gold, pred, **kwargs),
    "recall": 100 * recall_score(gold, pred, **kwargs),
    "f1": 100 * f1_score(gold, pred, **kwargs),
    "per_type": {
      name: {
        "precision": 100 * row["precision"],
        "recall": 100 * row["recall"],
        "f1": 100 * row["f1-score"],
        "support": int(row["support"]),
      }
      for name, row in classification_report(gold, pred, output_dict=True, **kwargs).items()
      if not name.endswith(" avg")
    },
  }


def format_scores(scores):
  """Per-type lines, then conlleval's `overall precision P recall R f1 F` line."""
  lines = [
    f"{name:>6}: precision {row['precision']:6.2f} recall {row['recall']:6.2f} "
    f"f1 {row['f1']:6.2f} support {row['support']}"
    for name, row in sorted(scores["per_type"].items())
  ]
  lines.append(
    f"overall precision {scores['precision']:.2f} recall {scores['recall']:.2f} "
    f"f1 {scores['f1']:.2f}"
  )
  return "\n".join(lines)
