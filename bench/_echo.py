"""The floor: a bare grpc.aio server that answers ModelInfer with its input, and nothing else.

No model, no batching, no validation, no metering: what one Python process spends per unary call
(and per streamed message) is the floor under any Python gRPC inference server on the same core.

    python bench/_echo.py [--port 0] [--generic-handlers-only] [--uvloop] [--option NAME=VALUE]
    # prints "wattserve ready: serving 0 model(s) on HOST:PORT"

By default the service is added the stock way (generated code registers every method). With
`--generic-handlers-only` it is added as wattserve adds its own (`GenericHandlersOnly`), to
measure what that saves per call. With `--uvloop` it runs on uvloop's event loop instead of
asyncio's (what a user would write is asyncio's, the floor `bench/perf.py` uses).

The ready line mimics wattserve's, so `_server.serving` starts and stops either one.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import grpc

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
    async def ModelInfer(self, request: Any, context: Any) -> Any:
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
    return parser.parse_args()


async def main(args: argparse.Namespace) -> None:
    options: list[tuple[str, str | int]] = [("grpc.so_reuseport", 0)]
    for option in args.option:
        name, value = option.split("=", 1)
        options.append((name, int(value) if value.lstrip("-").isdigit() else value))
    server = grpc.aio.server(options=options)
    target = GenericHandlersOnly(server) if args.generic_handlers_only else server
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(Echo(), target)
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
