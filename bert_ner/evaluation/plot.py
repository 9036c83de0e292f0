"""Reliability diagram of entity scores (matplotlib, written without a display)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the display-less backend)


def plot_calibration(report, path, data_name):
  """Accuracy against mean score per score bin (bert_ner.metrics.calibration), beside the
  diagonal a perfectly calibrated score would follow, with each bin's entity count."""
  fig, (top, bottom) = plt.subplots(
    2, 1, figsize=(5, 6), gridspec_kw={"height_ratios": [3, 1]}, sharex=True
  )
  bins = report["bins"]
  centres = [(low + high) / 2 for low, high, *_ in bins]
  width = 1 / max(len(bins), 10) * 0.9
  top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
  top.bar(centres, [b[4] for b in bins], width=width, alpha=0.6, label="share correct")
  top.plot([b[3] for b in bins], [b[4] for b in bins], marker="o", color="C1", label="bins")
  top.set_ylabel("share of entities correct")
  top.set_title(f"Entity scores on {data_name} (ECE {report['ece']:.4f})")
  top.legend(loc="upper left")
  bottom.bar(centres, [b[2] for b in bins], width=width)
  bottom.set_yscale("log")
  bottom.set_xlabel("entity score")
  bottom.set_ylabel("entities")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
