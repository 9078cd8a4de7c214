"""Seeded, valid inputs for any served model, built from its ModelMetadata alone.

Works against any Open Inference Protocol server. Shapes follow the metadata: a leading -1 is the
batch dimension (`rows`), any other -1 a sequence (`sequence_length`). Values are seeded: the same
(model, seed) gives the same bytes on every machine.

- floating point: standard normal;
- integers: uniform in [0, `int_high`) (default 100, below the vocabulary of any text model);
- BOOL: fair coin; BYTES: `sequence_length` words from a small fixed vocabulary per element.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from wattserve.core import datatypes

WORDS = ("energy", "carbon", "cost", "model", "tenant", "batch", "latency", "request", "server")


@dataclass(frozen=True, slots=True)
class PayloadShape:
    rows: int = 1
    """Rows per request: the size of a leading -1 (batch) dimension."""
    sequence_length: int = 16
    """The size of any other -1 dimension, and words per BYTES element."""
    int_high: int = 100
    """Integers are drawn from [0, int_high)."""

    def __post_init__(self) -> None:
        for name in ("rows", "sequence_length", "int_high"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def inputs_for(metadata: Any, shape: PayloadShape, seed: int) -> dict[str, np.ndarray]:
    """One request's inputs (name → array) for a ModelMetadataResponse."""
    rng = np.random.default_rng(seed)
    return {
        tensor.name: _values(
            metadata.name, tensor.name, tensor.datatype, _dims(tensor.shape, shape), shape, rng
        )
        for tensor in metadata.inputs
    }


def _dims(metadata_shape: Any, shape: PayloadShape) -> tuple[int, ...]:
    return tuple(
        (shape.rows if i == 0 else shape.sequence_length) if d < 0 else int(d)
        for i, d in enumerate(metadata_shape)
    )


def _values(
    model: str,
    name: str,
    datatype: str,
    dims: tuple[int, ...],
    shape: PayloadShape,
    rng: np.random.Generator,
) -> np.ndarray:
    found = datatypes.BY_NAME.get(datatype)
    if found is None:
        raise ValueError(
            f"model '{model}': input '{name}' has datatype {datatype}, which the payload builder "
            f"cannot generate (supported: {', '.join(sorted(datatypes.BY_NAME))})"
        )
    dtype = found.numpy
    if found is datatypes.BYTES:
        words = rng.choice(len(WORDS), size=(*dims, shape.sequence_length))
        text = np.empty(dims, dtype=object)
        for index in np.ndindex(*dims):
            text[index] = " ".join(WORDS[w] for w in words[index]).encode()
        return text
    if dtype == np.bool_:
        return rng.random(dims) < 0.5
    if dtype.kind == "f":
        return rng.standard_normal(dims).astype(dtype)
    high = min(shape.int_high, int(np.iinfo(dtype).max) + 1)  # type: ignore[type-var]
    return rng.integers(0, high, size=dims, dtype=dtype)
