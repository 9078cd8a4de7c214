"""The one map from wattserve errors to gRPC status codes, and the one place that applies it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from wattserve.core import errors

logger = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error; the server log has the details"


def code_for(exc: errors.WattserveError) -> grpc.StatusCode:
    """The status each error class names (see the table in wattserve.core.errors)."""
    return grpc.StatusCode[exc.status]


def describe(exc: Exception) -> tuple[grpc.StatusCode, str]:
    """Status and message for any exception; unknown ones are logged and kept from the client."""
    if isinstance(exc, errors.WattserveError):
        return code_for(exc), str(exc)
    logger.error("unexpected error while serving a request", exc_info=exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


Request = TypeVar("Request")
Response = TypeVar("Response")
Handler = Callable[[Any, Request, grpc.aio.ServicerContext], Awaitable[Response]]


def translate_errors(method: Handler[Request, Response]) -> Handler[Request, Response]:
    """Decorate a unary RPC so every failure leaves as the right status code and message."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Request, context: grpc.aio.ServicerContext) -> Response:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as exc:
            code, message = describe(exc)
            await context.abort(code, message)
            raise  # unreachable: abort raises

    return wrapper
