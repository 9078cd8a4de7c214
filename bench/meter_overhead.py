"""What metering costs: served throughput with the meter on ÷ off, on the dense and the smallest
demo model, server and load generator pinned to different cores.

    python bench/meter_overhead.py [--duration-s 10] [--warmup-s 3] [--rounds 2]

"On" is the default server: usage recorder, codecarbon (offline), ledger, Prometheus endpoint.
"Off" is `--metering-enabled false`. On and off alternate so that slow drift of a shared machine
hits both alike; the ratio uses the mean of each. A second ratio compares the server's CPU time per
request (off ÷ on), which a VM host's steal and drifting clock speed disturb far less than
throughput: on a saturated core it is what throughput would be if nothing else moved.
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
) -> tuple[float, float]:
    """(requests/s, server CPU µs per request) over one window."""
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
            cpu_probes=[server.cpu_seconds],
        )
    cpu_us = result.cpu_cores["server"] / result.requests_per_s * 1e6
    return result.requests_per_s, cpu_us


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=10.0)
    parser.add_argument("--warmup-s", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="on/off pairs per model")
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
        print(
            "| model | rows/request | on req/s | off req/s | on ÷ off (throughput) "
            "| on CPU µs/req | off CPU µs/req | off ÷ on (CPU per request) |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for case in CASES:
            runs: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
            for _ in range(args.rounds):
                for mode in ("on", "off"):
                    rate, cpu_us = asyncio.run(measure(demo_dir, case, mode, args))
                    runs[mode].append((rate, cpu_us))
                    print(
                        f"... {case[0]} {mode}: {rate:.1f} req/s, {cpu_us:.0f} µs CPU/req",
                        file=sys.stderr,
                    )
            on = statistics.mean(r for r, _ in runs["on"])
            off = statistics.mean(r for r, _ in runs["off"])
            on_cpu = statistics.mean(c for _, c in runs["on"])
            off_cpu = statistics.mean(c for _, c in runs["off"])
            print(
                f"| {case[0]} | {case[3]} | {on:.1f} | {off:.1f} | {on / off:.3f} "
                f"| {on_cpu:.0f} | {off_cpu:.0f} | {off_cpu / on_cpu:.3f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
