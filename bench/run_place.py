"""A slow model's small batches on the event loop: what its lone requests gain, what others pay.

    python bench/run_place.py [--b-run-on auto] [--b "..."] [--tabular-in-flight 8] [--rounds 6]

Two servers serve the demo repository: A with the dense model's run_on = "thread", B with
`--b-run-on` ("auto" by default, which runs the dense model's batches on the loop when they are
estimated to take under the limit, `wattserve.execution.onnx.loop_rows`). `--a`/`--b` add
`wattserve serve` arguments to either side. Both run pinned to core 0, the one not measured
frozen, in paired rounds (`_paired.py`); the load generator runs in this process on core 1.

Each measurement runs two closed loops at once: lone 1-row requests to the dense model (1 in
flight), and 1-row requests to the tabular model (`--tabular-in-flight` in flight), which runs on
the loop. A dense batch on the loop stalls the tabular requests queued behind it; on the thread,
the two share the core. Per side and round it prints the dense p50, the tabular requests/s, p50
and p99, and how many cores' worth of CPU the server used; then the medians of B ÷ A.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shlex
import shutil
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc
from _paired import Side, alternate, frozen
from _server import ServerProcess, serving, steal_counter, steal_since
from serve_vs_ort import build_demo, machine_facts, pin_process

from wattserve.protocol import pb_grpc
from wattserve_client._request import CHANNEL_OPTIONS
from wattserve_client.loadgen import Measurement, Schedule, closed_loop
from wattserve_client.payloads import PayloadShape
from wattserve_client.sweep import Target, build_request

SERVER_CORE, CLIENT_CORE = 0, 1
DENSE, TABULAR = "dense", "tabular_classifier"
FIGURES = ("dense p50 ms", "tabular req/s", "tabular p50 ms", "tabular p99 ms")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--b-run-on", default="auto", choices=["auto", "loop", "thread"])
    parser.add_argument("--a", default="", help="more `wattserve serve` arguments for A")
    parser.add_argument("--b", default="", help="more `wattserve serve` arguments for B")
    parser.add_argument("--tabular-in-flight", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--window-s", type=float, default=4.0)
    return parser.parse_args(argv)


def repository(demo: Path, root: Path, run_on: str) -> Path:
    """A copy of the demo repository with the dense model's run_on set."""
    repo = root / f"repo-{run_on}"
    shutil.copytree(demo, repo)
    config = repo / DENSE / "config.toml"
    text = re.sub(r"(?m)^run_on = .*\n", "", config.read_text())
    config.write_text(f'run_on = "{run_on}"\n{text}')
    return repo


async def measure_both(
    server: ServerProcess, stub: object, requests: dict[str, object], args: argparse.Namespace
) -> tuple[Measurement, Measurement]:
    schedule = Schedule(args.warmup_s, args.window_s, 1, 1, -1.0)
    dense, tabular = await asyncio.gather(
        closed_loop(
            stub,
            requests[DENSE],
            concurrency=1,
            schedule=schedule,
            cpu_probes=[lambda: {"server": server.cpu_seconds()["server"]}],
        ),
        closed_loop(stub, requests[TABULAR], concurrency=args.tabular_in_flight, schedule=schedule),
    )
    return dense, tabular


async def run(args: argparse.Namespace, scratch: Path) -> None:
    demo = scratch / "demo"
    build_demo(demo)
    sides = {
        "A": ["--repository", str(repository(demo, scratch, "thread")), *shlex.split(args.a)],
        "B": ["--repository", str(repository(demo, scratch, args.b_run_on)), *shlex.split(args.b)],
    }
    figures: dict[str, list[dict[str, float]]] = {"A": [], "B": []}
    async with (
        serving(demo, SERVER_CORE, sides["A"]) as a,
        serving(demo, SERVER_CORE, sides["B"]) as b,
        grpc.aio.insecure_channel(a.address, options=CHANNEL_OPTIONS) as a_channel,
        grpc.aio.insecure_channel(b.address, options=CHANNEL_OPTIONS) as b_channel,
    ):
        stubs = {
            "A": (a, b, pb_grpc.GRPCInferenceServiceStub(a_channel)),  # type: ignore[no-untyped-call]
            "B": (b, a, pb_grpc.GRPCInferenceServiceStub(b_channel)),  # type: ignore[no-untyped-call]
        }
        requests = {
            model: await build_request(
                stubs["A"][2], Target(a.address, model, shape=PayloadShape())
            )
            for model in (DENSE, TABULAR)
        }

        def side(name: str) -> Side:
            server, other, stub = stubs[name]

            async def measure() -> float:
                with frozen(other):
                    dense, tabular = await measure_both(server, stub, requests, args)
                if dense.errors or tabular.errors:
                    raise RuntimeError(f"side {name}: {dense.errors + tabular.errors} errors")
                found = dict(
                    zip(
                        FIGURES,
                        (
                            dense.latency_ms(50),
                            tabular.requests_per_s,
                            *tabular.latencies_ms([50, 99]),
                        ),
                        strict=True,
                    )
                )
                figures[name].append(found)
                busy = dense.cpu_cores("server") or 0.0
                print(
                    f"| {name} | {found['dense p50 ms']:.3f} | {found['tabular req/s']:.0f} | "
                    f"{found['tabular p50 ms']:.3f} | {found['tabular p99 ms']:.3f} | "
                    f"{busy:.2f} |"
                )
                return found["dense p50 ms"]

            return measure

        print(
            "| side | dense p50 ms | tabular req/s | tabular p50 ms | tabular p99 ms "
            "| server's cores busy |\n|---|---:|---:|---:|---:|---:|"
        )
        await alternate(side("A"), side("B"), args.rounds)
    print("\nMedians of the rounds' B ÷ A:\n")
    for figure in FIGURES:
        ratios = [b[figure] / a[figure] for a, b in zip(figures["A"], figures["B"], strict=True)]
        a_median = statistics.median(f[figure] for f in figures["A"])
        b_median = statistics.median(f[figure] for f in figures["B"])
        print(
            f"- {figure}: A {a_median:.3f}, B {b_median:.3f}; "
            f"B ÷ A {statistics.median(ratios):.3f} (rounds {min(ratios):.3f}-{max(ratios):.3f})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    facts = machine_facts()
    print(f"# bench/run_place.py, {facts['date']}: {facts['nproc']} cores ({facts['cpu']})")
    print(f'# A: dense run_on = "thread" {args.a}\n# B: dense run_on = "{args.b_run_on}" {args.b}')
    print(
        f"# dense: 1 row, 1 in flight; at the same time tabular: 1 row, "
        f"{args.tabular_in_flight} in flight\n"
    )
    pin_process({CLIENT_CORE})
    steal = steal_counter()
    with tempfile.TemporaryDirectory(prefix="wattserve-run-place-") as tmp:
        asyncio.run(run(args, Path(tmp)))
    print(f"\nThe VM host stole {steal_since(steal):.1%} of the machine's CPU meanwhile.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
