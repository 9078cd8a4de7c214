"""wattserve's own work per request, without gRPC: the inference servicer called in process.

    python bench/request_path.py [--requests 20000] [--rounds 3] [--model tabular_classifier]

It starts the real server in this process (the demo repository, meter on, on the event loop
`wattserve serve` runs by default, uvloop where installed, with its load gauge) and pins itself
to one core. Then, in alternating rounds, it sends the same serialised request through three
handlers, 1 and then 128 at a time (`--in-flight`):

- **wattserve**: parse, `InferenceServicer.ModelInfer` (decode, validate, batch, run ONNX
  Runtime, encode, meter), serialise;
- **echo**: parse, the echo floor's handler (`_echo.py`), serialise;
- **minimal**: parse, issue 5's minimal batching server (`_minimal.py`: merge what is queued,
  run ONNX Runtime, split, no validation, no meter), without its window and on the loop, so
  that it does only the work a batching server cannot skip; serialise.

It prints CPU µs per request for each and the differences: what wattserve adds per request on
top of the work any server does, and on top of the least a batching server does. Read the
rows per batch too: in process, 128 callers queue all at once, so the minimal server merges
nearly all of them, where gRPC would hand it a few per turn of the loop. In a server, gRPC's
own per-call cost (about 370 µs on the VM of BENCHMARKS.md) comes on top of all three. Figures
are medians of the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import _minimal
import grpc
from _echo import Echo
from serve_vs_ort import machine_facts, pin_process

from wattserve.app import App
from wattserve.batching.loop_load import new_event_loop
from wattserve.demo import ensure_demo_repository
from wattserve.grpc.servicer import InferenceServicer
from wattserve.protocol import pb, pb_grpc
from wattserve.settings import ServeSettings
from wattserve_client.payloads import PayloadShape
from wattserve_client.sweep import Target, build_request

Handler = Callable[[Any, Any], Awaitable[Any]]


class Context:
    """What the servicer asks of a gRPC call's context: no metadata, no deadline."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None


async def cpu_per_request(handler: Handler, data: bytes, requests: int, in_flight: int) -> float:
    """CPU µs per request with `in_flight` callers, each yielding to the loop between requests
    as a server's handlers do."""
    context, left = Context(), requests

    async def caller() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            response = await handler(pb.ModelInferRequest.FromString(data), context)
            response.SerializeToString()
            await asyncio.sleep(0)

    started = time.process_time_ns()
    await asyncio.gather(*(caller() for _ in range(in_flight)))
    return (time.process_time_ns() - started) / requests / 1e3


async def measure(args: argparse.Namespace, scratch: Path) -> dict[tuple[str, int], list[float]]:
    settings = ServeSettings(
        repository=ensure_demo_repository(scratch / "demo"),
        host="127.0.0.1",
        port=0,
        metrics_enabled=False,
        ledger_path=scratch / "ledger.sqlite",
    )
    app = App(settings)
    await app.start()
    gc.collect()  # as `wattserve serve` does once its models are loaded (docs/performance.md)
    gc.freeze()
    try:
        address = f"127.0.0.1:{app.port}"
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            target = Target(address, args.model, shape=PayloadShape(rows=args.rows))
            data = (await build_request(stub, target)).SerializeToString()
        minimal = _minimal.Batching(
            _minimal.load_session(Path(settings.repository) / args.model / "1" / "model.onnx"),
            delay_s=0.0,
            on_thread=False,
        )
        handlers: dict[str, Handler] = {
            "wattserve": InferenceServicer(app.dataplane).ModelInfer,
            "echo": Echo().ModelInfer,
            "minimal": minimal.ModelInfer,
        }
        model_stats = app.dataplane.model(args.model).statistics
        found: dict[tuple[str, int], list[float]] = {}
        for handler in handlers.values():  # warm-up
            await cpu_per_request(handler, data, 2000, max(args.in_flight))
        for round_ in range(args.rounds):
            order = list(handlers.items())
            for name, handler in order if round_ % 2 == 0 else order[::-1]:
                for in_flight in args.in_flight:
                    rows, batches = model_stats.inference_count, model_stats.execution_count
                    least_rows, least_batches = minimal.rows_run, minimal.batches_run
                    us = await cpu_per_request(handler, data, args.requests, in_flight)
                    found.setdefault((name, in_flight), []).append(us)
                    if name == "wattserve":
                        per_batch = (model_stats.inference_count - rows) / (
                            model_stats.execution_count - batches
                        )
                        found.setdefault(("rows per batch", in_flight), []).append(per_batch)
                    if name == "minimal":
                        per_batch = (minimal.rows_run - least_rows) / (
                            minimal.batches_run - least_batches
                        )
                        found.setdefault(("minimal rows per batch", in_flight), []).append(
                            per_batch
                        )
        return found
    finally:
        await app.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000, help="per point and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", default="tabular_classifier")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--in-flight", default="1,128", help="callers at a time, comma-separated")
    args = parser.parse_args(argv)
    args.in_flight = [int(n) for n in args.in_flight.split(",")]
    facts = machine_facts()
    print(f"# bench/request_path.py, {facts['date']}: {facts['cpu']}, pinned to core 0")
    print(f"# {args.model}, {args.rows} row(s) per request, {args.requests} requests per point\n")
    pin_process({0})
    with (
        tempfile.TemporaryDirectory(prefix="wattserve-path-") as tmp,
        asyncio.Runner(loop_factory=lambda: new_event_loop("auto")) as runner,
    ):
        found = runner.run(measure(args, Path(tmp)))
    print(
        "| in flight | wattserve µs/req | echo µs/req | minimal µs/req | wattserve - echo "
        "| wattserve - minimal | rows per batch: wattserve, minimal |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for in_flight in args.in_flight:
        ours, echo, least, rows, least_rows = (
            statistics.median(found[(name, in_flight)])
            for name in ("wattserve", "echo", "minimal", "rows per batch", "minimal rows per batch")
        )
        print(
            f"| {in_flight} | {ours:.1f} | {echo:.1f} | {least:.1f} | {ours - echo:+.1f} "
            f"| {ours - least:+.1f} | {rows:.1f}, {least_rows:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
