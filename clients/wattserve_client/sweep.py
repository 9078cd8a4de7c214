"""`wattserve sweep`: a closed-loop concurrency sweep, like perf_analyzer's concurrency mode.

For each concurrency (requests always in flight) it warms up, then measures windows until the last
three agree within the stability margin, and reports throughput and p50/p90/p95/p99 latency. Works
against any Open Inference Protocol server: payloads come from the model's metadata.

    wattserve sweep --target 127.0.0.1:8001 --model dense --rows 16 --concurrency 1,2,4,8,16,32 \\
        --slo-p99-ms 100 --json sweep.json --csv sweep.csv
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wattserve.grpc.tenants import TENANT_HEADER
from wattserve.protocol import pb
from wattserve_client._request import infer_request
from wattserve_client.fleet import LOAD_GENERATOR_BUSIEST, load_generator
from wattserve_client.loadgen import (
    BUSY_CORES,
    LOAD_GENERATOR,
    Measurement,
    Schedule,
    load_generator_cpu,
)
from wattserve_client.payloads import PayloadShape, inputs_for

PERCENTILES = (50, 90, 95, 99)


@dataclass(frozen=True, slots=True)
class Target:
    """What to load: a server, a model, a payload, a tenant."""

    address: str
    model: str
    version: str = ""
    shape: PayloadShape = field(default_factory=PayloadShape)
    seed: int = 0
    tenant: str | None = None

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return ((TENANT_HEADER, self.tenant),) if self.tenant else ()


async def build_request(stub: Any, target: Target) -> Any:
    """A request with seeded inputs shaped from the model's metadata, checked by one call."""
    metadata = await stub.ModelMetadata(
        pb.ModelMetadataRequest(name=target.model, version=target.version), timeout=30
    )
    request = infer_request(
        target.model, inputs_for(metadata, target.shape, target.seed), version=target.version
    )
    await stub.ModelInfer(request, timeout=30, metadata=target.metadata)
    return request


def point(
    label: str, value: float, m: Measurement, rows: int, processes: int = 1
) -> dict[str, Any]:
    """One step of a sweep or a search as JSON: throughput, latency percentiles, errors, and the
    load generator's own CPU where it was probed (`load_generator_cpu`): all its `processes`,
    and the busiest one. It counts as busy when that one is near a full core, or all of them
    near the cores they may use (several processes pinned to one core, say)."""
    cores = m.cpu_cores(LOAD_GENERATOR)
    busiest = m.cpu_cores(LOAD_GENERATOR_BUSIEST)
    busiest = cores if busiest is None else busiest
    usable = min(processes, len(os.sched_getaffinity(0)))
    busy = False
    if cores is not None and busiest is not None:
        busy = busiest >= BUSY_CORES or cores >= BUSY_CORES * usable
    return {
        label: value,
        "requests_per_s": m.requests_per_s,
        "predictions_per_s": m.requests_per_s * rows,
        "latency_ms": {
            f"p{q}": ms for q, ms in zip(PERCENTILES, m.latencies_ms(PERCENTILES), strict=True)
        },
        "requests": m.requests,
        "errors": m.errors,
        "error_rate": m.error_rate,
        "errors_seen": m.error_messages,
        "stable": m.stable,
        "windows": m.windows_run,
        "load_generator_cpu_cores": cores,
        "load_generator_busiest_process_cores": busiest,
        "load_generator_busy": busy,
    }


def load_generator_limit(where: str) -> str:
    """The summary's warning that the load generator was busy `where` it mattered."""
    return (
        f"; the load generator was busy {where}, so the server may do more: give the load "
        f"generator {MORE_CPU} and measure again"
    )


MORE_CPU = "more CPU (more --processes on cores of their own, another machine)"
"""What a busy load generator needs, as the warnings put it."""


def busy_cores(p: dict[str, Any]) -> str:
    """How busy the load generator was at a step: "0.95 cores", or with several processes
    "1.40 cores, 0.71 in its busiest process"."""
    cores, busiest = p["load_generator_cpu_cores"], p["load_generator_busiest_process_cores"]
    return f"{cores:.2f} cores" + (
        f", {busiest:.2f} in its busiest process" if busiest != cores else ""
    )


def busy_note(p: dict[str, Any]) -> str:
    """A row's warning that the load generator, not the server, may have set its figures."""
    if not p["load_generator_busy"]:
        return ""
    return f"  (load generator busy: {busy_cores(p)})"


def within_slo(p: dict[str, Any], slo_p99_ms: float | None, max_error_rate: float) -> bool:
    return (
        p["stable"]
        and p["error_rate"] <= max_error_rate
        and (slo_p99_ms is None or p["latency_ms"]["p99"] <= slo_p99_ms)
    )


async def sweep(
    target: Target,
    concurrencies: list[int],
    schedule: Schedule,
    slo_p99_ms: float | None = None,
    max_error_rate: float = 0.0,
    *,
    connections: int = 1,
    streams: int = 0,
    processes: int = 1,
) -> dict[str, Any]:
    """`streams` > 0: keep the requests in flight on that many ModelStreamInfer streams, opened
    on the connections in turn, instead of as unary calls. `connections`: TCP connections the
    calls (or streams) take turns on; a server with worker processes needs at least one per
    worker. `processes` > 1: a load generator spread over that many processes (`fleet`)."""
    generator = load_generator(target.address, connections=connections, processes=processes)
    async with generator as loads:
        request = await build_request(loads.stub, target)
        points = []
        for concurrency in concurrencies:
            m = await loads.closed_loop(
                request,
                concurrency=concurrency,
                schedule=schedule,
                streams=streams,
                metadata=target.metadata,
                cpu_probes=[load_generator_cpu],
            )
            points.append(point("concurrency", concurrency, m, target.shape.rows, processes))
            print(_row(points[-1]), file=sys.stderr)
    passing = [p for p in points if within_slo(p, slo_p99_ms, max_error_rate)]
    peak = max(passing, key=lambda p: p["requests_per_s"], default=None)
    return {
        "mode": "closed-loop concurrency sweep" + transport_mode(streams, processes),
        "target": target.address,
        "model": target.model,
        "rows_per_request": target.shape.rows,
        "connections": connections,
        "streams": streams,
        "load_generator_processes": processes,
        "slo": {"p99_ms": slo_p99_ms, "max_error_rate": max_error_rate},
        "schedule": {
            "warmup_s": schedule.warmup_s,
            "window_s": schedule.window_s,
            "max_windows": schedule.max_windows,
            "stability": schedule.stability,
        },
        "points": points,
        "peak_within_slo": peak,
    }


def _row(p: dict[str, Any]) -> str:
    latency = p["latency_ms"]
    return (
        f"concurrency {p['concurrency']:>4}: {p['requests_per_s']:9.1f} req/s "
        f"{p['predictions_per_s']:10.1f} pred/s  p50 {latency['p50']:8.3f} ms  "
        f"p99 {latency['p99']:8.3f} ms  errors {p['errors']}"
        + ("" if p["stable"] else "  (not stable)")
        + busy_note(p)
    )


def write_csv(path: Path, points: list[dict[str, Any]], label: str) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        header = [label, "requests_per_s", "predictions_per_s"]
        header += [f"p{q}_ms" for q in PERCENTILES] + ["errors", "error_rate", "stable"]
        writer.writerow([*header, "load_generator_cpu_cores"])
        for p in points:
            cores = p["load_generator_cpu_cores"]
            writer.writerow(
                [p[label], f"{p['requests_per_s']:.3f}", f"{p['predictions_per_s']:.3f}"]
                + [f"{p['latency_ms'][f'p{q}']:.4f}" for q in PERCENTILES]
                + [p["errors"], f"{p['error_rate']:.6f}", p["stable"]]
                + ["" if cores is None else f"{cores:.3f}"]
            )


def add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--target", default="127.0.0.1:8001", help="server host:port")
    parser.add_argument("--model", required=True)
    parser.add_argument("--version", default="")
    parser.add_argument("--rows", type=int, default=1, help="rows per request (batch dimension)")
    parser.add_argument("--sequence-length", type=int, default=16, help="size of other -1 dims")
    parser.add_argument("--seed", type=int, default=0, help="payload seed")
    parser.add_argument("--tenant", default=None, help="sent as x-wattserve-tenant")
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--max-windows", type=int, default=10)
    parser.add_argument("--stability", type=float, default=0.10, help="fraction, 0.10 = 10%%")
    parser.add_argument("--slo-p99-ms", type=float, default=None)
    parser.add_argument("--max-error-rate", type=float, default=0.0)


def target_of(args: argparse.Namespace) -> Target:
    return Target(
        address=args.target,
        model=args.model,
        version=args.version,
        shape=PayloadShape(rows=args.rows, sequence_length=args.sequence_length),
        seed=args.seed,
        tenant=args.tenant,
    )


def schedule_of(args: argparse.Namespace) -> Schedule:
    return Schedule(
        warmup_s=args.warmup_s,
        window_s=args.window_s,
        max_windows=args.max_windows,
        stability=args.stability,
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    parser.add_argument("--concurrency", default="1,2,4,8,16,32", help="comma-separated")
    add_transport_arguments(parser, "the requests in flight")
    parser.add_argument("--json", type=Path, default=None, help="write the result as JSON")
    parser.add_argument("--csv", type=Path, default=None, help="write one row per concurrency")


def add_transport_arguments(parser: argparse.ArgumentParser, load: str) -> None:
    """How the load travels: unary calls or streams, over how many TCP connections."""
    parser.add_argument(
        "--stream",
        action="store_true",
        help="send on ModelStreamInfer streams (the streaming path) instead of unary calls",
    )
    parser.add_argument(
        "--streams",
        type=int,
        default=0,
        help=f"how many streams share {load} (implies --stream), opened on the connections in "
        "turn (default with --stream: one per connection). One stream reads its messages one at "
        "a time; several let the server take many at once (docs/performance.md)",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=None,
        help="TCP connections to spread the calls over (a server's --workers balances "
        "connections, not calls: use at least one per worker; default: one per process)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="load generator processes, each with its share of the connections and of the load: "
        "one Python process drives about one core of server (docs/performance.md)",
    )


def transport_mode(streams: int, processes: int = 1) -> str:
    """How a report's mode names the streams and processes: "" for unary calls from one."""
    mode = ""
    if streams:
        mode = " on one stream" if streams == 1 else f" on {streams} streams"
    if processes > 1:
        mode += f" from {processes} load generator processes"
    return mode


def connections_of(args: argparse.Namespace) -> int:
    """The TCP connections in effect: --connections, by default one per process."""
    return int(args.processes if args.connections is None else args.connections)


def streams_of(args: argparse.Namespace) -> int:
    """The streams in effect: 0 for unary calls; with --stream alone, one per connection."""
    stream = args.stream or args.streams != 0
    return (args.streams or connections_of(args)) if stream else 0


def transport_refusal(args: argparse.Namespace, streams: int) -> str | None:
    """What is wrong with --processes, --connections and --streams, or None."""
    connections = connections_of(args)
    if args.processes < 1 or connections < args.processes:
        return (
            f"need --processes >= 1 and --connections >= --processes (each process has "
            f"connections of its own); got --processes {args.processes} and --connections "
            f"{connections}"
        )
    if connections >= 1 and (streams == 0 or streams >= connections):
        return None
    return (
        f"need --connections >= 1 and --streams >= --connections; got --connections "
        f"{connections} and --streams {streams}"
    )


def run(args: argparse.Namespace) -> int:
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    streams = streams_of(args)
    floor = max(streams, 1)
    refusal = transport_refusal(args, streams)
    if refusal is None and min(concurrencies) < floor:
        origin = f" (--stream alone: one per connection, --connections {connections_of(args)})"
        refusal = (
            f"need every --concurrency >= {floor}{' (one per stream)' if streams else ''}; "
            f"got --concurrency {args.concurrency} with {streams} streams"
            + ("" if args.streams else origin)
        )
    if refusal is not None:
        print(f"wattserve sweep: {refusal}", file=sys.stderr)
        return 2
    result = asyncio.run(
        sweep(
            target_of(args),
            concurrencies,
            schedule_of(args),
            args.slo_p99_ms,
            args.max_error_rate,
            connections=connections_of(args),
            streams=streams,
            processes=args.processes,
        )
    )
    text = json.dumps(result, indent=2)
    if args.json:
        args.json.write_text(text + "\n")
    if args.csv:
        write_csv(args.csv, result["points"], "concurrency")
    peak = result["peak_within_slo"]
    print(
        f"peak within SLO: {peak['requests_per_s']:.1f} req/s at concurrency {peak['concurrency']}"
        + (load_generator_limit("at that concurrency") if peak["load_generator_busy"] else "")
        if peak
        else "no concurrency met the SLO"
    )
    return 0
