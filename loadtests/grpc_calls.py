"""gRPC under Locust: gevent-friendly channels, and one interceptor that reports every call.

grpcio's sync API blocks in C; `init_gevent()` makes it yield to gevent instead, so one Locust
process can run many users. It must run before any channel exists, and channels must not be made
at import time (`--processes` forks after importing the locustfile).

Every call goes through `Reporter`: it fires Locust's `request` event (Locust's own statistics,
CSV and HTML) and adds the exact time to a `latency.Latencies` (nanoseconds; Locust rounds
everything under 100 ms to whole milliseconds, useless for sub-millisecond calls).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent
from latency import Latencies

from wattserve_client._request import CHANNEL_OPTIONS

grpc_gevent.init_gevent()


class Reporter(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Times each unary call, names it `<method>/<model>` and reports it twice (see module)."""

    def __init__(self, fire: Callable[..., None], latencies: Latencies) -> None:
        self._fire = fire
        self._latencies = latencies

    def intercept_unary_unary(
        self, continuation: Callable[..., Any], details: Any, request: Any
    ) -> Any:
        method = details.method.rsplit("/", 1)[-1]
        name = f"{method}/{request.model_name}" if hasattr(request, "model_name") else method
        started = time.perf_counter_ns()
        call = continuation(details, request)
        exception: Exception | None = None
        length = 0
        try:
            length = call.result().ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        elapsed_ns = time.perf_counter_ns() - started
        self._latencies.add(name, elapsed_ns, ok=exception is None)
        self._fire(
            request_type="grpc",
            name=name,
            response_time=elapsed_ns / 1e6,
            response_length=length,
            exception=exception,
            context={},
        )
        return call


def channels(address: str, reporter: Reporter) -> tuple[grpc.Channel, grpc.Channel]:
    """Two views of one insecure channel to `address` (host:port; a grpc:// prefix is allowed):
    plain, for setting up (metadata calls are not part of the load), and one whose unary calls
    all go through `reporter`."""
    target = address.removeprefix("grpc://").rstrip("/")
    # The client library's message limits (no 4 MiB surprise on big tensors).
    plain = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return plain, grpc.intercept_channel(plain, reporter)
