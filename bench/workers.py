"""Worker processes against one process: what `--workers N` buys on this machine.

    python bench/workers.py [--workers 2] [--concurrency 64] [--connections 16] [--rounds 2]
                            [--processes 1]

It alternates `wattserve serve` (one process) and `wattserve serve --workers N`, `--rounds` times
each, so both see the same phases of a drifting VM. The servers are not pinned from outside (the
workers pin themselves to their share of the cores), and the load generator, this process, shares
the machine, as issue 5 asks for on a machine without spare cores. Both servers get the same load:
`--concurrency` calls in flight over `--connections` TCP connections (the kernel balances
connections, not calls, over the workers). Meter on, default settings. On a machine with more
cores, give the load generator `--processes` (one Python process drives about one server core).

It prints each point (requests/s, p50/p99, server and load-generator CPU in cores) and, per case,
the ratio (N workers) ÷ (N x one process) of the rounds' medians: the issue's target is ≥ 0.8
where N cores are free for the server. Where they are not (the load generator takes its share),
the second ratio says whether the workers lose efficiency: requests/s per server core, N workers
÷ one process.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

from _server import serving, steal_counter, steal_since
from serve_vs_ort import machine_facts

from wattserve_client.fleet import load_generator
from wattserve_client.loadgen import (
    LOAD_GENERATOR,
    CpuProbe,
    Measurement,
    Schedule,
    load_generator_cpu,
)
from wattserve_client.payloads import PayloadShape
from wattserve_client.sweep import Target, build_request

CASES = {"tabular 1 row": ("tabular_classifier", 1), "dense 16 rows": ("dense", 16)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=1, help="load generator processes")
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--cases", default="", help="only the cases whose label contains this")
    return parser.parse_args()


async def measure(
    address: str, server_cpu: CpuProbe, case: str, args: argparse.Namespace
) -> Measurement:
    model, rows = CASES[case]
    generator = load_generator(address, connections=args.connections, processes=args.processes)
    async with generator as loads:
        request = await build_request(loads.stub, Target(address, model, shape=PayloadShape(rows)))
        return await loads.closed_loop(
            request,
            concurrency=args.concurrency,
            schedule=Schedule(1.0, args.window_s, 3, 6, 0.10),
            cpu_probes=[server_cpu, load_generator_cpu],
        )


async def run(
    demo: Path, args: argparse.Namespace
) -> dict[tuple[str, int], list[tuple[float, float]]]:
    """(case, workers) -> (requests/s, server cores) of each round."""
    selected = [c for c in CASES if args.cases in c]
    found: dict[tuple[str, int], list[tuple[float, float]]] = {
        (c, n): [] for c in selected for n in (1, args.workers)
    }
    for round_ in range(args.rounds):
        for workers in (1, args.workers):
            extra = ["--workers", str(workers)] if workers > 1 else []
            async with serving(demo, None, extra) as server:
                for case in selected:
                    m = await measure(
                        server.address,
                        lambda: {"server": server.cpu_seconds()["server"]},
                        case,
                        args,
                    )
                    p50, p99 = m.latencies_ms([50, 99])
                    print(
                        f"| {round_ + 1} | {workers} | {case} | {m.requests_per_s:.0f} "
                        f"| {p50:.2f} | {p99:.2f} | {m.cpu_cores('server') or 0:.2f} "
                        f"| {m.cpu_cores(LOAD_GENERATOR) or 0:.2f} | {m.errors} "
                        f"| {'' if m.stable else 'not stable'} |",
                        flush=True,
                    )
                    found[(case, workers)].append((m.requests_per_s, m.cpu_cores("server") or 0))
    return found


def main() -> int:
    args = parse_args()
    facts = machine_facts()
    print(f"# bench/workers.py, {facts['date']}: {facts['nproc']} cores ({facts['cpu']})")
    print(
        f"# {args.concurrency} in flight over {args.connections} connections from "
        f"{args.processes} load generator process(es), {args.rounds} rounds, load generator "
        "unpinned\n"
    )
    print(
        "| round | workers | case | req/s | p50 ms | p99 ms | server cores | client cores "
        "| errors | |"
    )
    print("|---:|---:|---|---:|---:|---:|---:|---:|---:|---|")
    steal = steal_counter()
    with tempfile.TemporaryDirectory(prefix="wattserve-workers-") as tmp:
        found = asyncio.run(run(Path(tmp) / "demo", args))
    print(f"\nThe VM host stole {steal_since(steal):.1%} of the machine's CPU during the runs.\n")
    n = args.workers
    print(
        f"| case | one process req/s | {n} workers req/s | ÷ ({n} x one) "
        f"| req/s per server core, {n} workers ÷ one |"
    )
    print("|---|---:|---:|---:|---:|")
    for case in dict.fromkeys(c for c, _ in found):
        one = statistics.median(r for r, _ in found[(case, 1)])
        many = statistics.median(r for r, _ in found[(case, n)])
        per_core = statistics.median(r / c for r, c in found[(case, n)] if c) / statistics.median(
            r / c for r, c in found[(case, 1)] if c
        )
        print(f"| {case} | {one:.0f} | {many:.0f} | {many / (n * one):.3f} | {per_core:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
