"""The ceiling: in-process ONNX Runtime on one core, with the server's session options."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class OrtPoint:
    """In-process ONNX Runtime at one batch size."""

    batch: int
    runs: int
    seconds: float

    @property
    def samples_per_s(self) -> float:
        return self.runs * self.batch / self.seconds

    @property
    def ms_per_batch(self) -> float:
        return self.seconds * 1e3 / self.runs


def best(points: Sequence[OrtPoint]) -> OrtPoint:
    return max(points, key=lambda p: p.samples_per_s)


def measure_in_child(
    model: Path,
    *,
    core: int | None,
    batch_sizes: Sequence[int],
    warmup_s: float,
    duration_s: float,
    sequence_length: int = 16,
) -> list[OrtPoint]:
    """Measure in a fresh interpreter, so ONNX Runtime never shares the load generator's process.

    Inputs are seeded random tensors shaped from the model itself: `batch` rows, and
    `sequence_length` for any other dimension the model leaves open.
    """
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn) as pool:
        job = pool.submit(_measure, model, core, batch_sizes, warmup_s, duration_s, sequence_length)
        return job.result()


def _measure(
    model: Path,
    core: int | None,
    batch_sizes: Sequence[int],
    warmup_s: float,
    duration_s: float,
    sequence_length: int,
) -> list[OrtPoint]:
    if core is not None:
        # With one intra-op thread ONNX Runtime computes on the calling thread: pin that one.
        os.sched_setaffinity(0, {core})
    import onnxruntime as ort  # here, not at the top: the parent process never loads it

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    points = []
    for batch in batch_sizes:
        feed = _feed(session, batch, sequence_length, np.random.default_rng(batch))
        _run_for(session, feed, warmup_s)
        points.append(OrtPoint(batch, *_run_for(session, feed, duration_s)))
    return points


def _feed(
    session: Any, batch: int, sequence_length: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    feed = {}
    for node in session.get_inputs():
        dims = [d if isinstance(d, int) and d > 0 else sequence_length for d in node.shape]
        shape = (batch, *dims[1:])
        if "float" in node.type:
            feed[node.name] = rng.standard_normal(shape, dtype=np.float32)
        else:  # integer ids (text_classifier's tokens): small, valid for any vocabulary
            feed[node.name] = rng.integers(0, 100, shape, dtype=np.int64)
    return feed


def _run_for(session: Any, feed: dict[str, np.ndarray], seconds: float) -> tuple[int, float]:
    """Run back to back (at least once) for `seconds`; return (runs, seconds taken)."""
    start = time.perf_counter()
    runs = 0
    while True:
        session.run(None, feed)
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return runs, elapsed
