"""The optional word_shape input through head, trainer, export and the in-process client path.

`result` keeps exactly (input_ids, input_mask) -> pred_label; a model trained with word shapes
reads them from a placeholder_with_default (0 when not fed) and the export adds the
`result_word_shape` signature that names it; models without it export as before.
"""

import json
from unittest import mock

import numpy as np
import pytest

from bert_ner import model_base
from bert_ner.featurizer import Featurizer
from e2e_support import make_checkpoint
from support.train import train_config

pytestmark = pytest.mark.slow  # builds, trains and exports tiny models


@pytest.fixture(scope="module")
def shape_ckpt(tiny_bert_dir, tmp_path_factory):
  """A tiny random BiLSTM-CRF checkpoint with a word shape embedding."""
  return make_checkpoint(
    tiny_bert_dir,
    tmp_path_factory.mktemp("shape") / "ckpt",
    head="bilstm",
    lstm_size=8,
    hidden_size=8,
    word_shape_dim=4,
  )


@pytest.fixture(scope="module")
def shape_export(shape_ckpt, tmp_path_factory):
  from bert_ner.export.exporter import SAMPLES, export_model

  base = tmp_path_factory.mktemp("shape_base") / "bert_ner"
  return export_model(shape_ckpt, base, verify_sentences=SAMPLES, log=lambda message: None)


def _load(path):
  import tensorflow as tf

  sess = tf.compat.v1.Session(graph=tf.Graph())
  meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
  return sess, meta.signature_def


def test_result_keeps_its_inputs_and_the_shape_signature_names_word_shape(shape_export):
  sess, signatures = _load(shape_export)
  with sess:
    assert set(signatures) == {
      model_base.SIGNATURE,
      model_base.TEXT_SIGNATURE,
      model_base.WORD_SHAPE_SIGNATURE,
    }
    result = signatures[model_base.SIGNATURE]
    assert set(result.inputs) == {"input_ids", "input_mask"}
    assert set(result.outputs) == {"pred_label"}
    assert set(signatures[model_base.TEXT_SIGNATURE].inputs) == {"text"}
    shaped = signatures[model_base.WORD_SHAPE_SIGNATURE]
    assert set(shaped.inputs) == {"input_ids", "input_mask", "word_shape"}
    assert shaped.inputs["word_shape"].name == "word_shape:0"
    assert shaped.outputs["pred_label"].name == result.outputs["pred_label"].name
  config = json.loads((shape_export / "assets.extra" / "ner_config.json").read_text())
  assert config["word_shape_dim"] == 4


def test_unfed_word_shape_reads_as_zero_and_fed_shapes_count(shape_export):
  featurizer = Featurizer.from_dir(shape_export / "assets.extra")
  assert featurizer.word_shape
  sentences = [
    "EU rejects German call to boycott British lamb .".split(),
    "BRUSSELS 1996-08-22".split(),
    "PETER BLACKBURN said McDonald 's iPhone sold 3 units in the U.S.".split(),
  ] * 8
  windows = [w for s in sentences for w in featurizer.encode_words(s)]
  ids, mask, shapes = featurizer.pad_batch(windows, True)
  sess, signatures = _load(shape_export)
  with sess:
    result = signatures["result"]
    fetch = result.outputs["pred_label"].name
    feed = {result.inputs["input_ids"].name: ids, result.inputs["input_mask"].name: mask}
    plain = sess.run(fetch, feed)
    zeros = sess.run(fetch, {**feed, "word_shape:0": np.zeros_like(ids)})
    assert (plain == zeros).all()
    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(5):  # random shape ids: a random embedding moves some labels
      random_shapes = rng.integers(1, 25, ids.shape).astype(np.int32)
      differ += int((sess.run(fetch, {**feed, "word_shape:0": random_shapes}) != plain).sum())
    assert differ > 0
    # Out-of-range ids read as 0; a shape that does not match input_ids is refused.
    assert (sess.run(fetch, {**feed, "word_shape:0": np.full_like(ids, 99)}) == plain).all()
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match="word_shape shape"):
      sess.run(fetch, {**feed, "word_shape:0": shapes[:, :-1]})


def test_local_model_feeds_word_shape_on_the_ids_path(shape_export):
  from bert_ner.evaluation.local import LocalModel

  model = LocalModel(shape_export.parent)
  featurizer = Featurizer.from_dir(model.assets)
  try:
    assert model.takes_word_shape
    windows = featurizer.encode_words("EU rejects German call to boycott British lamb .".split())
    ids, mask, shapes = featurizer.pad_batch(windows, True)
    assert (model.run(ids, mask) == model.run(ids, mask, np.zeros_like(shapes))).all()
    assert model.run(ids, mask, shapes).shape == ids.shape
  finally:
    model.close()
  text = LocalModel(shape_export.parent, signature=model_base.TEXT_SIGNATURE)
  assert not text.takes_word_shape  # only `result`, the ids signature, is upgraded
  text.close()


def test_the_text_graphs_head_takes_word_shapes(shape_ckpt):
  """exporter.TextHead: build_head(ids, mask[, word_shape]) feeds a model with word shapes and
  records that the text graph gave them."""
  import tensorflow.compat.v1 as tf

  from bert_ner import checkpoint
  from bert_ner.export.exporter import TextHead

  model_dir = checkpoint.resolve(shape_ckpt)
  featurizer = model_dir.featurizer()
  windows = featurizer.encode_words("EU rejects German call to boycott British lamb .".split())
  ids, mask, _ = featurizer.pad_batch(windows, True)
  with tf.Graph().as_default(), tf.Session() as sess:
    input_ids = tf.placeholder(tf.int32, [None, None])
    input_mask = tf.placeholder(tf.int32, [None, None])
    shapes = tf.placeholder(tf.int32, [None, None])
    head = TextHead(model_dir)
    plain = head(input_ids, input_mask).pred_label
    assert not head.reads_shapes
    with tf.variable_scope(tf.get_variable_scope(), reuse=True):
      shaped = head(input_ids, input_mask, shapes).pred_label
    assert head.reads_shapes
    checkpoint.restore_model(sess, model_dir)
    feed = {input_ids: ids, input_mask: mask}
    want = sess.run(plain, feed)
    assert (sess.run(shaped, {**feed, shapes: np.zeros_like(ids)}) == want).all()
    rng = np.random.default_rng(0)
    moved = sum(
      int((sess.run(shaped, {**feed, shapes: rng.integers(1, 25, ids.shape)}) != want).sum())
      for _ in range(5)
    )
    assert moved > 0


def test_the_text_signature_computes_the_shapes_in_graph(shape_ckpt, tmp_path):
  """The text graph hands a word-shape model its in-graph shapes, and the export's check holds
  its entities equal to result_word_shape fed the featurizer's shapes."""
  from bert_ner.export import exporter

  heads = []
  text_head = exporter.TextHead

  def recorded(model_dir):
    heads.append(text_head(model_dir))
    return heads[-1]

  with mock.patch.object(exporter, "TextHead", recorded):
    path = exporter.export_model(shape_ckpt, tmp_path / "bert_ner", log=lambda message: None)
  assert path.name == "1" and [h.reads_shapes for h in heads] == [True]


def test_models_without_word_shapes_export_as_before(tiny_bert_dir, tmp_path):
  from bert_ner.evaluation.local import LocalModel
  from bert_ner.export.exporter import SAMPLES, export_model

  ckpt = make_checkpoint(tiny_bert_dir, tmp_path / "ckpt")
  path = export_model(ckpt, tmp_path / "bert_ner", verify_sentences=SAMPLES, log=lambda m: None)
  sess, signatures = _load(path)
  with sess:
    assert set(signatures) == set(model_base.SIGNATURES)
    assert "word_shape" not in [op.name for op in sess.graph.get_operations()]
  assert not Featurizer.from_dir(path / "assets.extra").word_shape
  model = LocalModel(path.parent)
  assert not model.takes_word_shape
  model.close()


def test_evaluation_local_with_and_without_word_shapes(
  shape_export, conll_dev_path, tmp_path, capsys
):
  from bert_ner.evaluation.__main__ import main
  from conll_sample import write_first_sentences

  data = write_first_sentences(conll_dev_path, tmp_path / "dev.txt", 30)
  args = ["--data", str(data), "--transport", "local"]
  args += ["--model_base_path", str(shape_export.parent)]
  assert main(args) == 0
  assert "with word shapes" in capsys.readouterr().err
  assert main(args + ["--no_word_shape"]) == 0
  assert "with word shapes" not in capsys.readouterr().err


def test_trainer_rows_carry_each_sentences_shapes(tiny_bert_dir):
  """make_examples: sentence rows and document windows carry each sentence's own shapes."""
  from bert_ner import conll
  from bert_ner import word_shape as ws
  from bert_ner.train.data import make_examples
  from e2e_support import LABELS

  featurizer = Featurizer(tiny_bert_dir / "vocab.txt", True, 64, LABELS, word_shape=True)
  document = [
    conll.Sentence(["EU", "rejects", "it"], ["B-ORG", "O", "O"]),
    conll.Sentence(["BRUSSELS", "1996"], ["B-LOC", "O"]),
  ]
  examples = make_examples(featurizer, [document], "mixed")
  assert [e.word_shape for e in examples] == [
    [0, 9, 1, 1, 0],
    [0, 21, 17, 0],
    [0, 9, 1, 1, 21, 17, 0],
  ]
  assert all(len(e.word_shape) == len(e.input_ids) for e in examples)
  assert ws.document_shapes([s.words for s in document]) == [9, 1, 1, 21, 17]


def test_the_head_warm_up_runs_the_head_only_op_first():
  from bert_ner.train.loop import TrainingGraph

  ran = []
  sess = mock.Mock()
  sess.run.side_effect = lambda fetches, feed: ran.append(fetches[1]) or (0.5, None)
  model = TrainingGraph(
    sess, "loss", "train", "pred", lambda batch: {}, None, [], "warmup", warmup_steps=2
  )
  for _ in range(4):
    model.train_step([0])
  assert ran == ["warmup", "warmup", "train", "train"]


@pytest.mark.parametrize("mode", [{"adapter_rank": 2}, {"fine_tune": True}])
def test_training_with_word_shapes_scores_dev_without_them_too(
  tiny_bert_dir, sample_files, tmp_path, mode
):
  """Two steps (16 sentences, 8 a batch) with word shapes and a one-step head warm-up: the
  checkpoint holds the embedding, the report the dev scores without shapes, and it exports."""
  from bert_ner import checkpoint
  from bert_ner.export.exporter import export_model
  from bert_ner.train import trainer

  out = tmp_path / "model"
  config = train_config(
    tiny_bert_dir,
    sample_files,
    out,
    epochs=1,
    max_train_sentences=16,
    word_shape_dim=4,
    head_warmup_steps=1,
    **mode,
  )
  report = trainer.run(config)
  assert "dev_f1_sentence_no_shape" in report["history"][0]
  assert set(report["dev_without_word_shape"]) >= {"precision", "recall", "f1"}
  model_dir = checkpoint.resolve(out)
  assert (model_dir.ner_config.word_shape_dim, model_dir.ner_config.word_shape_dropout) == (4, 0.5)
  shapes = dict(checkpoint.variable_shapes(model_dir.init_checkpoints))
  assert shapes["word_shape/embedding"] == [25, 4]
  path = export_model(out, tmp_path / "bert_ner", log=lambda message: None)
  _, signatures = _load(path)
  assert model_base.WORD_SHAPE_SIGNATURE in signatures


def test_grpc_and_rest_clients_send_word_shape_on_the_ids_path(shape_export):
  """Served by `python -m bert_ner.server`: a client of `result` (or of result_word_shape by
  name) sends its batches to result_word_shape with the featurizer's shapes, and tags as the
  SavedModel does with them fed; a client of the text signature is not upgraded."""
  from bert_ner.clients.grpc_client import GrpcNerClient
  from bert_ner.clients.rest_client import RestNerClient
  from bert_ner.evaluation.local import LocalModel
  from bert_ner.server.process import ServerProcess

  sentences = [
    "EU rejects German call to boycott British lamb .".split(),
    "BRUSSELS 1996-08-22".split(),
    ("Germany 's representative to the European Union said on Wednesday " * 4).split(),
  ]
  local = LocalModel(shape_export.parent)
  featurizer = Featurizer.from_dir(local.assets)
  want = featurizer.predict_words(sentences, local.run)
  local.close()
  assets = shape_export / "assets.extra"
  with ServerProcess(shape_export.parent, shape_export.parent.parent / "server.log") as server:
    for client_class, address, signature in (
      (GrpcNerClient, server.grpc, model_base.SIGNATURE),
      (RestNerClient, server.rest, model_base.SIGNATURE),
      # Named directly, the word-shape signature gets the shapes too.
      (GrpcNerClient, server.grpc, model_base.WORD_SHAPE_SIGNATURE),
      (RestNerClient, server.rest, model_base.WORD_SHAPE_SIGNATURE),
    ):
      sent = []
      with client_class(address, signature=signature, assets=assets) as client:
        client.check_fingerprint()
        assert client.shape_signature == model_base.WORD_SHAPE_SIGNATURE
        run = client.run

        def spy(ids, mask, shapes=None, run=run, sent=sent, client=client):
          sent.append(client.request_signature(shapes))
          return run(ids, mask, shapes)

        assert client.featurizer.predict_words(sentences, spy) == want
        assert set(sent) == {model_base.WORD_SHAPE_SIGNATURE}
      with client_class(address, assets=assets) as text:
        text.check_fingerprint()
        assert text.text_in and text.shape_signature is None
        assert len(text.predict(["EU rejects German call"])) == 1
