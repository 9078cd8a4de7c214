"""Domain types that travel through the core: requests, responses, model signatures."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from wattserve.core.datatypes import Datatype

Parameter = bool | int | float | str
Tensors = dict[str, np.ndarray]
DEFAULT_TENANT = "default"
"""Who a request is charged to when nothing names a tenant."""


# InferRequest and InferResponse are made once per request: not frozen, because a frozen
# dataclass's __init__ sets each field through object.__setattr__ (1.7 against 0.3 µs for eight
# fields). Treat them as immutable all the same. The request path builds them positionally
# (keywords cost twice as much), so a new field goes last, with a default.
@dataclass(slots=True)
class InferRequest:
    """One decoded inference request. Input arrays may be read-only views of the wire bytes."""

    model_name: str
    inputs: Tensors
    model_version: str = ""
    """Version label as asked for; empty means the model's default (latest) version."""
    outputs: tuple[str, ...] = ()
    """Requested output names in the order the client wants them; empty means all."""
    id: str = ""
    parameters: Mapping[str, Parameter] = field(default_factory=dict)
    deadline: float | None = None
    """Absolute `time.monotonic()` after which the request is dropped unexecuted."""
    tenant: str = DEFAULT_TENANT
    """Who the usage is charged to (docs/metering.md)."""


@dataclass(slots=True)
class InferResponse:
    """The outputs of one request, in the order the request asked for them."""

    model_name: str
    model_version: str
    outputs: Mapping[str, tuple[Datatype, np.ndarray]]
    id: str = ""
    parameters: Mapping[str, Parameter] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """An input or output as the model declares it."""

    name: str
    datatype: Datatype
    shape: tuple[int, ...]
    """Full shape as ModelMetadata reports it: -1 for variable dims, batch dim included."""
    fixed: tuple[tuple[int, int], ...] = field(init=False, repr=False, compare=False)
    """(axis, size) of every dimension that is not variable: what validation checks."""

    def __post_init__(self) -> None:
        fixed = tuple((axis, size) for axis, size in enumerate(self.shape) if size != -1)
        object.__setattr__(self, "fixed", fixed)

    def fits(self, shape: tuple[int, ...]) -> bool:
        """Whether an array of `shape` has this tensor's rank and fixed dimensions."""
        if len(shape) != len(self.shape):
            return False
        for axis, size in self.fixed:  # noqa: SIM110 (a generator in all() costs twice as much)
            if shape[axis] != size:
                return False
        return True

    def describe(self) -> str:
        return "[" + ", ".join(str(d) for d in self.shape) + "]"


@dataclass(frozen=True, slots=True)
class Signature:
    """What a model version takes and returns."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    max_batch_size: int
    """Rows per batch the model accepts on its first dimension; 0 when it does not batch."""
    input_names: frozenset[str] = field(init=False, repr=False, compare=False)
    output_names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_names", frozenset(t.name for t in self.inputs))
        object.__setattr__(self, "output_names", frozenset(t.name for t in self.outputs))

    @property
    def batches(self) -> bool:
        return self.max_batch_size > 0
