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
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

from wattserve.protocol import pb_grpc
from wattserve_client._sending import CALL_TIMEOUT_S, Calls, OpenStream, as_list, stream_closed
from wattserve_client._sending import CORE_RACE as CORE_RACE  # the texts a caller may look for
from wattserve_client._sending import ENDED as ENDED
from wattserve_client._sending import LATE as LATE

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


@dataclass(frozen=True, slots=True)
class Load:
    """Requests on their way: the record of how each one ended, the tasks that send them, and the
    switch that stops them (a sender finishes what it has in flight after it)."""

    calls: Calls
    senders: Sequence[Callable[[], Coroutine[Any, Any, None]]]
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def cut(self, start_ns: int, end_ns: int, cpu: dict[str, float]) -> Window:
        latencies, errors = self.calls.cut(start_ns, end_ns)
        return Window(start_ns, end_ns, latencies, errors, cpu)


def refuse(
    connections: int,
    *,
    streams: int = 0,
    concurrency: int | None = None,
    rate_per_s: float | None = None,
) -> None:
    """Raise ValueError for a load that cannot be sent on `connections`: fewer streams than
    connections, fewer requests in flight than streams (or than one), a rate that is not
    positive. Every way of sending (here, and `fleet.Fleet`) asks this before it starts."""
    if streams < 0 or 0 < streams < connections:
        raise ValueError(f"need at least one stream per connection ({connections}), got {streams}")
    if concurrency is not None and concurrency < max(streams, 1):
        each = " (one per stream)" if streams else ""
        raise ValueError(f"concurrency must be >= {max(streams, 1)}{each}, got {concurrency}")
    if rate_per_s is not None and rate_per_s <= 0:
        raise ValueError(f"rate_per_s must be > 0, got {rate_per_s}")


def unary_closed_load(
    stubs: Any, request: Any, *, concurrency: int, metadata: Sequence[tuple[str, str]] = ()
) -> Load:
    """`concurrency` workers, each sending a unary call as soon as its last one is answered."""
    refuse(len(as_list(stubs)), concurrency=concurrency)
    calls = Calls(stubs, request, metadata)
    stop = asyncio.Event()

    async def worker() -> None:
        while not stop.is_set():
            await calls.send(time.perf_counter_ns())

    return Load(calls, [worker] * concurrency, stop)


def stream_closed_load(
    stubs: Any,
    request: Any,
    *,
    concurrency: int,
    streams: int,
    deadline_s: float,
    metadata: Sequence[tuple[str, str]] = (),
) -> Load:
    """`concurrency` requests in flight on `streams` ModelStreamInfer streams (0: one per stub),
    opened on the stubs in turn, the requests shared out evenly."""
    stubs = as_list(stubs)
    streams = streams or len(stubs)
    refuse(len(stubs), streams=streams, concurrency=concurrency)
    calls = Calls(stubs, request, metadata)
    calls.in_flight_max = concurrency
    stop = asyncio.Event()
    senders = [
        functools.partial(
            stream_closed,
            stubs[i % len(stubs)],
            request,
            calls,
            stop,
            in_flight=in_flight,
            metadata=metadata,
            deadline_s=deadline_s,
        )
        for i, in_flight in enumerate(shares(concurrency, streams))
    ]
    return Load(calls, senders, stop)


def open_load(
    stubs: Any,
    request: Any,
    *,
    rate_per_s: float,
    deadline_s: float,
    streams: int = 0,
    max_in_flight: int = 10_000,
    metadata: Sequence[tuple[str, str]] = (),
    phase_s: float = 0.0,
    overflow: str = "",
) -> Load:
    """`rate_per_s` requests a second on a fixed schedule (the first `phase_s` after the start),
    as unary calls or dealt out in turn over `streams` ModelStreamInfer streams. `overflow`: the
    failure of a request refused past `max_in_flight` (default: names `max_in_flight`)."""
    stubs = as_list(stubs)
    refuse(len(stubs), streams=streams, rate_per_s=rate_per_s)
    calls = Calls(stubs, request, metadata)
    lanes = [
        OpenStream(stubs[i % len(stubs)], request, calls, metadata, deadline_s)
        for i in range(streams)
    ]
    lane = itertools.cycle(lanes)
    stop = asyncio.Event()
    interval_ns = 1e9 / rate_per_s
    pending: set[asyncio.Task[None]] = set()
    overflow = overflow or f"client: more than {max_in_flight} in flight"

    def send(scheduled: int) -> None:
        if not lanes:
            task = asyncio.create_task(calls.send(scheduled))
            pending.add(task)
            task.add_done_callback(pending.discard)
            return
        calls.leaving()
        next(lane).submit(scheduled)

    async def dispatcher() -> None:
        start_ns, sent = time.perf_counter_ns() + round(phase_s * 1e9), 0
        while not stop.is_set():
            now = time.perf_counter_ns()
            due = max(0, math.floor((now - start_ns) / interval_ns) + 1)
            for n in range(sent, due):
                scheduled = start_ns + round(n * interval_ns)
                if calls.in_flight >= max_in_flight:
                    calls.refused(scheduled, now, overflow)
                    continue
                send(scheduled)
            sent = max(sent, due)
            next_ns = start_ns + sent * interval_ns
            await asyncio.sleep(max(0.0, (next_ns - time.perf_counter_ns()) / 1e9))
        for each in lanes:
            each.finish()
        if pending:
            await asyncio.gather(*pending)

    return Load(calls, [dispatcher, *(each.run for each in lanes)], stop)


def shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` whole shares that differ by at most one."""
    return [total * (i + 1) // parts - total * i // parts for i in range(parts)]


def stream_deadline_s(schedule: Schedule) -> float:
    """A stream's deadline: the longest run the schedule allows, and one call's deadline more
    for the last answers; a server that stops answering cannot hold the run up for longer."""
    return schedule.warmup_s + schedule.max_windows * schedule.window_s + CALL_TIMEOUT_S


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
    load = unary_closed_load(stub, request, concurrency=concurrency, metadata=metadata)
    return await run(load, schedule, cpu_probes)


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
    load = stream_closed_load(
        stub,
        request,
        concurrency=concurrency,
        streams=streams,
        deadline_s=stream_deadline_s(schedule),
        metadata=metadata,
    )
    return await run(load, schedule, cpu_probes)


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
    load = open_load(
        stub,
        request,
        rate_per_s=rate_per_s,
        deadline_s=stream_deadline_s(schedule),
        streams=streams,
        max_in_flight=max_in_flight,
        metadata=metadata,
    )
    return await run(load, schedule, cpu_probes)


async def run(load: Load, schedule: Schedule, cpu_probes: Sequence[CpuProbe]) -> Measurement:
    """Start `load`, measure it until its windows are stable, stop it and wait for its senders."""
    async with asyncio.TaskGroup() as group:
        for sender in load.senders:
            group.create_task(sender())
        try:
            windows, stable = await measure(load.cut, schedule, cpu_probes)
        finally:
            load.stop.set()
    return measurement(windows, stable, load.calls.messages, load.calls.in_flight_max)


def measurement(
    windows: list[Window], stable: bool, messages: Mapping[str, int], in_flight_max: int
) -> Measurement:
    return Measurement(
        windows=windows[-STABLE_WINDOWS:] if stable else windows,
        stable=stable,
        windows_run=len(windows),
        error_messages=dict(messages),
        in_flight_max=in_flight_max,
    )


Cut = Callable[[int, int, dict[str, float]], Awaitable[Window]]
"""The window [start_ns, end_ns) of a load, given the CPU it used meanwhile (in cores)."""


async def measure(
    cut: Cut,
    schedule: Schedule,
    probes: Sequence[CpuProbe],
    *,
    begin: Callable[[], Awaitable[None]] | None = None,
) -> tuple[list[Window], bool]:
    """Warm up, then cut windows until the last STABLE_WINDOWS agree (True) or the schedule's
    windows are used up (False). `begin` is awaited as the first window starts."""
    await asyncio.sleep(schedule.warmup_s)
    if begin is not None:
        await begin()
    windows: list[Window] = []
    start_ns, before = time.perf_counter_ns(), _read(probes)
    while len(windows) < schedule.max_windows:
        await asyncio.sleep(max(0.0, start_ns / 1e9 + schedule.window_s - time.perf_counter()))
        end_ns, after = time.perf_counter_ns(), _read(probes)
        seconds = (end_ns - start_ns) / 1e9
        cpu = {k: (v - before.get(k, 0.0)) / seconds for k, v in after.items()}
        windows.append(await cut(start_ns, end_ns, cpu))
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
