"""Tensor conversions between numpy and TF Serving's two wire forms: JSON values and TensorProto."""

import base64
import math

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

from server.errors import invalid

# TensorProto's typed value field per dtype, as TF Serving fills them (Tensor::AsProtoField).
_FIELDS = {
    tf.float32: 'float_val', tf.float64: 'double_val', tf.int32: 'int_val', tf.int16: 'int_val',
    tf.int8: 'int_val', tf.uint8: 'int_val', tf.int64: 'int64_val', tf.uint32: 'uint32_val',
    tf.uint64: 'uint64_val', tf.bool: 'bool_val', tf.string: 'string_val',
}
# numpy kinds a JSON array may hold for each target kind (json_tensor.cc AddValueToTensor).
_JSON_KINDS = {'i': 'iu', 'u': 'iu', 'f': 'iuf', 'b': 'b'}


def shape_str(shape):
  """Prints a shape the way TF Serving's messages do: [1,5]."""
  return '[' + ','.join(str(d) for d in shape) + ']'


def from_json(value, dtype, alias):
  """Converts a JSON value to an array of dtype, as strictly as TF Serving (no 1.5 for int32)."""
  if dtype == tf.string:
    return _strings(value, alias)
  kinds = _JSON_KINDS.get(np.dtype(dtype.as_numpy_dtype).kind) if dtype in _FIELDS else None
  if kinds is None:
    raise invalid(f'{alias}: conversion of JSON to {dtype.name} is not supported')
  try:
    array = np.array(value)
  except (ValueError, OverflowError):
    raise invalid(f'{alias} is not a rectangular list of numbers (rows must have one length)')
  if array.size and array.dtype.kind not in kinds:
    raise invalid(f'{alias} has JSON values of type {_json_type(array)} but the signature '
                  f'expects {dtype.name}')
  if array.dtype.kind in 'iu' and array.size and dtype.is_integer and (
          array.min() < dtype.min or array.max() > dtype.max):
    raise invalid(f'{alias} has values outside the range of {dtype.name}')
  return array.astype(dtype.as_numpy_dtype)


def _json_type(array):
  """Names the JSON type numpy inferred, for error messages."""
  return {'f': 'float', 'b': 'bool', 'U': 'string', 'i': 'int'}.get(array.dtype.kind, 'mixed')


def _strings(value, alias):
  """Converts JSON strings and {"b64": ...} objects to a bytes array."""
  def leaf(item):
    if isinstance(item, str):
      return item.encode()
    if isinstance(item, dict) and list(item) == ['b64'] and isinstance(item['b64'], str):
      try:
        return base64.b64decode(item['b64'], validate=True)
      except ValueError:
        raise invalid(f'{alias}: unable to base64 decode')
    if isinstance(item, list):
      return [leaf(x) for x in item]
    raise invalid(f'{alias}: JSON value {item!r} is not of expected type string')

  try:
    nested = leaf(value)
  except RecursionError:
    raise invalid(f'{alias} is nested too deeply')
  array = np.empty(_dense_shape(nested), dtype=object)
  try:
    array[...] = nested
  except ValueError:
    raise invalid(f'{alias} is not a rectangular list (rows must have one length)')
  if any(not isinstance(x, bytes) for x in array.flat):
    raise invalid(f'{alias} is not a rectangular list (rows must have one length)')
  return array


def _dense_shape(nested):
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
  if alias.endswith('_bytes'):
    encode = np.frompyfunc(lambda b: {'b64': base64.b64encode(b).decode()}, 1, 1)
  else:
    encode = np.frompyfunc(lambda b: b.decode('utf-8', 'replace'), 1, 1)
  return np.asarray(encode(array), dtype=object).tolist()


def from_proto(proto, dtype, alias):
  """Decodes a request TensorProto; refuses a dtype not the signature's, or missing values."""
  if proto.dtype != dtype.as_datatype_enum:
    raise invalid(f'Expects arg[{alias}] to be {dtype.name} but '
                  f'{tf.dtypes.as_dtype(proto.dtype).name if proto.dtype else "no dtype"} '
                  'is provided')
  shape = [d.size for d in proto.tensor_shape.dim]
  if proto.tensor_shape.unknown_rank or any(d < 0 for d in shape):
    raise invalid(f'{alias} has no complete shape')
  count = math.prod(shape)
  field = _FIELDS.get(dtype)
  if not proto.tensor_content and field and len(getattr(proto, field)) != count:
    raise invalid(f'{alias} has {len(getattr(proto, field))} values but its shape '
                  f'{shape_str(shape)} needs {count}')
  try:
    return tf.make_ndarray(proto)
  except (ValueError, TypeError):
    raise invalid(f'tensor parsing error: {alias}')


def to_proto(array):
  """Encodes an output array into the typed value field, as TF Serving's Predict does."""
  dtype = tf.dtypes.as_dtype(array.dtype)
  field = _FIELDS.get(dtype)
  if field is None:
    return tf.make_tensor_proto(array)
  proto = tensor_pb2.TensorProto(dtype=dtype.as_datatype_enum,
                                 tensor_shape=tf.TensorShape(array.shape).as_proto())
  getattr(proto, field).extend(array.ravel().tolist())
  return proto
