"""The one place where gRPC errors become client errors."""

from __future__ import annotations

import grpc


class InferenceError(Exception):
    """A request failed; `code` is the gRPC status, `message` the server's explanation."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


def from_rpc_error(error: grpc.RpcError) -> InferenceError:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = error.details() if hasattr(error, "details") else str(error)
    return InferenceError(code, details or "")
