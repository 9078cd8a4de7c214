"""The benchmarks' requests and their closed-loop run, on top of `wattserve_client.loadgen`.

The loop itself is the sweep's (`closed_loop`): `concurrency` copies of one prebuilt request always
in flight, calls completing inside the window after the warm-up counted, latencies in nanoseconds.
Here a run is one window, and any failed call fails it: a throughput figure with errors in it
means nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime

from wattserve.core import datatypes
from wattserve.protocol import pb, pb_grpc
from wattserve_client._request import infer_request
from wattserve_client.loadgen import CpuProbe, Schedule, closed_loop
from wattserve_client.payloads import inputs_for
from wattserve_client.sweep import Target

# Generous: under a closed loop a healthy call takes milliseconds; a hung server must not hang us.
CALL_TIMEOUT_S = 30.0


class LoadError(RuntimeError):
    """A call failed (or answered something unexpected) during a run."""


def request_from_file(model_file: Path, target: Target) -> Any:
    """The request `sweep.build_request` would make, shaped from the ONNX file instead of the
    server's ModelMetadata (the reference servers in bench/ do not answer it)."""
    session = onnxruntime.InferenceSession(model_file, providers=["CPUExecutionProvider"])
    metadata = pb.ModelMetadataResponse(name=target.model)
    for tensor in session.get_inputs():
        shape = [d if isinstance(d, int) else -1 for d in tensor.shape]
        datatype = datatypes.BY_ONNX[tensor.type].name
        metadata.inputs.add(name=tensor.name, datatype=datatype, shape=shape)
    inputs = inputs_for(metadata, target.shape, target.seed)
    return infer_request(target.model, inputs, version=target.version)


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
    """Keep `concurrency` copies of `request` in flight for warm-up + one window
    (`wattserve_client.loadgen.closed_loop`, the sweep's loop); any failed call fails the run."""
    measured = await closed_loop(
        stub,
        request,
        concurrency=concurrency,
        schedule=Schedule(warmup_s, duration_s, min_windows=1, max_windows=1),
        cpu_probes=cpu_probes,
    )
    if measured.errors:
        first = next(iter(measured.error_messages), "?")
        raise LoadError(f"the run stopped: {measured.errors} call(s) failed, first: {first}")
    window = measured.windows[0]
    return LoadResult(
        rows_per_request=request.inputs[0].shape[0],
        concurrency=concurrency,
        window_s=window.seconds,
        latencies_ns=window.latencies_ns,
        cpu_cores=window.cpu_cores,
    )


async def _call(
    stub: pb_grpc.GRPCInferenceServiceStub, request: pb.ModelInferRequest
) -> pb.ModelInferResponse:
    try:
        return await stub.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        raise LoadError(f"ModelInfer failed: {exc.code().name}: {exc.details()}") from exc
