"""Two server configurations against each other, in paired rounds: is B faster than A?

    python bench/ab.py --a "--repository REPO_A" --b "--repository REPO_B" \\
        [--model tabular_classifier] [--rows 1] [--concurrency 128] [--streams N] [--rounds 6]

Both servers (`wattserve serve` with the given extra arguments, meter on) run pinned to the same
core; the load generator runs in this process on the other. Each round measures A and B back to
back, the one not measured frozen, and the side that goes first alternates (`_paired.py`), so a
drifting VM favours neither. Per round it prints each side's requests/s, server CPU per request
and rows per executed batch, then the median of B ÷ A over the rounds: the figure to decide on.

Use it before changing a default (a batching delay, a session option): two single runs minutes
apart differ by more than most such changes.

A side can also be one of the reference servers in bench/, `echo` (`_echo.py`) or `minimal`
(`_minimal.py`, issue 5's simple batching server), with its own arguments; `{demo}` stands for
the demo repository's folder:

    python bench/ab.py --a "echo" \
        --b "minimal --model {demo}/tabular_classifier/1/model.onnx --run-on loop"

Echo's rows per batch print as "-": it keeps no statistics.

As in a shell, leading `NAME=value` words set environment variables for one side alone, e.g. a
gRPC core experiment against the default: `--a "" --b "GRPC_EXPERIMENTS=name"`.

`checkout PATH [args]` runs `wattserve serve [args]` from another copy of the code, so a change
can be measured against its base:

    git worktree add /tmp/base HEAD
    python bench/ab.py --a "checkout /tmp/base" --b ""
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import grpc
from _loadgen import batch_counts, request_from_file
from _paired import Side, alternate, frozen
from _server import ServerSpec, steal_counter, steal_since
from serve_vs_ort import build_demo, machine_facts, pin_process

from wattserve.protocol import pb_grpc
from wattserve_client._request import CHANNEL_OPTIONS
from wattserve_client.loadgen import Schedule, closed_loop
from wattserve_client.payloads import PayloadShape
from wattserve_client.sweep import Target, build_request

SERVER_CORE, CLIENT_CORE = 0, 1


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--a", required=True, help="`wattserve serve` arguments of A, or echo/minimal [args]"
    )
    parser.add_argument(
        "--b", required=True, help="`wattserve serve` arguments of B, or echo/minimal [args]"
    )
    parser.add_argument("--model", default="tabular_classifier")
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--concurrency", type=int, default=128, help="requests in flight")
    parser.add_argument(
        "--streams",
        type=int,
        default=0,
        help="on this many ModelStreamInfer streams sharing the requests in flight (0: unary)",
    )
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup-s", type=float, default=1.0)
    parser.add_argument("--window-s", type=float, default=3.0)
    return parser.parse_args(argv)


async def run(args: argparse.Namespace, scratch: Path) -> list[tuple[float, float]]:
    demo = scratch / "demo"
    build_demo(demo)
    specs = {"A": ServerSpec.parse(args.a, demo), "B": ServerSpec.parse(args.b, demo)}
    a_spec, b_spec = specs["A"], specs["B"]
    async with (
        a_spec.serving(demo, SERVER_CORE) as a,
        b_spec.serving(demo, SERVER_CORE) as b,
        grpc.aio.insecure_channel(a.address, options=CHANNEL_OPTIONS) as a_channel,
        grpc.aio.insecure_channel(b.address, options=CHANNEL_OPTIONS) as b_channel,
    ):
        stubs = {
            "A": (a, b, pb_grpc.GRPCInferenceServiceStub(a_channel)),  # type: ignore[no-untyped-call]
            "B": (b, a, pb_grpc.GRPCInferenceServiceStub(b_channel)),  # type: ignore[no-untyped-call]
        }
        target = Target(a.address, args.model, shape=PayloadShape(rows=args.rows))
        wattserve = [name for name, spec in specs.items() if spec.command is None]
        if wattserve:  # it answers ModelMetadata; the reference servers do not
            request = await build_request(stubs[wattserve[0]][2], target)
        else:
            request = request_from_file(demo / args.model / "1" / "model.onnx", target)
        schedule = Schedule(args.warmup_s, args.window_s, 1, 1, -1.0)

        def side(name: str) -> Side:
            server, other, stub = stubs[name]
            counted = specs[name].keeps_statistics

            async def measure() -> float:
                with frozen(other):
                    before = await batch_counts(stub, args.model) if counted else (0, 0)
                    probes = [lambda: {"server": server.cpu_seconds()["server"]}]
                    m = await closed_loop(
                        stub,
                        request,
                        concurrency=args.concurrency,
                        schedule=schedule,
                        streams=args.streams,
                        cpu_probes=probes,
                    )
                    rows, batches = await batch_counts(stub, args.model) if counted else (0, 0)
                cores = m.cpu_cores("server") or 0.0
                per_request = f"{cores / m.requests_per_s * 1e6:.0f}" if m.requests else "-"
                per_batch = f"{(rows - before[0]) / max(batches - before[1], 1):.1f}"
                print(
                    f"| {name} | {m.requests_per_s:.0f} | {per_request} | "
                    f"{per_batch if counted else '-'} "
                    f"| {m.errors} |",
                    flush=True,
                )
                return m.requests_per_s

            return measure

        print("| side | req/s | server µs/req | rows/batch | errors |\n|---|---:|---:|---:|---:|")
        return (await alternate(side("A"), side("B"), args.rounds)).pairs


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    facts = machine_facts()
    print(f"# bench/ab.py, {facts['date']}: {facts['nproc']} cores ({facts['cpu']})")
    print(f"# A: {args.a}\n# B: {args.b}")
    path = f"{args.streams} stream(s)" if args.streams else "unary"
    print(f"# {args.model}, {args.rows} row(s), {args.concurrency} in flight, {path}\n")
    pin_process({CLIENT_CORE})
    steal = steal_counter()
    with tempfile.TemporaryDirectory(prefix="wattserve-ab-") as tmp:
        pairs = asyncio.run(run(args, Path(tmp)))
    ratios = [b / a for a, b in pairs]
    print(f"\nB ÷ A per round: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"B ÷ A, median of {len(ratios)} rounds: {statistics.median(ratios):.3f}")
    print(f"The VM host stole {steal_since(steal):.1%} of the machine's CPU meanwhile.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
