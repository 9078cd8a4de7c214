"""ONNX Runtime sessions for one model version: provider choice, session options, warm-up, runs."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
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
"""run_on = "auto" in a one-core server: the event loop runs batches up to this long."""
LOOP_RUN_LIMIT_SHARED_NS = 250_000
"""run_on = "auto" with more cores, where a thread's run could overlap the loop: up to this."""


def runs_on_loop(config: ModelConfig, cores: int, warm_up_ns: int | None) -> bool:
    """Whether batches run on the event loop (docs/performance.md, "Where a batch runs").

    Handing a batch to an executor thread and back costs about 250 µs of CPU on one core, and
    still about 300 µs per request with two (a thread wake-up, two GIL switches, a loop wake-up):
    more than a small model's whole batch. So "auto" runs a CPU model with one single-threaded
    instance on the loop when its largest warm-up batch is short enough that stalling the loop
    for it costs less: under 1 ms on one core, under 250 µs where a thread could overlap it.
    """
    if config.run_on != "auto":
        return config.run_on == "loop"
    one_thread = config.intra_op_threads == 1 or (config.intra_op_threads == 0 and cores == 1)
    limit = LOOP_RUN_LIMIT_NS if cores == 1 else LOOP_RUN_LIMIT_SHARED_NS
    return (
        config.device == "cpu"
        and config.instances == 1
        and one_thread
        and warm_up_ns is not None
        and warm_up_ns < limit
    )


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
        warm_up_ns = self._warm_up() if config.warmup else None
        self.runs_on_loop = runs_on_loop(config, len(os.sched_getaffinity(0)), warm_up_ns)
        logger.info(
            "%s runs its batches on %s",
            self.label,
            "the event loop" if self.runs_on_loop else "its executor thread",
        )

    @property
    def instances(self) -> int:
        return len(self._sessions)

    def _warm_up(self) -> int:
        """Run every instance on zeros, one row then a full batch (or one row twice); returns
        the slowest second run in nanoseconds (the first pays one-off set-up)."""
        sizes = [1, self.signature.max_batch_size if self.signature.batches else 1]
        slowest = 0
        for session in self._sessions:
            for n in sizes:
                feed = {spec.name: _zeros(spec, n) for spec in self.signature.inputs}
                started = time.perf_counter_ns()
                try:
                    session.run(None, feed)
                except Exception as exc:
                    raise ModelLoadError(
                        f"{self.label}: warm-up with {n} row(s) failed: {exc}"
                    ) from exc
            slowest = max(slowest, time.perf_counter_ns() - started)
        logger.debug("%s warmed up on %d instance(s)", self.label, len(self._sessions))
        return slowest

    async def run(self, inputs: Tensors) -> Tensors:
        """Run one batch on a free instance: on the event loop or off it (`runs_on_loop`)."""
        session = self._idle.pop()
        if self.runs_on_loop:
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
