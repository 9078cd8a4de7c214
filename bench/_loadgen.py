"""Closed-loop gRPC load generator: a fixed number of ModelInfer calls always in flight.

Each of `concurrency` workers sends the same prebuilt request, waits for the answer and sends it
again, so exactly `concurrency` requests are outstanding at any moment. Only calls that complete
inside the measurement window (after the warm-up) count; each one's latency is kept in
nanoseconds. Any failed call stops the run: a throughput figure with errors in it means nothing.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from wattserve.protocol import pb, pb_grpc

# Generous: under a closed loop a healthy call takes milliseconds; a hung server must not hang us.
CALL_TIMEOUT_S = 30.0

CpuProbe = Callable[[], Mapping[str, float]]
"""CPU seconds consumed so far, per label (a process, a group of threads); read at the window
edges. A label missing at the start counts from zero."""


class LoadError(RuntimeError):
    """A call failed (or answered something unexpected) during a run."""


def fp32_request(
    model: str, input_name: str, rows: int, width: int, *, seed: int
) -> pb.ModelInferRequest:
    """A ModelInferRequest with one FP32 input of shape [rows, width] of seeded random data."""
    data = np.random.default_rng(seed).standard_normal((rows, width), dtype=np.float32)
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name=input_name, datatype="FP32", shape=[rows, width]
            )
        ],
        raw_input_contents=[data.tobytes()],
    )


async def check_response(
    stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest, width: int
) -> None:
    """One call whose answer must hold one FP32 output of [rows, width] finite values."""
    response = await _call(stub, request)
    rows = request.inputs[0].shape[0]
    if len(response.raw_output_contents) != 1 or len(response.outputs) != 1:
        raise LoadError(f"expected one raw output, got {len(response.raw_output_contents)}")
    shape = list(response.outputs[0].shape)
    values = np.frombuffer(response.raw_output_contents[0], dtype=np.float32)
    if shape != [rows, width] or values.size != rows * width or not np.isfinite(values).all():
        raise LoadError(
            f"expected [{rows}, {width}] finite FP32 values, got shape {shape} with "
            f"{values.size} values"
        )


async def batch_counts(stub: pb_grpc.GRPCInferenceServiceStub, model: str) -> tuple[int, int]:
    """The model's (rows inferred, batches executed) so far, from ModelStatistics."""
    response = await stub.ModelStatistics(
        pb.ModelStatisticsRequest(name=model), timeout=CALL_TIMEOUT_S
    )
    rows = sum(s.inference_count for s in response.model_stats)
    batches = sum(s.execution_count for s in response.model_stats)
    return rows, batches


@dataclass(frozen=True, slots=True)
class Window:
    """The measurement window on the perf_counter_ns clock: [start_ns, end_ns)."""

    start_ns: int
    end_ns: int

    @property
    def seconds(self) -> float:
        return (self.end_ns - self.start_ns) / 1e9


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What one closed-loop run measured inside its window."""

    rows_per_request: int
    concurrency: int
    window_s: float
    latencies_ns: np.ndarray
    """One entry per call completed inside the window."""
    cpu_cores: dict[str, float]
    """CPU time used during the window per probe label, in cores (1.0 = one core fully busy)."""

    @property
    def requests(self) -> int:
        return int(self.latencies_ns.size)

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.window_s

    @property
    def samples_per_s(self) -> float:
        return self.requests_per_s * self.rows_per_request

    def latency_ms(self, percentile: float) -> float:
        return float(np.percentile(self.latencies_ns, percentile)) / 1e6


async def run_closed_loop(
    stub: pb_grpc.GRPCInferenceServiceStub,
    request: pb.ModelInferRequest,
    *,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    cpu_probes: Sequence[CpuProbe],
) -> LoadResult:
    """Keep `concurrency` copies of `request` in flight for warm-up + window; measure the window."""
    start_ns = time.perf_counter_ns() + round(warmup_s * 1e9)
    window = Window(start_ns, start_ns + round(duration_s * 1e9))
    try:
        async with asyncio.TaskGroup() as group:
            workers = [
                group.create_task(_worker(stub, request, window)) for _ in range(concurrency)
            ]
            cpu = group.create_task(_cpu_cores(window, cpu_probes))
    except ExceptionGroup as failed:
        raise LoadError(f"the run stopped: {failed.exceptions[0]}") from failed
    latencies = np.fromiter((ns for w in workers for ns in w.result()), dtype=np.int64)
    return LoadResult(
        rows_per_request=request.inputs[0].shape[0],
        concurrency=concurrency,
        window_s=window.seconds,
        latencies_ns=latencies,
        cpu_cores=cpu.result(),
    )


async def _call(
    stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest
) -> pb.ModelInferResponse:
    try:
        return await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        raise LoadError(f"ModelInfer failed: {exc.code().name}: {exc.details()}") from exc


async def _worker(
    stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest, window: Window
) -> list[int]:
    latencies: list[int] = []
    while (sent := time.perf_counter_ns()) < window.end_ns:
        await _call(stub, request)
        done = time.perf_counter_ns()
        if window.start_ns <= done < window.end_ns:
            latencies.append(done - sent)
    return latencies


async def _sleep_until(deadline_ns: int) -> None:
    await asyncio.sleep(max(0, deadline_ns - time.perf_counter_ns()) / 1e9)


async def _cpu_cores(window: Window, probes: Sequence[CpuProbe]) -> dict[str, float]:
    """Each label's CPU time over the window, divided by the wall time actually sampled."""
    await _sleep_until(window.start_ns)
    before_ns, before = time.perf_counter_ns(), _read(probes)
    await _sleep_until(window.end_ns)
    wall_s = (time.perf_counter_ns() - before_ns) / 1e9
    return {label: (s - before.get(label, 0.0)) / wall_s for label, s in _read(probes).items()}


def _read(probes: Sequence[CpuProbe]) -> dict[str, float]:
    return {label: seconds for probe in probes for label, seconds in probe().items()}
