"""Does `wattserve capacity` find the same peak as a closed-loop `wattserve sweep`?

    python bench/capacity_vs_sweep.py [--model dense] [--rows 1] [--slo-p99-ms 100]

One server (pinned to core 0 where there are two), then on the other core: the sweep over
concurrencies 1..128 (its peak: the best throughput whose p99 met the objective), and the
capacity search (open loop: ramp, knee, bisection) with the same objective. Prints both peaks,
their ratio (the target: within 15%) and how long each took. The JSON of both runs is kept with
`--keep DIR`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _server import serving


def run(command: list[str], out: Path, core: int | None) -> tuple[dict[str, Any], float]:
    """A wattserve subcommand (under taskset when `core` is set); its JSON and its duration."""
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
    started = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    took = time.monotonic() - started
    if not out.exists():
        raise RuntimeError(f"{' '.join(command)} wrote no JSON:\n{done.stdout}{done.stderr}")
    return json.loads(out.read_text()), took


async def compare(args: argparse.Namespace, scratch: Path) -> None:
    pinned = (os.cpu_count() or 1) >= 2
    server_core, load_core = (0, 1) if pinned else (None, None)
    wattserve = [sys.executable, "-m", "wattserve"]
    async with serving(scratch / "demo", server_core) as server:
        common = [
            "--target", server.address, "--model", args.model, "--rows", str(args.rows),
            "--slo-p99-ms", str(args.slo_p99_ms),
        ]  # fmt: skip
        sweep, sweep_s = await asyncio.to_thread(
            run,
            [*wattserve, "sweep", *common, "--concurrency", args.concurrency,
             "--json", str(scratch / "sweep.json")],
            scratch / "sweep.json",
            load_core,
        )  # fmt: skip
        capacity, capacity_s = await asyncio.to_thread(
            run,
            [*wattserve, "capacity", *common, "--json", str(scratch / "capacity.json")],
            scratch / "capacity.json",
            load_core,
        )
    sweep_peak = sweep["peak_within_slo"]
    capacity_peak = capacity["peak"]
    print(
        f"# {args.model}, {args.rows} row(s) per request, p99 objective {args.slo_p99_ms:g} ms; "
        f"server pinned: {pinned}"
    )
    print("| tool | peak req/s within the objective | at | p99 ms | took s |")
    print("|---|---:|---|---:|---:|")
    if sweep_peak:
        print(
            f"| sweep (closed loop) | {sweep_peak['requests_per_s']:.1f} "
            f"| {sweep_peak['concurrency']} in flight | {sweep_peak['latency_ms']['p99']:.1f} "
            f"| {sweep_s:.0f} |"
        )
    if capacity_peak:
        print(
            f"| capacity (open loop) | {capacity_peak['requests_per_s']:.1f} "
            f"| {capacity_peak['offered_per_s']:.0f}/s offered "
            f"| {capacity_peak['latency_ms']['p99']:.1f} | {capacity_s:.0f} |"
        )
    if sweep_peak and capacity_peak:
        ratio = capacity_peak["requests_per_s"] / sweep_peak["requests_per_s"]
        print(f"\ncapacity ÷ sweep: {ratio:.3f} (target: 0.85 to 1.15)")
    else:
        print("\na tool found no rate within the objective: see the JSON")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dense")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--slo-p99-ms", type=float, default=100.0)
    parser.add_argument("--concurrency", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--keep", type=Path, default=None, help="keep both JSON files here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        asyncio.run(compare(args, scratch))
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for name in ("sweep.json", "capacity.json"):
                (args.keep / name).write_bytes((scratch / name).read_bytes())
    return 0


if __name__ == "__main__":
    sys.exit(main())
