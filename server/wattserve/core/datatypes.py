"""The one table mapping Open Inference Protocol datatypes to numpy, ONNX and ModelConfig types."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wattserve.core.errors import ModelLoadError


@dataclass(frozen=True, slots=True)
class Datatype:
    """One tensor element type as the protocol, numpy, ONNX Runtime and ModelConfig name it."""

    name: str
    """Protocol name, e.g. "FP32"."""
    numpy: np.dtype[np.generic]
    """numpy dtype of decoded tensors (object for BYTES: each element is `bytes`)."""
    onnx: str
    """ONNX Runtime's type string, e.g. "tensor(float)"."""
    config: str
    """ModelConfig `DataType` enum name, e.g. "TYPE_FP32"."""
    itemsize: int
    """Bytes per element in raw form; 0 for BYTES (variable-length, length-prefixed)."""


def _row(name: str, dtype: str, onnx: str, config: str) -> Datatype:
    np_dtype = np.dtype(dtype)
    itemsize = 0 if np_dtype == np.dtype(object) else np_dtype.itemsize
    return Datatype(name, np_dtype, f"tensor({onnx})", f"TYPE_{config}", itemsize)


# BF16 has no numpy dtype and ONNX Runtime's CPU provider barely supports it: models that use it
# are refused at load time with a clear error rather than half-served.
_TABLE = (
    _row("BOOL", "bool", "bool", "BOOL"),
    _row("UINT8", "uint8", "uint8", "UINT8"),
    _row("UINT16", "uint16", "uint16", "UINT16"),
    _row("UINT32", "uint32", "uint32", "UINT32"),
    _row("UINT64", "uint64", "uint64", "UINT64"),
    _row("INT8", "int8", "int8", "INT8"),
    _row("INT16", "int16", "int16", "INT16"),
    _row("INT32", "int32", "int32", "INT32"),
    _row("INT64", "int64", "int64", "INT64"),
    _row("FP16", "float16", "float16", "FP16"),
    _row("FP32", "float32", "float", "FP32"),
    _row("FP64", "float64", "double", "FP64"),
    _row("BYTES", "object", "string", "STRING"),
)

BY_NAME: dict[str, Datatype] = {d.name: d for d in _TABLE}
BY_ONNX: dict[str, Datatype] = {d.onnx: d for d in _TABLE}
BY_NUMPY: dict[np.dtype[np.generic], Datatype] = {d.numpy: d for d in _TABLE}
BYTES = BY_NAME["BYTES"]


def from_onnx(type_string: str, *, model: str, tensor: str) -> Datatype:
    """The datatype of an ONNX graph tensor; models with types we cannot serve fail to load."""
    try:
        return BY_ONNX[type_string]
    except KeyError:
        supported = ", ".join(sorted(BY_ONNX))
        raise ModelLoadError(
            f"model '{model}': tensor '{tensor}' has type {type_string}, which wattserve cannot "
            f"serve (supported: {supported})"
        ) from None


def from_numpy(dtype: np.dtype[np.generic]) -> Datatype:
    """The datatype of an array ONNX Runtime returned (unicode strings count as BYTES)."""
    found = BY_NUMPY.get(dtype)
    if found is not None:
        return found
    if dtype.kind in "US":
        return BYTES
    raise TypeError(f"no protocol datatype for numpy dtype {dtype}")
