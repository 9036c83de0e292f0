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


def calibration(scores, correct, bins=10, thresholds=(0.5, 0.9, 0.99)):
  """How well entity scores predict correctness.

  Expected calibration error (ECE): over equal-width score bins, the mean of |accuracy - mean
  score| weighted by the bin's share of entities; the precision (share correct) and count of
  the entities scoring at least each threshold; and the bins themselves, for a reliability
  diagram: (low, high, count, mean score, accuracy), empty bins left out.
  """
  total = len(scores)
  rows = []
  for i in range(bins):
    low, high = i / bins, (i + 1) / bins
    inside = [
      (s, c) for s, c in zip(scores, correct) if low <= s < high or (i == bins - 1 and s == 1.0)
    ]
    if inside:
      mean = sum(s for s, _ in inside) / len(inside)
      accuracy = sum(c for _, c in inside) / len(inside)
      rows.append((low, high, len(inside), mean, accuracy))
  ece = sum(count / total * abs(accuracy - mean) for _, _, count, mean, accuracy in rows)
  above = {}
  for threshold in thresholds:
    kept = [c for s, c in zip(scores, correct) if s >= threshold]
    above[threshold] = (100 * sum(kept) / len(kept) if kept else 0.0, len(kept))
  return {"entities": total, "ece": ece, "above": above, "bins": rows}


def format_calibration(report):
  """One line: ECE and the precision above each threshold."""
  parts = [
    f"precision {precision:.2f} over {count} entities scoring >= {threshold:g}"
    for threshold, (precision, count) in report["above"].items()
  ]
  return f"calibration of {report['entities']} entities: ECE {report['ece']:.4f}; " + "; ".join(
    parts
  )
