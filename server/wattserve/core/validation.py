"""Checks a decoded request against the model's signature before anything is queued."""

from __future__ import annotations

from collections.abc import Hashable

import numpy as np

from wattserve.core import datatypes
from wattserve.core.datatypes import from_numpy
from wattserve.core.errors import InvalidRequest
from wattserve.core.types import InferRequest, Signature, Tensors


def _shape(shape: tuple[int, ...]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def as_text(array: np.ndarray, where: str) -> np.ndarray:
    """BYTES elements as UTF-8 text: ONNX Runtime's string tensors hold text, not raw bytes."""
    text = np.empty(array.shape, dtype=object)
    flat = text.reshape(-1)
    for index, item in enumerate(array.reshape(-1)):
        if isinstance(item, str):
            flat[index] = item
            continue
        try:
            flat[index] = bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(
                f"{where}: BYTES element {index} is not valid UTF-8 ({exc.reason} at byte "
                f"{exc.start}); ONNX string tensors hold UTF-8 text"
            ) from None
    return text


def validate(
    request: InferRequest, signature: Signature, label: str
) -> tuple[Tensors, int, Hashable]:
    """Return (inputs, rows, shape key) of a valid request, or raise InvalidRequest saying why.

    `inputs` are the request's arrays, with BYTES converted to text for ONNX Runtime.

    `rows` is the batch size on the first dimension (1 for models that do not batch). The shape key
    groups requests that may share a batch: those whose non-batch dimensions are equal.
    """
    if request.inputs.keys() != signature.input_names:
        expected = signature.input_names
        unknown = sorted(set(request.inputs) - expected)
        if unknown:
            raise InvalidRequest(
                f"{label}: unknown input {', '.join(repr(n) for n in unknown)}; the model's "
                f"inputs are {sorted(expected)}"
            )
        missing = [t.name for t in signature.inputs if t.name not in request.inputs]
        raise InvalidRequest(
            f"{label}: missing input {', '.join(repr(n) for n in missing)}; the model needs "
            f"{sorted(expected)}"
        )
    for name in request.outputs:
        if name not in signature.output_names:
            raise InvalidRequest(
                f"{label}: unknown output '{name}' requested; the model's outputs are "
                f"{[t.name for t in signature.outputs]}"
            )

    rows: int | None = None
    batches = signature.max_batch_size > 0
    inputs = request.inputs
    for spec in signature.inputs:
        array = request.inputs[spec.name]
        if array.dtype != spec.datatype.numpy:
            # The decoder already mapped the wire datatype to numpy; report it in protocol terms.
            got = from_numpy(array.dtype).name
            raise InvalidRequest(
                f"{label}: input '{spec.name}' expects datatype {spec.datatype.name}, got {got}"
            )
        if not spec.fits(array.shape):
            raise InvalidRequest(
                f"{label}: input '{spec.name}' expects shape {spec.describe()} (-1 = any size), "
                f"got {_shape(array.shape)}"
            )
        if spec.datatype is datatypes.BYTES:
            if inputs is request.inputs:
                inputs = dict(inputs)
            inputs[spec.name] = as_text(array, f"{label}: input '{spec.name}'")
        if batches:
            if rows is None:
                rows = array.shape[0]
            elif array.shape[0] != rows:
                raise InvalidRequest(
                    f"{label}: input '{spec.name}' has {array.shape[0]} rows but the other inputs "
                    f"have {rows}; every input of one request must have the same first dimension"
                )
    if not batches:
        return inputs, 1, None
    assert rows is not None
    if rows < 1:
        raise InvalidRequest(f"{label}: request has 0 rows; send at least one")
    if rows > signature.max_batch_size:
        raise InvalidRequest(
            f"{label}: request has {rows} rows, more than max_batch_size "
            f"{signature.max_batch_size}; split it into smaller requests"
        )
    if len(inputs) == 1:  # the usual case: skip building a tuple from a generator
        (array,) = inputs.values()
        return inputs, rows, (array.shape[1:],)
    key = tuple(inputs[t.name].shape[1:] for t in signature.inputs)
    return inputs, rows, key
