"""Rules outside the server that a one-line bug could flip without any other test noticing: the
atomic writer's close before rename, the featurizer's tie between windows, the clients' label-id
bound and REST fail-over on the last target, the demo page's text-only rendering, the trainer's
step counters, a bench ratio's direction, and the checkpoint checks' limits at their boundary.
tests/mutate.py holds each bug as a named mutation."""

import re
import types

import numpy as np
import pytest

from bert_ner import atomic, labels, model_checks
from bert_ner.clients import common, rest_client
from bert_ner.demo import app as demo_app
from bert_ner.featurizer import Featurizer, Window
from support.clients import SENTENCE, VOCAB, FakeServing, ServiceUnavailable, write_assets

# ---------------------------------------------------------------- atomic writes


def test_a_file_is_closed_before_it_is_renamed_into_place(tmp_path, monkeypatch):
  """Bug: the rename inside the `with` (a reader of the new name finds buffered bytes missing)."""
  seen = []
  rename = atomic.os.replace
  monkeypatch.setattr(
    atomic.os, "replace", lambda src, dst: seen.append(open(src).read()) or rename(src, dst)
  )
  atomic.write_text(tmp_path / "f.txt", "every byte\n")
  assert seen == ["every byte\n"]


# ---------------------------------------------------------------- the featurizer's windows


def test_a_word_tied_between_two_windows_is_read_from_the_earlier(tmp_path):
  """Bug: `>=` instead of `>` (the later window wins a tie)."""
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", *"abcdefghi"]) + "\n")
  id2label = ["O", "B-PER", "B-LOC"]
  featurizer = Featurizer(vocab, True, 8, id2label)
  # Words 0-5 in the first window, 3-8 in the second: word 4 has one word of context on its
  # nearer side in each (the first window's right, the second's left).
  first = Window([2, *range(4, 10), 3], [-1, *range(6), -1], 9)
  second = Window([2, *range(7, 13), 3], [-1, *range(3, 9), -1], 9)
  rows = [[0] + [1] * 6 + [0], [0] + [2] * 6 + [0]]
  assert featurizer.word_tags([first, second], rows) == ["B-PER"] * 5 + ["B-LOC"] * 4


# ---------------------------------------------------------------- clients


IDS = np.array([[101, 5, 102]], np.int32)


def test_a_label_id_equal_to_the_label_count_is_refused():
  """Bug: the bound checked with > (id == number of labels indexes past the label map)."""
  assert common.check_labels([[0, 11, 0]], IDS, 12).tolist() == [[0, 11, 0]]
  with pytest.raises(common.ClientError, match="label id 12, outside the 12 labels"):
    common.check_labels([[0, 12, 0]], IDS, 12)


@pytest.fixture
def assets(tmp_path):
  return write_assets(tmp_path / "assets.extra")


def test_rest_reports_the_last_targets_503_after_trying_each_once(assets):
  """Bug: the last target's 503 skipped like the others' (no error left to report)."""
  busy = [ServiceUnavailable(), ServiceUnavailable()]
  try:
    client = rest_client.RestNerClient(",".join(b.address for b in busy), assets=assets)
    with pytest.raises(common.ClientError, match="^server unreachable at "):
      client.output_names()
    assert [b.requests for b in busy] == [1, 1]
  finally:
    for server in busy:
      server.close()


def test_rest_fails_over_from_the_last_target_back_to_the_first(assets):
  """Bug: fail-over stops at the end of the list instead of wrapping round to the first."""
  good, busy = FakeServing(VOCAB), ServiceUnavailable()
  try:
    client = rest_client.RestNerClient(f"{good.rest_address},{busy.address}", assets=assets)
    client.current = 1  # the busy replica answered last
    assert client.predict([SENTENCE])[0][0].text == "EU"
    assert client.current == 0 and busy.requests == 1
  finally:
    busy.close()
    good.close()


# ---------------------------------------------------------------- the demo page

# What parses a string as HTML in a page: any of them would run or render markup from the text.
HTML_SINKS = re.compile(
  r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|createContextualFragment|DOMParser"
  r"|srcdoc|\.html\("
)


def test_the_page_puts_text_in_only_as_text():
  """Bug: the tagged text inserted with innerHTML (markup in the input would render)."""
  for script in demo_app.STATIC.glob("*.js"):
    code = "\n".join(
      line
      for line in script.read_text(encoding="utf-8").splitlines()
      if not line.lstrip().startswith("//")
    )
    assert not HTML_SINKS.search(code), f"{script.name}: {HTML_SINKS.search(code).group(0)}"
  html = (demo_app.STATIC / "index.html").read_text(encoding="utf-8")
  assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script in index.html"


# ---------------------------------------------------------------- the trainer


def test_the_decayed_train_op_advances_the_global_step():
  """Bug: the global step never advances (the learning rate never decays)."""
  import tensorflow.compat.v1 as tf

  from bert_ner.train import graphs

  config = types.SimpleNamespace(batch_size=4, epochs=2, learning_rate=0.1, head_warmup_steps=0)
  with tf.Graph().as_default(), tf.Session() as sess:
    bert, head = tf.Variable(0.0), tf.Variable(0.0)
    loss = tf.square(bert - 1.0) + tf.square(head - 1.0)
    train_op = graphs.decayed_train_op(config, loss, [bert], 0.1, [head], num_examples=8)
    sess.run(tf.global_variables_initializer())
    for _ in range(3):
      sess.run(train_op)
    assert sess.run(tf.train.get_global_step()) == 3


def test_the_best_epoch_records_the_step_it_ended_at(monkeypatch):
  """Bug: the epoch loop's step counter never advances (every checkpoint is model.ckpt-0)."""
  from bert_ner.train import loop

  dev_f1 = iter([0.5, 0.7])  # the second epoch is the better one

  def scores(*args):
    f1 = next(dev_f1)
    return {mode: {"precision": 0.0, "recall": 0.0, "f1": f1} for mode in loop.MODES}

  monkeypatch.setattr(loop, "predict_dev", lambda *args: {})
  monkeypatch.setattr(loop, "score_dev", scores)
  config = types.SimpleNamespace(seed=0, epochs=2, batch_size=4, min_f1_without_word_shape=0.0)
  ctx = types.SimpleNamespace(config=config, writer=None, featurizer=None, dev=[])
  examples = [types.SimpleNamespace(input_ids=[1, 2, 3])] * 10  # 3 batches an epoch
  model = types.SimpleNamespace(train_step=lambda batch: 1.0, run_dev=None, snapshot=dict)
  best, history = loop.fit_epochs(ctx, examples, model)
  assert [h["epoch"] for h in history] == [1, 2]
  assert best["epoch"] == 2 and best["step"] == 6


@pytest.mark.parametrize(
  "floor,kept",
  [
    (0.0, 2),  # the best mean, whatever `result` gives
    (92.0, 3),  # the best mean among the epochs whose `result` path reaches 92.0
    (95.0, 2),  # none reaches it: the best mean of all
  ],
)
def test_the_kept_epoch_clears_the_result_floor_when_one_does(monkeypatch, floor, kept):
  """Bug: the best mean alone kept an epoch at 91.76 without shapes (mean 93.39) over one at 92.14
  (mean 93.32), leaving callers of `result` under a 92.0 floor the next epoch cleared."""
  from bert_ner.train import loop

  epochs = iter([(90.0, 88.0), (93.4, 91.8), (93.3, 92.1)])  # (sentence = document, no shapes)

  def scores(*args):
    f1, no_shape = next(epochs)
    return {
      **{mode: {"precision": 0.0, "recall": 0.0, "f1": f1} for mode in loop.MODES},
      loop.NO_SHAPE: {"precision": 0.0, "recall": 0.0, "f1": no_shape},
    }

  monkeypatch.setattr(loop, "predict_dev", lambda *args: {})
  monkeypatch.setattr(loop, "score_dev", scores)
  config = types.SimpleNamespace(seed=0, epochs=3, batch_size=4, min_f1_without_word_shape=floor)
  ctx = types.SimpleNamespace(config=config, writer=None, featurizer=None, dev=[])
  examples = [types.SimpleNamespace(input_ids=[1, 2, 3])] * 4
  model = types.SimpleNamespace(train_step=lambda batch: 1.0, run_dev=None, snapshot=dict)
  best, _ = loop.fit_epochs(ctx, examples, model)
  assert best["epoch"] == kept


# ---------------------------------------------------------------- bench


def test_bench_ratios_put_the_named_side_on_top():
  """Bug: a ratio computed upside down (0.8 of in-process throughput reported as 1.25)."""
  from bert_ner.bench import report

  rate = types.SimpleNamespace
  results = {
    "throughput": {
      (t, kind): rate(rate=r * (1.0 if kind == "variable" else 0.5))
      for t, r in (("local", 100.0), ("grpc", 80.0), ("rest", 60.0))
      for kind in ("variable", "fixed")
    },
    "concurrency": [1, 8],
    "width": 128,
    "latency": {
      (t, on, 8): rate(rate=30.0 if on else 10.0) for t in ("grpc", "rest") for on in (True, False)
    },
    "text_vs_ids": {
      "grpc": {
        "serving_default": rate(throughput=rate(rate=50.0)),
        "result": rate(throughput=rate(rate=100.0)),
      }
    },
  }
  measured = {name: value for name, value, _ in report.ratios(results)}
  assert measured["text-in / ids-in throughput (gRPC)"] == pytest.approx(0.5)
  assert measured["gRPC / in-process throughput (variable-length)"] == pytest.approx(0.8)
  assert measured["REST / in-process throughput (variable-length)"] == pytest.approx(0.6)
  assert measured["variable-length / padded-to-128 throughput (gRPC)"] == pytest.approx(2.0)
  assert measured["batching on / off throughput at concurrency 8 (REST)"] == pytest.approx(3.0)


def test_bench_padding_is_padded_over_real_positions():
  """Bug: padding computed as real / padded (below 1 for any padded batch)."""
  from bert_ner.bench.__main__ import padding

  assert padding([2, 4], merged=2, batch_size=2)["sorted"] == pytest.approx(8 / 6)


# ---------------------------------------------------------------- checkpoint checks


def test_label_ids_up_to_the_bound_are_read_and_the_bound_is_refused(tmp_path):
  """Bug: the label-id bound checked with > (an id of MAX_LABELS allocates past the bound)."""
  (tmp_path / labels.LABEL2ID_JSON).write_text(f'{{"O": 0, "B-X": {labels.MAX_LABELS - 1}}}')
  assert len(labels.load_label_map(tmp_path)) == labels.MAX_LABELS
  (tmp_path / labels.LABEL2ID_JSON).write_text(f'{{"O": 0, "B-X": {labels.MAX_LABELS}}}')
  with pytest.raises(ValueError, match=f"label id {labels.MAX_LABELS} is not below"):
    labels.load_label_map(tmp_path)


def test_a_vocab_of_vocab_size_lines_passes_and_one_more_is_refused(tmp_path):
  """Bug: the vocabulary's length checked with >= (a vocab filling the table refused)."""
  vocab = tmp_path / "vocab.txt"
  vocab.write_text("[CLS]\n[SEP]\n[UNK]\nword\n")
  model_checks.check_vocab(vocab, 4)
  with pytest.raises(ValueError, match="more than 3 lines"):
    model_checks.check_vocab(vocab, 3)
