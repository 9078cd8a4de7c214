"""Request building and response parsing shared by the async and sync clients."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from wattserve.core import datatypes
from wattserve.grpc.messages import encode_parameter
from wattserve.grpc.tensors import decode_raw, encode_raw
from wattserve.protocol import pb

Tensors = dict[str, np.ndarray]

# A generous default: tensors of a few hundred MB are normal for batch jobs.
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", 2**31 - 1),
    ("grpc.max_send_message_length", 2**31 - 1),
]


def infer_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    *,
    outputs: Iterable[str] = (),
    version: str = "",
    request_id: str = "",
    parameters: Mapping[str, bool | int | float | str] | None = None,
) -> Any:
    """A ModelInferRequest with every input as raw contents, in the mapping's order."""
    tensors, raw = [], []
    for name, value in inputs.items():
        array = np.asarray(value)
        datatype = datatypes.from_numpy(array.dtype)
        tensors.append(
            pb.ModelInferRequest.InferInputTensor(
                name=name, datatype=datatype.name, shape=array.shape
            )
        )
        raw.append(encode_raw(datatype, array))
    request = pb.ModelInferRequest(
        model_name=model,
        model_version=version,
        id=request_id,
        inputs=tensors,
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=n) for n in outputs],
        raw_input_contents=raw,
    )
    for key, parameter in (parameters or {}).items():
        encode_parameter(request.parameters[key], parameter)
    return request


def outputs_of(response: Any) -> Tensors:
    """The response's outputs as numpy arrays, in the order the server sent them."""
    return {
        tensor.name: decode_raw(f"output '{tensor.name}'", tensor.datatype, tensor.shape, raw)
        for tensor, raw in zip(response.outputs, response.raw_output_contents, strict=True)
    }
