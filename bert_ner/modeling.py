"""BERT encoder in tf.compat.v1 graph mode with google-research/bert variable names.

Checkpoint-compatible with Google's released BERT checkpoints and with Hugging Face BERT weights
converted by `bert_ner.backbone`. Batch size and sequence length are dynamic.
"""

import dataclasses
import json
import math

import tensorflow.compat.v1 as tf

# Low-rank adapter (LoRA) variables beside a dense layer's kernel: `<dense>/lora_a` [in, r] and
# `<dense>/lora_b` [r, out]; the layer computes x W + scale * (x A) B, and merging W + scale * A B
# gives the same layer with Google's variable names only.
ADAPTER_DOWN = "lora_a"
ADAPTER_UP = "lora_b"


@dataclasses.dataclass(frozen=True)
class Adapters:
  """LoRA on every dense kernel (attention q/k/v/output, FFN in/out) of the encoder layers from
  `first_layer` up: rank and scale (alpha / rank)."""

  rank: int
  scale: float
  first_layer: int = 0


@dataclasses.dataclass
class BertConfig:
  """Configuration of a `BertModel`: google-research/bert's fields plus `layer_norm_eps`."""

  vocab_size: int
  hidden_size: int = 768
  num_hidden_layers: int = 12
  num_attention_heads: int = 12
  intermediate_size: int = 3072
  hidden_act: str = "gelu"
  hidden_dropout_prob: float = 0.1
  attention_probs_dropout_prob: float = 0.1
  max_position_embeddings: int = 512
  type_vocab_size: int = 16
  initializer_range: float = 0.02
  layer_norm_eps: float = 1e-12

  @classmethod
  def from_dict(cls, json_object):
    """Builds a config from a dict, ignoring unknown keys (e.g. Hugging Face's `model_type`)."""
    names = {field.name for field in dataclasses.fields(cls)}
    return cls(**{key: value for key, value in json_object.items() if key in names})

  @classmethod
  def from_json_file(cls, json_file):
    """Reads Google's `bert_config.json` (or Hugging Face's `config.json`)."""
    with open(json_file, encoding="utf-8") as reader:
      return cls.from_dict(json.load(reader))

  def to_dict(self):
    """Returns the fields as a plain dict."""
    return dataclasses.asdict(self)

  def to_json_string(self):
    """Serializes to a `bert_config.json` that google-research/bert also reads."""
    return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"


class BertModel:
  """BERT: embeddings, `num_hidden_layers` Transformer layers and the [CLS] pooler.

  Attributes (B = batch, T = sequence length, both dynamic; H = hidden_size):
    embedding_output: [B, T, H] layer-normed sum of word, token-type and position embeddings.
    all_encoder_layers: list of [B, T, H], the output of each Transformer layer.
    sequence_output: [B, T, H], the last encoder layer.
    pooled_output: [B, H], tanh dense layer over the first ([CLS]) position.
  """

  def __init__(
    self, config, is_training, input_ids, input_mask, token_type_ids=None, adapters=None
  ):
    """Builds the graph under variable scope `bert`; dropout only when `is_training`.

    Args:
      config: `BertConfig`.
      is_training: bool.
      input_ids: int32 [B, T] word-piece ids.
      input_mask: int32 [B, T], 1 for real tokens and 0 for padding.
      token_type_ids: optional int32 [B, T] segment ids; all zeros when None.
      adapters: optional `Adapters`: LoRA variables beside the encoder's dense kernels.
    """
    hidden_dropout = config.hidden_dropout_prob if is_training else 0.0
    attention_dropout = config.attention_probs_dropout_prob if is_training else 0.0
    if token_type_ids is None:
      token_type_ids = tf.zeros_like(input_ids)

    with tf.variable_scope("bert"):
      with tf.variable_scope("embeddings"):
        self.embedding_output = embed(config, input_ids, token_type_ids, hidden_dropout)
      with tf.variable_scope("encoder"):
        self.all_encoder_layers = transformer_model(
          config, self.embedding_output, input_mask, hidden_dropout, attention_dropout, adapters
        )
      self.sequence_output = self.all_encoder_layers[-1]
      with tf.variable_scope("pooler"):
        first_token = self.sequence_output[:, 0, :]  # [B, H]
        self.pooled_output = dense(
          first_token, config.hidden_size, "dense", config.initializer_range, tf.tanh
        )


def gelu(x):
  """Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as Hugging Face's "gelu"."""
  return 0.5 * x * (1.0 + tf.math.erf(x / math.sqrt(2.0)))


def gelu_tanh(x):
  """Tanh approximation of GELU (google-research/bert's, Hugging Face's "gelu_new")."""
  return 0.5 * x * (1.0 + tf.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * tf.pow(x, 3))))


ACTIVATIONS = {"gelu": gelu, "gelu_new": gelu_tanh, "relu": tf.nn.relu, "tanh": tf.tanh}


def get_activation(name):
  """Maps a config's `hidden_act` to a function, failing at graph-build time on unknown names."""
  if name not in ACTIVATIONS:
    raise ValueError("Unsupported hidden_act %r; expected one of %s" % (name, sorted(ACTIVATIONS)))
  return ACTIVATIONS[name]


def dropout(x, rate):
  """Drops units with probability `rate`; the identity when `rate` is 0 (inference)."""
  if rate == 0.0:
    return x
  return tf.nn.dropout(x, rate=rate)


def dense(x, units, name, initializer_range, activation=None, adapters=None):
  """[N, in] -> [N, units] with `name/{kernel,bias}` variables, as tf.layers.dense names them.

  With `adapters`, also `name/lora_a` [in, r] and `name/lora_b` [r, out] (zero: the layer starts
  as the pretrained one), adding scale * (x A) B.
  """
  with tf.variable_scope(name):
    kernel = tf.get_variable(
      "kernel",
      [x.shape[-1], units],
      initializer=tf.truncated_normal_initializer(stddev=initializer_range),
    )
    bias = tf.get_variable("bias", [units], initializer=tf.zeros_initializer())
    output = tf.matmul(x, kernel)
    if adapters is not None:
      # LoRA's initialisation: A uniform in +-1/sqrt(in), B zero.
      bound = 1.0 / math.sqrt(int(x.shape[-1]))
      down = tf.get_variable(
        ADAPTER_DOWN,
        [x.shape[-1], adapters.rank],
        initializer=tf.random_uniform_initializer(-bound, bound),
      )
      up = tf.get_variable(ADAPTER_UP, [adapters.rank, units], initializer=tf.zeros_initializer())
      output += adapters.scale * tf.matmul(tf.matmul(x, down), up)
  output = tf.nn.bias_add(output, bias)
  return output if activation is None else activation(output)


def layer_norm(x, epsilon):
  """Normalizes the last axis with `LayerNorm/{beta,gamma}` variables (tf.contrib's names)."""
  with tf.variable_scope("LayerNorm"):
    beta = tf.get_variable("beta", [x.shape[-1]], initializer=tf.zeros_initializer())
    gamma = tf.get_variable("gamma", [x.shape[-1]], initializer=tf.ones_initializer())
  mean, variance = tf.nn.moments(x, axes=[-1], keepdims=True)
  return (x - mean) * tf.rsqrt(variance + epsilon) * gamma + beta


def embed(config, input_ids, token_type_ids, dropout_rate):
  """Sums word, token-type and position embeddings, then layer norm: [B, T] ids -> [B, T, H]."""
  initializer = tf.truncated_normal_initializer(stddev=config.initializer_range)
  word_table = tf.get_variable(
    "word_embeddings", [config.vocab_size, config.hidden_size], initializer=initializer
  )
  token_type_table = tf.get_variable(
    "token_type_embeddings", [config.type_vocab_size, config.hidden_size], initializer=initializer
  )
  position_table = tf.get_variable(
    "position_embeddings",
    [config.max_position_embeddings, config.hidden_size],
    initializer=initializer,
  )

  seq_length = tf.shape(input_ids)[1]
  fits = tf.debugging.assert_less_equal(
    seq_length,
    config.max_position_embeddings,
    message="sequence length exceeds max_position_embeddings",
  )
  with tf.control_dependencies([fits]):
    positions = position_table[:seq_length]  # [T, H]
  output = (
    tf.gather(word_table, input_ids)
    + tf.gather(token_type_table, token_type_ids)
    + positions[tf.newaxis]
  )  # [B, T, H]
  return dropout(layer_norm(output, config.layer_norm_eps), dropout_rate)


def attention_bias_from_mask(input_mask):
  """[B, T] 0/1 mask -> additive attention bias [B, 1, 1, T]: 0 for real keys, -10000 for pads."""
  mask = tf.cast(input_mask[:, tf.newaxis, tf.newaxis, :], tf.float32)
  return (1.0 - mask) * -10000.0


def self_attention(
  config, layer_input, attention_bias, batch_size, seq_length, dropout_rate, adapters=None
):
  """Multi-head scaled dot-product self-attention: [B*T, H] -> context [B*T, H]."""
  num_heads = config.num_attention_heads
  head_size = config.hidden_size // num_heads

  def project_heads(name):
    """Projects the input and splits the heads: [B*T, H] -> [B, N, T, D]."""
    projected = dense(
      layer_input, config.hidden_size, name, config.initializer_range, adapters=adapters
    )
    projected = tf.reshape(projected, [batch_size, seq_length, num_heads, head_size])
    return tf.transpose(projected, [0, 2, 1, 3])

  query, key, value = project_heads("query"), project_heads("key"), project_heads("value")
  scores = tf.matmul(query, key, transpose_b=True) * (1.0 / math.sqrt(head_size))  # [B, N, T, T]
  probs = dropout(tf.nn.softmax(scores + attention_bias), dropout_rate)
  context = tf.transpose(tf.matmul(probs, value), [0, 2, 1, 3])  # [B, T, N, D]
  return tf.reshape(context, [-1, config.hidden_size])


def transformer_model(
  config, input_tensor, input_mask, hidden_dropout, attention_dropout, adapters=None, first_layer=0
):
  """Runs the Transformer layers over [B, T, H]; returns every layer's output, [B, T, H] each.

  From `first_layer` on, `input_tensor` being that layer's input: the trainer runs only the
  adapted top layers over cached lower-layer states.
  """
  if config.hidden_size % config.num_attention_heads:
    raise ValueError(
      "hidden_size %d is not a multiple of num_attention_heads %d"
      % (config.hidden_size, config.num_attention_heads)
    )
  batch_size, seq_length = tf.shape(input_tensor)[0], tf.shape(input_tensor)[1]
  hidden_size, epsilon = config.hidden_size, config.layer_norm_eps
  attention_bias = attention_bias_from_mask(input_mask)  # [B, 1, 1, T]

  # Kept 2-D [B*T, H] between layers so every dense layer is one matmul.
  layer_input = tf.reshape(input_tensor, [-1, hidden_size])
  all_layer_outputs = []
  for layer_idx in range(first_layer, config.num_hidden_layers):
    layer_adapters = adapters if adapters and layer_idx >= adapters.first_layer else None
    with tf.variable_scope("layer_%d" % layer_idx):
      with tf.variable_scope("attention"):
        with tf.variable_scope("self"):
          context = self_attention(
            config,
            layer_input,
            attention_bias,
            batch_size,
            seq_length,
            attention_dropout,
            layer_adapters,
          )
        with tf.variable_scope("output"):
          attention_output = dense(
            context, hidden_size, "dense", config.initializer_range, adapters=layer_adapters
          )
          attention_output = layer_norm(
            dropout(attention_output, hidden_dropout) + layer_input, epsilon
          )
      with tf.variable_scope("intermediate"):
        intermediate_output = dense(
          attention_output,
          config.intermediate_size,
          "dense",
          config.initializer_range,
          get_activation(config.hidden_act),
          layer_adapters,
        )
      with tf.variable_scope("output"):
        layer_output = dense(
          intermediate_output,
          hidden_size,
          "dense",
          config.initializer_range,
          adapters=layer_adapters,
        )
        layer_output = layer_norm(dropout(layer_output, hidden_dropout) + attention_output, epsilon)
    layer_input = layer_output
    all_layer_outputs.append(tf.reshape(layer_output, [batch_size, seq_length, hidden_size]))
  return all_layer_outputs
