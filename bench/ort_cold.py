"""How much slower ONNX Runtime runs once other work has used the caches: part of why a lone
request's run in the server takes longer than the in-process batch-1 time that issue 5's
1-in-flight target adds to the echo floor.

    python bench/ort_cold.py [--model dense] [--runs 400] [--megabytes 0,1,4,16,64]

With the server's session options (`wattserve.execution.onnx.session_options`), pinned to core 0,
each run of a batch of one is measured twice: right after another run (warm), and again after
reading M megabytes of other memory, as a server's other work does between two requests. It
prints the median of each and the median of the paired differences, which cancels the VM's
drift.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from serve_vs_ort import machine_facts

from wattserve.core.config import read_config
from wattserve.demo import ensure_demo_repository
from wattserve.execution.onnx import session_options


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="dense")
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--megabytes", default="0,1,4,16,64")
    args = parser.parse_args()
    os.sched_setaffinity(0, {0})
    facts = machine_facts()
    print(f"# bench/ort_cold.py, {facts['date']}: {facts['cpu']}, core 0, model {args.model}")
    print("| other memory read | warm ms | after ms | paired difference ms |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="wattserve-cold-") as tmp:
        directory = ensure_demo_repository(Path(tmp) / "demo") / args.model
        config = read_config(directory)
        session = ort.InferenceSession(
            str(directory / "1" / "model.onnx"),
            session_options(config),
            providers=["CPUExecutionProvider"],
        )
        node = session.get_inputs()[0]
        feed = {node.name: np.random.default_rng(0).standard_normal((1, node.shape[1]), np.float32)}
        for megabytes in (int(m) for m in args.megabytes.split(",")):
            other = np.ones(max(1, megabytes * 2**20 // 8))
            warm, after = [], []
            for _ in range(args.runs):
                session.run(None, feed)
                warm.append(timed(session, feed))
                other.sum()
                after.append(timed(session, feed))
            difference = statistics.median(a - w for a, w in zip(after, warm, strict=True))
            print(
                f"| {megabytes} MB | {statistics.median(warm):.3f} | "
                f"{statistics.median(after):.3f} | {difference:+.3f} |",
                flush=True,
            )
    return 0


def timed(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    started = time.perf_counter()
    session.run(None, feed)
    return (time.perf_counter() - started) * 1e3


if __name__ == "__main__":
    sys.exit(main())
