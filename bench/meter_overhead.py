"""What metering costs: served throughput with the meter on ÷ off, on the dense and the smallest
demo model.

    python bench/meter_overhead.py [--windows 20] [--window-s 1] [--warmup-s 2]

"On" is the default server: usage recorder, codecarbon (offline, in its child process), ledger,
Prometheus endpoint. "Off" is `--metering-enabled false`. To price one part of the meter, give the
"on" server extra flags after `--` (`-- --energy-metering false`), or compare against another
baseline (`--off "--energy-metering false"`); `--off ""` against the default server is an A/A
check of the method itself.

**Method: side by side on one core.** A shared VM's speed drifts by tens of percent within
seconds, far more than the few percent measured here, so measuring "on" and then "off" compares
two different machines. Instead both servers run at the same time, pinned to the same core, each
saturated by its own closed loop (same concurrency, same request) from the other core. Whatever
the machine does to that core in a window, it does to both. A saturated server's throughput on a
core is `1 / (CPU time per request)`, so each window gives one ratio of **requests per CPU-second**
(on ÷ off), with each server's CPU counted in full: all its threads and its child processes (the
meter's energy process). The script prints the median and quartiles of the window ratios, each
server's share of the core, and the raw request-rate ratio for reference (that one also carries
how the kernel happened to share the core between the two).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from _server import ServerProcess, serving

from wattserve.protocol import pb_grpc
from wattserve_client.loadgen import Measurement, Schedule, closed_loop
from wattserve_client.payloads import PayloadShape
from wattserve_client.sweep import Target, build_request

# (model, rows per request): the smallest model is the overhead-bound case.
CASES = (("tabular_classifier", 1), ("dense", 16))


@dataclass(frozen=True, slots=True)
class Contender:
    name: str
    server: ServerProcess
    stub: pb_grpc.GRPCInferenceServiceStub
    request: Any

    async def load(self, args: argparse.Namespace) -> Measurement:
        # A negative margin is never met: the run keeps every window, none pooled away.
        schedule = Schedule(args.warmup_s, args.window_s, args.windows, args.windows, -1.0)
        return await closed_loop(
            self.stub,
            self.request,
            concurrency=args.concurrency,
            schedule=schedule,
            cpu_probes=[self.server.cpu_seconds],
        )


@contextlib.asynccontextmanager
async def contender(
    name: str, extra: tuple[str, ...], case: tuple[str, int], demo_dir: Path, core: int | None
) -> AsyncIterator[Contender]:
    model, rows = case
    async with (
        serving(demo_dir, core, extra) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        target = Target(server.address, model, shape=PayloadShape(rows=rows), seed=rows)
        yield Contender(name, server, stub, await build_request(stub, target))


@dataclass(frozen=True, slots=True)
class Windows:
    """Per window, both servers: requests/s and CPU cores used."""

    on_rate: list[float]
    off_rate: list[float]
    on_cpu: list[float]
    off_cpu: list[float]
    parts: dict[str, dict[str, float]]
    """Median cores per part of each server ("on"/"off" -> loop, python, native, children)."""

    @staticmethod
    def pooled(runs: list[Windows]) -> Windows:
        def joined(field: str) -> list[float]:
            return [value for r in runs for value in getattr(r, field)]

        return Windows(
            on_rate=joined("on_rate"),
            off_rate=joined("off_rate"),
            on_cpu=joined("on_cpu"),
            off_cpu=joined("off_cpu"),
            parts={
                name: {k: statistics.mean(r.parts[name][k] for r in runs) for k in parts}
                for name, parts in runs[0].parts.items()
            },
        )

    def per_cpu_ratios(self) -> list[float]:
        return [
            (on / on_cpu) / (off / off_cpu)
            for on, off, on_cpu, off_cpu in zip(
                self.on_rate, self.off_rate, self.on_cpu, self.off_cpu, strict=True
            )
        ]

    def rate_ratios(self) -> list[float]:
        return [on / off for on, off in zip(self.on_rate, self.off_rate, strict=True)]


async def compare(
    demo_dir: Path, case: tuple[str, int], args: argparse.Namespace, on_first: bool
) -> Windows:
    core = 0 if args.pinned else None
    specs = [("on", tuple(args.on_args)), ("off", tuple(args.off.split()))]
    if not on_first:
        specs.reverse()
    async with (
        contender(*specs[0], case, demo_dir, core) as first,
        contender(*specs[1], case, demo_dir, core) as second,
    ):
        # Started together, the two loads' windows cover the same stretches of time.
        measured = dict(
            zip(
                (first.name, second.name),
                await asyncio.gather(first.load(args), second.load(args)),
                strict=True,
            )
        )
    for name, m in measured.items():
        if m.errors:
            raise RuntimeError(f"{case[0]} {name}: {m.errors} failed calls: {m.error_messages}")
    on, off = measured["on"].windows, measured["off"].windows
    return Windows(
        on_rate=[w.requests_per_s for w in on],
        off_rate=[w.requests_per_s for w in off],
        on_cpu=[w.cpu_cores["server"] for w in on],
        off_cpu=[w.cpu_cores["server"] for w in off],
        parts={name: cpu_parts(m) for name, m in measured.items()},
    )


def cpu_parts(m: Measurement) -> dict[str, float]:
    labels = [k for k in m.windows[0].cpu_cores if k.startswith("server:")]
    return {
        label.removeprefix("server:"): statistics.median(w.cpu_cores[label] for w in m.windows)
        for label in labels
    }


def spread(values: list[float]) -> str:
    quartiles = statistics.quantiles(values, n=4)
    return f"{statistics.median(values):.3f} ({quartiles[0]:.3f} to {quartiles[2]:.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="windows per half (two per model)")
    parser.add_argument("--window-s", type=float, default=1.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32, help="in flight, per server")
    parser.add_argument("--off", default="--metering-enabled false", help="'off' server flags")
    parser.add_argument("--models", default=",".join(c[0] for c in CASES), help="comma-separated")
    parser.add_argument("on_args", nargs="*", help="extra `wattserve serve` flags for 'on'")
    args = parser.parse_args()
    args.pinned = (os.cpu_count() or 1) >= 2
    if args.pinned:
        os.sched_setaffinity(0, {1})
    print(
        f"# meter on ÷ off, side by side on one core: {args.concurrency} in flight each, "
        f"2 x {args.windows} windows of {args.window_s:g} s after {args.warmup_s:g} s; "
        f"servers pinned to core 0: {args.pinned}; "
        f"on = `wattserve serve {' '.join(args.on_args)}`, off = `wattserve serve {args.off}`"
    )
    with tempfile.TemporaryDirectory() as tmp:
        demo_dir = Path(tmp) / "demo"
        print(
            "| model | rows/request | on ÷ off, requests per CPU-second: median (quartiles) "
            "| on req/s | off req/s | on ÷ off, req/s | core share on / off |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for case in (c for c in CASES if c[0] in args.models.split(",")):
            # Two halves, each server first in one: whatever favours the first-started server
            # or the first-scheduled load cancels out.
            halves = [
                asyncio.run(compare(demo_dir, case, args, on_first)) for on_first in (True, False)
            ]
            w = Windows.pooled(halves)
            print(
                f"| {case[0]} | {case[1]} | {spread(w.per_cpu_ratios())} "
                f"| {statistics.median(w.on_rate):.1f} | {statistics.median(w.off_rate):.1f} "
                f"| {spread(w.rate_ratios())} "
                f"| {statistics.median(w.on_cpu):.2f} / {statistics.median(w.off_cpu):.2f} |",
                flush=True,
            )
            for name, parts in w.parts.items():
                where = ", ".join(f"{part} {cores:.3f}" for part, cores in parts.items())
                print(f"#   {case[0]} {name}: cores by part: {where}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
