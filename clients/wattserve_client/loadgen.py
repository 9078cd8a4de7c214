"""Precise load generation over grpc.aio: closed loop (fixed in flight) and open loop (fixed rate).

Both send one prebuilt ModelInferRequest again and again and cut time into measurement windows
after a warm-up, like perf_analyzer: a run holds until the last `STABLE_WINDOWS` windows agree
within `stability` in throughput and in median latency, or gives up after `max_windows`. (The
median, because one stall of the server moves a window's mean far more than its typical latency.)
Latencies are kept in nanoseconds, so sub-millisecond calls are measured as they are.

- **Closed loop** (`concurrency`): each of N workers sends, waits for the answer, sends again.
  Exact in-flight control, the right tool for a throughput ceiling, but it hides queueing: when the
  server slows down, the load slows down with it.
- **Stream closed loop**: N requests in flight on ModelStreamInfer streams (one, or several
  sharing them), each sent as soon as an answer comes back: the streaming path's ceiling.
- **Open loop** (`rate_per_s`): requests leave on a fixed schedule whatever the server does, and
  each latency counts from the scheduled send time, so a server that falls behind shows it in its
  latencies (no coordinated omission). The right tool for "can it sustain N/s within the SLO?".
  As unary calls, or dealt out in turn over `streams` ModelStreamInfer streams.

Failed calls are counted (with their first messages), not raised: the caller decides what an
error rate means. Every loop takes one stub or several (`open_stubs`: one TCP connection each);
with several, calls take turns over them and a stream closed loop opens its streams on them in
turn (by default one on each). A server with worker processes (`--workers`) balances
connections, not calls, so it needs several.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from wattserve.protocol import pb_grpc

CALL_TIMEOUT_S = 30.0
"""A unary call's deadline; a streamed answer later than this counts as failed too."""
CALL_TIMEOUT_NS = int(CALL_TIMEOUT_S * 1e9)
STABLE_WINDOWS = 3
INF = float("inf")

CpuProbe = Callable[[], Mapping[str, float]]
"""CPU seconds consumed so far, per label; read at the window edges."""
LOAD_GENERATOR = "load_generator"
BUSY_CORES = 0.9
"""A load generator using this much CPU (in cores) may be what limits a run, not the server: its
sends and its latency readings lag (Locust warns at the same 90%)."""


def load_generator_cpu() -> dict[str, float]:
    """A CpuProbe of this process's own CPU: all its threads, gRPC's included."""
    return {LOAD_GENERATOR: time.process_time()}


@dataclass(frozen=True, slots=True)
class Window:
    """What one measurement window saw: calls that completed inside [start_ns, end_ns)."""

    start_ns: int
    end_ns: int
    latencies_ns: np.ndarray
    """Successful calls only."""
    errors: int
    cpu_cores: dict[str, float]
    """CPU used during the window per probe label, in cores (1.0 = one core busy)."""

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9

    @property
    def requests_per_s(self) -> float:
        return self.latencies_ns.size / self.seconds

    @property
    def median_latency_ns(self) -> float:
        return float(np.median(self.latencies_ns)) if self.latencies_ns.size else INF


@dataclass(frozen=True, slots=True)
class Measurement:
    """The stable windows of one run, pooled."""

    windows: list[Window]
    """The windows pooled here (the last STABLE_WINDOWS, or all when the run never settled)."""
    stable: bool
    windows_run: int
    error_messages: dict[str, int] = field(default_factory=dict)
    """The first distinct errors ("CODE: details") and how often each occurred."""
    in_flight_max: int = 0

    @property
    def seconds(self) -> float:
        return sum(w.seconds for w in self.windows)

    @property
    def latencies_ns(self) -> np.ndarray:
        return np.concatenate([w.latencies_ns for w in self.windows])

    @property
    def requests(self) -> int:
        return sum(w.latencies_ns.size for w in self.windows)

    @property
    def errors(self) -> int:
        return sum(w.errors for w in self.windows)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def error_rate(self) -> float:
        total = self.requests + self.errors
        return self.errors / total if total else 0.0

    def latencies_ms(self, percentiles: Sequence[float]) -> list[float]:
        """Several percentiles from one pass over the pooled latencies."""
        latencies = self.latencies_ns
        if not latencies.size:
            return [INF] * len(percentiles)
        return [float(v) / 1e6 for v in np.percentile(latencies, percentiles)]

    def latency_ms(self, percentile: float) -> float:
        return self.latencies_ms([percentile])[0]

    def cpu_cores(self, label: str) -> float | None:
        values = [w.cpu_cores[label] for w in self.windows if label in w.cpu_cores]
        return sum(values) / len(values) if values else None


@dataclass(frozen=True, slots=True)
class Schedule:
    """How long to warm up and measure, and when a run counts as stable."""

    warmup_s: float = 1.0
    window_s: float = 2.0
    min_windows: int = STABLE_WINDOWS
    max_windows: int = 10
    stability: float = 0.10
    """Stable: the last STABLE_WINDOWS windows within this fraction (max ÷ min - 1)."""

    def __post_init__(self) -> None:
        if self.window_s <= 0 or self.warmup_s < 0:
            raise ValueError("window_s must be > 0 and warmup_s >= 0")
        if not 1 <= self.min_windows <= self.max_windows:
            raise ValueError("need 1 <= min_windows <= max_windows")


@contextlib.asynccontextmanager
async def open_stubs(
    address: str, connections: int, options: Sequence[tuple[str, Any]] = ()
) -> AsyncIterator[list[Any]]:
    """`connections` inference stubs, each on its own channel and TCP connection (gRPC otherwise
    shares one connection between channels with equal arguments)."""
    if connections < 1:
        raise ValueError(f"connections must be >= 1, got {connections}")
    own = [*options, ("grpc.use_local_subchannel_pool", 1)] if connections > 1 else [*options]
    async with contextlib.AsyncExitStack() as stack:
        channels = [
            await stack.enter_async_context(grpc.aio.insecure_channel(address, options=own))
            for _ in range(connections)
        ]
        yield [pb_grpc.GRPCInferenceServiceStub(c) for c in channels]  # type: ignore[no-untyped-call]


def _as_list(stubs: Any) -> list[Any]:
    """One stub, or a sequence of stubs on separate connections."""
    return list(stubs) if isinstance(stubs, Sequence) else [stubs]


class _Calls:
    """Completions as (time done, latency, ok), appended by the senders."""

    def __init__(self, stubs: Any, request: Any, metadata: Sequence[tuple[str, str]]) -> None:
        self._calls = [stub.ModelInfer for stub in _as_list(stubs)]
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
            error = _status(exc)
        finally:
            self.in_flight -= 1
        self.record(started_ns, error)

    def record(self, started_ns: int, error: str | None) -> None:
        """One call done now; `error` is its failure message, None for a success."""
        done = time.perf_counter_ns()
        self.done_ns.append(done)
        self.latency_ns.append(done - started_ns)
        self.ok.append(error is None)
        if error is not None and (error in self.messages or len(self.messages) < 10):
            self.messages[error] += 1

    def window(self, start_ns: int, end_ns: int, cpu: dict[str, float]) -> Window:
        done = np.asarray(self.done_ns, dtype=np.int64)
        inside = (done >= start_ns) & (done < end_ns)
        ok = np.asarray(self.ok, dtype=bool)
        latency = np.asarray(self.latency_ns, dtype=np.int64)
        return Window(
            start_ns=start_ns,
            end_ns=end_ns,
            latencies_ns=latency[inside & ok],
            errors=int((inside & ~ok).sum()),
            cpu_cores=cpu,
        )


ENDED = "client: the server ended the stream before answering"
"""The failure of a streamed request whose stream ended without its answer."""
LATE = f"DEADLINE_EXCEEDED: client: answered after more than {CALL_TIMEOUT_S:g} s"
"""The failure of a streamed request answered later than a unary call's deadline."""
CORE_RACE = (
    " (grpc.aio's report when a write meets a stream the server had already ended, "
    "grpc/grpc#36066: the server's own status is lost)"
)
"""Added to the INTERNAL status that grpc.aio reports in place of a stream's real one."""


def _status(exc: grpc.aio.AioRpcError) -> str:
    return _described(exc.code(), exc.details())


def _described(code: grpc.StatusCode, details: str | None) -> str:
    text = f"{code.name}: {details or ''}"
    if code == grpc.StatusCode.INTERNAL and details == "Internal error from Core":
        text += CORE_RACE
    return text


def _stream_deadline_s(schedule: Schedule) -> float:
    """A stream's deadline: the longest run the schedule allows, and one call's deadline more
    for the last answers; a server that stops answering cannot hold the run up for longer."""
    return schedule.warmup_s + schedule.max_windows * schedule.window_s + CALL_TIMEOUT_S


def _unknown(answer_id: str) -> str:
    return f"client: an answer with id {answer_id!r}, which no request in flight has"


async def closed_loop(
    stub: Any,
    request: Any,
    *,
    concurrency: int,
    schedule: Schedule,
    streams: int = 0,
    metadata: Sequence[tuple[str, str]] = (),
    cpu_probes: Sequence[CpuProbe] = (),
) -> Measurement:
    """Keep `concurrency` copies of `request` in flight until the windows are stable: as unary
    calls, or with `streams` > 0 on that many ModelStreamInfer streams (`stream_closed_loop`)."""
    if streams:
        return await stream_closed_loop(
            stub,
            request,
            concurrency=concurrency,
            schedule=schedule,
            streams=streams,
            metadata=metadata,
            cpu_probes=cpu_probes,
        )
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    calls = _Calls(stub, request, metadata)
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            await calls.send(time.perf_counter_ns())

    return await _run(calls, [worker] * concurrency, stop, schedule, cpu_probes)


async def stream_closed_loop(
    stub: Any,
    request: Any,
    *,
    concurrency: int,
    schedule: Schedule,
    streams: int = 0,
    metadata: Sequence[tuple[str, str]] = (),
    cpu_probes: Sequence[CpuProbe] = (),
) -> Measurement:
    """Keep `concurrency` copies of `request` in flight on `streams` ModelStreamInfer streams
    (default: one per stub), opened on the stubs in turn, the requests shared out evenly.

    Each message carries its own id (responses come back in completion order, not sending order);
    a response with an `error_message` counts as a failed call.
    """
    stubs = _as_list(stub)
    streams = streams or len(stubs)
    if streams < len(stubs):
        raise ValueError(f"need at least one stream per connection ({len(stubs)}), got {streams}")
    if concurrency < streams:
        raise ValueError(f"concurrency must be >= {streams} (one per stream), got {concurrency}")
    calls = _Calls(stubs, request, metadata)
    calls.in_flight_max = concurrency
    stop = asyncio.Event()
    deadline_s = _stream_deadline_s(schedule)
    shares = [concurrency * (i + 1) // streams - concurrency * i // streams for i in range(streams)]
    on = [stubs[i % len(stubs)] for i in range(streams)]

    async def streamer(stub: Any, in_flight: int) -> None:
        call = stub.ModelStreamInfer(metadata=tuple(metadata), timeout=deadline_s)
        # One copy of the request per slot in flight, its id changed per send; a copy is sent
        # again only once its answer is back, so it has been serialised even where a channel's
        # interceptors queue the writes. The caller's request stays as it is.
        copies = [type(request)() for _ in range(in_flight)]
        sent: dict[str, tuple[int, Any]] = {}
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
                if answered is None:
                    calls.record(time.perf_counter_ns(), _unknown(response.infer_response.id))
                    continue
                started_ns, message = answered
                calls.record(started_ns, response.error_message or None)
                if not stop.is_set():
                    await send(message)
                elif not sent:
                    break
            with contextlib.suppress(Exception):  # a stream ending meanwhile has nothing left
                await call.done_writing()
        except grpc.aio.AioRpcError as exc:  # the stream itself failed: what was in flight is lost
            for started_ns, _ in sent.values():
                calls.record(started_ns, _status(exc))

    senders = [functools.partial(streamer, s, n) for s, n in zip(on, shares, strict=True)]
    return await _run(calls, senders, stop, schedule, cpu_probes)


class _OpenStream:
    """One ModelStreamInfer stream of an open loop. `submit` queues a request due at a scheduled
    time; one writer sends them in order (a stream takes one write at a time), and the reader
    matches each answer to its request by id. A request waiting for its turn to be written is in
    flight: its latency counts from the scheduled time all the same. An answer later than
    CALL_TIMEOUT_S counts as failed, as a unary call would have."""

    def __init__(
        self,
        stub: Any,
        request: Any,
        calls: _Calls,
        metadata: Sequence[tuple[str, str]],
        deadline_s: float,
    ):
        self._call = stub.ModelStreamInfer(metadata=tuple(metadata), timeout=deadline_s)
        self._request = request
        self._calls = calls
        self._due: asyncio.Queue[int | None] = asyncio.Queue()
        self._sent: dict[str, tuple[int, Any]] = {}
        self._free: list[Any] = []
        """Request copies whose answers are back, to send again (see stream_closed_loop)."""
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
                ended = ENDED if code == grpc.StatusCode.OK else _described(code, details)
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
                    self._calls.record(time.perf_counter_ns(), _unknown(response.infer_response.id))
                    continue
                started_ns, message = sent
                self._free.append(message)
                error = response.error_message or None
                if error is None and time.perf_counter_ns() - started_ns > CALL_TIMEOUT_NS:
                    error = LATE
                self._answered(started_ns, error)
        except grpc.aio.AioRpcError as exc:
            failure = _status(exc)
        # The stream is over: what was in flight is lost, and what comes later fails at once.
        self._failed = self._failed or failure
        for started_ns, _ in self._sent.values():
            self._answered(started_ns, self._failed)
        self._sent.clear()

    def _answered(self, started_ns: int, error: str | None) -> None:
        self._calls.in_flight -= 1
        self._calls.record(started_ns, error)


async def open_loop(
    stub: Any,
    request: Any,
    *,
    rate_per_s: float,
    schedule: Schedule,
    streams: int = 0,
    max_in_flight: int = 10_000,
    metadata: Sequence[tuple[str, str]] = (),
    cpu_probes: Sequence[CpuProbe] = (),
) -> Measurement:
    """Send `rate_per_s` requests per second on a fixed schedule until the windows are stable: as
    unary calls, or with `streams` > 0 dealt out in turn over that many ModelStreamInfer streams,
    opened on the stubs in turn.

    Past `max_in_flight` outstanding calls the schedule still advances but nothing is sent: those
    requests count as errors ("client: more than N in flight"), since the server clearly cannot
    keep up.
    """
    if rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")
    stubs = _as_list(stub)
    if streams < 0 or 0 < streams < len(stubs):
        raise ValueError(f"need at least one stream per connection ({len(stubs)}), got {streams}")
    calls = _Calls(stubs, request, metadata)
    deadline_s = _stream_deadline_s(schedule)
    lanes = [
        _OpenStream(stubs[i % len(stubs)], request, calls, metadata, deadline_s)
        for i in range(streams)
    ]
    lane = itertools.cycle(lanes)
    stop = asyncio.Event()
    interval_ns = 1e9 / rate_per_s
    pending: set[asyncio.Task[None]] = set()
    overflow = f"client: more than {max_in_flight} in flight"

    def send(scheduled: int) -> None:
        if not lanes:
            task = asyncio.create_task(calls.send(scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)
            return
        calls.leaving()
        next(lane).submit(scheduled)

    async def dispatcher() -> None:
        start_ns, sent = time.perf_counter_ns(), 0
        while not stop.is_set():
            now = time.perf_counter_ns()
            due = int((now - start_ns) / interval_ns) + 1
            for n in range(sent, due):
                scheduled = start_ns + round(n * interval_ns)
                if calls.in_flight >= max_in_flight:
                    calls.messages[overflow] += 1
                    calls.done_ns.append(now)
                    calls.latency_ns.append(now - scheduled)
                    calls.ok.append(False)
                    continue
                send(scheduled)
            sent = due
            next_ns = start_ns + due * interval_ns
            await asyncio.sleep(max(0.0, (next_ns - time.perf_counter_ns()) / 1e9))
        for each in lanes:
            each.finish()
        if pending:
            await asyncio.gather(*pending)

    senders = [dispatcher, *(each.run for each in lanes)]
    return await _run(calls, senders, stop, schedule, cpu_probes)


async def _run(
    calls: _Calls,
    senders: Sequence[Callable[[], Any]],
    stop: asyncio.Event,
    schedule: Schedule,
    cpu_probes: Sequence[CpuProbe],
) -> Measurement:
    async with asyncio.TaskGroup() as group:
        for sender in senders:
            group.create_task(sender())
        try:
            windows, stable = await _measure(calls, schedule, cpu_probes)
        finally:
            stop.set()
    pooled = windows[-STABLE_WINDOWS:] if stable else windows
    return Measurement(
        windows=pooled,
        stable=stable,
        windows_run=len(windows),
        error_messages=dict(calls.messages),
        in_flight_max=calls.in_flight_max,
    )


async def _measure(
    calls: _Calls, schedule: Schedule, probes: Sequence[CpuProbe]
) -> tuple[list[Window], bool]:
    await asyncio.sleep(schedule.warmup_s)
    windows: list[Window] = []
    start_ns, before = time.perf_counter_ns(), _read(probes)
    while len(windows) < schedule.max_windows:
        await asyncio.sleep(max(0.0, start_ns / 1e9 + schedule.window_s - time.perf_counter()))
        end_ns, after = time.perf_counter_ns(), _read(probes)
        seconds = (end_ns - start_ns) / 1e9
        cpu = {k: (v - before.get(k, 0.0)) / seconds for k, v in after.items()}
        windows.append(calls.window(start_ns, end_ns, cpu))
        start_ns, before = end_ns, after
        if len(windows) >= schedule.min_windows and _stable(windows, schedule.stability):
            return windows, True
    return windows, False


def _stable(windows: list[Window], stability: float) -> bool:
    if len(windows) < STABLE_WINDOWS:
        return True  # fewer windows than the rule needs were asked for: nothing to compare
    last = windows[-STABLE_WINDOWS:]
    for values in ([w.requests_per_s for w in last], [w.median_latency_ns for w in last]):
        low, high = min(values), max(values)
        if low <= 0 or not np.isfinite(high) or high / low - 1 > stability:
            return False
    return True


def _read(probes: Sequence[CpuProbe]) -> dict[str, float]:
    return {label: seconds for probe in probes for label, seconds in probe().items()}
