"""The exception hierarchy of the core; wattserve.grpc.status maps each class to a gRPC status.

    WattserveError
    ├── InvalidRequest    malformed request: names, dtypes, shapes, sizes   INVALID_ARGUMENT
    ├── ModelNotFound     unknown model or version                          NOT_FOUND
    ├── Unavailable       model not ready or unloading, server draining     UNAVAILABLE
    ├── QueueFull         the model's bounded queue is full                 RESOURCE_EXHAUSTED
    ├── DeadlineExceeded  the request's deadline passed before it ran       DEADLINE_EXCEEDED
    ├── NotAllowed        e.g. load/unload without explicit model control   FAILED_PRECONDITION
    ├── ModelLoadError    a model's files or config are broken              INVALID_ARGUMENT
    └── ExecutionError    ONNX Runtime failed, or outputs cannot be split   INTERNAL

Every message names the model (and the input or output) and says what was expected and what came.
Each class carries its status name; wattserve.grpc.status turns it into a gRPC status code.
"""

from __future__ import annotations


class WattserveError(Exception):
    """Base of every error wattserve reports to a client with its own message."""

    status = "INTERNAL"


class InvalidRequest(WattserveError):
    """The request is malformed; nothing of it reached the model."""

    status = "INVALID_ARGUMENT"


class ModelNotFound(WattserveError):
    """No model (or model version) of that name is in the repository."""

    status = "NOT_FOUND"


class Unavailable(WattserveError):
    """The model or the server cannot take requests now; retrying later may succeed."""

    status = "UNAVAILABLE"


class QueueFull(WattserveError):
    """The model's queue is at its configured bound; the request was not accepted."""

    status = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(WattserveError):
    """The request's deadline passed while it was queued."""

    status = "DEADLINE_EXCEEDED"


class NotAllowed(WattserveError):
    """The operation is refused in the server's current mode."""

    status = "FAILED_PRECONDITION"


class ModelLoadError(WattserveError):
    """A model could not be loaded: bad file, bad config, unsupported types or device."""

    status = "INVALID_ARGUMENT"


class ExecutionError(WattserveError):
    """Running a batch failed; every request in that batch gets this error."""

    status = "INTERNAL"
