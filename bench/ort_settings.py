"""ONNX Runtime settings per model, measured: the evidence behind config.toml's defaults.

    python bench/ort_settings.py [--seconds 1.5] [--models tabular,dense]

For each demo model and the bench's heavy CNN, in a fresh process, with the server's own session
options (`wattserve.execution.onnx.session_options`), it runs back to back at a small and a large
batch and prints samples/s for:

- the default (graph optimisation "all", 1 intra-op thread, no spinning), on core 0;
- each other graph optimisation level ("disabled", "basic", "extended"), on core 0;
- 2 intra-op threads, on cores 0 and 1 (what a server gives up its second core for);
- IOBinding: inputs and outputs bound to numpy buffers allocated once (`run_with_iobinding`),
  so ONNX Runtime writes into existing memory instead of allocating outputs on each run.

Each figure is divided by the default's, measured in the same process. The variants run in
order and then in reverse order, and each figure is the mean of its two passes, so slow drift
cancels out.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import _heavy
import numpy as np
from _ort import _feed
from serve_vs_ort import machine_facts

from wattserve.demo import ensure_demo_repository

BATCHES = {"tabular_classifier": (1, 64), "text_classifier": (1, 32), "dense": (1, 64)}
BATCHES[_heavy.NAME] = (1, 4)
VARIANTS = (
    "default",
    "opt disabled",
    "opt basic",
    "opt extended",
    "2 intra-op threads",
    "iobinding",
)


def measure_model(model: Path, batches: tuple[int, ...], seconds: float) -> list[tuple[Any, ...]]:
    """(variant, batch, samples/s) for every variant and batch; runs in a child process."""
    import onnxruntime as ort

    from wattserve.core.config import ModelConfig
    from wattserve.execution.onnx import session_options

    def session(**config: Any) -> Any:
        options = session_options(ModelConfig(**config))
        return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])

    rows = []
    for batch in batches:
        default = session()
        feed = _feed(default, batch, 16, np.random.default_rng(batch))
        runs: dict[str, tuple[Callable[[], object], set[int]]] = {
            "default": (_runner(default, feed), {0}),
            "opt disabled": (_runner(session(graph_optimization_level="disabled"), feed), {0}),
            "opt basic": (_runner(session(graph_optimization_level="basic"), feed), {0}),
            "opt extended": (_runner(session(graph_optimization_level="extended"), feed), {0}),
            "2 intra-op threads": (_runner(session(intra_op_threads=2), feed), {0, 1}),
            "iobinding": (_bound(default, feed), {0}),
        }
        # There and back (A B C ... C B A), each figure the mean of its two: slow drift cancels.
        order = [*runs, *reversed(runs)]
        rates: dict[str, list[float]] = {variant: [] for variant in runs}
        for variant in order:
            run, cores = runs[variant]
            os.sched_setaffinity(0, cores)
            rates[variant].append(_rate(run, seconds / 2))
        rows += [(variant, batch, batch * sum(r) / len(r)) for variant, r in rates.items()]
    return rows


def _runner(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    return lambda: session.run(None, feed)


def _bound(session: Any, feed: dict[str, np.ndarray]) -> Callable[[], object]:
    """run_with_iobinding with every input and output bound to numpy memory allocated once."""
    shapes = [o.shape for o in session.run(None, feed)]
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, value)
    outputs = {}
    for node, shape in zip(session.get_outputs(), shapes, strict=True):
        dtype = np.float32 if "float" in node.type else np.int64
        outputs[node.name] = buffer = np.empty(shape, dtype=dtype)
        binding.bind_output(node.name, "cpu", 0, dtype, buffer.shape, buffer.ctypes.data)

    def run(outputs: dict[str, np.ndarray] = outputs) -> None:  # keeps the buffers alive
        session.run_with_iobinding(binding)

    return run


def _rate(run: Callable[[], object], seconds: float) -> float:
    """Runs per second, back to back, after a warm-up of a third of `seconds`."""
    for phase in (seconds / 3, seconds):
        start, runs = time.perf_counter(), 0
        while (elapsed := time.perf_counter() - start) < phase or runs == 0:
            run()
            runs += 1
    return runs / elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.5)
    parser.add_argument("--models", default="", help="only models whose name contains one of these")
    args = parser.parse_args()
    facts = machine_facts()
    print(f"# bench/ort_settings.py, {facts['date']}: {facts['nproc']} cores ({facts['cpu']}), ")
    print(f"# onnxruntime {facts['onnxruntime']}\n")
    print("| model | batch | variant | samples/s | ÷ default |\n|---|---:|---|---:|---:|")
    wanted = [w for w in args.models.split(",") if w]
    spawn = multiprocessing.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="wattserve-ort-") as tmp:
        demo = ensure_demo_repository(Path(tmp) / "demo")
        _heavy.write(demo)
        for name, batches in BATCHES.items():
            if wanted and not any(w in name for w in wanted):
                continue
            with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
                rows = pool.submit(
                    measure_model, demo / name / "1" / "model.onnx", batches, args.seconds
                ).result()
            defaults = {batch: rate for variant, batch, rate in rows if variant == "default"}
            for variant, batch, rate in rows:
                print(
                    f"| {name} | {batch} | {variant} | {rate:.1f} | {rate / defaults[batch]:.3f} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
