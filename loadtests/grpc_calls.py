"""gRPC under Locust: gevent-friendly channels, an interceptor that reports every unary call, and
ModelStreamInfer streams that report every message.

grpcio's sync API blocks in C; `init_gevent()` makes it yield to gevent instead, so one Locust
process can run many users. It must run before any channel exists, and channels must not be made
at import time (`--processes` forks after importing the locustfile).

Every call goes through `Reporter`: it fires Locust's `request` event (Locust's own statistics,
CSV and HTML) and adds the exact time to a `latency.Latencies` (nanoseconds; Locust rounds
everything under 100 ms to whole milliseconds, useless for sub-millisecond calls). A streamed
message is reported the same way, from its send to its answer, as `ModelStreamInfer/<model>`.
"""

from __future__ import annotations

import itertools
import queue
import time
from collections.abc import Callable
from typing import Any

import gevent  # type: ignore[import-untyped]
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
        self.report(name, time.perf_counter_ns() - started, length, exception)
        return call

    def report(self, name: str, elapsed_ns: int, length: int, exception: Exception | None) -> None:
        self._latencies.add(name, elapsed_ns, ok=exception is None)
        self._fire(
            request_type="grpc",
            name=name,
            response_time=elapsed_ns / 1e6,
            response_length=length,
            exception=exception,
            context={},
        )


CALL_TIMEOUT_S = 30.0
"""The unary users' deadline, and how long a streamed request waits for its answer."""
LATE = f"no answer within {CALL_TIMEOUT_S:g} s"


class StreamedError(Exception):
    """A streamed request that failed without an RpcError: its answer carried an error message
    (the stream goes on), another request's id, or did not come in time (the stream is closed)."""


class Stream:
    """One ModelStreamInfer stream of a Locust user, opened with its metadata (the tenant): each
    `infer` sends one request on it and waits for that request's answer, a closed loop like the
    unary user's. The sync API reads requests from an iterator, fed here through a queue (gevent's,
    once Locust has patched the standard library). A stream that fails is reported for the request
    in flight and closed; the next `infer` opens a new one. So is one whose answer does not come
    within CALL_TIMEOUT_S or carries another request's id. `infer` sets the request's id."""

    def __init__(self, stub: Any, metadata: tuple[tuple[str, str], ...], reporter: Reporter):
        self._stub = stub
        self._metadata = metadata
        self._reporter = reporter
        self._outbox: queue.SimpleQueue[Any] | None = None
        self._answers: Any = None
        self._numbers = itertools.count()

    def infer(self, request: Any) -> None:
        if self._outbox is None:
            self._outbox = queue.SimpleQueue()
            self._answers = self._stub.ModelStreamInfer(
                iter(self._outbox.get, None), metadata=self._metadata
            )
        request.id = str(next(self._numbers))
        name = f"ModelStreamInfer/{request.model_name}"
        started = time.perf_counter_ns()
        self._outbox.put(request)
        exception: Exception | None = None
        length = 0
        try:
            with gevent.Timeout(CALL_TIMEOUT_S, StreamedError(LATE)):
                answer = next(self._answers)
            length = answer.ByteSize()
            if answer.infer_response.id != request.id:  # the stream is out of step: start over
                exception = StreamedError(
                    f"answer for id {answer.infer_response.id!r}, expected {request.id!r}"
                )
                self.close()
            elif answer.error_message:
                exception = StreamedError(answer.error_message)
        except StreamedError as exc:  # no answer in time: what comes next would be out of step
            exception = exc
            self.close()
        except grpc.RpcError as exc:
            exception = exc
            self.close()
        except StopIteration:
            exception = StreamedError("the server ended the stream")
            self.close()
        self._reporter.report(name, time.perf_counter_ns() - started, length, exception)

    def close(self) -> None:
        if self._outbox is not None:
            self._outbox.put(None)  # ends the request iterator: the stream half-closes
            self._answers.cancel()
            self._outbox = self._answers = None


def channels(address: str, reporter: Reporter) -> tuple[grpc.Channel, grpc.Channel]:
    """Two views of one insecure channel to `address` (host:port; a grpc:// prefix is allowed):
    plain, for setting up (metadata calls are not part of the load), and one whose unary calls
    all go through `reporter`."""
    target = address.removeprefix("grpc://").rstrip("/")
    # The client library's message limits (no 4 MiB surprise on big tensors).
    plain = grpc.insecure_channel(target, options=CHANNEL_OPTIONS)
    return plain, grpc.intercept_channel(plain, reporter)
