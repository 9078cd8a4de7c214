"""wattserve against its floor and its ceiling, on one core: the performance targets in one command.

    python bench/perf.py [--concurrency 1,8,32,128] [--window-s 2] [--json results.json]

- **Ceiling**: in-process ONNX Runtime on the server core (1 intra-op thread, the server's session
  options), per model and batch size (`_ort.py`).
- **Floor**: a bare grpc.aio server answering ModelInfer with its input (`_echo.py`): what one
  Python process spends per unary call, with no model, batching or metering. Its ModelStreamInfer
  echoes too, for the streaming floor.
- **The minimal batching server** of issue 5 (`_minimal.py`): grpc.aio, a queue, a fixed 1 ms
  window, one model; wattserve must be at least as fast everywhere and far better at low load.
  It takes part in the paired rounds only.
- **wattserve**: `wattserve serve` with the default settings (meter on) on the demo models and a
  heavy CNN built here (`_heavy.py`, ≥ 30 ms per sample).

Every server runs pinned to `--server-core`, and the closed-loop load generator (the sweep's,
`wattserve_client.loadgen`) in this process on `--client-core`. Each point pools the last 3
stable windows (up to `--max-windows`). The tables print requests/s, samples/s, p50/p99, the
server's and the load generator's CPU (a load generator near 1.0 core is the limit, not the
server), rows per executed batch, and then each target of issue 5 with its ratio.

**The verdicts come from paired rounds** (`_paired.py`). A shared VM drifts by tens of percent
within minutes, so a ratio of two sweep points measured minutes apart is printed for reference
only. After the sweep, each target is measured again in `--rounds` rounds, its two sides
(wattserve and echo, wattserve and the minimal server, wattserve and in-process ONNX Runtime,
stream and unary; and the dense model on 16 streams against the unary echo floor, a way past
that floor rather than issue 5's unary target) back to back, the first side alternating between
rounds; every round's ratio is printed, and the verdict is on their median. Every server stays
up for the whole run, pinned to the same core; those not being measured are frozen (SIGSTOP,
with their child processes), and all are frozen while ONNX Runtime runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import _heavy
import _ort
import grpc
import psutil
from _loadgen import batch_counts
from _paired import Rounds, Side, alternate, frozen
from _server import REFERENCE_SERVERS, ServerProcess, serving, steal_counter, steal_since
from serve_vs_ort import machine_facts, pin_process

from wattserve.protocol import pb_grpc
from wattserve_client._request import CHANNEL_OPTIONS
from wattserve_client.loadgen import Measurement, Schedule, closed_loop
from wattserve_client.payloads import PayloadShape
from wattserve_client.sweep import Target, build_request

HEAVY_WINDOWS = 4
"""The heavy model's paired windows are this many times longer: its batches of 4-8 rows end only
a few times a second, so a 2 s window would count one batch more or less (±13%)."""


@dataclass(frozen=True, slots=True)
class Case:
    label: str
    model: str
    rows: int
    concurrencies: tuple[int, ...]
    streams: int = 0
    """ModelStreamInfer streams sharing the requests in flight; 0: unary calls."""


@dataclass(frozen=True, slots=True)
class Point:
    server: str
    """"wattserve" or "echo"."""
    case: Case
    concurrency: int
    measurement: Measurement
    rows_per_batch: float | None

    @property
    def requests_per_s(self) -> float:
        return self.measurement.requests_per_s

    def as_json(self) -> dict[str, Any]:
        p50, p99 = self.measurement.latencies_ms([50, 99])
        return {
            "server": self.server,
            "case": self.case.label,
            "model": self.case.model,
            "rows": self.case.rows,
            "streams": self.case.streams,
            "concurrency": self.concurrency,
            "requests_per_s": self.requests_per_s,
            "samples_per_s": self.requests_per_s * self.case.rows,
            "p50_ms": p50,
            "p99_ms": p99,
            "errors": self.measurement.errors,
            "stable": self.measurement.stable,
            "server_cores": self.measurement.cpu_cores("server"),
            "client_cores": self.measurement.cpu_cores("client"),
            "rows_per_batch": self.rows_per_batch,
        }


def cases(concurrencies: tuple[int, ...]) -> list[Case]:
    return [
        Case("tabular 1 row", "tabular_classifier", 1, concurrencies),
        Case("tabular 1 row, stream", "tabular_classifier", 1, (32, 128), streams=1),
        Case("tabular 1 row, 16 streams", "tabular_classifier", 1, (32, 128), streams=16),
        Case("dense 1 row", "dense", 1, concurrencies),
        Case("dense 1 row, 16 streams", "dense", 1, (32, 128), streams=16),
        Case("dense 16 rows", "dense", 16, concurrencies),
        Case("heavy 1 row", _heavy.NAME, 1, (1, 8, 16)),
    ]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", default="1,8,32,128", help="in flight, comma-separated")
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--max-windows", type=int, default=6)
    parser.add_argument("--ort-s", type=float, default=3.0, help="ONNX Runtime time per batch size")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--cases", default="", help="only the cases whose label contains this")
    parser.add_argument(
        "--rounds", type=int, default=4, help="paired rounds per target (the verdicts' figures)"
    )
    parser.add_argument("--pair-window-s", type=float, default=2.0, help="one side of a round")
    parser.add_argument("--json", type=Path, default=None, help="also write every point here")
    parser.add_argument(
        "--run-on",
        choices=("thread", "loop", "auto"),
        default=None,
        help="set run_on in every model's config.toml (default: each model's own setting)",
    )
    args = parser.parse_args(argv)
    args.concurrencies = tuple(int(c) for c in args.concurrency.split(","))
    if len(os.sched_getaffinity(0)) < 2:
        args.server_core = args.client_core = None
    return args


def build_repository(root: Path, run_on: str | None = None) -> Path:
    """The demo models (built by the server's own command) and the heavy CNN, in one folder."""
    demo = root / "demo"
    subprocess.run(
        [sys.executable, "-m", "wattserve", "demo", "--demo-dir", str(demo)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    repository = root / "repository"
    repository.mkdir()
    for model in ("tabular_classifier", "dense"):
        shutil.copytree(demo / model, repository / model)
    _heavy.write(repository)
    if run_on is not None:
        for config in repository.glob("*/config.toml"):
            text = re.sub(r"(?m)^run_on = .*\n", "", config.read_text())
            config.write_text(f'run_on = "{run_on}"\n' + text)
    return repository


def probes(server: ServerProcess) -> list[Any]:
    me = psutil.Process()

    def client() -> dict[str, float]:
        times = me.cpu_times()
        return {"client": times.user + times.system}

    return [lambda: {"server": server.cpu_seconds()["server"]}, client]


async def measure(
    server: ServerProcess,
    name: str,
    requests: dict[str, Any],
    selected: list[Case],
    args: argparse.Namespace,
) -> list[Point]:
    """Every case's concurrencies against one running server."""
    schedule = Schedule(
        args.warmup_s, args.window_s, min(3, args.max_windows), args.max_windows, 0.10
    )
    points = []
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for case in selected:
            for concurrency in case.concurrencies:
                before = await batch_counts(stub, case.model) if name == "wattserve" else None
                measurement = await closed_loop(
                    stub,
                    requests[case.label],
                    concurrency=concurrency,
                    schedule=schedule,
                    streams=case.streams,
                    cpu_probes=probes(server),
                )
                rows_per_batch = None
                if before is not None:
                    rows, batches = await batch_counts(stub, case.model)
                    if batches > before[1]:
                        rows_per_batch = (rows - before[0]) / (batches - before[1])
                point = Point(name, case, concurrency, measurement, rows_per_batch)
                print_point(point)
                points.append(point)
    return points


async def build_requests(server: ServerProcess, selected: list[Case]) -> dict[str, Any]:
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        return {
            case.label: await build_request(
                stub, Target(server.address, case.model, shape=PayloadShape(rows=case.rows))
            )
            for case in selected
        }


FAR_BETTER_MS = 0.5
"""How much lower wattserve's p50 must be than the minimal server's with one request in flight:
the minimal server waits out its 1 ms window for every batch; wattserve runs a lone request at
once. Half of that window is the margin asked for here."""
MINIMAL_RUN_ON = {"tabular_classifier": "loop", "dense": "thread"}
"""Where issue 5's minimal server runs each model: the faster place for it (bench/ab.py: on the
loop the tabular model served 1.12 times what it served with a thread)."""


async def run_servers(
    repository: Path,
    selected: list[Case],
    ort: dict[str, list[_ort.OrtPoint]],
    args: argparse.Namespace,
) -> tuple[list[Point], list[Paired]]:
    """The sweep of each server, then the paired rounds. Every server stays up throughout; those
    not being measured are frozen (`_paired.frozen`). The minimal batching servers (one per
    model) take part in the paired rounds only."""
    wattserve = ["--repository", str(repository)]
    echo_cases = [c for c in selected if c.model != _heavy.NAME and c.rows == 1]
    core = args.server_core
    async with contextlib.AsyncExitStack() as stack:
        served = await stack.enter_async_context(serving(repository.parent, core, wattserve))
        echo_command = [sys.executable, str(REFERENCE_SERVERS["echo"])]
        echo = await stack.enter_async_context(
            serving(repository.parent, core, command=echo_command)
        )
        references = {"echo": echo}
        for model, run_on in MINIMAL_RUN_ON.items():
            if any(c.model == model for c in selected):
                command = [sys.executable, str(REFERENCE_SERVERS["minimal"]), "--run-on", run_on]
                command += ["--model", str(repository / model / "1" / "model.onnx")]
                references[f"minimal {model}"] = await stack.enter_async_context(
                    serving(repository.parent, core, command=command)
                )
        requests = await build_requests(served, selected)
        with frozen(*references.values()):
            points = await measure(served, "wattserve", requests, selected, args)
        with frozen(served, *(r for name, r in references.items() if name != "echo")):
            points += await measure(echo, "echo", requests, echo_cases, args)
        print("... paired rounds", file=sys.stderr, flush=True)
        paired = await measure_pairs(
            {"wattserve": served, **references}, requests, points, ort, repository, args
        )
    return points, paired


@dataclass(frozen=True, slots=True)
class Paired:
    """One target measured in paired rounds: A against B, back to back (`_paired`)."""

    name: str
    rounds: Rounds
    goal: float
    latency: bool = False
    """False: A ÷ B must reach the goal. True: A - B (ms) must stay within it."""

    def value(self, a: float, b: float) -> float:
        return a - b if self.latency else a / b

    @property
    def median(self) -> float:
        return self.rounds.median(self.value)

    @property
    def met(self) -> bool:
        return self.median <= self.goal if self.latency else self.median >= self.goal

    def row(self) -> tuple[str, ...]:
        each = [self.value(a, b) for a, b in self.rounds.pairs]
        if self.latency:
            shown = f"{self.median:+.3f} ms", ", ".join(f"{v:+.2f}" for v in each)
            goal = f"≤ {self.goal:+.3f} ms"
        else:
            shown = f"{self.median:.3f}", ", ".join(f"{v:.2f}" for v in each)
            goal = f"≥ {self.goal}"
        return (self.name, *shown, goal, "met" if self.met else "missed")

    def as_json(self) -> dict[str, Any]:
        return {
            "target": self.name,
            "pairs": self.rounds.pairs,
            "median": self.median,
            "goal": self.goal,
            "met": self.met,
        }


async def measure_pairs(
    servers: dict[str, ServerProcess],
    requests: dict[str, Any],
    points: list[Point],
    ort: dict[str, list[_ort.OrtPoint]],
    repository: Path,
    args: argparse.Namespace,
) -> list[Paired]:
    """Each target of the sweep again, its two sides measured back to back in `--rounds`
    rounds: served against echo, against the minimal batching server and against in-process
    ONNX Runtime, stream against unary. `servers`: "wattserve", "echo", "minimal <model>"."""
    labels = {p.case.label: p.case for p in points}
    top = max(args.concurrencies)
    paired: list[Paired] = []
    print(f"\n## Targets (issue 5), paired rounds: the verdicts ({args.rounds} rounds each)\n")
    print("| target | median | each round | goal | |\n|---|---:|---|---:|---|")
    async with contextlib.AsyncExitStack() as stack:
        stubs = {}
        for name, server in servers.items():
            channel = grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS)
            await stack.enter_async_context(channel)
            stubs[name] = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]

        def others(name: str) -> list[ServerProcess]:
            return [server for other, server in servers.items() if other != name]

        def load(server: str, label: str, concurrency: int, p50: bool = False) -> Side:
            """Samples/s (or the p50 in ms) of one closed-loop window, the other servers frozen."""
            stub = stubs[server]
            case = labels[label]
            window_s = args.pair_window_s * (HEAVY_WINDOWS if case.model == _heavy.NAME else 1)
            schedule = Schedule(args.warmup_s, window_s, 1, 1, -1.0)

            async def side() -> float:
                with frozen(*others(server)):
                    m = await closed_loop(
                        stub,
                        requests[label],
                        concurrency=concurrency,
                        schedule=schedule,
                        streams=case.streams,
                    )
                return m.latency_ms(50) if p50 else m.requests_per_s * case.rows

            return side

        def ceiling(model: str) -> Side:
            """In-process ONNX Runtime at the batch size that did best in the first table."""
            batch = _ort.best(ort[model]).batch
            factor = HEAVY_WINDOWS if model == _heavy.NAME else 1

            async def side() -> float:
                with frozen(*servers.values()):
                    (point,) = await asyncio.to_thread(
                        _ort.measure_in_child,
                        repository / model / "1" / "model.onnx",
                        core=args.server_core,
                        batch_sizes=(batch,),
                        warmup_s=min(1.0, args.ort_s),
                        duration_s=args.pair_window_s * factor,
                    )
                return point.samples_per_s

            return side

        async def pair(name: str, a: Side, b: Side, goal: float, latency: bool = False) -> None:
            found = Paired(name, await alternate(a, b, args.rounds), goal, latency)
            print("| " + " | ".join(found.row()) + " |", flush=True)
            paired.append(found)

        def best(label: str) -> int:
            return max(
                (p for p in points if p.server == "wattserve" and p.case.label == label),
                key=lambda p: p.requests_per_s,
            ).concurrency

        echoed = {p.case.label for p in points if p.server == "echo"}
        for label, goal in (("tabular 1 row", 0.9), ("dense 1 row", 0.8)):
            if label in echoed and top in labels[label].concurrencies:
                a, b = load("wattserve", label, top), load("echo", label, top)
                await pair(f"{label}, {top} in flight ÷ echo floor (req/s)", a, b, goal)
        # Past the unary floor: the dense model streamed, against the same unary floor.
        streamed = "dense 1 row, 16 streams"
        if {streamed, "dense 1 row"} <= echoed and top in labels[streamed].concurrencies:
            a, b = load("wattserve", streamed, top), load("echo", "dense 1 row", top)
            await pair(f"{streamed}, {top} in flight ÷ unary echo floor (req/s)", a, b, 0.8)
        if "dense 16 rows" in labels and "dense" in ort:
            a, b = load("wattserve", "dense 16 rows", top), ceiling("dense")
            await pair(f"dense 16 rows, {top} in flight ÷ ORT ceiling (samples/s)", a, b, 0.85)
        heavy = [label for label, case in labels.items() if case.model == _heavy.NAME]
        if heavy and _heavy.NAME in ort:
            concurrency = best(heavy[0])
            a, b = load("wattserve", heavy[0], concurrency), ceiling(_heavy.NAME)
            await pair(f"heavy, {concurrency} in flight ÷ ORT ceiling (samples/s)", a, b, 0.97)
        for stream in (label for label, case in labels.items() if case.streams):
            if not stream.startswith("tabular 1 row, ") or "tabular 1 row" not in labels:
                continue
            a, b = (
                load("wattserve", stream, best(stream)),
                load("wattserve", "tabular 1 row", best("tabular 1 row")),
            )
            name = f"{stream.removeprefix('tabular 1 row, ')} ÷ unary, best in flight of each"
            await pair(f"tabular {name} (req/s)", a, b, 2.0)
        for label, model in (("tabular 1 row", "tabular_classifier"), ("dense 1 row", "dense")):
            if label in echoed and 1 in labels[label].concurrencies and model in ort:
                batch1 = next(p for p in ort[model] if p.batch == 1).ms_per_batch
                a, b = load("wattserve", label, 1, p50=True), load("echo", label, 1, p50=True)
                name = f"{label}, 1 in flight: p50 - echo p50 ≤ ORT batch-1 + 0.25 ms"
                await pair(name, a, b, batch1 + 0.25, latency=True)
        # "At least as fast as that minimal server everywhere, far better at low load."
        for label in ("tabular 1 row", "dense 1 row", "dense 16 rows"):
            minimal = f"minimal {labels[label].model}" if label in labels else ""
            if minimal not in servers:
                continue
            if top in labels[label].concurrencies:
                a, b = load("wattserve", label, top), load(minimal, label, top)
                await pair(f"{label}, {top} in flight ÷ minimal batching server", a, b, 1.0)
            if labels[label].rows == 1 and 1 in labels[label].concurrencies:
                a, b = load("wattserve", label, 1, p50=True), load(minimal, label, 1, p50=True)
                name = f"{label}, 1 in flight: p50 - minimal server p50 ≤ -{FAR_BETTER_MS} ms"
                await pair(name, a, b, -FAR_BETTER_MS, latency=True)
    return paired


ORT_BATCHES = {
    "tabular_classifier": (1,),
    "dense": (1, 16, 32, 64, 128),
    _heavy.NAME: (1, 2, 4, 8),
}


def measure_ort(
    repository: Path, selected: list[Case], args: argparse.Namespace
) -> dict[str, list[_ort.OrtPoint]]:
    """In-process ONNX Runtime on the server core, for each model the selected cases use."""
    return {
        model: _ort.measure_in_child(
            repository / model / "1" / "model.onnx",
            core=args.server_core,
            batch_sizes=sizes,
            warmup_s=min(1.0, args.ort_s),
            duration_s=args.ort_s,
        )
        for model, sizes in ORT_BATCHES.items()
        if any(c.model == model for c in selected)
    }


def print_ort(ort: dict[str, list[_ort.OrtPoint]]) -> None:
    print("| model | batch | samples/s | ms per batch |\n|---|---:|---:|---:|")
    for model, points in ort.items():
        for o in points:
            print(f"| {model} | {o.batch} | {o.samples_per_s:.1f} | {o.ms_per_batch:.3f} |")


def server_us_per_request(p: Point) -> float | None:
    """Server CPU per request: time stolen by the VM host inflates it less than it cuts req/s."""
    cores = p.measurement.cpu_cores("server")
    return cores / p.requests_per_s * 1e6 if cores and p.requests_per_s else None


def print_point(p: Point) -> None:
    m = p.measurement
    p50, p99 = m.latencies_ms([50, 99])
    server, client = m.cpu_cores("server"), m.cpu_cores("client")
    batch = f"{p.rows_per_batch:.1f}" if p.rows_per_batch is not None else "-"
    per_request = server_us_per_request(p)
    print(
        f"| {p.server} | {p.case.label} | {p.concurrency} | {p.requests_per_s:.0f} "
        f"| {p.requests_per_s * p.case.rows:.0f} | {p50:.2f} | {p99:.2f} "
        f"| {server or 0:.2f} | {per_request or 0:.0f} | {client or 0:.2f} | {batch} | {m.errors} "
        f"| {'' if m.stable else 'not stable'} |",
        flush=True,
    )


def find(points: list[Point], server: str, label: str, concurrency: int) -> Point | None:
    for p in points:
        if (p.server, p.case.label, p.concurrency) == (server, label, concurrency):
            return p
    return None


def targets(points: list[Point], ort: dict[str, list[_ort.OrtPoint]]) -> list[tuple[str, ...]]:
    """(target, measured, goal, verdict) for each of issue 5's targets that this run covers."""
    rows: list[tuple[str, ...]] = []

    def ratio(
        name: str,
        top: Point | None,
        bottom: float | None,
        goal: float,
        unit: str,
        floor: Point | None = None,
    ) -> None:
        """The verdict is on `unit`; against a `floor` point the server-CPU reading is added."""
        if top is None or not bottom:
            return
        value = top.requests_per_s * top.case.rows / bottom
        verdict = "met" if value >= goal else "missed"
        measured = f"{value:.3f} ({unit})"
        ours, theirs = server_us_per_request(top), floor and server_us_per_request(floor)
        if ours and theirs:
            measured += f"; {theirs / ours:.3f} per server CPU-s"
        rows.append((name, measured, f"≥ {goal}", verdict))

    def rps(server: str, label: str, concurrency: int) -> float | None:
        p = find(points, server, label, concurrency)
        return p.requests_per_s if p else None

    top = max((p.concurrency for p in points if p.server == "echo"), default=128)
    for name, label, goal in (
        ("tabular", "tabular 1 row", 0.9),
        ("dense 1 row", "dense 1 row", 0.8),
    ):
        ratio(
            f"{name}, {top} in flight ÷ echo floor",
            find(points, "wattserve", label, top),
            rps("echo", label, top),
            goal,
            "req/s",
            find(points, "echo", label, top),
        )
    if "dense" in ort:
        ratio(
            f"dense 16 rows, {top} in flight ÷ ORT ceiling",
            find(points, "wattserve", "dense 16 rows", top),
            _ort.best(ort["dense"]).samples_per_s,
            0.85,
            "samples/s",
        )
    heavy = [p for p in points if p.case.model == _heavy.NAME]
    if heavy and _heavy.NAME in ort:
        ratio(
            "heavy, best concurrency ÷ ORT ceiling",
            max(heavy, key=lambda p: p.requests_per_s),
            _ort.best(ort[_heavy.NAME]).samples_per_s,
            0.97,
            "samples/s",
        )
    unary = [p for p in points if p.server == "wattserve" and p.case.label == "tabular 1 row"]
    for streams in sorted({p.case.streams for p in points if p.case.streams}):
        streamed = [
            p
            for p in points
            if p.server == "wattserve"
            and p.case.streams == streams
            and p.case.label.startswith("tabular 1 row, ")
        ]
        if not streamed or not unary:
            continue
        ratio(
            f"tabular, {streams} stream{'s' if streams > 1 else ''} ÷ unary (best of each)",
            max(streamed, key=lambda p: p.requests_per_s),
            max(p.requests_per_s for p in unary),
            2.0,
            "req/s",
        )
    for label, model in (("tabular 1 row", "tabular_classifier"), ("dense 1 row", "dense")):
        served, echo = find(points, "wattserve", label, 1), find(points, "echo", label, 1)
        if served is None or echo is None or model not in ort:
            continue
        batch1 = next(p for p in ort[model] if p.batch == 1).ms_per_batch
        goal = echo.measurement.latency_ms(50) + batch1 + 0.25
        value = served.measurement.latency_ms(50)
        rows.append(
            (
                f"{label}, 1 in flight: p50 ≤ echo p50 + ORT batch-1 + 0.25 ms",
                f"{value:.3f} ms",
                f"≤ {goal:.3f} ms",
                "met" if value <= goal else "missed",
            )
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    facts = machine_facts()
    print(f"# bench/perf.py, {facts['date']}: {facts['nproc']} cores ({facts['cpu']}), ", end="")
    print(f"onnxruntime {facts['onnxruntime']}, grpcio {facts['grpcio']}")
    print(f"# server on core {args.server_core}, load generator on core {args.client_core}")
    if args.client_core is not None:
        pin_process({args.client_core})
    selected = [c for c in cases(args.concurrencies) if args.cases in c.label]
    with tempfile.TemporaryDirectory(prefix="wattserve-perf-") as tmp:
        print("... building the models", file=sys.stderr, flush=True)
        repository = build_repository(Path(tmp), args.run_on)
        print("... measuring ONNX Runtime in process", file=sys.stderr, flush=True)
        ort = measure_ort(repository, selected, args)
        print("\n## ONNX Runtime in process, one core, before the served runs\n")
        print_ort(ort)
        print("\n## Served, closed loop\n")
        print(
            "| server | case | in flight | req/s | samples/s | p50 ms | p99 ms | server cores "
            "| server µs/req | client cores | rows/batch | errors | |"
        )
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        steal = steal_counter()
        points, paired = asyncio.run(run_servers(repository, selected, ort, args))
        stolen = steal_since(steal)
        # The machine's speed drifts over minutes: measure the ceiling again and pool both.
        print("... measuring ONNX Runtime in process again", file=sys.stderr, flush=True)
        ort = {
            model: [
                _ort.OrtPoint(a.batch, a.runs + b.runs, a.seconds + b.seconds)
                for a, b in zip(points_before, points_after, strict=True)
            ]
            for (model, points_before), points_after in zip(
                ort.items(), measure_ort(repository, selected, args).values(), strict=True
            )
        }
        print("\n## ONNX Runtime, before and after the served runs pooled (the sweep's ceiling)\n")
        print_ort(ort)
    print("\n## Targets from the sweep, for reference (each side measured once, minutes apart)\n")
    print("| target | measured | goal | |\n|---|---:|---:|---|")
    for row in targets(points, ort):
        print("| " + " | ".join(row) + " |")
    print("\n## Verdicts (paired rounds)\n")
    for found in paired:
        print(f"- {found.name}: {'met' if found.met else 'missed'}")
    print(f"\nThe VM host stole {stolen:.1%} of the machine's CPU during the served runs.")
    if args.json is not None:
        document = {
            "machine": facts,
            "ort": {
                m: [dataclasses.asdict(o) | {"samples_per_s": o.samples_per_s} for o in v]
                for m, v in ort.items()
            },
            "points": [p.as_json() for p in points],
            "targets": targets(points, ort),
            "paired": [found.as_json() for found in paired],
            "steal": stolen,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
