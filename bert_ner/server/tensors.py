"""Tensor conversions between numpy and TF Serving's two wire forms: JSON values and TensorProto."""

import base64
import json
import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from bert_ner.server.errors import invalid

# TensorProto's typed value field per dtype, as TF Serving fills them (Tensor::AsProtoField).
_FIELDS = {
  tf.float32: "float_val",
  tf.float64: "double_val",
  tf.int32: "int_val",
  tf.int16: "int_val",
  tf.int8: "int_val",
  tf.uint8: "int_val",
  tf.int64: "int64_val",
  tf.uint32: "uint32_val",
  tf.uint64: "uint64_val",
  tf.bool: "bool_val",
  tf.string: "string_val",
}
_HALF_FIELDS = (tf.float16, tf.bfloat16)
_FIELDS.update({tf.float16: "half_val", tf.bfloat16: "half_val"})
_KNOWN_DTYPES = {d.as_datatype_enum for d in (*_FIELDS, tf.string)}
MAX_RANK = 254  # TensorShape::MaxDimensions()
INT64_MAX = 2**63 - 1
# Elements one tensor may declare: a request carries at most --max_request_bytes (8 MiB), so a
# tensor sending every value needs at least one byte per element; more can only come from
# TensorFlow's fill rule (one value declared for millions of elements).
MAX_ELEMENTS = 8 << 20


def shape_str(shape):
  """Prints a shape the way TF Serving's messages do: [1,5]."""
  return "[" + ",".join(str(d) for d in shape) + "]"


def _int_range(low, high):
  """A leaf check for JSON integers (never booleans) in [low, high], as rapidjson's IsInt etc."""
  return lambda v: type(v) is int and low <= v <= high


_LEAF_CHECKS = {
  **dict.fromkeys((tf.int32, tf.int16, tf.int8, tf.uint8), _int_range(-(2**31), 2**31 - 1)),
  tf.int64: _int_range(-(2**63), 2**63 - 1),
  tf.uint32: _int_range(0, 2**32 - 1),
  tf.uint64: _int_range(0, 2**64 - 1),
  **dict.fromkeys((tf.float32, tf.float64), lambda v: type(v) in (int, float)),
  tf.bool: lambda v: type(v) is bool,
}


def _json_type(value):
  """rapidjson's type name for a JSON value (json_tensor.cc JsonTypeString)."""
  if value is None or isinstance(value, bool):
    return {None: "Null", True: "True", False: "False"}[value]
  return {dict: "Object", list: "Array", str: "String"}.get(type(value), "Number")


def _debug(value):
  """A JSON value as TF Serving's messages show it (cut at 256 bytes)."""
  return json.dumps(value, ensure_ascii=False)[:256]


def from_json(value, dtype, alias):
  """Converts a JSON value to an array of dtype as json_tensor.cc FillTensorProto does: the shape
  comes from the first element at each level, every leaf sits at that depth and has the dtype's
  JSON type (no booleans or 1.0 in int tensors, no ints beyond the dtype's range)."""
  if dtype == tf.string:
    return _strings(value, alias)
  check = _LEAF_CHECKS.get(dtype)
  if check is None:
    raise invalid(f"Conversion of JSON Value: {_debug(value)} to type: {dtype.name}")
  shape = dense_shape(value)
  try:
    _check_leaves(value, 0, shape, check, dtype)
  except RecursionError:
    raise invalid(f"{alias} is nested too deeply") from None
  return np.array(value, dtype=dtype.as_numpy_dtype).reshape(shape)


def _check_leaves(value, level, shape, check, dtype):
  """Raises TF Serving's error for the first misplaced list, wrong size or wrong-typed leaf."""
  rank = len(shape)
  if not isinstance(value, list):
    if level != rank:
      raise invalid(
        f"JSON Value: {_debug(value)} found at incorrect level: {level + 1} in the "
        f"JSON DOM. Expected at level: {rank}"
      )
    if not check(value):
      raise invalid(
        f"JSON Value: {_debug(value)} Type: {_json_type(value)} is not of "
        f"expected type: {dtype.name}"
      )
    return
  if level >= rank:
    raise invalid(f"Encountered list at unexpected level: {level} expected < {rank}")
  if len(value) != shape[level]:
    raise invalid(
      f"Encountered list at unexpected size: {len(value)} at level: {level} "
      f"expected size: {shape[level]}"
    )
  if level == rank - 1 and all(map(check, value)):
    return  # a row of valid leaves: the common case, checked without recursion
  for item in value:
    _check_leaves(item, level + 1, shape, check, dtype)


def _strings(value, alias):
  """Converts JSON strings and {"b64": ...} objects to a bytes array."""

  def leaf(item):
    if isinstance(item, str):
      return item.encode("utf-8", "surrogateescape")  # bytes as sent: rapidjson keeps them
    if isinstance(item, dict) and list(item) == ["b64"] and isinstance(item["b64"], str):
      try:
        return base64.b64decode(item["b64"], validate=True)
      except ValueError:
        raise invalid(f"{alias}: unable to base64 decode") from None
    if isinstance(item, list):
      return [leaf(x) for x in item]
    raise invalid(f"{alias}: JSON value {item!r} is not of expected type string")

  try:
    nested = leaf(value)
  except RecursionError:
    raise invalid(f"{alias} is nested too deeply") from None
  array = np.empty(dense_shape(nested), dtype=object)
  try:
    array[...] = nested
  except ValueError:
    raise invalid(f"{alias} is not a rectangular list (rows must have one length)") from None
  if any(not isinstance(x, bytes) for x in array.flat):
    raise invalid(f"{alias} is not a rectangular list (rows must have one length)")
  return array


def dense_shape(nested):
  """Shape implied by the first element at each level, as json_tensor.cc computes it."""
  shape = []
  while isinstance(nested, list):
    shape.append(len(nested))
    if not nested:
      break
    nested = nested[0]
  return shape


def to_json(array, alias):
  """Converts an output array to JSON values; strings named *_bytes become {"b64": ...}."""
  if array.dtype != object:
    return array.tolist()
  if alias.endswith("_bytes"):
    encode = np.frompyfunc(lambda b: {"b64": base64.b64encode(b).decode()}, 1, 1)
  else:
    encode = np.frompyfunc(lambda b: b.decode("utf-8", "replace"), 1, 1)
  return np.asarray(encode(array), dtype=object).tolist()


def from_proto(proto, dtype, alias, max_elements=MAX_ELEMENTS):
  """Decodes a request TensorProto as Tensor::FromProto does, checked before any allocation.

  An invalid dtype (e.g. 9999) or shape (negative or unknown dims, more than 2**63-1 elements),
  or tensor_content of the wrong length, is TF Serving's "tensor parsing error". Typed values
  fewer than the shape are filled as TensorFlow fills them (repeating the last value, zeros when
  there is none); more are cut. A tensor may not declare more than max_elements elements:
  TensorFlow would allocate them, the embedded server refuses first.
  """
  if proto.dtype not in _KNOWN_DTYPES:
    raise invalid(f"tensor parsing error: {alias}")
  shape = [d.size for d in proto.tensor_shape.dim]
  if proto.tensor_shape.unknown_rank or len(shape) > MAX_RANK or not _elements_fit(shape):
    raise invalid(f"tensor parsing error: {alias}")
  proto_dtype = tf.dtypes.as_dtype(proto.dtype)
  if proto_dtype != dtype:
    raise invalid(f"Expects arg[{alias}] to be {dtype.name} but {proto_dtype.name} is provided")
  count = math.prod(shape)
  if count > max_elements:
    raise invalid(
      f"{alias} declares {count} elements ({shape_str(shape)}); the embedded server "
      f"accepts at most {max_elements} per tensor"
    )
  if count == 0:
    return np.zeros(shape, dtype=dtype.as_numpy_dtype)
  field = _FIELDS.get(dtype)
  if proto.tensor_content:
    if dtype == tf.string or len(proto.tensor_content) != count * dtype.size:
      raise invalid(f"tensor parsing error: {alias}")
    return np.frombuffer(proto.tensor_content, dtype=dtype.as_numpy_dtype).reshape(shape)
  if field is None:
    raise invalid(f"tensor parsing error: {alias}")
  values = getattr(proto, field)
  if dtype == tf.string:
    kept = list(values[:count])
    flat = np.empty(count, dtype=object)
    flat[:] = kept + [kept[-1] if kept else b""] * (count - len(kept))
    return flat.reshape(shape)
  if dtype in _HALF_FIELDS:  # half_val holds the float16 bit patterns
    flat = np.array(values[:count], dtype=np.uint16).view(dtype.as_numpy_dtype)
  else:
    flat = np.array(values[:count], dtype=dtype.as_numpy_dtype)
  if len(flat) < count:
    flat = np.concatenate(
      [flat, np.full(count - len(flat), flat[-1] if len(flat) else 0, dtype=flat.dtype)]
    )
  return flat.reshape(shape)


def _elements_fit(shape):
  """Whether dims are non-negative and their running product stays within int64, checked dim
  by dim as TensorShape's validation does ([2**62, 4, 0] overflows before the 0)."""
  product = 1
  for size in shape:
    product *= size
    if size < 0 or product > INT64_MAX:
      return False
  return True


def to_proto(array):
  """Encodes an output array into the typed value field, as TF Serving's Predict does."""
  dtype = tf.dtypes.as_dtype(array.dtype)
  field = _FIELDS.get(dtype)
  if field is None:
    return tf.make_tensor_proto(array)
  proto = tensor_pb2.TensorProto(
    dtype=dtype.as_datatype_enum, tensor_shape=tf.TensorShape(array.shape).as_proto()
  )
  getattr(proto, field).extend(array.ravel().tolist())
  return proto
