"""What metering costs: served throughput with the meter on ÷ off, on the dense and the smallest
demo model, server and load generator pinned to different cores.

    python bench/meter_overhead.py [--pairs 12] [--window-s 2] [--warmup-s 0.5]

"On" is the default server: usage recorder, codecarbon (offline), ledger, Prometheus endpoint.
"Off" is `--metering-enabled false`. To price one part of the meter, give the "on" server extra
flags after `--` (`-- --energy-metering false`), or compare against another baseline
(`--off "--energy-metering false"`).

A shared VM drifts by tens of percent over minutes, more than the few percent measured here. So
both servers run at once on the same core and take turns in short windows: while one is measured,
the other is frozen (SIGSTOP, with its child processes), so that neither its event loop nor its
meter runs on the core meanwhile. Server CPU time includes its child processes (the meter's
energy process). A frozen meter catches up on its measurements as soon as it is thawed, inside its
own window, so the "on" windows carry at least their share of the meter's work. Each on/off pair
of adjacent windows gives one ratio; the script prints the median and the spread of those ratios,
for throughput and for the server's CPU time per request (off ÷ on).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
from _loadgen import fp32_request, run_closed_loop
from _server import ServerProcess, serving

from wattserve.protocol import pb, pb_grpc

# (model, input, width, rows per request): the smallest model is the overhead-bound case.
CASES = (("tabular_classifier", "features", 30, 1), ("dense", "input", 512, 16))


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    server: ServerProcess
    stub: pb_grpc.GRPCInferenceServiceStub

    def freeze(self) -> None:
        self.server.signal_tree(signal.SIGSTOP)

    def thaw(self) -> None:
        self.server.signal_tree(signal.SIGCONT)

    async def measure(
        self, request: pb.ModelInferRequest, args: argparse.Namespace
    ) -> tuple[float, float]:
        """(requests/s, server CPU µs per request) over one window."""
        result = await run_closed_loop(
            self.stub,
            request,
            concurrency=args.concurrency,
            warmup_s=args.warmup_s,
            duration_s=args.window_s,
            cpu_probes=[self.server.cpu_seconds],
        )
        return result.requests_per_s, result.cpu_cores["server"] / result.requests_per_s * 1e6


@contextlib.asynccontextmanager
async def contender(
    name: str, demo_dir: Path, core: int | None, extra: tuple[str, ...]
) -> AsyncIterator[Contender]:
    async with (
        serving(demo_dir, core, extra) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        try:
            yield Contender(name, server, pb_grpc.GRPCInferenceServiceStub(channel))
        finally:
            # A frozen server ignores SIGTERM until thawed: always leave it running.
            server.signal_tree(signal.SIGCONT)


async def compare(
    demo_dir: Path, case: tuple[str, str, int, int], args: argparse.Namespace
) -> dict[str, list[tuple[float, float]]]:
    model, input_name, width, rows = case
    core = 0 if args.pinned else None
    request = fp32_request(model, input_name, rows, width, seed=rows)
    async with (
        contender("on", demo_dir, core, tuple(args.on_args)) as on,
        contender("off", demo_dir, core, tuple(args.off.split())) as off,
    ):
        for c in (on, off):  # both answer before anything is measured
            if not (await c.stub.ModelInfer(request, timeout=30)).raw_output_contents:
                raise RuntimeError(f"{model} answered without outputs")
        runs: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
        for pair in range(args.pairs):
            # Alternate which goes first, so neither always follows the other.
            order = (on, off) if pair % 2 == 0 else (off, on)
            for current, other in (order, order[::-1]):
                other.freeze()
                current.thaw()
                rate, cpu_us = await current.measure(request, args)
                runs[current.name].append((rate, cpu_us))
                print(
                    f"... {model} {current.name}: {rate:.1f} req/s, {cpu_us:.0f} µs CPU/req",
                    file=sys.stderr,
                )
        on.thaw()
        off.thaw()
    return runs


def spread(values: list[float]) -> str:
    quartiles = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.3f} ({quartiles[0]:.3f} to {quartiles[2]:.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=12, help="on/off window pairs per model")
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--warmup-s", type=float, default=0.5, help="before each window")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--off", default="--metering-enabled false", help="'off' server flags")
    parser.add_argument("--models", default=",".join(c[0] for c in CASES), help="comma-separated")
    parser.add_argument("on_args", nargs="*", help="extra `wattserve serve` flags for 'on'")
    args = parser.parse_args()
    args.pinned = (os.cpu_count() or 1) >= 2
    if args.pinned:
        os.sched_setaffinity(0, {1})
    print(
        f"# meter on ÷ off, {args.concurrency} in flight, {args.pairs} pairs of "
        f"{args.warmup_s:g} s + {args.window_s:g} s windows; server pinned: {args.pinned}; "
        f"on = `wattserve serve {' '.join(args.on_args)}`, off = `wattserve serve {args.off}`"
    )
    with tempfile.TemporaryDirectory() as tmp:
        demo_dir = Path(tmp) / "demo"
        print(
            "| model | rows/request | on req/s | off req/s | on ÷ off, throughput: median "
            "(quartiles) | on CPU µs/req | off CPU µs/req | off ÷ on, CPU per request |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|")
        for case in (c for c in CASES if c[0] in args.models.split(",")):
            runs = asyncio.run(compare(demo_dir, case, args))
            pairs = list(zip(runs["on"], runs["off"], strict=True))
            rate_ratios = [on[0] / off[0] for on, off in pairs]
            cpu_ratios = [off[1] / on[1] for on, off in pairs]
            print(
                f"| {case[0]} | {case[3]} "
                f"| {statistics.median(r for r, _ in runs['on']):.1f} "
                f"| {statistics.median(r for r, _ in runs['off']):.1f} "
                f"| {spread(rate_ratios)} "
                f"| {statistics.median(c for _, c in runs['on']):.0f} "
                f"| {statistics.median(c for _, c in runs['off']):.0f} "
                f"| {spread(cpu_ratios)} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
