"""What metering costs: served throughput with the meter on ÷ off, on the dense and the smallest
demo model.

    python bench/meter_overhead.py [--windows 20] [--window-s 1] [--warmup-s 2]

"On" is the default server: usage recorder, codecarbon (offline, in its child process), ledger,
Prometheus endpoint. "Off" is `--metering-enabled false`. To price one part of the meter, give the
"on" server extra flags after `--` (`-- --energy-metering false`), or compare against another
baseline (`--off "--energy-metering false"`); `--off ""` against the default server is an A/A
check of the method itself. `--off` can also name a reference server of bench/ (`_server.py`),
`--off "minimal --model {demo}/tabular_classifier/1/model.onnx --run-on loop"`, to price all of
wattserve against issue 5's simple batching server.

**Method: side by side on one core.** A shared VM's speed drifts by tens of percent within
seconds, far more than the few percent measured here, so measuring "on" and then "off" compares
two different machines. Instead both servers run at the same time, pinned to the same core, each
saturated by its own closed loop (same concurrency, same request) from the other core. Whatever
the machine does to that core in a window, it does to both. Each server's CPU is counted in full
(all its threads, from the scheduler's nanosecond counters, and its child processes: the meter's
energy process), so each 1 s window gives a ratio of **requests per CPU-second** (on ÷ off).
A saturated server's throughput on a core is `1 / (CPU time per request)`.

Side by side, though, each server has half a core and serves half the requests, so a cost that
is fixed per second (the energy process's sampling, the interval timer) weighs twice what it
weighs on a server with the core to itself. So before the load, the script measures each server's
**idle** CPU (`--idle-s`): its fixed cost. The **one-core estimate** then gives each server one
whole core minus its fixed cost, divided by its CPU time per request net of that fixed cost:
`((1 - idle_on) / c_on) / ((1 - idle_off) / c_off)`. The table prints that estimate (the figure to
hold against the target), the plain side-by-side ratio (which overstates fixed costs), the raw
request-rate ratio (which also carries how the kernel shared the core), and where each server's
CPU went.

**The order is balanced.** Whichever server starts second runs about 3% faster than the other,
in A/A runs too (default ÷ default: 0.961 with the "on" copy started first, 1.025 with it second).
So a run has two halves, each server started first in one, and every ratio printed is the
geometric mean of the two halves' medians, followed by those two medians (on first, off first).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shlex
import statistics
import sys
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from _loadgen import request_from_file
from _server import ServerProcess, ServerSpec, steal_counter, steal_since
from serve_vs_ort import build_demo

from wattserve.protocol import pb, pb_grpc
from wattserve_client.loadgen import Measurement, Schedule, closed_loop
from wattserve_client.payloads import PayloadShape
from wattserve_client.sweep import Target, build_request

# (model, rows per request): the smallest model is the overhead-bound case.
CASES = (("tabular_classifier", 1), ("dense", 16))
IDLE_SETTLE_S = 3.0


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

    async def rows_per_batch(self) -> float:
        stats = await self.stub.ModelStatistics(
            pb.ModelStatisticsRequest(name=self.request.model_name), timeout=30
        )
        rows = sum(s.inference_count for s in stats.model_stats)
        return rows / max(1, sum(s.execution_count for s in stats.model_stats))


@contextlib.asynccontextmanager
async def contender(
    name: str, spec: str, case: tuple[str, int], demo_dir: Path, core: int | None
) -> AsyncIterator[Contender]:
    """`spec`: `wattserve serve` flags, or another server (`_server.ServerSpec.parse`)."""
    model, rows = case
    parsed = ServerSpec.parse(spec, demo_dir)
    async with (
        parsed.serving(demo_dir, core) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        target = Target(server.address, model, shape=PayloadShape(rows=rows), seed=rows)
        if parsed.command is None:
            request = await build_request(stub, target)
        else:
            request = request_from_file(demo_dir / model / "1" / "model.onnx", target)
        yield Contender(name, server, stub, request)


@dataclass(frozen=True, slots=True)
class Windows:
    """Per window, both servers: requests/s and CPU cores used."""

    on_rate: list[float]
    off_rate: list[float]
    on_cpu: list[float]
    off_cpu: list[float]
    parts: dict[str, dict[str, float]]
    """Median cores per part of each server ("on"/"off" -> loop, python, native, children)."""
    idle: dict[str, float]
    """Cores each server uses with no traffic: its fixed cost per second."""
    rows_per_batch: dict[str, float]
    """Over the whole run, from each server's ModelStatistics."""

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
            idle={name: statistics.mean(r.idle[name] for r in runs) for name in runs[0].idle},
            rows_per_batch={
                name: statistics.mean(r.rows_per_batch[name] for r in runs)
                for name in runs[0].rows_per_batch
            },
        )

    def per_cpu_ratios(self, *, one_core: bool) -> list[float]:
        """Each window's requests per CPU-second, on ÷ off. With `one_core`, the estimate for a
        server with a core to itself: its fixed cost per second (`idle`) taken off one whole
        core, the rest divided by its CPU time per request net of that fixed cost."""
        on_idle, off_idle = (self.idle["on"], self.idle["off"]) if one_core else (0.0, 0.0)
        return [
            ((1 - on_idle) * on / (on_cpu - on_idle))
            / ((1 - off_idle) * off / (off_cpu - off_idle))
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
    specs = [("on", shlex.join(args.on_args)), ("off", args.off)]
    if not on_first:
        specs.reverse()
    async with (
        contender(*specs[0], case, demo_dir, core) as first,
        contender(*specs[1], case, demo_dir, core) as second,
    ):
        idle = await idle_cores((first, second), args.idle_s)
        # Started together, the two loads' windows cover the same stretches of time.
        measured = dict(
            zip(
                (first.name, second.name),
                await asyncio.gather(first.load(args), second.load(args)),
                strict=True,
            )
        )
        rows_per_batch = {c.name: await c.rows_per_batch() for c in (first, second)}
    for name, m in measured.items():
        if m.errors:
            raise RuntimeError(f"{case[0]} {name}: {m.errors} failed calls: {m.error_messages}")
    # A window in which either server completed nothing or got no CPU (both share one core, and
    # a VM host that steals the core can stall one for a whole window) has no ratio: leave the
    # pair out, and say so.
    pairs = [
        (a, b)
        for a, b in zip(measured["on"].windows, measured["off"].windows, strict=True)
        if a.latencies_ns.size
        and b.latencies_ns.size
        and a.cpu_cores["server"] > 0
        and b.cpu_cores["server"] > 0
    ]
    if len(pairs) < args.windows:
        print(
            f"... {case[0]}: {args.windows - len(pairs)} window(s) without calls", file=sys.stderr
        )
    on, off = [a for a, _ in pairs], [b for _, b in pairs]
    return Windows(
        on_rate=[w.requests_per_s for w in on],
        off_rate=[w.requests_per_s for w in off],
        on_cpu=[w.cpu_cores["server"] for w in on],
        off_cpu=[w.cpu_cores["server"] for w in off],
        parts={name: cpu_parts(m) for name, m in measured.items()},
        idle=idle,
        rows_per_batch=rows_per_batch,
    )


async def idle_cores(contenders: tuple[Contender, ...], seconds: float) -> dict[str, float]:
    """CPU cores each server uses over `seconds` with no traffic (after its start settles)."""
    await asyncio.sleep(IDLE_SETTLE_S)
    before = {c.name: c.server.cpu_seconds()["server"] for c in contenders}
    await asyncio.sleep(seconds)
    return {
        c.name: (c.server.cpu_seconds()["server"] - before[c.name]) / seconds for c in contenders
    }


def cpu_parts(m: Measurement) -> dict[str, float]:
    labels = [k for k in m.windows[0].cpu_cores if k.startswith("server:")]
    return {
        label.removeprefix("server:"): statistics.median(w.cpu_cores[label] for w in m.windows)
        for label in labels
    }


def balanced(halves: list[list[float]], *, bold: bool = False) -> str:
    """The geometric mean of the two halves' median ratios, then each half's median: "on"
    started first in one half and "off" in the other, and whichever server starts second runs
    about 3% faster (an A/A run shows the same), so only the two together are a fair figure."""
    on_first, off_first = (statistics.median(h) for h in halves)
    mean = f"{math.sqrt(on_first * off_first):.3f}"
    return f"{f'**{mean}**' if bold else mean} ({on_first:.3f}, {off_first:.3f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--windows", type=int, default=20, help="windows per half (two per model)")
    parser.add_argument("--window-s", type=float, default=1.0)
    parser.add_argument("--warmup-s", type=float, default=2.0)
    parser.add_argument("--concurrency", type=int, default=32, help="in flight, per server")
    parser.add_argument("--idle-s", type=float, default=10.0, help="to measure fixed costs")
    parser.add_argument("--off", default="--metering-enabled false", help="'off' server flags")
    parser.add_argument("--models", default=",".join(c[0] for c in CASES), help="comma-separated")
    parser.add_argument("on_args", nargs="*", help="extra `wattserve serve` flags for 'on'")
    args = parser.parse_args()
    unknown = set(args.models.split(",")) - {c[0] for c in CASES}
    if unknown:
        parser.error(f"--models: no case for {sorted(unknown)}; cases: {[c[0] for c in CASES]}")
    args.pinned = (os.cpu_count() or 1) >= 2
    if args.pinned:
        os.sched_setaffinity(0, {1})
    print(
        f"# meter on ÷ off, side by side on one core: {args.concurrency} in flight each, "
        f"2 x {args.windows} windows of {args.window_s:g} s after {args.warmup_s:g} s; "
        f"servers pinned to core 0: {args.pinned}; "
        f"on = `wattserve serve {' '.join(args.on_args)}`, off = `wattserve serve {args.off}`; "
        "each ratio: geometric mean of the two halves' medians (on started first, off first)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        demo_dir = Path(tmp) / "demo"
        build_demo(demo_dir)  # before the servers: a reference server may start first
        print(
            "| model | rows/request | **on ÷ off, one core** (estimate) "
            "| on ÷ off, requests per CPU-second, side by side | on ÷ off, req/s side by side "
            "| on / off req/s | on / off cores | on / off idle cores | on / off rows per batch |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for case in (c for c in CASES if c[0] in args.models.split(",")):
            # Two halves, each server first in one: whatever favours the first-started server
            # or the first-scheduled load cancels out.
            steal_start = steal_counter()
            halves = [
                asyncio.run(compare(demo_dir, case, args, on_first)) for on_first in (True, False)
            ]
            w = Windows.pooled(halves)
            steal = steal_since(steal_start)
            print(
                f"| {case[0]} | {case[1]} "
                f"| {balanced([h.per_cpu_ratios(one_core=True) for h in halves], bold=True)} "
                f"| {balanced([h.per_cpu_ratios(one_core=False) for h in halves])} "
                f"| {balanced([h.rate_ratios() for h in halves])} "
                f"| {statistics.median(w.on_rate):.1f} / {statistics.median(w.off_rate):.1f} "
                f"| {statistics.median(w.on_cpu):.3f} / {statistics.median(w.off_cpu):.3f} "
                f"| {w.idle['on']:.4f} / {w.idle['off']:.4f} "
                f"| {w.rows_per_batch['on']:.2f} / {w.rows_per_batch['off']:.2f} |",
                flush=True,
            )
            for name, parts in w.parts.items():
                where = ", ".join(f"{part} {cores:.3f}" for part, cores in parts.items())
                print(f"#   {case[0]} {name}: cores by part under load: {where}", flush=True)
            print(
                f"#   {case[0]}: {len(w.on_rate)} windows; the VM host stole {steal:.1%} of the "
                "machine's CPU meanwhile (above a few percent, run again)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
