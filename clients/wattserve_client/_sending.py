"""What sends the load generator's requests and records how each one ended (loadgen.py measures).

- `Calls`: the record of completions (time done, latency, ok) and of requests in flight, and the
  unary call itself;
- `stream_closed`: one ModelStreamInfer stream of a closed loop, which sends a request again as
  soon as its answer is back;
- `OpenStream`: one stream of an open loop, fed with requests due at scheduled times.

Every failure becomes a message ("CODE: details"); nothing here raises for a failed request.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np

CALL_TIMEOUT_S = 30.0
"""A unary call's deadline; a streamed answer later than this counts as failed too."""
CALL_TIMEOUT_NS = int(CALL_TIMEOUT_S * 1e9)
ENDED = "client: the server ended the stream before answering"
"""The failure of a streamed request whose stream ended without its answer."""
LATE = f"DEADLINE_EXCEEDED: client: answered after more than {CALL_TIMEOUT_S:g} s"
"""The failure of a streamed request answered later than a unary call's deadline."""
CORE_RACE = (
    " (grpc.aio's report when a write meets a stream the server had already ended, "
    "grpc/grpc#36066: the server's own status is lost)"
)
"""Added to the INTERNAL status that grpc.aio reports in place of a stream's real one."""
DISTINCT_MESSAGES = 10
"""How many distinct failure messages a run keeps (with their counts)."""


def as_list(stubs: Any) -> list[Any]:
    """One stub, or a sequence of stubs on separate connections."""
    return list(stubs) if isinstance(stubs, Sequence) else [stubs]


def keep_message(messages: Counter[str], message: str, count: int = 1) -> None:
    """Count `message`, unless the first DISTINCT_MESSAGES distinct ones are already kept."""
    if message in messages or len(messages) < DISTINCT_MESSAGES:
        messages[message] += count


class Calls:
    """Completions as (time done, latency, ok), appended by the senders."""

    def __init__(self, stubs: Any, request: Any, metadata: Sequence[tuple[str, str]]) -> None:
        self._calls = [stub.ModelInfer for stub in as_list(stubs)]
        self._turn = itertools.cycle(self._calls)
        self._request = request
        self._metadata = tuple(metadata)
        self.done_ns: list[int] = []
        self.latency_ns: list[int] = []
        self.ok: list[bool] = []
        self.messages: Counter[str] = Counter()
        self.in_flight = 0
        self.in_flight_max = 0

    def leaving(self) -> None:
        """One more request in flight (answered, or dropped, by whoever takes it off again)."""
        self.in_flight += 1
        self.in_flight_max = max(self.in_flight_max, self.in_flight)

    async def send(self, started_ns: int) -> None:
        """One call; latency counts from `started_ns` (the scheduled time in an open loop)."""
        self.leaving()
        error = None
        try:
            await next(self._turn)(self._request, timeout=CALL_TIMEOUT_S, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            error = status(exc)
        finally:
            self.in_flight -= 1
        self.record(started_ns, error)

    def record(self, started_ns: int, error: str | None) -> None:
        """One call done now; `error` is its failure message, None for a success."""
        done = time.perf_counter_ns()
        self.done_ns.append(done)
        self.latency_ns.append(done - started_ns)
        self.ok.append(error is None)
        if error is not None:
            keep_message(self.messages, error)

    def refused(self, started_ns: int, now_ns: int, message: str) -> None:
        """A request that was due at `started_ns` and never sent: a failure at `now_ns`."""
        keep_message(self.messages, message)
        self.done_ns.append(now_ns)
        self.latency_ns.append(now_ns - started_ns)
        self.ok.append(False)

    def cut(self, start_ns: int, end_ns: int) -> tuple[np.ndarray, int]:
        """The latencies of the successes completed in [start_ns, end_ns), and the failures."""
        done = np.asarray(self.done_ns, dtype=np.int64)
        inside = (done >= start_ns) & (done < end_ns)
        ok = np.asarray(self.ok, dtype=bool)
        latency = np.asarray(self.latency_ns, dtype=np.int64)
        return latency[inside & ok], int((inside & ~ok).sum())


def status(exc: grpc.aio.AioRpcError) -> str:
    return described(exc.code(), exc.details())


def described(code: grpc.StatusCode, details: str | None) -> str:
    text = f"{code.name}: {details or ''}"
    if code == grpc.StatusCode.INTERNAL and details == "Internal error from Core":
        text += CORE_RACE
    return text


def unknown(answer_id: str) -> str:
    return f"client: an answer with id {answer_id!r}, which no request in flight has"


async def stream_closed(
    stub: Any,
    request: Any,
    calls: Calls,
    stop: asyncio.Event,
    *,
    in_flight: int,
    metadata: Sequence[tuple[str, str]],
    deadline_s: float,
) -> None:
    """Keep `in_flight` copies of `request` on one ModelStreamInfer stream until `stop`.

    Each message carries its own id (answers come back in completion order, not sending order);
    an answer with an `error_message` counts as a failed call.
    """
    call = stub.ModelStreamInfer(metadata=tuple(metadata), timeout=deadline_s)
    # One copy of the request per slot in flight, its id changed per send; a copy is sent again
    # only once its answer is back, so it has been serialised even where a channel's
    # interceptors queue the writes. The caller's request stays as it is.
    copies = [type(request)() for _ in range(in_flight)]
    sent: dict[str, tuple[int, Any]] = {}
    written_off: set[str] = set()
    """Requests whose slots an answer under an unknown id freed: their own answers are dropped."""
    numbers = itertools.count()

    async def send(message: Any) -> None:
        message.id = str(next(numbers))
        sent[message.id] = (time.perf_counter_ns(), message)
        await call.write(message)

    try:
        for message in copies:
            message.CopyFrom(request)
            await send(message)
        async for response in call:
            answered = sent.pop(response.infer_response.id, None)
            if answered is not None:
                started_ns, message = answered
                calls.record(started_ns, response.error_message or None)
            elif response.infer_response.id in written_off:
                written_off.discard(response.infer_response.id)
                continue
            else:
                calls.record(time.perf_counter_ns(), unknown(response.infer_response.id))
                if not sent:
                    continue
                # A request in flight was answered under a wrong id, most likely the oldest:
                # its slot is free again (counted once, as the error above), so the loop goes
                # on, and ends once the server has answered as many messages as it was sent.
                # Should the oldest's own answer come after all, it is dropped.
                oldest = next(iter(sent))
                written_off.add(oldest)
                _, message = sent.pop(oldest)
            if not stop.is_set():
                await send(message)
            elif not sent:
                break
        with contextlib.suppress(Exception):  # a stream ending meanwhile has nothing left
            await call.done_writing()
    except grpc.aio.AioRpcError as exc:  # the stream itself failed: what was in flight is lost
        for started_ns, _ in sent.values():
            calls.record(started_ns, status(exc))


class OpenStream:
    """One ModelStreamInfer stream of an open loop. `submit` queues a request due at a scheduled
    time; one writer sends them in order (a stream takes one write at a time), and the reader
    matches each answer to its request by id. A request waiting for its turn to be written is in
    flight: its latency counts from the scheduled time all the same. An answer later than
    CALL_TIMEOUT_S counts as failed, as a unary call would have."""

    def __init__(
        self,
        stub: Any,
        request: Any,
        calls: Calls,
        metadata: Sequence[tuple[str, str]],
        deadline_s: float,
    ):
        self._call = stub.ModelStreamInfer(metadata=tuple(metadata), timeout=deadline_s)
        self._request = request
        self._calls = calls
        self._due: asyncio.Queue[int | None] = asyncio.Queue()
        self._sent: dict[str, tuple[int, Any]] = {}
        self._free: list[Any] = []
        """Request copies whose answers are back, to send again (see stream_closed)."""
        self._numbers = itertools.count()
        self._failed: str | None = None

    def submit(self, started_ns: int) -> None:
        """Send a request due at `started_ns`."""
        self._due.put_nowait(started_ns)

    def finish(self) -> None:
        """Nothing more will be submitted. Requests not yet written are dropped, uncounted: the
        measurement windows are closed, and only the answers to those sent are awaited."""
        while not self._due.empty():
            self._due.get_nowait()
            self._calls.in_flight -= 1
        self._due.put_nowait(None)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self._write())
            group.create_task(self._read())

    async def _write(self) -> None:
        while (started_ns := await self._due.get()) is not None:
            if self._failed is not None:
                self._answered(started_ns, self._failed)
                continue
            if self._free:
                message = self._free.pop()
            else:
                message = type(self._request)()
                message.CopyFrom(self._request)
            message.id = str(next(self._numbers))
            self._sent[message.id] = (started_ns, message)
            try:
                await self._call.write(message)
            except (grpc.aio.AioRpcError, asyncio.InvalidStateError):  # the call has ended
                code, details = await self._call.code(), await self._call.details()
                ended = ENDED if code == grpc.StatusCode.OK else described(code, details)
                self._failed = self._failed or ended
                if self._sent.pop(message.id, None) is not None:  # else the reader answered it
                    self._answered(started_ns, self._failed)
        if self._failed is None:
            # The reader accounts for a stream that ends meanwhile.
            with contextlib.suppress(Exception):
                await self._call.done_writing()

    async def _read(self) -> None:
        failure = ENDED
        try:
            async for response in self._call:
                sent = self._sent.pop(response.infer_response.id, None)
                if sent is None:
                    self._calls.record(time.perf_counter_ns(), unknown(response.infer_response.id))
                    continue
                started_ns, message = sent
                self._free.append(message)
                error = response.error_message or None
                if error is None and time.perf_counter_ns() - started_ns > CALL_TIMEOUT_NS:
                    error = LATE
                self._answered(started_ns, error)
        except grpc.aio.AioRpcError as exc:
            failure = status(exc)
        # The stream is over: what was in flight is lost, and what comes later fails at once.
        self._failed = self._failed or failure
        for started_ns, _ in self._sent.values():
            self._answered(started_ns, self._failed)
        self._sent.clear()

    def _answered(self, started_ns: int, error: str | None) -> None:
        self._calls.in_flight -= 1
        self._calls.record(started_ns, error)
