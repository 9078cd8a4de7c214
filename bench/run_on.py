"""Where a batch runs (`run_on`): thread against loop, unary and streamed, next to the echo floor.

    python bench/run_on.py [--calls 15000] [--rounds 2] [--unpinned]

Each round starts, in turn, wattserve on the tabular demo model with run_on = "thread" and
run_on = "loop" (meter on, default settings otherwise), the echo floor (`_echo.py`), and the echo
floor with its handlers added the way wattserve adds its own (`echo-generic`), and sends each
`--calls` calls: unary with 32 in flight, then on one ModelStreamInfer stream with 128 in flight.
It prints calls/s and the **server's CPU per call** (its threads' and child processes' CPU
time ÷ calls, `ServerProcess.cpu_seconds`), which
time stolen by the VM host does not inflate the way it cuts calls/s. The server runs on core 0 and
the load generator on core 1; with `--unpinned` the server may use every core (the load generator
still sits on core 1).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from _server import serving, steal_counter, steal_since
from serve_vs_ort import machine_facts, pin_process

from wattserve.demo import ensure_demo_repository
from wattserve.protocol import pb_grpc
from wattserve_client._request import CHANNEL_OPTIONS
from wattserve_client.sweep import Target, build_request

ECHO = Path(__file__).with_name("_echo.py")
MODEL = "tabular_classifier"
UNARY_IN_FLIGHT = 32
STREAM_IN_FLIGHT = 128
WARM_UP_CALLS = 2000


def repository(root: Path, run_on: str) -> Path:
    """The tabular demo model alone, with `run_on` set."""
    demo = ensure_demo_repository(root / "demo")
    repo = root / f"run_on-{run_on}"
    shutil.copytree(demo / MODEL, repo / MODEL)
    config = repo / MODEL / "config.toml"
    text = re.sub(r"(?m)^run_on = .*\n", "", config.read_text())
    config.write_text(f'run_on = "{run_on}"\n{text}')
    return repo


async def unary(stub: Any, request: Any, calls: int) -> None:
    left = calls

    async def sender() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            await stub.ModelInfer(request)

    await asyncio.gather(*(sender() for _ in range(UNARY_IN_FLIGHT)))


async def stream(stub: Any, request: Any, calls: int) -> None:
    call = stub.ModelStreamInfer()
    sent = answered = 0
    for _ in range(min(STREAM_IN_FLIGHT, calls)):
        await call.write(request)
        sent += 1
    async for response in call:
        answered += 1
        if response.error_message:
            raise RuntimeError(response.error_message)
        if sent < calls:
            await call.write(request)
            sent += 1
        elif answered == sent:
            break
    await call.done_writing()


ECHOES = {
    "echo": [sys.executable, str(ECHO)],
    "echo-generic": [sys.executable, str(ECHO), "--generic-handlers-only"],
}
LABELS = ("thread", "loop", *ECHOES)


async def measure(
    label: str, server_args: list[str] | None, request: Any | None, args: argparse.Namespace
) -> tuple[Any, dict[str, tuple[float, float]]]:
    """(the request it built or used, {path: (calls/s, server CPU µs per call)})."""
    command = ECHOES.get(label)
    core = None if args.unpinned else 0
    found = {}
    paths: dict[str, Callable[[Any, Any, int], Awaitable[None]]] = {
        "unary": unary,
        "stream": stream,
    }
    async with (
        serving(args.scratch, core, server_args or [], command=command) as server,
        grpc.aio.insecure_channel(server.address, options=CHANNEL_OPTIONS) as channel,
    ):
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        if request is None:
            request = await build_request(stub, Target(server.address, MODEL))
        for path, send in paths.items():
            await send(stub, request, WARM_UP_CALLS)
            cpu, started = server.cpu_seconds()["server"], time.perf_counter()
            await send(stub, request, args.calls)
            seconds = time.perf_counter() - started
            per_call_us = (server.cpu_seconds()["server"] - cpu) / args.calls * 1e6
            found[path] = (args.calls / seconds, per_call_us)
            print(
                f"| {label} | {path} | {args.calls / seconds:.0f} | {per_call_us:.0f} |", flush=True
            )
    return request, found


async def run(args: argparse.Namespace) -> dict[tuple[str, str], list[tuple[float, float]]]:
    repos = {mode: repository(args.scratch, mode) for mode in ("thread", "loop")}
    results: dict[tuple[str, str], list[tuple[float, float]]] = defaultdict(list)
    request = None
    for _ in range(args.rounds):
        for label in LABELS:
            server_args = None if label in ECHOES else ["--repository", str(repos[label])]
            request, found = await measure(label, server_args, request, args)
            for path, figures in found.items():
                results[(label, path)].append(figures)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=15000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--unpinned", action="store_true", help="let the server use every core")
    args = parser.parse_args()
    facts = machine_facts()
    print(f"# bench/run_on.py, {facts['date']}: {facts['nproc']} cores ({facts['cpu']})")
    server = "every core" if args.unpinned else "core 0"
    print(f"# server on {server}, load generator on core 1, {args.calls} calls per point\n")
    pin_process({1})
    print("| server | path | calls/s | server CPU µs per call |\n|---|---|---:|---:|")
    steal = steal_counter()
    with tempfile.TemporaryDirectory(prefix="wattserve-run-on-") as tmp:
        args.scratch = Path(tmp)
        results = asyncio.run(run(args))
    print(f"\nThe VM host stole {steal_since(steal):.1%} of the machine's CPU during the runs.\n")
    print("Medians of the rounds:\n")
    print("| server | path | calls/s | server CPU µs per call | calls/s ÷ echo |")
    print("|---|---|---:|---:|---:|")
    for path in ("unary", "stream"):
        echo = statistics.median(r for r, _ in results[("echo", path)])
        for label in LABELS:
            rate = statistics.median(r for r, _ in results[(label, path)])
            cpu = statistics.median(c for _, c in results[(label, path)])
            print(f"| {label} | {path} | {rate:.0f} | {cpu:.0f} | {rate / echo:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
