"""One process of a load generator spread over several (`fleet.Fleet` starts it):

    python -m wattserve_client._agent

It opens its share of the connections, runs the loads its parent asks for, and answers the
parent's window cuts with what completed in them. Commands arrive on stdin and answers leave on
stdout, each one pickle behind a 4-byte length (`fleet.send` and `fleet.receive`). Anything
printed while it runs, by this code or a library, goes to stderr.

    parent                                   agent
    ("hello", address, connections)   ->     opens its connections
                                      <-     ("ready",)
    ("clock",)                        ->
                                      <-     ("clock", perf_counter_ns)
    ("load", kind, request, options)  ->     starts the senders (kind: "unary", "stream", "open";
                                             an open loop's first send is due at options'
                                             start_ns, in its own clock)
                                      <-     ("started",)
    ("mark",)                         ->     its CPU clock starts a window
                                      <-     ("marked",)
    ("cut", start_ns, end_ns)         ->     in its own clock
                                      <-     ("window", latencies_ns, errors, cpu_s)
    ("stop",)                         ->     stops sending, waits for what is in flight
                                      <-     ("stopped", messages, in_flight_max)
    ("exit",)                         ->     closes its connections and exits

"exit" during a load stops it first; so does the end of stdin (the parent has gone), silently.
An agent runs in a session of its own, so a terminal's Ctrl-C reaches only its parent.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from typing import Any

from wattserve.protocol import pb
from wattserve_client._request import CHANNEL_OPTIONS
from wattserve_client._sending import Calls
from wattserve_client.fleet import receive, send
from wattserve_client.loadgen import (
    Load,
    open_load,
    open_stubs,
    stream_closed_load,
    unary_closed_load,
)


def build(kind: str, stubs: list[Any], request: Any, options: dict[str, Any]) -> Load:
    """The load the parent asked for; an agent given no share of it sends nothing."""
    metadata = options["metadata"]
    if kind == "unary":
        if options["concurrency"] == 0:
            return Load(Calls(stubs, request, metadata), [])
        return unary_closed_load(
            stubs, request, concurrency=options["concurrency"], metadata=metadata
        )
    if kind == "stream":
        return stream_closed_load(
            stubs,
            request,
            concurrency=options["concurrency"],
            streams=options["streams"],
            deadline_s=options["deadline_s"],
            metadata=metadata,
        )
    if kind == "open":
        return open_load(
            stubs,
            request,
            rate_per_s=options["rate_per_s"],
            deadline_s=options["deadline_s"],
            streams=options["streams"],
            max_in_flight=options["max_in_flight"],
            metadata=metadata,
            phase_s=max(0.0, (options["start_ns"] - time.perf_counter_ns()) / 1e9),
            overflow=options["overflow"],
        )
    raise ValueError(f"unknown load kind {kind!r}")


async def serve_load(
    load: Load, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Run `load` until the parent says stop, answering its marks and cuts meanwhile. False: the
    parent said exit instead."""
    cpu_s = time.process_time()
    async with asyncio.TaskGroup() as group:
        for sender in load.senders:
            group.create_task(sender())
        await send(writer, ("started",))
        while (command := await receive(reader))[0] not in ("stop", "exit"):
            if command[0] == "mark":
                cpu_s = time.process_time()
                await send(writer, ("marked",))
            elif command[0] == "cut":
                _, start_ns, end_ns = command
                # An offset estimated a little high could put the end in our future.
                await asyncio.sleep(max(0, end_ns - time.perf_counter_ns()) / 1e9)
                latencies, errors = load.calls.cut(start_ns, end_ns)
                now = time.process_time()
                await send(writer, ("window", latencies, errors, now - cpu_s))
                cpu_s = now
            else:
                raise ValueError(f"unexpected command during a load: {command[0]!r}")
        load.stop.set()
    if command[0] == "exit":
        return False
    await send(writer, ("stopped", dict(load.calls.messages), load.calls.in_flight_max))
    return True


async def main() -> None:
    loop = asyncio.get_running_loop()
    answers = os.fdopen(os.dup(sys.stdout.fileno()), "wb", buffering=0)
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # stray prints must not reach the parent
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    transport, protocol = await loop.connect_write_pipe(
        lambda: asyncio.StreamReaderProtocol(asyncio.StreamReader()), answers
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    _, address, connections = await receive(reader)
    async with open_stubs(address, connections, CHANNEL_OPTIONS) as stubs:
        await send(writer, ("ready",))
        while (command := await receive(reader))[0] != "exit":
            if command[0] == "clock":
                await send(writer, ("clock", time.perf_counter_ns()))
            elif command[0] == "load":
                _, kind, request, options = command
                load = build(kind, stubs, pb.ModelInferRequest.FromString(request), options)
                if not await serve_load(load, reader, writer):
                    return
            else:
                raise ValueError(f"unexpected command: {command[0]!r}")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except* (asyncio.IncompleteReadError, ConnectionError):
        pass  # the parent has gone: nobody is left to answer
