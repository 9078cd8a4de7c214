"""What metering costs: served throughput with the meter on ÷ off, on the dense and the smallest
demo model, server and load generator pinned to different cores.

    python bench/meter_overhead.py [--duration-s 10] [--warmup-s 3] [--rounds 2]

"On" is the default server: usage recorder, codecarbon (offline), ledger, Prometheus endpoint.
"Off" is `--metering-enabled false`. On and off alternate so that slow drift of a shared machine
hits both alike; the ratio uses the mean of each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import grpc
from _loadgen import fp32_request, run_closed_loop
from _server import serving

from wattserve.protocol import pb_grpc

# (model, input, width, rows per request): the smallest model is the overhead-bound case.
CASES = (("tabular_classifier", "features", 30, 1), ("dense", "input", 512, 16))
MODES = {"on": (), "off": ("--metering-enabled", "false")}


async def measure(
    demo_dir: Path, case: tuple[str, str, int, int], mode: str, args: argparse.Namespace
) -> float:
    model, input_name, width, rows = case
    core = 0 if args.pinned else None
    async with (
        serving(demo_dir, core, MODES[mode]) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = fp32_request(model, input_name, rows, width, seed=rows)
        first = await stub.ModelInfer(request, timeout=30)
        if not first.raw_output_contents:
            raise RuntimeError(f"{model} answered without outputs")
        result = await run_closed_loop(
            stub,
            request,
            concurrency=args.concurrency,
            warmup_s=args.warmup_s,
            duration_s=args.duration_s,
            cpu_probes=[],
        )
    return result.requests_per_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=2, help="on/off pairs per model")
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    args.pinned = (os.cpu_count() or 1) >= 2
    if args.pinned:
        os.sched_setaffinity(0, {1})
    print(
        f"# meter on ÷ off, {args.concurrency} in flight, {args.rounds} rounds of "
        f"{args.warmup_s:g} s + {args.duration_s:g} s; server pinned: {args.pinned}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        demo_dir = Path(tmp) / "demo"
        print("| model | rows/request | on req/s | off req/s | on ÷ off |")
        print("|---|---:|---:|---:|---:|")
        for case in CASES:
            runs: dict[str, list[float]] = {"on": [], "off": []}
            for _ in range(args.rounds):
                for mode in ("on", "off"):
                    runs[mode].append(asyncio.run(measure(demo_dir, case, mode, args)))
                    print(f"... {case[0]} {mode}: {runs[mode][-1]:.1f} req/s", file=sys.stderr)
            on, off = statistics.mean(runs["on"]), statistics.mean(runs["off"])
            print(f"| {case[0]} | {case[3]} | {on:.1f} | {off:.1f} | {on / off:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
