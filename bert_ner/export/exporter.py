"""Checkpoint dir -> `<base>/<version>/` TF1 SavedModel: inference graph only, atomic, verified.

Built in `<base>/.tmp-<version>-<pid>/`, checked against the checkpoint graph, then renamed into
place, so a server polling the base never sees a partial version.
"""

import hashlib
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import types_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2

from bert_ner import backbone, checkpoint, labels, ner_schema, text_graph
from bert_ner.export import guard, layout
from bert_ner.export.errors import ExportError, ExportRefused
from bert_ner.featurizer import VOCAB_FILE, pad_batch, text_entities
from bert_ner.head import build_inference_head, input_placeholders, word_shape_input
from bert_ner.model_base import (
  ASSETS_DIR,
  INPUT_IDS,
  INPUT_MASK,
  OUTPUT,
  OUTPUT_SCOPE,
  SIGNATURE,
  TEXT,
  TEXT_OUTPUTS,
  TEXT_SIGNATURE,
  WARMUP_FILE,
  WORD_SHAPE,
  WORD_SHAPE_SIGNATURE,
)

v1 = tf.compat.v1
SERVE = v1.saved_model.tag_constants.SERVING
BATCH = 32
# Built-in sentences (words) for the warm-up file and for verification without a data file.
SAMPLES = [
  "EU rejects German call to boycott British lamb .".split(),
  "Peter Blackburn".split(),
  "BRUSSELS 1996-08-22".split(),
  "Germany 's representative to the European Union 's veterinary committee Werner Zwingelberg "
  "said on Wednesday consumers should buy sheepmeat from countries other than Britain until "
  "the scientific advice was clearer .".split(),
]


def _resolve(checkpoint_dir):
  """ModelDir for any of the three checkpoint layouts, or ExportError with the reason."""
  if not Path(checkpoint_dir).is_dir():
    raise ExportError(f"checkpoint dir not found: {checkpoint_dir}")
  try:
    return checkpoint.resolve(checkpoint_dir)
  except (OSError, ValueError, backbone.BackboneError) as e:
    raise ExportError(f"cannot export {checkpoint_dir}: {e}") from e


def _fingerprint(sess, model_dir):
  """16 hex of sha256 over every variable (name, dtype, shape, bytes), labels, vocab and config."""
  h = hashlib.sha256()
  variables = sorted(v1.global_variables(), key=lambda v: v.op.name)
  for var, value in zip(variables, sess.run(variables)):
    h.update(f"{var.op.name}|{value.dtype}|{value.shape}|".encode())
    h.update(np.ascontiguousarray(value).tobytes())
  h.update(json.dumps(model_dir.id2label).encode())
  h.update(Path(model_dir.vocab_path).read_bytes())
  h.update(json.dumps(asdict(model_dir.ner_config), sort_keys=True).encode())
  return h.hexdigest()[:16]


def _batches(featurizer, sentences):
  """Padded (input_ids, input_mask, word_shape) batches of the windows of `sentences` (lists
  of words)."""
  windows = [w for words in sentences for w in featurizer.encode_words(words)]
  return [pad_batch(windows[i : i + BATCH], True) for i in range(0, len(windows), BATCH)]


class TextHead:
  """The `build_head` the text graph builds the model on its windows with: (input_ids,
  input_mask[, word_shape]) [K, T] int32 -> NerHead, sharing the ids signature's variables.

  `word_shape` (None: the model reads 0) are the windows' word shapes computed in the graph;
  `reads_shapes` records that the text graph gave them to a model that takes them, so the
  export checks its entities against the ids path with the featurizer's shapes.
  """

  def __init__(self, model_dir):
    self.model_dir = model_dir
    self.reads_shapes = False

  def __call__(self, input_ids, input_mask, word_shape=None):
    if word_shape is not None and self.model_dir.ner_config.word_shape_dim:
      self.reads_shapes = True
    return build_inference_head(self.model_dir, input_ids, input_mask, word_shape=word_shape)


def _write_assets(out, model_dir, fingerprint, featurizer):
  """assets.extra/: vocab, label map, ner_config with the ExportInfo, and the warm-up log."""
  assets = out / ASSETS_DIR
  assets.mkdir()
  shutil.copyfile(model_dir.vocab_path, assets / VOCAB_FILE)
  labels.save_label_map(str(assets), model_dir.id2label)
  bert = json.loads(Path(model_dir.bert_config_path).read_text())
  export = ner_schema.ExportInfo(
    fingerprint=fingerprint,
    labels=list(model_dir.id2label),
    vocab_size=bert["vocab_size"],
    max_position_embeddings=bert["max_position_embeddings"],
    outputs_zero_past_length=True,  # build_inference_head: 0 beyond each row's length
  )
  ner_schema.write(
    ner_schema.path_in(assets), ner_schema.NerConfigFile(model_dir.ner_config, export)
  )
  # One request per sample plus one batch of all, for each signature: TF Serving replays them at
  # load, so the first real request of any kind finds its kernels ready.
  id_requests = [pad_batch(featurizer.encode_words(words), True) for words in SAMPLES]
  id_requests += _batches(featurizer, SAMPLES)
  texts = [" ".join(words) for words in SAMPLES]
  requests = [
    (SIGNATURE, {INPUT_IDS: (ids, tf.int32), INPUT_MASK: (mask, tf.int32)})
    for ids, mask, _ in id_requests
  ]
  if model_dir.ner_config.word_shape_dim:
    requests += [
      (
        WORD_SHAPE_SIGNATURE,
        {INPUT_IDS: (ids, tf.int32), INPUT_MASK: (mask, tf.int32), WORD_SHAPE: (shapes, tf.int32)},
      )
      for ids, mask, shapes in id_requests
    ]
  requests += [(TEXT_SIGNATURE, {TEXT: ([t], tf.string)}) for t in texts]
  requests.append((TEXT_SIGNATURE, {TEXT: (texts, tf.string)}))
  with tf.io.TFRecordWriter(str(assets / WARMUP_FILE)) as writer:
    for signature_name, inputs in requests:
      request = predict_pb2.PredictRequest()
      request.model_spec.name = out.parent.name
      request.model_spec.signature_name = signature_name
      for key, (value, dtype) in inputs.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value, dtype))
      log = prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
      )
      writer.write(log.SerializeToString())


def _run_signature(sess, sig, ids, mask, shapes):
  """pred_label of one batch through a loaded signature; word shapes fed where it takes them."""
  feed = {sig.inputs[INPUT_IDS].name: ids, sig.inputs[INPUT_MASK].name: mask}
  if WORD_SHAPE in sig.inputs:
    feed[sig.inputs[WORD_SHAPE].name] = shapes
  return sess.run(sig.outputs[OUTPUT].name, feed)


def _verify(path, batches, expected, output_name, featurizer, texts, text_shapes=False):
  """Reloads the SavedModel in a fresh graph and requires checkpoint-identical predictions, and
  the text signature's entities equal to the featurizer's through the ids signature.

  `expected` maps each ids signature to its checkpoint predictions per batch: `result` (word
  shapes not fed) and, for a model with word shapes, the word-shape signature (fed). The text
  signature is compared with the ids path that reads what it reads: the featurizer's word shapes
  when `text_shapes` (the text graph computes them), else none.
  """
  with v1.Session(graph=tf.Graph()) as sess:
    meta = v1.saved_model.loader.load(sess, [SERVE], str(path))
    checked = differ = 0
    for name, wanted in expected.items():
      sig = meta.signature_def[name]
      if sig.outputs[OUTPUT].name != output_name:
        raise ExportRefused(
          f"signature {name!r} outputs {sig.outputs[OUTPUT].name}, expected {output_name}"
        )
      for (ids, mask, shapes), want in zip(batches, wanted):
        got = _run_signature(sess, sig, ids, mask, shapes)
        differ += int(np.any((got != want) & (mask > 0), axis=1).sum())
        checked += len(ids)
    if differ:
      raise ExportRefused(
        f"SavedModel predictions differ from the checkpoint's on {differ} of {checked} rows "
        f"(signatures {', '.join(expected)})"
      )
    sig = meta.signature_def[WORD_SHAPE_SIGNATURE if text_shapes else SIGNATURE]

    def run_ids(ids, mask, shapes=None):
      """The ids path the text signature must agree with."""
      return _run_signature(sess, sig, ids, mask, shapes)

    want_entities = featurizer.predict_texts(texts, run_ids)
    text_sig = meta.signature_def[TEXT_SIGNATURE]
    got = sess.run(
      {key: info.name for key, info in text_sig.outputs.items()},
      {text_sig.inputs[TEXT].name: [t.encode() for t in texts]},
    )
    mismatched = [
      t for t, want, have in zip(texts, want_entities, text_entities(texts, got)) if want != have
    ]
    if mismatched:
      raise ExportRefused(
        f"text signature entities differ from the ids path on {len(mismatched)} of {len(texts)} "
        f"texts, first: {mismatched[0]!r}"
      )
  return sum(len(ids) for ids, _, _ in batches)


def signature_summary(signature_def_map):
  """`saved_model_cli show --all`-style text for the signatures."""
  lines = []
  for name in sorted(signature_def_map):
    sig = signature_def_map[name]
    lines.append(f"signature_def['{name}']:")
    for kind, tensors in (("input", sig.inputs), ("output", sig.outputs)):
      lines.append(f"  The given SavedModel SignatureDef contains the following {kind}(s):")
      for key in sorted(tensors):
        info = tensors[key]
        shape = tuple(d.size for d in info.tensor_shape.dim)
        lines += [
          f"    {kind}s['{key}'] tensor_info:",
          f"        dtype: {types_pb2.DataType.Name(info.dtype)}",
          f"        shape: {shape}",
          f"        name: {info.name}",
        ]
    lines.append(f"  Method name is: {sig.method_name}")
  return "\n".join(lines)


def export_model(
  checkpoint_dir,
  model_base_path,
  version=None,
  verify_sentences=SAMPLES,
  log=print,
  signatures_shown=False,
  force=False,
):
  """Exports `checkpoint_dir` as the next (or given) version of `model_base_path`; returns it.

  Logs one line (where to, fingerprint, verification); signatures_shown adds the signatures.
  Refuses (ExportRefused) a version that would be served and scores far below the
  served one, unless `force`.
  """
  start = time.perf_counter()
  model_dir = _resolve(checkpoint_dir)
  base = Path(model_base_path)
  try:
    base.mkdir(parents=True, exist_ok=True)
    stale = layout.clean_stale(base)
    wanted = version or layout.next_version(base)
    if (base / str(wanted)).exists():
      raise ExportError(f"version {wanted} already exists in {base}")
    tmp = layout.tmp_dir(base, wanted)
    tmp.mkdir()
  except OSError as e:
    raise ExportError(f"model base {base} is not writable: {e}") from e
  if stale:
    log(f"removed stale temp dirs of crashed exports: {', '.join(stale)}")
  try:
    if note := guard.check_not_worse(checkpoint_dir, base, wanted, force):
      log(note)
    featurizer = model_dir.featurizer()
    batches = _batches(featurizer, verify_sentences)
    with tf.Graph().as_default() as graph, v1.Session(graph=graph) as sess:
      input_ids, input_mask = input_placeholders()
      # A model trained with word shapes takes them as an optional input (0: not fed), which
      # `result` does not name: its inputs stay input_ids and input_mask.
      has_shapes = model_dir.ner_config.word_shape_dim > 0
      word_shape = word_shape_input(input_ids) if has_shapes else None
      pred_label = build_inference_head(
        model_dir, input_ids, input_mask, word_shape=word_shape
      ).pred_label
      texts = v1.placeholder(tf.string, [None], name=TEXT)
      text_head = TextHead(model_dir)
      # The text signature runs the same model on its windows: the same variables, reused.
      with v1.variable_scope(v1.get_variable_scope(), reuse=True), v1.name_scope("text_model"):
        entities = text_graph.build(model_dir, texts, text_head)
      # Made before any session run: TF refuses to change ops of a graph a session has run.
      initialize_tables = v1.tables_initializer()
      checkpoint.restore_model(sess, model_dir)
      fingerprint = _fingerprint(sess, model_dir)
      with v1.name_scope(OUTPUT_SCOPE.format(fingerprint=fingerprint)):
        output = tf.identity(pred_label, name=OUTPUT)
        entities = {key: tf.identity(entities[key], name=key) for key in TEXT_OUTPUTS}
      output.set_shape([None, None])
      expected = {
        SIGNATURE: [sess.run(output, {input_ids: i, input_mask: m}) for i, m, _ in batches]
      }
      if has_shapes:
        expected[WORD_SHAPE_SIGNATURE] = [
          sess.run(output, {input_ids: i, input_mask: m, word_shape: s}) for i, m, s in batches
        ]
      build = v1.saved_model.utils.build_tensor_info
      predict = v1.saved_model.signature_constants.PREDICT_METHOD_NAME
      signatures = {
        SIGNATURE: v1.saved_model.signature_def_utils.build_signature_def(
          inputs={INPUT_IDS: build(input_ids), INPUT_MASK: build(input_mask)},
          outputs={OUTPUT: build(output)},
          method_name=predict,
        ),
        TEXT_SIGNATURE: v1.saved_model.signature_def_utils.build_signature_def(
          inputs={TEXT: build(texts)},
          outputs={key: build(tensor) for key, tensor in entities.items()},
          method_name=predict,
        ),
      }
      if has_shapes:
        signatures[WORD_SHAPE_SIGNATURE] = v1.saved_model.signature_def_utils.build_signature_def(
          inputs={
            INPUT_IDS: build(input_ids),
            INPUT_MASK: build(input_mask),
            WORD_SHAPE: build(word_shape),
          },
          outputs={OUTPUT: build(output)},
          method_name=predict,
        )
      builder = v1.saved_model.Builder(str(tmp))
      builder.add_meta_graph_and_variables(
        sess,
        [SERVE],
        signature_def_map=signatures,
        clear_devices=True,
        strip_default_attrs=True,
        main_op=initialize_tables,
      )
      builder.save()
    _write_assets(tmp, model_dir, fingerprint, featurizer)
    guard.keep_report(checkpoint_dir, tmp / ASSETS_DIR)
    sample_texts = [" ".join(words) for words in verify_sentences]
    rows = _verify(
      tmp, batches, expected, output.name, featurizer, sample_texts, text_head.reads_shapes
    )
    final = layout.publish(tmp, base, wanted, fixed=version is not None)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if signatures_shown:
    log(signature_summary(signatures))
  log(
    f"exported {checkpoint_dir} -> {final} (fingerprint {fingerprint}) "
    f"in {time.perf_counter() - start:.1f}s, verified: SavedModel == checkpoint graph on "
    f"{len(verify_sentences)} sentences ({rows} windows)"
  )
  return final
