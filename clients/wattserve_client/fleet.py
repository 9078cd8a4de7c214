"""The load generator in this process, or spread over several (`--processes N`).

A Python load generator is one interpreter with one GIL, and grpc.aio costs it about as much CPU
per request as the server spends answering it (docs/performance.md). So one process drives
about one core of server. A server with several workers, or on a bigger machine, needs more.

`Fleet` starts `processes` agent processes on this machine (`python -m wattserve_client._agent`).
Each opens its share of the connections and runs its share of every load, and this process keeps
the clock. It measures each agent's clock offset at start, cuts every agent's windows at the same
instants, pools what completed, and applies the stability rule to the pooled windows. A
measurement from a fleet reads like one from `loadgen`, the load generator's CPU included: this
process's and the agents' CPU are summed under LOAD_GENERATOR, and the busiest agent's is kept
under LOAD_GENERATOR_BUSIEST, because one process near a full core is what limits a fleet. One
figure differs: `in_flight_max` is the sum of the agents' maxima, an upper bound of the true one.

How a load is shared: connection k belongs to agent k mod P (so there must be at least as many
connections as processes). Unary calls take turns over the connections, so an agent's share of
the requests in flight, or of the rate, is its share of the connections. Stream j is opened on
connection j mod C, so an agent's share of a streamed load is its share of the streams. The
agents' open-loop schedules start at one instant (in each agent's clock), staggered by one
interval of the whole rate each, so their sends interleave.

`load_generator` gives either kind behind the same two methods, `closed_loop` and `open_loop`,
with a `stub` of this process's own for set-up calls (metadata, the payload check, a probe).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import pickle
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np

from wattserve_client._request import CHANNEL_OPTIONS
from wattserve_client._sending import keep_message
from wattserve_client.loadgen import (
    LOAD_GENERATOR,
    CpuProbe,
    Measurement,
    Schedule,
    Window,
    closed_loop,
    measure,
    measurement,
    open_loop,
    open_stubs,
    refuse,
    shares,
    stream_deadline_s,
)

LOAD_GENERATOR_BUSIEST = "load_generator_busiest"
"""CPU label: the busiest load generator process, in cores."""
AGENT_EXIT_S = 10.0
"""How long an agent may take to close its connections and exit before it is killed."""
START_MARGIN_NS = 50_000_000
"""An open loop's agents start sending this long after the parent hands out the load, so that
every agent has its orders before the common start."""


class FleetError(RuntimeError):
    """An agent process failed: it exited, or answered out of turn."""


async def send(writer: asyncio.StreamWriter, message: tuple[Any, ...]) -> None:
    """One message to the other side of an agent's pipe: a 4-byte length, then a pickle."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(len(data).to_bytes(4, "big") + data)
    await writer.drain()


async def receive(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    size = int.from_bytes(await reader.readexactly(4), "big")
    message: tuple[Any, ...] = pickle.loads(await reader.readexactly(size))
    return message


class _Agent:
    """One agent process, seen from the parent: ask it something, get its answer."""

    def __init__(self, number: int, process: asyncio.subprocess.Process, connections: int):
        self.number = number
        self.connections = connections
        self.offset_ns = 0
        """Its clock minus ours (perf_counter_ns)."""
        self._process = process

    @classmethod
    async def start(cls, number: int, address: str, connections: int) -> _Agent:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "wattserve_client._agent",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,  # a terminal's Ctrl-C goes to the parent, which stops them
        )
        agent = cls(number, process, connections)
        await agent.ask(("hello", address, connections), "ready")
        agent.offset_ns = await agent._clock_offset_ns()
        return agent

    async def ask(self, command: tuple[Any, ...], answer: str) -> tuple[Any, ...]:
        assert self._process.stdin is not None and self._process.stdout is not None
        try:
            await send(self._process.stdin, command)
            reply = await receive(self._process.stdout)
        except (asyncio.IncompleteReadError, ConnectionError, pickle.UnpicklingError) as exc:
            code = await self._ended()
            raise FleetError(
                f"load generator process {self.number} (pid {self._process.pid}) exited with "
                f"code {code} at {command[0]!r}; its traceback, if any, is on stderr"
            ) from exc
        if reply[0] != answer:
            raise FleetError(
                f"load generator process {self.number} answered {reply[0]!r} to "
                f"{command[0]!r}, expected {answer!r}"
            )
        return reply

    async def _clock_offset_ns(self) -> int:
        """The offset seen in the quickest of five round trips, the one that bounds it best."""
        quickest: tuple[int, int] | None = None
        for _ in range(5):
            before = time.perf_counter_ns()
            _, theirs = await self.ask(("clock",), "clock")
            after = time.perf_counter_ns()
            if quickest is None or after - before < quickest[0]:
                quickest = (after - before, theirs - (before + after) // 2)
        assert quickest is not None
        return quickest[1]

    async def _ended(self) -> int | None:
        """Its exit code, once it has exited; it is killed after AGENT_EXIT_S. What it still
        writes is read and dropped meanwhile, so that a pipe full of an unread window cannot keep
        it from reading its "exit"."""
        assert self._process.stdout is not None
        try:
            await asyncio.wait_for(
                asyncio.gather(self._process.stdout.read(), self._process.wait()), AGENT_EXIT_S
            )
        except TimeoutError:
            self._process.kill()
        return await self._process.wait()

    async def close(self) -> None:
        if self._process.returncode is None and self._process.stdin is not None:
            with contextlib.suppress(ConnectionError):
                await send(self._process.stdin, ("exit",))
        await self._ended()


class Fleet:
    """A load generator spread over agent processes (see the module's docstring)."""

    processes: int

    def __init__(self, agents: list[_Agent], stub: Any) -> None:
        self._agents = agents
        self._failure: BaseException | None = None
        """What interrupted a load: the agents may be in the middle of one, so none starts."""
        self.processes = len(agents)
        self.connections = sum(a.connections for a in agents)
        self.stub = stub
        """This process's own connection, for set-up calls; the load never uses it."""

    def _owners(self, units: int, amounts: Sequence[int] | None = None) -> list[int]:
        """How much each agent owns of `units` streams or connections, unit u being on
        connection u mod C: one each, or `amounts[u]`."""
        return dealt(units, self.connections, self.processes, amounts)

    async def closed_loop(
        self,
        request: Any,
        *,
        concurrency: int,
        schedule: Schedule,
        streams: int = 0,
        metadata: Sequence[tuple[str, str]] = (),
        cpu_probes: Sequence[CpuProbe] = (),
    ) -> Measurement:
        """`loadgen.closed_loop` over the agents, the in-flight requests shared out."""
        refuse(self.connections, streams=streams, concurrency=concurrency)
        units = streams or self.connections
        in_flight = self._owners(units, shares(concurrency, units))
        kind = "stream" if streams else "unary"
        loads = [
            (kind, {"concurrency": c, "streams": s, "deadline_s": stream_deadline_s(schedule)})
            for c, s in zip(in_flight, self._owners(streams), strict=True)
        ]
        return await self._run(request, loads, metadata, schedule, cpu_probes)

    async def open_loop(
        self,
        request: Any,
        *,
        rate_per_s: float,
        schedule: Schedule,
        streams: int = 0,
        max_in_flight: int = 10_000,
        metadata: Sequence[tuple[str, str]] = (),
        cpu_probes: Sequence[CpuProbe] = (),
    ) -> Measurement:
        """`loadgen.open_loop` over the agents, the rate shared out."""
        refuse(self.connections, streams=streams, rate_per_s=rate_per_s)
        units = streams or self.connections
        start_ns = time.perf_counter_ns() + START_MARGIN_NS
        loads = []
        for number, owned in enumerate(self._owners(units)):
            weight = owned / units
            stagger_ns = round(number * 1e9 / rate_per_s)
            options = {
                "rate_per_s": rate_per_s * weight,
                "streams": owned if streams else 0,
                "max_in_flight": max(1, math.ceil(max_in_flight * weight)),
                "overflow": f"client: more than {max_in_flight} in flight",
                "start_ns": start_ns + stagger_ns + self._agents[number].offset_ns,
                "deadline_s": stream_deadline_s(schedule),
            }
            loads.append(("open", options))
        return await self._run(request, loads, metadata, schedule, cpu_probes)

    async def _run(
        self,
        request: Any,
        loads: list[tuple[str, dict[str, Any]]],
        metadata: Sequence[tuple[str, str]],
        schedule: Schedule,
        cpu_probes: Sequence[CpuProbe],
    ) -> Measurement:
        if self._failure is not None:
            raise FleetError("the load generator processes failed in an earlier load") from (
                self._failure
            )
        data = request.SerializeToString()
        try:
            return await self._measure(data, loads, metadata, schedule, cpu_probes)
        except BaseException as exc:
            self._failure = exc
            raise

    async def _measure(
        self,
        data: bytes,
        loads: list[tuple[str, dict[str, Any]]],
        metadata: Sequence[tuple[str, str]],
        schedule: Schedule,
        cpu_probes: Sequence[CpuProbe],
    ) -> Measurement:
        await self._each(
            lambda agent, number: (
                "load",
                loads[number][0],
                data,
                loads[number][1] | {"metadata": tuple(metadata)},
            ),
            "started",
        )
        windows, stable = await measure(self._cut, schedule, cpu_probes, begin=self._mark)
        answers = await self._each(lambda agent, number: ("stop",), "stopped")
        messages: Counter[str] = Counter()
        for _, theirs, _ in answers:
            for text, count in theirs.items():
                keep_message(messages, text, count)
        return measurement(windows, stable, messages, sum(a[2] for a in answers))

    async def _mark(self) -> None:
        await self._each(lambda agent, number: ("mark",), "marked")

    async def _cut(self, start_ns: int, end_ns: int, cpu: dict[str, float]) -> Window:
        answers = await self._each(
            lambda agent, number: ("cut", start_ns + agent.offset_ns, end_ns + agent.offset_ns),
            "window",
        )
        seconds = (end_ns - start_ns) / 1e9
        cores = [cpu_s / seconds for *_, cpu_s in answers]
        cpu = cpu | {
            LOAD_GENERATOR: cpu.get(LOAD_GENERATOR, 0.0) + sum(cores),
            LOAD_GENERATOR_BUSIEST: max(cores),
        }
        latencies = np.concatenate([a[1] for a in answers])
        return Window(start_ns, end_ns, latencies, sum(a[2] for a in answers), cpu)

    async def _each(self, command: Any, answer: str) -> list[tuple[Any, ...]]:
        """Ask every agent at once: `command(agent, number)` is what to ask it. Every agent's
        answer is awaited before the first failure is raised."""
        answers = await asyncio.gather(
            *(a.ask(command(a, n), answer) for n, a in enumerate(self._agents)),
            return_exceptions=True,
        )
        for each in answers:
            if isinstance(each, BaseException):
                raise each
        return answers  # type: ignore[return-value]


def dealt(
    units: int, connections: int, processes: int, amounts: Sequence[int] | None = None
) -> list[int]:
    """How much of `units` each of `processes` agents owns, unit u being on connection
    u mod `connections` and connection k belonging to agent k mod `processes`: one each, or
    `amounts[u]`."""
    owned = [0] * processes
    for unit in range(units):
        owned[unit % connections % processes] += 1 if amounts is None else amounts[unit]
    return owned


class InProcess:
    """The load generator in this process: `loadgen`'s loops, bound to `stubs`."""

    processes = 1

    def __init__(self, stubs: list[Any]) -> None:
        self.stubs = stubs
        self.connections = len(stubs)
        self.stub = stubs[0]
        self.closed_loop = functools.partial(closed_loop, stubs)
        self.open_loop = functools.partial(open_loop, stubs)


@contextlib.asynccontextmanager
async def load_generator(
    address: str, *, connections: int = 1, processes: int = 1
) -> AsyncIterator[InProcess | Fleet]:
    """A load generator on `connections` TCP connections: in this process, or with `processes`
    > 1 a Fleet of that many agents (connections >= processes)."""
    if processes < 1 or connections < processes:
        raise ValueError(
            f"need processes >= 1 and connections >= processes (each process has its own); got "
            f"processes {processes} and connections {connections}"
        )
    if processes == 1:
        async with open_stubs(address, connections, CHANNEL_OPTIONS) as stubs:
            yield InProcess(stubs)
        return
    owned = dealt(connections, connections, processes)
    started = await asyncio.gather(
        *(_Agent.start(n, address, c) for n, c in enumerate(owned)), return_exceptions=True
    )
    agents = [a for a in started if isinstance(a, _Agent)]
    try:
        failed = [e for e in started if isinstance(e, BaseException)]
        if failed:
            raise failed[0]
        async with open_stubs(address, 1, CHANNEL_OPTIONS) as (stub,):
            yield Fleet(agents, stub)
    finally:
        await asyncio.gather(*(a.close() for a in agents))
