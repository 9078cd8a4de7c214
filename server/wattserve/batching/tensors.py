"""Pure tensor maths of batching: merge requests on axis 0, split outputs back by rows."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from wattserve.core.errors import ExecutionError
from wattserve.core.types import Tensors


def merge(parts: Sequence[Tensors]) -> Tensors:
    """Concatenate each input along axis 0 (one copy); a lone request passes through uncopied."""
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def split(outputs: Tensors, rows: Sequence[int], *, label: str) -> list[Tensors]:
    """Cut each output into the callers' rows, as views.

    Post-condition checked first: every output's first dimension equals the summed rows, so a model
    that returns a different number of rows fails the whole batch instead of mis-assigning results.
    """
    total = sum(rows)
    for name, array in outputs.items():
        got = array.shape[0] if array.ndim else None
        if got != total:
            raise ExecutionError(
                f"{label}: output '{name}' has shape {list(array.shape)}, expected a first "
                f"dimension of {total} (the rows in the batch); the batch cannot be split back"
            )
    if len(rows) == 1:
        return [outputs]
    bounds = itertools.accumulate(rows, initial=0)
    return [
        {name: array[start:stop] for name, array in outputs.items()}
        for start, stop in itertools.pairwise(bounds)
    ]
