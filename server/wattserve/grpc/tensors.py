"""Tensors on the wire: raw and typed input contents to numpy, numpy to raw output contents.

Raw fixed-size tensors decode as zero-copy read-only views of the request bytes; outputs encode
with one bytes conversion each. BYTES elements are a 4-byte little-endian length, then the bytes.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from wattserve.core import datatypes
from wattserve.core.datatypes import Datatype
from wattserve.core.errors import InvalidRequest
from wattserve.core.types import Tensors

_LENGTH = struct.Struct("<I")
_FIXED_SIZE = {name: dt for name, dt in datatypes.BY_NAME.items() if dt is not datatypes.BYTES}
"""The datatypes whose raw contents decode as a view of the bytes."""
_LARGEST_ITEM = max(dt.itemsize for dt in _FIXED_SIZE.values())

# Which InferTensorContents field carries each datatype when a client sends typed contents.
_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


_MAX_BYTES = sys.maxsize
"""numpy refuses a shape whose non-zero dimensions times the item size pass this, even when a
zero dimension leaves it empty (and so matching an empty raw content)."""


def _shape(where: str, dims: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(dims)
    if shape and min(shape) < 0:
        raise InvalidRequest(f"{where} has shape {list(shape)}; dimensions must not be negative")
    if math.prod(d for d in shape if d) * _LARGEST_ITEM > _MAX_BYTES:
        raise InvalidRequest(
            f"{where} has shape {list(shape)}; its dimensions multiply past what any tensor can "
            f"address"
        )
    return shape


def _datatype(where: str, name: str) -> Datatype:
    found = datatypes.BY_NAME.get(name)
    if found is None:
        raise InvalidRequest(
            f"{where} has datatype '{name}', which is not one wattserve serves "
            f"(one of {', '.join(datatypes.BY_NAME)})"
        )
    return found


def decode_bytes(where: str, raw: bytes, count: int) -> np.ndarray:
    """Parse `count` length-prefixed BYTES elements that must fill `raw` exactly."""
    items: list[bytes] = []
    offset, size = 0, len(raw)
    for index in range(count):
        if offset + 4 > size:
            raise InvalidRequest(
                f"{where}: BYTES element {index} of {count} has no 4-byte length prefix "
                f"(raw content ends at byte {size})"
            )
        (length,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + length > size:
            raise InvalidRequest(
                f"{where}: BYTES element {index} of {count} declares {length} bytes but only "
                f"{size - offset} remain in the raw content"
            )
        items.append(raw[offset : offset + length])
        offset += length
    if offset != size:
        raise InvalidRequest(
            f"{where}: raw content has {size - offset} bytes left after the {count} BYTES "
            f"elements its shape holds"
        )
    array = np.empty(count, dtype=object)
    array[:] = items
    return array


def decode_raw(where: str, datatype: str, dims: Sequence[int], raw: bytes) -> np.ndarray:
    dt = _datatype(where, datatype)
    shape = _shape(where, dims)
    count = math.prod(shape)
    if dt is datatypes.BYTES:
        return decode_bytes(where, raw, count).reshape(shape)
    expected = count * dt.itemsize
    if len(raw) != expected:
        raise InvalidRequest(
            f"{where} has {len(raw)} bytes of raw content, but shape {list(shape)} of "
            f"{dt.name} needs {expected} ({count} elements x {dt.itemsize} bytes)"
        )
    return np.frombuffer(raw, dt.numpy).reshape(shape)


def decode_typed(where: str, datatype: str, dims: Sequence[int], contents: Any) -> np.ndarray:
    dt = _datatype(where, datatype)
    shape = _shape(where, dims)
    field = _TYPED_FIELD.get(dt.name)
    if field is None:
        raise InvalidRequest(f"{where}: {dt.name} can only be sent as raw_input_contents")
    values = getattr(contents, field)
    count = math.prod(shape)
    if len(values) != count:
        raise InvalidRequest(
            f"{where} has {len(values)} values in contents.{field}, but shape {list(shape)} "
            f"needs {count}"
        )
    if dt is datatypes.BYTES:
        array = np.empty(count, dtype=object)
        array[:] = list(values)
        return array.reshape(shape)
    try:
        return np.array(values, dtype=dt.numpy).reshape(shape)
    except OverflowError as exc:
        raise InvalidRequest(f"{where}: a value does not fit in {dt.name}: {exc}") from exc


def _mixed(model: str) -> InvalidRequest:
    return InvalidRequest(
        f"model '{model}': the request mixes raw_input_contents with typed contents; "
        f"send every input one way"
    )


def decode_inputs(model: str, inputs: Sequence[Any], raw_contents: Sequence[bytes]) -> Tensors:
    """All inputs of one ModelInferRequest, named; raw and typed contents must not be mixed."""
    decoded: Tensors = {}
    count = len(inputs)
    if raw_contents:
        if len(raw_contents) != count:
            if any(t.HasField("contents") for t in inputs):
                raise _mixed(model)
            raise InvalidRequest(
                f"model '{model}': {count} inputs but {len(raw_contents)} "
                f"raw_input_contents; send one raw buffer per input, in the inputs' order"
            )
        for tensor, raw in zip(inputs, raw_contents, strict=True):
            if tensor.HasField("contents"):  # checked in this loop: a second pass costs 2 µs
                raise _mixed(model)
            name = tensor.name
            dt = _FIXED_SIZE.get(tensor.datatype)
            # shape[:] is a list: tuple() of the repeated field itself costs three times as much.
            shape = tensor.shape[:]
            if (
                dt is not None
                and len(raw) == dt.itemsize * math.prod(shape)
                and (not shape or min(shape) >= 0)
            ):  # the usual case, inline: decode_raw's calls and messages cost a third of decode
                # A read-only view of the bytes, shaped in one call (frombuffer then reshape
                # costs 40% more); the size was checked just above.
                try:
                    decoded[name] = np.ndarray(shape, dt.numpy, raw)
                except ValueError:  # an empty shape too large to describe: decode_raw says so
                    decoded[name] = decode_raw(
                        f"model '{model}': input '{name}'", tensor.datatype, shape, raw
                    )
            else:  # BYTES, or a request to refuse: decode_raw says why
                decoded[name] = decode_raw(
                    f"model '{model}': input '{name}'", tensor.datatype, shape, raw
                )
    else:
        for tensor in inputs:
            where = f"model '{model}': input '{tensor.name}'"
            decoded[tensor.name] = decode_typed(
                where, tensor.datatype, tensor.shape, tensor.contents
            )
    if len(decoded) != count:
        raise InvalidRequest(f"model '{model}': an input name appears more than once")
    return decoded


def encode_raw(datatype: Datatype, array: np.ndarray) -> bytes:
    if datatype is datatypes.BYTES:
        parts = []
        for item in array.reshape(-1):
            data = item.encode() if isinstance(item, str) else bytes(item)
            parts.append(_LENGTH.pack(len(data)))
            parts.append(data)
        return b"".join(parts)
    if array.dtype != datatype.numpy:
        array = array.astype(datatype.numpy)
    return array.tobytes()  # row-major bytes whatever the array's memory layout
