"""What streaming buys a capacity plan: `wattserve capacity` as unary calls against the same
search with the load dealt over ModelStreamInfer streams.

    python bench/capacity_streams.py [--model tabular_classifier] [--streams 16] [--rounds 2] \\
        [--slo-p99-ms 50] [--target-predictions-per-s 5000]

One server with its meter (pinned to core 0 where there are two); then, on the other core, rounds
of two capacity searches in turn: unary, then `--streams N`. Each search reports its peak within
the objective, the replicas a target needs, the meter's energy per million predictions at the
operating point (attributed to the model), and the load generator's own CPU at the knee (at 0.9
cores or more the knee may be the load generator's). Prints one row per search and, per round,
streams ÷ unary for the peak and for the energy; then the medians of those ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _server import serving
from capacity_vs_sweep import run


def row(label: str, result: dict[str, Any], took_s: float) -> str:
    peak, recommended, knee = result["peak"], result["recommended"], result["knee"]
    energy = (recommended["per_million_predictions"] or {}).get("energy_j")
    knee_cores = knee["load_generator_cpu_cores"] if knee else None
    cells = [
        label,
        f"{peak['requests_per_s']:,.0f}" if peak else "none",
        f"{peak['latency_ms']['p99']:.1f}" if peak else "",
        str(recommended["replicas"] or ""),
        f"{energy:,.1f}" if energy is not None else "",
        f"{knee_cores:.2f}" if knee_cores is not None else "no knee",
        f"{took_s:.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def ratio(streamed: dict[str, Any], unary: dict[str, Any], part: str) -> float | None:
    """streams ÷ unary for "peak" (requests/s) or "energy" (J per million predictions)."""
    if part == "peak":
        a, b = streamed["peak"], unary["peak"]
        return a["requests_per_s"] / b["requests_per_s"] if a and b else None
    a, b = (r["recommended"]["per_million_predictions"] for r in (streamed, unary))
    return a["energy_j"] / b["energy_j"] if a and b and b["energy_j"] > 0 else None


async def compare(args: argparse.Namespace, scratch: Path) -> None:
    pinned = (os.cpu_count() or 1) >= 2
    server_core, load_core = (0, 1) if pinned else (None, None)
    wattserve = [sys.executable, "-m", "wattserve", "capacity"]
    ratios: dict[str, list[float]] = {"peak": [], "energy": []}
    async with serving(scratch / "demo", server_core) as server:
        if server.metrics_url is None:
            raise RuntimeError("the server logged no metrics endpoint: no energy figures")
        common = [
            "--target", server.address, "--model", args.model, "--rows", str(args.rows),
            "--slo-p99-ms", str(args.slo_p99_ms), "--metrics-url", server.metrics_url,
            "--target-predictions-per-s", str(args.target_predictions_per_s),
            "--warmup-s", str(args.warmup_s), "--window-s", str(args.window_s),
            "--max-steps", str(args.max_steps),
        ]  # fmt: skip
        print(
            f"# {args.model}, {args.rows} row(s) per request, p99 objective "
            f"{args.slo_p99_ms:g} ms, target {args.target_predictions_per_s:g} predictions/s; "
            f"server pinned: {pinned}"
        )
        print(
            "| search | peak req/s | p99 ms at peak | replicas | J per million (usage) "
            "| load generator cores at knee | took s |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for n in range(1, args.rounds + 1):
            results = {}
            for label, extra in (("unary", []), (f"{args.streams} streams", ["--streams"])):
                out = scratch / f"round{n}-{label.replace(' ', '-')}.json"
                extra = [*extra, str(args.streams)] if extra else []
                command = [*wattserve, *common, *extra, "--json", str(out)]
                result, took_s = await asyncio.to_thread(run, command, out, load_core)
                results[label] = result
                print(row(f"round {n}, {label}", result, took_s), flush=True)
            for part in ratios:
                value = ratio(results[f"{args.streams} streams"], results["unary"], part)
                if value is not None:
                    ratios[part].append(value)
    print()
    for part, values in ratios.items():
        what = "peak req/s" if part == "peak" else "energy per million predictions"
        rounds = ", ".join(f"{v:.3f}" for v in values)
        median = f"{statistics.median(values):.3f}" if values else "n/a"
        print(f"streams ÷ unary, {what}: median {median} (rounds: {rounds or 'none'})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tabular_classifier")
    parser.add_argument("--rows", type=int, default=1)
    parser.add_argument("--streams", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--slo-p99-ms", type=float, default=50.0)
    parser.add_argument("--target-predictions-per-s", type=float, default=5000.0)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--window-s", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=20, help="ramp steps per search")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(compare(args, Path(tmp)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
