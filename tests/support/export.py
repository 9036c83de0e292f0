"""Export test helpers: a tiny BiLSTM-CRF checkpoint and a SavedModel loaded for inspection."""

import e2e_support
from bert_ner.paths import REPO_ROOT

# The shipped default model's checkpoint dir.
DEFAULT_MODEL = REPO_ROOT / "models" / "default"


def make_checkpoint(tiny_bert_dir, out_dir, seed=0):
  """Tiny BiLSTM-CRF checkpoint dir (two feature layers, so the export's layer wiring shows)."""
  return e2e_support.make_checkpoint(
    tiny_bert_dir, out_dir, seed, head="bilstm", lstm_size=8, hidden_size=8, feature_layers=[-2, -1]
  )


def load_saved_model(path, signature="result"):
  """(session, SignatureDef) of a SavedModel loaded in a fresh graph (tables initialized)."""
  import tensorflow as tf

  sess = tf.compat.v1.Session(graph=tf.Graph())
  meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], str(path))
  return sess, meta.signature_def[signature]
