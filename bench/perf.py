"""wattserve against its floor and its ceiling, on one core: the performance targets in one command.

    python bench/perf.py [--concurrency 1,8,32,128] [--window-s 2] [--json results.json]

- **Ceiling**: in-process ONNX Runtime on the server core (1 intra-op thread, the server's session
  options), per model and batch size (`_ort.py`).
- **Floor**: a bare grpc.aio server answering ModelInfer with its input (`_echo.py`): what one
  Python process spends per unary call, with no model, batching or metering. Its ModelStreamInfer
  echoes too, for the streaming floor.
- **wattserve**: `wattserve serve` with the default settings (meter on) on the demo models and a
  heavy CNN built here (`_heavy.py`, ≥ 30 ms per sample).

Every server runs pinned to `--server-core`, and the closed-loop load generator (the sweep's,
`wattserve_client.loadgen`) in this process on `--client-core`. Each point pools the last 3
stable windows (up to `--max-windows`). The tables print requests/s, samples/s, p50/p99, the
server's and the load generator's CPU (a load generator near 1.0 core is the limit, not the
server), rows per executed batch, and then each target of issue 5 with its ratio.
"""

from __future__ import annotations

import argparse
import asyncio
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
from _server import ServerProcess, serving, steal_counter, steal_since
from serve_vs_ort import machine_facts, pin_process

from wattserve.protocol import pb_grpc
from wattserve_client._request import CHANNEL_OPTIONS
from wattserve_client.loadgen import Measurement, Schedule, closed_loop, stream_closed_loop
from wattserve_client.payloads import PayloadShape
from wattserve_client.sweep import Target, build_request

ECHO = Path(__file__).with_name("_echo.py")


@dataclass(frozen=True, slots=True)
class Case:
    label: str
    model: str
    rows: int
    concurrencies: tuple[int, ...]
    stream: bool = False


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
            "stream": self.case.stream,
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
        Case("tabular 1 row, stream", "tabular_classifier", 1, (32, 128), stream=True),
        Case("dense 1 row", "dense", 1, concurrencies),
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
    schedule = Schedule(args.warmup_s, args.window_s, 3, args.max_windows, 0.10)
    points = []
    async with grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        for case in selected:
            for concurrency in case.concurrencies:
                before = await batch_counts(stub, case.model) if name == "wattserve" else None
                loop = stream_closed_loop if case.stream else closed_loop
                measurement = await loop(
                    stub,
                    requests[case.label],
                    concurrency=concurrency,
                    schedule=schedule,
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


async def run_servers(
    repository: Path, selected: list[Case], args: argparse.Namespace
) -> list[Point]:
    wattserve = ["--repository", str(repository)]
    async with serving(repository.parent, args.server_core, wattserve) as server:
        requests = await build_requests(server, selected)
        points = await measure(server, "wattserve", requests, selected, args)
    echo_cases = [c for c in selected if c.model != _heavy.NAME and c.rows == 1]
    command = [sys.executable, str(ECHO)]
    async with serving(repository.parent, args.server_core, command=command) as server:
        points += await measure(server, "echo", requests, echo_cases, args)
    return points


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
    streams = [p for p in points if p.server == "wattserve" and p.case.stream]
    unary = [p for p in points if p.server == "wattserve" and p.case.label == "tabular 1 row"]
    if streams and unary:
        best_stream = max(streams, key=lambda p: p.requests_per_s)
        ratio(
            "tabular stream ÷ unary (best of each)",
            best_stream,
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
        points = asyncio.run(run_servers(repository, selected, args))
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
        print("\n## ONNX Runtime, before and after the served runs pooled (the ratios' ceiling)\n")
        print_ort(ort)
    print("\n## Targets (issue 5)\n")
    print("| target | measured | goal | |\n|---|---:|---:|---|")
    for row in targets(points, ort):
        print("| " + " | ".join(row) + " |")
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
            "steal": stolen,
        }
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
