"""ONNX Runtime sessions for one model version: provider choice, session options, warm-up, runs."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from wattserve.core import datatypes
from wattserve.core.config import DEFAULT_MAX_BATCH_SIZE, ModelConfig
from wattserve.core.errors import ExecutionError, ModelLoadError
from wattserve.core.types import Signature, Tensors, TensorSpec

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_OPT_LEVELS = {
    "disabled": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}

Provider = str | tuple[str, dict[str, Any]]


def providers_for(config: ModelConfig, available: list[str], *, model: str) -> list[Provider]:
    """The execution providers to ask ONNX Runtime for, or a clear error if the device is absent."""
    if config.device == "cpu":
        return [CPU]
    if CUDA not in available:
        raise ModelLoadError(
            f"model '{model}' asks for device \"cuda\" but this ONNX Runtime has no "
            f"{CUDA} (available: {', '.join(available)}); install onnxruntime-gpu on a machine "
            f'with an NVIDIA GPU, or set device = "cpu"'
        )
    return [(CUDA, {"device_id": config.device_id}), CPU]


LOOP_RUN_LIMIT_NS = 1_000_000
"""run_on = "auto" in a one-core server: the event loop runs batches estimated up to this long."""
LOOP_RUN_LIMIT_SHARED_NS = 250_000
"""run_on = "auto" with more cores, where a thread's run could overlap the loop: up to this."""
ALL_ROWS = sys.maxsize
"""`loop_rows` of a model whose every batch runs on the event loop."""


@dataclass(frozen=True, slots=True)
class BatchCost:
    """A model's run time measured at warm-up: one row, and its largest batch."""

    one_row_ns: int
    full_rows: int
    full_ns: int

    def rows_within(self, limit_ns: int) -> int:
        """The most rows whose run, on a straight line between the two measurements, is
        estimated to take under `limit_ns`: 0 when one row takes longer."""
        if self.one_row_ns >= limit_ns:
            return 0
        if self.full_ns < limit_ns or self.full_rows == 1:
            return self.full_rows
        per_row = (self.full_ns - self.one_row_ns) / (self.full_rows - 1)
        return min(self.full_rows, math.ceil((limit_ns - self.one_row_ns) / per_row))


def loop_rows(config: ModelConfig, cores: int, cost: BatchCost | None) -> int:
    """The most rows a batch may hold and still run on the event loop (0: every batch goes to
    the executor thread; ALL_ROWS: none does). docs/performance.md, "Where a batch runs".

    Handing a batch to an executor thread and back costs about 250 µs of CPU on one core, and
    still about 300 µs per request with two (a thread wake-up, two GIL switches, a loop wake-up):
    more than a small model's whole batch. So "auto" runs a CPU model with one single-threaded
    instance on the loop when the batch is short enough that stalling the loop for it costs
    less: estimated under 1 ms on one core, under 250 µs where a thread could overlap it.
    """
    if config.run_on != "auto":
        return ALL_ROWS if config.run_on == "loop" else 0
    one_thread = config.intra_op_threads == 1 or (config.intra_op_threads == 0 and cores == 1)
    if config.device != "cpu" or config.instances != 1 or not one_thread or cost is None:
        return 0
    rows = cost.rows_within(LOOP_RUN_LIMIT_NS if cores == 1 else LOOP_RUN_LIMIT_SHARED_NS)
    return ALL_ROWS if rows == cost.full_rows else rows


def session_options(config: ModelConfig) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = config.intra_op_threads
    options.inter_op_num_threads = config.inter_op_threads
    options.graph_optimization_level = _OPT_LEVELS[config.graph_optimization_level]
    # Spinning intra-op threads burn the cores the gRPC loop needs between batches.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def _spec(arg: Any, *, model: str, batches: bool) -> TensorSpec:
    dims = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in arg.shape)
    if batches:
        dims = (-1, *dims[1:])
    return TensorSpec(arg.name, datatypes.from_onnx(arg.type, model=model, tensor=arg.name), dims)


def read_signature(session: ort.InferenceSession, config: ModelConfig, *, model: str) -> Signature:
    """The signature from the graph: batchable when every tensor's first dimension is dynamic."""
    args = [*session.get_inputs(), *session.get_outputs()]
    dynamic_first = all(
        len(a.shape) > 0 and not (isinstance(a.shape[0], int) and a.shape[0] >= 0) for a in args
    )
    max_batch = config.max_batch_size
    if max_batch is None:
        max_batch = DEFAULT_MAX_BATCH_SIZE if dynamic_first else 0
    elif max_batch > 0 and not dynamic_first:
        fixed = [f"'{a.name}' {list(a.shape)}" for a in args if not a.shape or a.shape[0] != -1]
        raise ModelLoadError(
            f"model '{model}': config sets max_batch_size = {max_batch}, but batching needs a "
            f"dynamic first dimension on every input and output; these are fixed: "
            f"{', '.join(fixed)}"
        )
    preferred = config.dynamic_batching.preferred_batch_sizes
    if max_batch and any(p > max_batch for p in preferred):
        raise ModelLoadError(
            f"model '{model}': preferred_batch_sizes {preferred} must not exceed "
            f"max_batch_size {max_batch}"
        )
    batches = max_batch > 0
    return Signature(
        inputs=tuple(_spec(a, model=model, batches=batches) for a in session.get_inputs()),
        outputs=tuple(_spec(a, model=model, batches=batches) for a in session.get_outputs()),
        max_batch_size=max_batch,
    )


def _zeros(spec: TensorSpec, rows: int) -> np.ndarray:
    shape = tuple(rows if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(spec.shape))
    if spec.datatype is datatypes.BYTES:
        return np.full(shape, "", dtype=object)
    return np.zeros(shape, dtype=spec.datatype.numpy)


class OnnxRunner:
    """The sessions (instances) of one model version and the threads that run them."""

    def __init__(self, path: Path, config: ModelConfig, *, model: str, version: int) -> None:
        self.label = f"model '{model}' version {version}"
        providers = providers_for(config, ort.get_available_providers(), model=model)
        try:
            self._sessions = [
                ort.InferenceSession(
                    str(path), sess_options=session_options(config), providers=providers
                )
                for _ in range(config.instances)
            ]
        except Exception as exc:  # ONNX Runtime raises its own untyped errors for bad files
            raise ModelLoadError(f"{self.label}: ONNX Runtime cannot load {path}: {exc}") from exc
        if config.device == "cuda" and CUDA not in self._sessions[0].get_providers():
            # ONNX Runtime silently falls back to the CPU when the CUDA libraries fail to load.
            raise ModelLoadError(
                f"{self.label}: {CUDA} is installed but could not be initialised (check the "
                f"CUDA and cuDNN libraries); ONNX Runtime would have run it on the CPU"
            )
        self.providers = self._sessions[0].get_providers()
        self.signature = read_signature(self._sessions[0], config, model=model)
        # Named once: `run(None, ...)` lists the outputs and builds default RunOptions on every
        # call, a fifth of a small model's run (docs/performance.md, "ONNX Runtime's own cost").
        self._output_names = [spec.name for spec in self.signature.outputs]
        self._run_options = ort.RunOptions()
        self._idle = list(self._sessions)
        """Sessions not running a batch. The batcher never runs more batches at once than there
        are instances, so `run` always finds one (a plain list: an asyncio.Queue costs 3 µs)."""
        self._pool = ThreadPoolExecutor(
            max_workers=config.instances, thread_name_prefix=f"ort-{model}-{version}"
        )
        cost = self._warm_up() if config.warmup else None
        self.loop_rows = loop_rows(config, len(os.sched_getaffinity(0)), cost)
        """Batches of up to this many rows run on the event loop; bigger ones on the thread."""
        if self.loop_rows == ALL_ROWS:
            place = "the event loop"
        elif self.loop_rows:
            place = f"the event loop up to {self.loop_rows} row(s), else its executor thread"
        else:
            place = "its executor thread"
        logger.info("%s runs its batches on %s", self.label, place)

    @property
    def instances(self) -> int:
        return len(self._sessions)

    def _warm_up(self) -> BatchCost:
        """Run every instance on zeros: one row (one-off set-up), one row three times more, then
        a full batch. Returns the slowest instance's median one-row run and its full batch."""
        full_rows = self.signature.max_batch_size if self.signature.batches else 1
        one_row_ns = full_ns = 0
        for session in self._sessions:
            self._timed_run(session, 1)
            one_row_ns = max(one_row_ns, sorted(self._timed_run(session, 1) for _ in range(3))[1])
            full_ns = max(full_ns, self._timed_run(session, full_rows))
        logger.debug("%s warmed up on %d instance(s)", self.label, len(self._sessions))
        return BatchCost(one_row_ns, full_rows, full_ns)

    def _timed_run(self, session: ort.InferenceSession, rows: int) -> int:
        feed = {spec.name: _zeros(spec, rows) for spec in self.signature.inputs}
        started = time.perf_counter_ns()
        try:
            session.run(None, feed)
        except Exception as exc:
            raise ModelLoadError(f"{self.label}: warm-up with {rows} row(s) failed: {exc}") from exc
        return time.perf_counter_ns() - started

    async def run(self, inputs: Tensors, rows: int) -> Tensors:
        """Run one batch of `rows` rows on a free instance: on the event loop when it is small
        enough (`loop_rows`), else on the executor thread."""
        session = self._idle.pop()
        if rows <= self.loop_rows:
            try:
                return self._run(session, inputs)
            finally:
                self._idle.append(session)
        loop = asyncio.get_running_loop()
        running = loop.run_in_executor(self._pool, self._run, session, inputs)
        try:
            return await asyncio.shield(running)
        except asyncio.CancelledError:
            # The caller gave up (a lone request's client cancelled), but the thread cannot be
            # stopped: the instance stays busy until ONNX Runtime returns.
            await asyncio.wait([running])
            raise
        finally:
            self._idle.append(session)

    def _run(self, session: ort.InferenceSession, inputs: Tensors) -> Tensors:
        try:
            results = session.run(self._output_names, inputs, self._run_options)
        except Exception as exc:
            raise ExecutionError(f"{self.label}: ONNX Runtime failed: {exc}") from exc
        # Every output is a tensor (read_signature refuses others), so each is a numpy array.
        return dict(zip(self._output_names, results, strict=True))

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._sessions.clear()
