"""Tensors in and out: TensorProto <-> numpy for gRPC, JSON <-> numpy for REST, with TF Serving's rules.

Responses use the typed proto fields (float_val, int64_val, string_val, ...), as TF Serving does by
default, not tensor_content.
"""
from __future__ import annotations

import base64

import numpy as np

from common import tf_protos

tf_protos.load()  # the messages without TensorFlow's runtime: a client needs only these
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2  # noqa: E402

from serving.request_cost import check_floats  # noqa: E402
from serving.status import invalid_argument  # noqa: E402

INT64_MAX = 2**63 - 1

# numpy dtype -> (DataType, typed TensorProto field)
_TYPED_FIELD = {
    np.dtype(np.float32): (types_pb2.DT_FLOAT, "float_val"),
    np.dtype(np.float64): (types_pb2.DT_DOUBLE, "double_val"),
    np.dtype(np.int8): (types_pb2.DT_INT8, "int_val"),
    np.dtype(np.int16): (types_pb2.DT_INT16, "int_val"),
    np.dtype(np.int32): (types_pb2.DT_INT32, "int_val"),
    np.dtype(np.uint8): (types_pb2.DT_UINT8, "int_val"),
    np.dtype(np.uint16): (types_pb2.DT_UINT16, "int_val"),
    np.dtype(np.int64): (types_pb2.DT_INT64, "int64_val"),
    np.dtype(np.uint32): (types_pb2.DT_UINT32, "uint32_val"),
    np.dtype(np.uint64): (types_pb2.DT_UINT64, "uint64_val"),
    np.dtype(np.bool_): (types_pb2.DT_BOOL, "bool_val"),
}
_NUMPY_OF = {dt: np_dtype for np_dtype, (dt, _) in _TYPED_FIELD.items()}
_NUMPY_OF[types_pb2.DT_STRING] = np.dtype(object)


def dtype_name(dtype: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT -> "float", DT_STRING -> "string"."""
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def declared_elements(proto: tensor_pb2.TensorProto) -> int:
    """The element count the shape declares, in Python ints (no int64 overflow); -1 if not fully defined."""
    if proto.tensor_shape.unknown_rank:
        return -1
    n = 1
    for d in proto.tensor_shape.dim:
        if d.size < 0:
            return -1
        n *= d.size
    return n


def proto_upper_bytes(array: np.ndarray) -> int:
    """At most the bytes array_to_proto(array) serializes to (typed fields, packed)."""
    array = np.asarray(array)
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        return 64 + sum(len(v) if isinstance(v, bytes) else 4 * len(str(v)) for v in array.ravel()) + 6 * array.size
    per = {"f": array.dtype.itemsize, "b": 1}.get(array.dtype.kind, 10)  # ints: varints of up to 10 bytes
    return 64 + per * array.size


def proto_to_array(proto: tensor_pb2.TensorProto, alias: str, expected_dtype: int, index: int) -> np.ndarray:
    """The request tensor as numpy; INVALID_ARGUMENT on a dtype other than the signature's or bad content."""
    if proto.dtype != expected_dtype:
        raise invalid_argument(f"Expects arg[{index}] to be {dtype_name(expected_dtype)} but "
                               f"{dtype_name(proto.dtype)} is provided")
    if proto.dtype not in _NUMPY_OF:
        raise invalid_argument(f"tensor parsing error: {alias}: dtype {dtype_name(proto.dtype)} is not supported")
    shape = [d.size for d in proto.tensor_shape.dim]
    n = declared_elements(proto)
    if n < 0:
        raise invalid_argument(f"tensor parsing error: {alias}: the shape must be fully defined")
    if n > INT64_MAX:
        raise invalid_argument(f"tensor parsing error: {alias}: shape {shape} has more elements than int64 holds")
    np_dtype = _NUMPY_OF[proto.dtype]
    if proto.dtype == types_pb2.DT_STRING:
        values = list(proto.string_val)
    elif proto.tensor_content:
        if len(proto.tensor_content) != n * np_dtype.itemsize:
            raise invalid_argument(f"tensor parsing error: {alias}: tensor_content holds "
                                   f"{len(proto.tensor_content)} bytes for shape {shape}")
        return np.frombuffer(proto.tensor_content, dtype=np_dtype).reshape(shape)
    else:
        values = getattr(proto, _TYPED_FIELD[np_dtype][1])
    if len(values) == 1 and n > 1:  # TF's rule: a single value fills the whole tensor
        values = list(values) * n
    if len(values) != n:
        raise invalid_argument(f"tensor parsing error: {alias}: {len(values)} values for shape {shape}")
    return np.array(values, dtype=np_dtype).reshape(shape)


def array_to_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    array = np.asarray(array)
    proto = tensor_pb2.TensorProto(
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=s) for s in array.shape]))
    if array.dtype == object or array.dtype.kind in ("S", "U"):
        proto.dtype = types_pb2.DT_STRING
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in array.ravel())
        return proto
    dt, field = _TYPED_FIELD[array.dtype]
    proto.dtype = dt
    getattr(proto, field).extend(array.ravel().tolist())
    return proto


# ---- REST (JSON) ----

def _decode_strings(value):
    """JSON string leaves -> bytes ({"b64": ...} decoded), recursively."""
    if isinstance(value, list):
        return [_decode_strings(v) for v in value]
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise invalid_argument(f"JSON object {value!r} is not a binary value (expected {{\"b64\": ...}})")
        try:
            return base64.b64decode(value["b64"], validate=True)
        except (ValueError, TypeError):
            raise invalid_argument("Unable to base64 decode") from None
    if isinstance(value, str):
        try:
            return value.encode("utf-8")
        except UnicodeEncodeError:  # "\ud800": valid JSON, not a Unicode string
            raise invalid_argument(f"JSON string {value[:40]!r} holds a lone surrogate: not UTF-8 text") from None
    raise invalid_argument(f"JSON Value: {value!r} Type: {type(value).__name__} is not of expected type: string")


def json_to_array(value, alias: str, dtype: int) -> np.ndarray:
    """A JSON value (nested lists) as an array of the signature's dtype."""
    if dtype == types_pb2.DT_STRING:
        decoded = _decode_strings(value)
        if not isinstance(decoded, list):
            return np.array(decoded, dtype=object)
        try:
            array = np.empty(np.shape(decoded), dtype=object)
            array[...] = decoded
        except ValueError:
            raise invalid_argument(f"input {alias}: lists of different lengths (the tensor must be dense)") from None
        return array
    if dtype not in _NUMPY_OF:
        raise invalid_argument(f"input {alias}: dtype {dtype_name(dtype)} is not supported over REST")
    _check_leaves(value, alias, dtype)
    np_dtype = _NUMPY_OF[dtype]
    try:
        if np_dtype.kind != "f":
            return np.array(value, dtype=np_dtype)
        wide = np.array(value, dtype=np.float64)  # checked before the cast: 3.4e39 is inf as float32
    except (ValueError, TypeError, OverflowError):  # ragged lists, ints beyond the dtype
        raise invalid_argument(f"input {alias}: the values are not a dense {dtype_name(dtype)} tensor") from None
    check_floats(wide.ravel(), alias, None, largest=float(np.finfo(np_dtype).max))
    return wide.astype(np_dtype)


def _check_leaves(value, alias: str, dtype: int) -> None:
    """Every leaf of the JSON value is a number the dtype stores as written: integers for integer
    inputs (not 1.5, not true), numbers for float inputs (not true), booleans for bool inputs."""
    np_dtype = _NUMPY_OF[dtype]
    if np_dtype.kind == "b":
        ok, what = (lambda v: type(v) is bool), "a boolean"
    elif np_dtype.kind in "iu":
        ok, what = (lambda v: type(v) is int), "an integer"
    else:
        ok, what = (lambda v: type(v) in (int, float)), "a number"
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, list):
            stack.extend(v)
        elif not ok(v):
            raise invalid_argument(f"input {alias}: JSON value {str(v)[:40]!r} is not {what} "
                                   f"({dtype_name(dtype)} input)")


def array_to_json(array: np.ndarray, alias: str):
    """Numbers as numbers; strings as UTF-8 text, or {"b64": ...} when the alias ends in _bytes or
    the bytes are not UTF-8 (TF Serving's convention)."""
    array = np.asarray(array)
    if array.dtype != object and array.dtype.kind not in ("S", "U"):
        return array.tolist()

    def encode(v):
        if isinstance(v, str):
            return v
        if not alias.endswith("_bytes"):
            try:
                return v.decode("utf-8")
            except UnicodeDecodeError:
                pass
        return {"b64": base64.b64encode(v).decode("ascii")}

    return np.vectorize(encode, otypes=[object])(array).tolist() if array.size else array.tolist()
