"""The floor: a bare grpc.aio server that answers ModelInfer with its input, and nothing else.

No model, no batching, no validation, no metering: what one Python process spends per unary call
(and per streamed message) is the floor under any Python gRPC inference server on the same core.

    python bench/_echo.py [--port 0] [--generic-handlers-only] [--uvloop] [--option NAME=VALUE]
                          [--read-mb M | --spin-mb M]
    # prints "wattserve ready: serving 0 model(s) on HOST:PORT"

By default the service is added the stock way (generated code registers every method). With
`--generic-handlers-only` it is added as wattserve adds its own (`GenericHandlersOnly`), to
measure what that saves per call. With `--uvloop` it runs on uvloop's event loop instead of
asyncio's (what a user would write is asyncio's, the floor `bench/perf.py` uses).

`--read-mb` and `--spin-mb` give each unary call some work before its answer, in place of a
model: reading M megabytes of memory, as a model whose weights outgrow the caches does, or
spinning on the CPU for as long as that read took at start-up (median of 50), which leaves the
caches alone. Their difference at 1 in flight is what the model's memory traffic costs the rest
of the round trip (`bench/ab.py --a "echo --read-mb 48" --b "echo --spin-mb 48" --concurrency 1`).

The ready line mimics wattserve's, so `_server.serving` starts and stops either one.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
import numpy as np

from wattserve.grpc.server import GenericHandlersOnly
from wattserve.protocol import pb, pb_grpc


def echo(request: Any) -> Any:
    """The request's tensors sent back as outputs: one bytes copy per tensor, as a server would."""
    response = pb.ModelInferResponse(
        model_name=request.model_name, model_version=request.model_version, id=request.id
    )
    for tensor in request.inputs:
        response.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
    response.raw_output_contents.extend(request.raw_input_contents)
    return response


class Echo(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, work: Callable[[], object] | None = None) -> None:
        self.work = work

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        if self.work is not None:
            self.work()
        return echo(request)

    async def ModelStreamInfer(
        self, requests: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[Any]:
        async for request in requests:
            yield pb.ModelStreamInferResponse(infer_response=echo(request))


async def serve_until_terminated(server: grpc.aio.Server, port: int, *, models: int) -> None:
    """Start a reference server, print the ready line `_server.serving` waits for (wattserve's),
    and stop gracefully on SIGTERM."""
    await server.start()
    print(
        f"wattserve ready: serving {models} model(s) on 127.0.0.1:{port}",
        file=sys.stderr,
        flush=True,
    )
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(grace=1)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--generic-handlers-only", action="store_true")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop's event loop")
    parser.add_argument(
        "--option", action="append", default=[], metavar="NAME=VALUE", help="a gRPC server option"
    )
    work = parser.add_mutually_exclusive_group()
    work.add_argument("--read-mb", type=float, help="read this much memory in every unary call")
    work.add_argument(
        "--spin-mb", type=float, help="spin in every unary call as long as reading this much takes"
    )
    return parser.parse_args()


def handler_work(args: argparse.Namespace) -> Callable[[], object] | None:
    megabytes = args.read_mb or args.spin_mb
    if not megabytes:
        return None
    read = np.ones(int(megabytes * 2**20) // 8).sum
    if args.read_mb:
        return read
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        read()
        timings.append(time.perf_counter() - started)
    seconds = statistics.median(timings)
    print(f"echo: spinning {seconds * 1e3:.3f} ms per call", file=sys.stderr, flush=True)
    return lambda: spin(seconds)


def spin(seconds: float) -> None:
    """Keep the CPU busy for `seconds`, touching no memory beyond a few cache lines."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def main(args: argparse.Namespace) -> None:
    options: list[tuple[str, str | int]] = [("grpc.so_reuseport", 0)]
    for option in args.option:
        name, value = option.split("=", 1)
        options.append((name, int(value) if value.lstrip("-").isdigit() else value))
    server = grpc.aio.server(options=options)
    target = GenericHandlersOnly(server) if args.generic_handlers_only else server
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(handler_work(args)), target)
    port = server.add_insecure_port(f"127.0.0.1:{args.port}")
    await serve_until_terminated(server, port, models=0)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.uvloop:
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main(arguments))
    else:
        asyncio.run(main(arguments))
