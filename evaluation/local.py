"""In-process transport: the latest SavedModel under a model base, run in a TF1 session."""

import time

from bert_ner import model_base
from bert_ner.quiet import quiet_tensorflow

SERVE_TAG = "serve"


class LocalModel:
  """A loaded SavedModel version with `run(input_ids, input_mask) -> pred_label`."""

  def __init__(self, model_base_path, signature=model_base.SIGNATURE):
    path = model_base.latest(model_base_path)
    if path is None:
      raise FileNotFoundError(
        f"no SavedModel version under {model_base_path} "
        f"(export one: python -m export --checkpoint DIR "
        f"--model_base_path {model_base_path})"
      )
    quiet_tensorflow()
    import tensorflow as tf  # pylint: disable=import-outside-toplevel  (only `local` needs TF)

    started = time.perf_counter()
    self.session = tf.compat.v1.Session(graph=tf.Graph())
    meta = tf.compat.v1.saved_model.loader.load(self.session, [SERVE_TAG], str(path))
    self.load_seconds = time.perf_counter() - started
    self.path, self.assets = path, model_base.assets(path)
    if signature not in meta.signature_def:
      raise ValueError(f"{path} has no signature {signature!r}")
    sig = meta.signature_def[signature]
    self._fetch = sig.outputs[model_base.OUTPUT].name
    self._ids = sig.inputs[model_base.INPUT_IDS].name
    self._mask = sig.inputs[model_base.INPUT_MASK].name

  def run(self, input_ids, input_mask):
    """pred_label [B, T] for one padded batch."""
    return self.session.run(self._fetch, {self._ids: input_ids, self._mask: input_mask})

  def close(self):
    """Releases the session."""
    self.session.close()
