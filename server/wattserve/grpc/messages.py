"""Protocol messages to and from core types: inference, metadata, config, statistics, index."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any

from wattserve.core.dataplane import BACKEND, PLATFORM
from wattserve.core.errors import InvalidRequest
from wattserve.core.registry import IndexEntry, ServedModel
from wattserve.core.statistics import Duration, ModelStatistics
from wattserve.core.types import (
    DEFAULT_TENANT,
    InferRequest,
    InferResponse,
    Parameter,
    TensorSpec,
)
from wattserve.grpc.tensors import decode_inputs, encode_raw
from wattserve.protocol import config_pb, pb

# The request parameter Triton clients use for a per-request timeout, in microseconds.
TIMEOUT_PARAMETER = "timeout"


def decode_parameters(parameters: Mapping[str, Any]) -> dict[str, Parameter]:
    decoded: dict[str, Parameter] = {}
    for key, value in parameters.items():
        kind = value.WhichOneof("parameter_choice")
        if kind is not None:
            decoded[key] = getattr(value, kind)
    return decoded


def decode_infer_request(
    message: Any, time_remaining: float | None, tenant: str = DEFAULT_TENANT
) -> InferRequest:
    """A ModelInferRequest as the core sees it; `time_remaining` is the gRPC deadline in seconds."""
    parameters = decode_parameters(message.parameters) if message.parameters else {}
    budget = time_remaining
    timeout_us = parameters.get(TIMEOUT_PARAMETER)
    if timeout_us is not None:
        if isinstance(timeout_us, bool) or not isinstance(timeout_us, int) or timeout_us < 0:
            raise InvalidRequest(
                f"model '{message.model_name}': parameter 'timeout' must be a non-negative int64 "
                f"of microseconds, got {timeout_us!r}"
            )
        if timeout_us > 0:
            budget = min(timeout_us / 1e6, budget) if budget is not None else timeout_us / 1e6
    name = message.model_name
    # Positional, in field order: keywords cost twice as much (7.1k against 3.2k instructions).
    return InferRequest(
        name,
        decode_inputs(name, message.inputs, message.raw_input_contents),
        message.model_version,
        tuple(o.name for o in message.outputs) if message.outputs else (),
        message.id,
        parameters,
        None if budget is None else time.monotonic() + budget,
        tenant,
    )


def encode_infer_response(response: InferResponse, message: Any = None) -> Any:
    """A ModelInferResponse; written into `message` when given (a stream's wrapper holds one)."""
    if message is None:
        message = pb.ModelInferResponse()
    message.model_name = response.model_name
    message.model_version = response.model_version
    message.id = response.id
    # Built in place: add() and append() skip the intermediate messages and lists (6.8 -> 4.8 µs
    # for the tabular model's two outputs).
    outputs, raw = message.outputs, message.raw_output_contents
    for name, (datatype, array) in response.outputs.items():
        outputs.add(name=name, datatype=datatype.name, shape=array.shape)
        raw.append(encode_raw(datatype, array))
    for key, value in response.parameters.items():
        encode_parameter(message.parameters[key], value)
    return message


def encode_parameter(target: Any, value: Parameter) -> None:
    """Set the InferParameter field that matches the value's type (bool before int: bool is int)."""
    if isinstance(value, bool):
        target.bool_param = value
    elif isinstance(value, int):
        target.int64_param = value
    elif isinstance(value, float):
        target.double_param = value
    else:
        target.string_param = value


def _metadata_tensor(spec: TensorSpec) -> Any:
    return pb.ModelMetadataResponse.TensorMetadata(
        name=spec.name, datatype=spec.datatype.name, shape=spec.shape
    )


def encode_model_metadata(model: ServedModel, versions: Iterable[ServedModel]) -> Any:
    return pb.ModelMetadataResponse(
        name=model.name,
        versions=[str(m.version) for m in versions],
        platform=PLATFORM,
        inputs=[_metadata_tensor(t) for t in model.signature.inputs],
        outputs=[_metadata_tensor(t) for t in model.signature.outputs],
    )


def _config_tensor(message: Any, spec: TensorSpec, batches: bool) -> Any:
    # ModelConfig dims leave out the batch dimension that ModelMetadata shapes include.
    dims = spec.shape[1:] if batches else spec.shape
    return message(name=spec.name, data_type=spec.datatype.config, dims=dims)


def _version_policy(policy: str | list[int]) -> Any:
    if isinstance(policy, list):
        return config_pb.ModelVersionPolicy(
            specific=config_pb.ModelVersionPolicy.Specific(versions=policy)
        )
    if policy == "all":
        return config_pb.ModelVersionPolicy(all=config_pb.ModelVersionPolicy.All())
    return config_pb.ModelVersionPolicy(latest=config_pb.ModelVersionPolicy.Latest(num_versions=1))


def encode_model_config(model: ServedModel) -> Any:
    signature, config = model.signature, model.source.config
    gpu = config.device == "cuda"
    message = config_pb.ModelConfig(
        name=model.name,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=signature.max_batch_size,
        version_policy=_version_policy(config.version_policy),
        input=[
            _config_tensor(config_pb.ModelInput, t, signature.batches) for t in signature.inputs
        ],
        output=[
            _config_tensor(config_pb.ModelOutput, t, signature.batches) for t in signature.outputs
        ],
        instance_group=[
            config_pb.ModelInstanceGroup(
                name=f"{model.name}_0",
                count=model.instances,
                kind=(
                    config_pb.ModelInstanceGroup.KIND_GPU
                    if gpu
                    else config_pb.ModelInstanceGroup.KIND_CPU
                ),
                gpus=[config.device_id] if gpu else [],
            )
        ],
        default_model_filename="model.onnx",
        parameters={
            # The names Triton's ONNX Runtime backend uses for the same settings.
            "intra_op_thread_count": config_pb.ModelParameter(
                string_value=str(config.intra_op_threads)
            ),
            "inter_op_thread_count": config_pb.ModelParameter(
                string_value=str(config.inter_op_threads)
            ),
        },
    )
    if signature.batches:
        batching = config.dynamic_batching
        message.dynamic_batching.CopyFrom(
            config_pb.ModelDynamicBatching(
                preferred_batch_size=batching.preferred_batch_sizes,
                max_queue_delay_microseconds=batching.max_queue_delay_us,
                default_queue_policy=config_pb.ModelQueuePolicy(
                    max_queue_size=batching.max_queue_size
                ),
            )
        )
    return pb.ModelConfigResponse(config=message)


def _duration(d: Duration) -> Any:
    return pb.StatisticDuration(count=d.count, ns=d.ns)


def encode_statistics(model: ServedModel) -> Any:
    s: ModelStatistics = model.statistics
    return pb.ModelStatistics(
        name=model.name,
        version=str(model.version),
        last_inference=s.last_inference_ms,
        inference_count=s.inference_count,
        execution_count=s.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(s.success),
            fail=_duration(s.fail),
            queue=_duration(s.queue),
            compute_input=_duration(s.compute_input),
            compute_infer=_duration(s.compute_infer),
            compute_output=_duration(s.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(b.compute_input),
                compute_infer=_duration(b.compute_infer),
                compute_output=_duration(b.compute_output),
            )
            for size, b in sorted(s.batches.items())
        ],
    )


def encode_index(entries: Iterable[IndexEntry]) -> Any:
    return pb.RepositoryIndexResponse(
        models=[
            pb.RepositoryIndexResponse.ModelIndex(
                name=e.name, version=e.version, state=e.state, reason=e.reason
            )
            for e in entries
        ]
    )
