"""In-process transport: the latest SavedModel under a model base, run in a TF1 session."""

import time

from bert_ner import model_base
from bert_ner.clients import common
from bert_ner.quiet import quiet_tensorflow

SERVE_TAG = "serve"


class LocalModel:
  """A loaded SavedModel version: `run(input_ids, input_mask[, word_shape]) -> pred_label`
  through the ids signature, `run_text(texts) -> outputs` through the text signature.

  With an ids signature of `model_base.SHAPED_IDS_SIGNATURES` and an export that has the
  word-shape signature, a given word_shape goes through that one; otherwise it is not sent (the
  model reads 0).
  """

  def __init__(self, model_base_path, signature=model_base.SIGNATURE):
    path = model_base.latest(model_base_path)
    if path is None:
      raise FileNotFoundError(
        f"no SavedModel version under {model_base_path} "
        f"(export one: python -m bert_ner.export --checkpoint DIR "
        f"--model_base_path {model_base_path})"
      )
    quiet_tensorflow()
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  (only `local` needs TF)

    started = time.perf_counter()
    self.session = tf.compat.v1.Session(graph=tf.Graph())
    meta = tf.compat.v1.saved_model.loader.load(self.session, [SERVE_TAG], str(path))
    self.load_seconds = time.perf_counter() - started
    self.path, self.assets = path, model_base.assets(path)
    self.signatures = meta.signature_def
    if signature not in meta.signature_def:
      raise ValueError(f"{path} has no signature {signature!r}")
    self.signature = signature

  @property
  def takes_word_shape(self):
    """Whether run() feeds a given word_shape to the model."""
    return (
      self.signature in model_base.SHAPED_IDS_SIGNATURES
      and model_base.WORD_SHAPE_SIGNATURE in self.signatures
    )

  def run(self, input_ids, input_mask, word_shape=None):
    """pred_label [B, T] for one padded batch."""
    shaped = word_shape is not None and self.takes_word_shape
    sig = self.signatures[model_base.WORD_SHAPE_SIGNATURE if shaped else self.signature]
    feed = {
      sig.inputs[model_base.INPUT_IDS].name: input_ids,
      sig.inputs[model_base.INPUT_MASK].name: input_mask,
    }
    if shaped:
      feed[sig.inputs[model_base.WORD_SHAPE].name] = word_shape
    return self.session.run(sig.outputs[model_base.OUTPUT].name, feed)

  def run_text(self, texts):
    """The text signature's outputs (numpy) for a batch of texts."""
    sig = self.signatures[self.signature]
    return self.session.run(
      {key: info.name for key, info in sig.outputs.items()},
      {sig.inputs[model_base.TEXT].name: [t.encode("utf-8") for t in texts]},
    )

  def output_names(self):
    """Output tensor names per signature, as GetModelMetadata shows them."""
    return {name: [i.name for i in sig.outputs.values()] for name, sig in self.signatures.items()}

  def close(self):
    """Releases the session."""
    self.session.close()


class LocalNerClient(common.NerClient):
  """The clients' NerClient over a SavedModel loaded in-process: `server` is the model base.

  The same text and ids paths as over gRPC or REST, so evaluation scores exactly what a client
  gets, without a server.
  """

  def connect(self):
    """Loads the latest version under the model base; its assets unless others were named."""
    try:
      self.loaded = LocalModel(self.server, self.signature)
    except (OSError, ValueError) as e:
      raise common.ClientError(str(e)) from None
    self.run, self.run_text = self.loaded.run, self.loaded.run_text
    self.output_names = self.loaded.output_names
    if self.assets is None:
      self.assets = self.loaded.assets
      self._featurizer, self.fingerprint = common.load_assets(self.assets)
