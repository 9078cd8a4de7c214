"""How close wattserve gets to in-process ONNX Runtime on the demo `dense` model.

Prints the served throughput (closed loop, `--concurrency` requests in flight, server and load
generator pinned to different cores) divided by the in-process ONNX Runtime throughput on the
server's single core at its best batch size: once per entry of `--rows` (rows per request).

Steps: build the demo repository; measure ONNX Runtime in a child process pinned to the server core
(1 intra-op and 1 inter-op thread, no spinning: the server's session options) at each batch size;
start `wattserve serve` under `taskset` on that core; drive it with the closed-loop grpc.aio load
generator in this process, pinned to the other core; stop the server with SIGTERM. Every
measurement, in process or served, uses the same warm-up and window, so the defaults take about
(6 + 2) x (3 + 10) s plus start-up.

    python bench/serve_vs_ort.py [--duration-s 10] [--warmup-s 3] [--json results.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import _ort
import grpc
from _loadgen import (
    CpuProbe,
    LoadError,
    LoadResult,
    batch_counts,
    check_response,
    fp32_request,
    run_closed_loop,
)
from _ort import OrtPoint
from _server import serving, steal_counter, steal_since

from wattserve.protocol import pb, pb_grpc

MODEL, INPUT, WIDTH, MAX_BATCH_SIZE = "dense", "input", 512, 128
ORT_BATCH_SIZES = (1, 8, 16, 32, 64, 128)


@dataclass(frozen=True, slots=True)
class Pinning:
    """Cores for the server (and the ONNX Runtime baseline) and for the load generator."""

    server_core: int | None
    client_core: int | None

    def describe(self) -> str:
        if self.server_core is None:
            return "none: only 1 core, so server and load generator share it (ratios understate)"
        return (
            f"server and ORT baseline on core {self.server_core}, "
            f"load generator on core {self.client_core}"
        )


@dataclass(frozen=True, slots=True)
class ServedRun:
    load: LoadResult
    mean_batch_rows: float | None
    """Rows per batch the server executed over the whole run, warm-up included."""
    steal_fraction: float
    """Share of the machine's CPU time its host took away during the run (/proc/stat steal)."""


# --- command line and machine ---------------------------------------------------------------


def _rows(text: str) -> list[int]:
    rows = [int(part) for part in text.split(",") if part.strip()]
    if not rows or any(not 1 <= r <= MAX_BATCH_SIZE for r in rows):
        raise argparse.ArgumentTypeError(f"want a comma list of 1..{MAX_BATCH_SIZE}, got {text!r}")
    return rows


def parse_args(argv: Sequence[str] | None) -> tuple[argparse.Namespace, Pinning]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=10.0, help="measurement window per run")
    parser.add_argument("--warmup-s", type=float, default=3.0, help="warm-up before each window")
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--demo-dir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--rows", type=_rows, default=[16, 1], help="rows per request, e.g. 16,1")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.duration_s <= 0 or args.warmup_s < 0 or args.concurrency < 1:
        parser.error("need --duration-s > 0, --warmup-s >= 0 and --concurrency >= 1")
    available = os.sched_getaffinity(0)
    if len(available) < 2:
        return args, Pinning(None, None)
    cores = {args.server_core, args.client_core}
    if len(cores) != 2 or not cores <= available:
        parser.error(f"--server-core and --client-core must differ and be in {sorted(available)}")
    return args, Pinning(args.server_core, args.client_core)


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine_facts() -> dict[str, str]:
    versions = {name: metadata.version(name) for name in ("onnxruntime", "grpcio", "wattserve")}
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "nproc": str(len(os.sched_getaffinity(0))),
        "cpu": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        **versions,
    }


def pin_process(cores: set[int]) -> None:
    """Pin every thread of this process (affinity is per thread; new threads inherit it)."""
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task.name), cores)


# --- measuring -----------------------------------------------------------------------------


def build_demo(demo_dir: Path) -> Path:
    """The demo repository, built by the server's own command; returns the dense model's file."""
    subprocess.run(
        [sys.executable, "-m", "wattserve", "demo", "--demo-dir", str(demo_dir)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return demo_dir / MODEL / "1" / "model.onnx"


async def serve_and_load(
    demo_dir: Path, pinning: Pinning, args: argparse.Namespace
) -> list[ServedRun]:
    """One server; one closed-loop run per `--rows` entry."""
    runs: list[ServedRun] = []
    async with (
        serving(demo_dir, pinning.server_core) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        ready = await stub.ModelReady(pb.ModelReadyRequest(name=MODEL))
        if not ready.ready:
            raise RuntimeError(f"the server at {server.address} does not serve '{MODEL}'")
        probes = [server.cpu_seconds, lambda: {"client": time.process_time()}]
        for rows in args.rows:
            print(f"... serving {rows} row(s)/request", file=sys.stderr, flush=True)
            runs.append(await serve_rows(stub, rows, args, probes))
    return runs


async def serve_rows(
    stub: pb_grpc.GRPCInferenceServiceStub,
    rows: int,
    args: argparse.Namespace,
    probes: list[CpuProbe],
) -> ServedRun:
    request = fp32_request(MODEL, INPUT, rows, WIDTH, seed=rows)
    await check_response(stub, request, WIDTH)
    steal_start = steal_counter()
    rows_before, batches_before = await batch_counts(stub, MODEL)
    load = await run_closed_loop(
        stub,
        request,
        concurrency=args.concurrency,
        warmup_s=args.warmup_s,
        duration_s=args.duration_s,
        cpu_probes=probes,
    )
    rows_after, batches_after = await batch_counts(stub, MODEL)
    batches = batches_after - batches_before
    mean_rows = (rows_after - rows_before) / batches if batches else None
    return ServedRun(load, mean_rows, steal_since(steal_start))


# --- reporting ------------------------------------------------------------------------------


def summarise(run: ServedRun, ort: list[OrtPoint], best: OrtPoint) -> dict[str, Any]:
    """The figures of one served run next to the ONNX Runtime baseline (also the JSON shape).

    `best` is the best batch size's throughput averaged over the sweep before the served runs
    and a second measurement after them, so slow drift of a shared machine cancels out.
    """
    load = run.load
    same = next((p for p in ort if p.batch == load.rows_per_request), None)
    return {
        "rows_per_request": load.rows_per_request,
        "concurrency": load.concurrency,
        "window_s": load.window_s,
        "requests": load.requests,
        "requests_per_s": load.requests_per_s,
        "samples_per_s": load.samples_per_s,
        "latency_ms": {f"p{q}": load.latency_ms(q) for q in (50, 90, 99)},
        "server_cpu_cores": load.cpu_cores["server"],
        "server_cpu_cores_by_thread": {
            k.removeprefix("server:"): v
            for k, v in load.cpu_cores.items()
            if k.startswith("server:")
        },
        "client_cpu_cores": load.cpu_cores["client"],
        "mean_batch_rows": run.mean_batch_rows,
        "steal_fraction": run.steal_fraction,
        "ort_best_batch": best.batch,
        "ort_best_samples_per_s": best.samples_per_s,
        "ratio_vs_ort_best": load.samples_per_s / best.samples_per_s,
        "ort_same_batch_samples_per_s": same.samples_per_s if same else None,
        "ratio_vs_ort_same_batch": load.samples_per_s / same.samples_per_s if same else None,
    }


def print_header(facts: dict[str, str], pinning: Pinning, args: argparse.Namespace) -> None:
    print(f"# wattserve vs in-process ONNX Runtime, model '{MODEL}' ({facts['date']})")
    print(f"machine:  nproc {facts['nproc']}, {facts['cpu']}, Linux {facts['kernel']}")
    print(
        f"software: Python {facts['python']}, onnxruntime {facts['onnxruntime']}, "
        f"grpcio {facts['grpcio']}, wattserve {facts['wattserve']}"
    )
    print(f"pinning:  {pinning.describe()}")
    print(
        f"settings: warm-up {args.warmup_s:g} s + window {args.duration_s:g} s per measurement, "
        f"{args.concurrency} in flight, rows/request {','.join(map(str, args.rows))}\n"
    )


def print_ort(points: list[OrtPoint]) -> None:
    print("ONNX Runtime in process, 1 core, 1 thread")
    print(f"{'batch':>7} {'samples/s':>11} {'ms/batch':>10}")
    for p in points:
        print(f"{p.batch:>7} {p.samples_per_s:>11.1f} {p.ms_per_batch:>10.3f}")
    best = _ort.best(points)
    print(f"best: batch {best.batch}, {best.samples_per_s:.1f} samples/s\n")


def print_run(s: dict[str, Any]) -> None:
    lat = s["latency_ms"]
    mean = s["mean_batch_rows"]
    print(f"served: {s['rows_per_request']} row(s)/request, {s['concurrency']} in flight")
    print(f"  {s['requests_per_s']:.1f} requests/s, {s['samples_per_s']:.1f} samples/s")
    print(f"  latency ms: p50 {lat['p50']:.2f}, p90 {lat['p90']:.2f}, p99 {lat['p99']:.2f}")
    threads = s["server_cpu_cores_by_thread"]
    print(
        f"  CPU (cores): server {s['server_cpu_cores']:.2f} (event loop {threads['loop']:.2f}, "
        f"other Python threads {threads['python']:.2f}, gRPC core threads "
        f"{threads['native']:.2f}), load generator {s['client_cpu_cores']:.2f}"
    )
    print("  mean rows per executed batch: " + ("n/a" if mean is None else f"{mean:.1f}"))
    print(f"  CPU time taken by the VM host (steal) during the run: {s['steal_fraction']:.1%}")
    print(
        f"  ratio vs ORT best (batch {s['ort_best_batch']}, "
        f"{s['ort_best_samples_per_s']:.1f} samples/s): {s['ratio_vs_ort_best']:.3f}"
    )
    if s["ratio_vs_ort_same_batch"] is not None:
        print(
            f"  ratio vs ORT at batch {s['rows_per_request']} "
            f"({s['ort_same_batch_samples_per_s']:.1f} samples/s): "
            f"{s['ratio_vs_ort_same_batch']:.3f}"
        )
    if s["server_cpu_cores"] < 0.9 and s["client_cpu_cores"] > 0.9:
        print("  note: the server core is not saturated; the load generator is the limit")
    print()


def print_summary(summaries: list[dict[str, Any]]) -> None:
    head = "| rows/req | in flight | req/s | samples/s | p50 ms | p99 ms | server CPU "
    head += "| ORT best samples/s (batch) | ratio | ratio vs ORT same batch |"
    print(head)
    print("|" + "---:|" * (head.count("|") - 1))
    for s in summaries:
        same = s["ratio_vs_ort_same_batch"]
        print(
            f"| {s['rows_per_request']} | {s['concurrency']} | {s['requests_per_s']:.0f} "
            f"| {s['samples_per_s']:.0f} | {s['latency_ms']['p50']:.2f} "
            f"| {s['latency_ms']['p99']:.2f} | {s['server_cpu_cores']:.2f} "
            f"| {s['ort_best_samples_per_s']:.0f} ({s['ort_best_batch']}) "
            f"| {s['ratio_vs_ort_best']:.3f} | {'n/a' if same is None else f'{same:.3f}'} |"
        )


def write_json(
    path: Path,
    facts: dict[str, str],
    pinning: Pinning,
    args: argparse.Namespace,
    ort: list[OrtPoint],
    summaries: list[dict[str, Any]],
    best: OrtPoint,
) -> None:
    report = {
        "machine": facts,
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "demo_dir")},
        "pinning": {"server_core": pinning.server_core, "client_core": pinning.client_core},
        "ort": [
            {"batch": p.batch, "samples_per_s": p.samples_per_s, "ms_per_batch": p.ms_per_batch}
            for p in ort
        ],
        "ort_best_before_and_after_mean": {
            "batch": best.batch,
            "samples_per_s": best.samples_per_s,
        },
        "runs": summaries,
    }
    path.write_text(json.dumps(report, indent=2) + "\n")


# --- main -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _demo_root(given: Path | None) -> Iterator[Path]:
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="wattserve-bench-") as tmp:
        yield Path(tmp) / "demo-repository"


def main(argv: Sequence[str] | None = None) -> int:
    args, pinning = parse_args(argv)
    facts = machine_facts()
    print_header(facts, pinning, args)
    if pinning.client_core is not None:
        pin_process({pinning.client_core})
    with _demo_root(args.demo_dir) as demo_dir:
        print("... building the demo repository", file=sys.stderr, flush=True)
        model = build_demo(demo_dir)
        print("... measuring ONNX Runtime in process", file=sys.stderr, flush=True)
        ort = _ort.measure_in_child(
            model,
            core=pinning.server_core,
            batch_sizes=ORT_BATCH_SIZES,
            warmup_s=args.warmup_s,
            duration_s=args.duration_s,
        )
        print_ort(ort)
        try:
            runs = asyncio.run(serve_and_load(demo_dir, pinning, args))
        except LoadError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
        print("... measuring ONNX Runtime again at its best batch", file=sys.stderr, flush=True)
        before = _ort.best(ort)
        after = _ort.measure_in_child(
            model,
            core=pinning.server_core,
            batch_sizes=[before.batch],
            warmup_s=args.warmup_s,
            duration_s=args.duration_s,
        )[0]
    best = OrtPoint(before.batch, before.runs + after.runs, before.seconds + after.seconds)
    print(
        f"ONNX Runtime at batch {before.batch}: {before.samples_per_s:.1f} samples/s before the "
        f"served runs, {after.samples_per_s:.1f} after; ratios use both pooled, "
        f"{best.samples_per_s:.1f}\n"
    )
    summaries = [summarise(run, ort, best) for run in runs]
    for summary in summaries:
        print_run(summary)
    print_summary(summaries)
    if args.json is not None:
        write_json(args.json, facts, pinning, args, ort, summaries, best)
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
