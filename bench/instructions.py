"""Instructions per request in wattserve's own handler, step by step, counted by callgrind.

    python bench/instructions.py [--calls 1000] [--model tabular_classifier] [--rows 1]

On the VM of BENCHMARKS.md the same code runs up to 2x faster or slower from one minute to the
next, so a change worth a few percent cannot be timed there. The number of instructions it runs
does not drift (docs/performance.md, "Counting instructions"). This script counts them for one
request's path through wattserve, without gRPC:

- it builds the demo repository, then copies the model twice, both with `run_on = "loop"` (under
  valgrind the warm-up is 50 times slower, so `run_on = "auto"` would move the model to its
  thread, which the real server does not do): MODEL never waits to batch, so each request runs
  alone, and MODEL_batched waits (up to 1 s) for 8 rows per batch. Whether the batcher waits
  otherwise depends on the clock, which valgrind slows 50 times;
- it runs itself under `valgrind --tool=callgrind`, pinned to one core, starts the server's `App`
  in process, parses one request, and calls each step of the path `--calls` times between two
  callgrind dumps, counting only the main thread. Each step first runs `--warmup` calls
  uncounted, then is counted twice, over `--warmup` calls and over `--warmup` + `--calls`; the
  difference divided by `--calls` cancels the cost of the dumps themselves. The batched step
  fails unless every one of its batches held exactly 8 requests.

It prints one line per step. "request" is `InferenceServicer.ModelInfer` whole; the steps below
it are its parts, so their sum is close to it. The batched line is per request, eight requests
gathered into one batch. valgrind must be installed (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

BATCHED_SUFFIX = "_batched"
BATCH_REQUESTS = 8
STEPS = (
    ("request (ModelInfer), alone", 1),
    (f"request (ModelInfer), in a batch of {BATCH_REQUESTS}", BATCH_REQUESTS),
    ("  decode (protobuf to InferRequest)", 1),
    ("  admit (find the model, validate)", 1),
    ("  schedule and run (the batcher's front door)", 1),
    ("    of which ONNX Runtime (the runner's run)", 1),
    ("  answer (InferResponse, statistics)", 1),
    ("  encode (InferResponse to protobuf)", 1),
    ("serialise the response (gRPC's part, for scale)", 1),
)
"""Each step's name, and how many requests one call of it serves (in the order of `steps`)."""

Step = Callable[[], Awaitable[object]]
_SETTINGS = re.compile(r"(?m)^(run_on|max_queue_delay_us|preferred_batch_sizes) = .*\n")
"""The config.toml lines this script sets itself."""


def calls_of(step: int, requests: int) -> int:
    """How many times a step is called to serve about `requests` requests."""
    return max(requests // STEPS[step][1], 1)


def repository(root: Path, model: str, rows: int) -> Path:
    """The demo model on the loop, and a copy that always batches eight requests of `rows`."""
    from wattserve.demo import ensure_demo_repository

    demo = ensure_demo_repository(root / "demo")
    repo = root / "repository"
    shutil.copytree(demo / model, repo / model)
    shutil.copytree(demo / model, repo / f"{model}{BATCHED_SUFFIX}")
    for name, batching in (
        (model, "max_queue_delay_us = 0\n"),  # never waits, so every request runs alone
        (
            f"{model}{BATCHED_SUFFIX}",
            f"max_queue_delay_us = 1000000\npreferred_batch_sizes = [{BATCH_REQUESTS * rows}]\n",
        ),
    ):
        config = repo / name / "config.toml"
        text = _SETTINGS.sub("", config.read_text())
        text = f'run_on = "loop"\n{text}'
        text = text.replace("[dynamic_batching]\n", f"[dynamic_batching]\n{batching}")
        config.write_text(text)
    return repo


class Context:
    """What the servicer asks of a gRPC call's context: no metadata, no deadline."""

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def time_remaining(self) -> None:
        return None


async def steps(app: Any, model: str, rows: int) -> list[Step]:
    """Each step of the path as a callable, in the order of STEPS."""
    import numpy as np

    from wattserve.core.types import DEFAULT_TENANT
    from wattserve.grpc import messages
    from wattserve.grpc.servicer import InferenceServicer
    from wattserve.protocol import pb
    from wattserve_client._request import infer_request

    dataplane = app.dataplane
    served = dataplane.model(model)
    rng = np.random.default_rng(0)
    inputs = {
        spec.name: rng.standard_normal((rows, *spec.shape[1:])).astype(spec.datatype.numpy)
        for spec in served.signature.inputs
    }
    request = pb.ModelInferRequest.FromString(infer_request(model, inputs).SerializeToString())
    batched = pb.ModelInferRequest()
    batched.CopyFrom(request)
    batched.model_name = f"{model}{BATCHED_SUFFIX}"
    servicer, context = InferenceServicer(dataplane), Context()
    # The steps' inputs, made once by the same calls the request makes (private parts: this is
    # a measurement of them).
    decoded = messages.decode_infer_request(request, None, DEFAULT_TENANT)
    admitted = dataplane._admit(decoded)
    scheduler = served.scheduler
    outputs, _ = await scheduler.infer(admitted.inputs, admitted.rows, admitted.shape_key, None)
    response = dataplane._answer(admitted, outputs, 0)
    encoded = messages.encode_infer_response(response)

    async def whole() -> object:
        return await servicer.ModelInfer(request, context)

    async def in_batch() -> object:
        calls = (servicer.ModelInfer(batched, context) for _ in range(BATCH_REQUESTS))
        return await asyncio.gather(*calls)

    async def decode() -> object:
        return messages.decode_infer_request(request, None, DEFAULT_TENANT)

    async def admit() -> object:
        return dataplane._admit(decoded)

    async def schedule() -> object:
        return await scheduler.infer(admitted.inputs, admitted.rows, admitted.shape_key, None)

    async def run() -> object:
        return await scheduler._run(admitted.inputs, admitted.rows)

    async def answer() -> object:
        return dataplane._answer(admitted, outputs, 0)

    async def encode() -> object:
        return messages.encode_infer_response(response)

    async def serialise() -> object:
        return encoded.SerializeToString()

    return [whole, in_batch, decode, admit, schedule, run, answer, encode, serialise]


def _callgrind(*args: str) -> None:
    subprocess.run(["callgrind_control", *args, str(os.getpid())], check=True, capture_output=True)


async def inside(args: argparse.Namespace) -> None:
    """Under valgrind: start the App, dump the counters around each step's calls."""
    from wattserve.app import App
    from wattserve.settings import ServeSettings

    settings = ServeSettings(
        repository=args.repository,
        port=0,
        metering_enabled=False,
        metrics_enabled=False,
        ledger_path=args.out / "ledger.sqlite",
    )
    app = App(settings)
    await app.start()
    try:
        batched = app.dataplane.model(f"{args.model}{BATCHED_SUFFIX}").statistics
        for index, step in enumerate(await steps(app, args.model, args.rows)):
            counted = calls_of(index, args.calls)
            for _ in range(args.warmup):  # uncounted: first calls, caches, the gap estimate
                await step()
            executions, requests = batched.execution_count, batched.batched_requests
            for label, count in (("short", args.warmup), ("long", args.warmup + counted)):
                _callgrind("-z")
                for _ in range(count):
                    await step()
                _callgrind("-d", f"step{index}-{label}")
            if batched.execution_count > executions:  # the batched step: were its batches whole?
                per_batch = (batched.batched_requests - requests) / (
                    batched.execution_count - executions
                )
                if per_batch != STEPS[index][1]:
                    raise RuntimeError(
                        f"step {STEPS[index][0]!r} ran {per_batch:.2f} requests per batch, not "
                        f"{STEPS[index][1]}: its count would not be what it says"
                    )
    finally:
        await app.stop()


def _totals(out: Path) -> dict[str, int]:
    """Instructions of the main thread in each labelled dump."""
    found: dict[str, int] = {}
    for dump in out.glob("cg.*-01"):
        text = dump.read_text(errors="replace")
        label = re.search(r"^desc: Trigger: Client Request: (?:dump )?(\S+)", text, re.M)
        label = label or re.search(r"^desc: Trigger: .*?(step\d+-\w+)", text, re.M)
        total = re.search(r"^(?:totals|summary): (\d+)", text, re.M)
        if label and total:
            found[label.group(1)] = int(total.group(1))
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="requests counted per step")
    parser.add_argument(
        "--warmup", type=int, default=100, help="uncounted calls per step, then the short pass"
    )
    # Models whose inputs have fixed non-batch dimensions and float data.
    parser.add_argument(
        "--model", default="tabular_classifier", choices=("tabular_classifier", "dense")
    )
    parser.add_argument("--rows", type=int, default=1, help="rows per request")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--repository", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.inside:
        from wattserve.batching.loop_load import new_event_loop

        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(inside(args))
        return 0
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        print(f"{' and '.join(missing)} not found: apt-get install valgrind", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wattserve-instructions-") as tmp:
        root = Path(tmp)
        repo = repository(root, args.model, args.rows)
        command = [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={root}/cg.%p",
            sys.executable,
            __file__,
            "--inside",
            *("--repository", str(repo), "--out", str(root)),
            *("--model", args.model, "--rows", str(args.rows)),
            *("--calls", str(args.calls), "--warmup", str(args.warmup)),
        ]
        if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) > 1:
            command = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *command]
        environment = {**os.environ, "PYTHONHASHSEED": "0"}
        run = subprocess.run(command, capture_output=True, text=True, env=environment)
        if run.returncode != 0:
            print(run.stderr[-4000:], file=sys.stderr)
            return 1
        totals = _totals(root)
    print(f"# bench/instructions.py: {args.model}, {args.rows} row(s) per request, meter off,")
    print(f"# {args.calls} requests per step, main thread only (valgrind callgrind)\n")
    width = max(len(name) for name, _ in STEPS) + 2
    print(f"{'step':<{width}}instructions per request")
    for index, (name, served) in enumerate(STEPS):
        short, long = totals.get(f"step{index}-short"), totals.get(f"step{index}-long")
        if short is None or long is None:
            print(f"callgrind wrote no dump for step {name!r}", file=sys.stderr)
            return 1
        requests = calls_of(index, args.calls) * served
        print(f"{name:<{width}}{(long - short) / requests:>24,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
