"""A SavedModel signature as the server checks requests against it: tensors, names and shapes."""

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Self

import numpy as np
import tensorflow as tf

from bert_ner.server.errors import invalid
from bert_ner.server.tensors import from_proto, shape_str

# (signature, {alias: declared shape}) -> None, raising ServingError to refuse the request.
ShapeCheck = Callable[["Signature", dict[str, list[int]]], None]


@dataclasses.dataclass(frozen=True)
class TensorSpec:
  """A signature tensor: graph tensor name, dtype and shape (None: unknown dim or rank)."""

  name: str
  dtype: tf.DType
  shape: tuple[int | None, ...] | None

  @classmethod
  def from_info(cls, info: Any) -> Self:
    """Reads a TensorInfo from the MetaGraphDef's SignatureDef."""
    shape = (
      None
      if info.tensor_shape.unknown_rank
      else tuple(d.size if d.size >= 0 else None for d in info.tensor_shape.dim)
    )
    return cls(info.name, tf.dtypes.as_dtype(info.dtype), shape)


class Signature:
  """A SignatureDef's tensors, and whether its requests may be merged along axis 0."""

  def __init__(self, key: str, signature_def: Any, max_width: int | None = None) -> None:
    self.key = key
    self.max_width = max_width  # the model's positions: widest rank-2 integer input, or None
    self.inputs = {a: TensorSpec.from_info(t) for a, t in sorted(signature_def.inputs.items())}
    self.outputs = {a: TensorSpec.from_info(t) for a, t in sorted(signature_def.outputs.items())}
    tensors = [*self.inputs.values(), *self.outputs.values()]
    self.batchable = bool(self.inputs) and all(t.shape and t.shape[0] is None for t in tensors)

  def check_names(self, aliases: Iterable[str]) -> None:
    """Refuses missing or unknown input aliases with TF Serving's message."""
    sent, wanted = set(aliases), set(self.inputs)
    if sent != wanted:
      raise invalid(
        f"input size does not match signature: {len(sent)}!={len(wanted)} "
        f"len({{{','.join(sorted(sent))}}}) != len({{{','.join(sorted(wanted))}}}). "
        f"Sent extra: {{{','.join(sorted(sent - wanted))}}}. "
        f"Missing but required: {{{','.join(sorted(wanted - sent))}}}."
      )

  def check_widths(self, shapes: Mapping[str, Sequence[int]]) -> None:
    """Refuses a rank-2 integer input wider than the model's positions by its declared shape,
    before anything is allocated: one value declared [1, 8388608] fills 32 MB per tensor, and
    merged with others of its width in a batch, gigabytes. The graph refuses it with the same
    message, only after the run is built."""
    for alias, shape in sorted(shapes.items()):
      spec = self.inputs.get(alias)
      if (
        self.max_width is not None
        and spec is not None
        and spec.dtype.is_integer
        and len(shape) == 2
        and shape[1] > self.max_width
      ):
        raise invalid(
          f"{alias} has length {shape[1]} but the model has only {self.max_width} positions"
        )

  def decode(
    self, tensors: Mapping[str, Any], check_shapes: ShapeCheck | None = None
  ) -> dict[str, np.ndarray]:
    """Decodes a PredictRequest's input TensorProtos against this signature; check_shapes
    (signature, {alias: declared shape}) may refuse them before any is allocated."""
    self.check_names(tensors)
    if check_shapes:
      check_shapes(self, {a: [d.size for d in t.tensor_shape.dim] for a, t in tensors.items()})
    return {a: from_proto(tensors[a], self.inputs[a].dtype, a) for a in sorted(tensors)}

  def validate(self, inputs: Mapping[str, np.ndarray]) -> None:
    """Checks inputs against the signature before any batching. What the model itself requires
    (vocabulary, positions, mask values) its graph checks, for TF Serving as for this server."""
    self.check_names(inputs)
    for alias, array in inputs.items():
      expected = self.inputs[alias].shape
      if expected is not None and (
        len(expected) != array.ndim
        or any(d is not None and d != n for d, n in zip(expected, array.shape))
      ):
        raise invalid(
          f"{alias} has shape {shape_str(array.shape)} but the signature "
          f"expects {shape_str(-1 if d is None else d for d in expected)}"
        )
