"""Test-only ONNX model builders, each named after the server behaviour it exercises."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wattserve.demo import make_model, save_model

logger = logging.getLogger(__name__)

# Open Inference Protocol datatype -> ONNX element type; BYTES travels as ONNX strings.
ONNX_TYPES: dict[str, int] = {
    "FP32": TensorProto.FLOAT,
    "FP16": TensorProto.FLOAT16,
    "FP64": TensorProto.DOUBLE,
    "INT32": TensorProto.INT32,
    "INT64": TensorProto.INT64,
    "UINT8": TensorProto.UINT8,
    "BOOL": TensorProto.BOOL,
    "BYTES": TensorProto.STRING,
}


def _tensor(name: str, datatype: str, shape: list[str | int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, ONNX_TYPES[datatype], shape)


def _identity_graph(name: str, datatype: str) -> onnx.GraphProto:
    # BYTES elements have no fixed width, so the inner dimension is left free too.
    shape: list[str | int] = ["batch", "width"] if datatype == "BYTES" else ["batch", 3]
    return helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        name,
        [_tensor("x", datatype, shape)],
        [_tensor("y", datatype, shape)],
    )


def identity_model(root: Path, name: str, datatype: str) -> str:
    """`y = x` for one datatype: round-trips tensors of every protocol type."""
    save_model(
        make_model(_identity_graph(name, datatype)),
        root / name,
        config_toml="max_batch_size = 16\n",
    )
    return name


def two_input_model(root: Path) -> str:
    """`sum = a + b`, `diff = a - b`; a long queue delay so tests can watch requests merge."""
    name = "sum_model"
    graph = helper.make_graph(
        [
            helper.make_node("Add", ["a", "b"], ["sum"]),
            helper.make_node("Sub", ["a", "b"], ["diff"]),
        ],
        name,
        [_tensor("a", "FP32", ["batch", 4]), _tensor("b", "FP32", ["batch", 4])],
        [_tensor("sum", "FP32", ["batch", 4]), _tensor("diff", "FP32", ["batch", 4])],
    )
    config = (
        "max_batch_size = 8\n"
        "\n"
        "[dynamic_batching]\n"
        "# Long enough that concurrent test requests land in the same batch.\n"
        "max_queue_delay_us = 20000\n"
        "# Small so that tests can fill the queue and see requests rejected.\n"
        "max_queue_size = 4\n"
    )
    save_model(make_model(graph), root / name, config_toml=config)
    return name


def failing_model(root: Path) -> str:
    """Picks `data[i, index[i]]`: an out-of-range index makes ONNX Runtime fail at run time."""
    name = "failing"
    graph = helper.make_graph(
        [helper.make_node("GatherElements", ["data", "index"], ["picked"], axis=1)],
        name,
        [_tensor("data", "FP32", ["batch", 4]), _tensor("index", "INT64", ["batch", 1])],
        [_tensor("picked", "FP32", ["batch", 1])],
    )
    save_model(make_model(graph), root / name, config_toml="max_batch_size = 8\n")
    return name


def bad_split_model(root: Path) -> str:
    """Claims to be batchable but sums over the batch: n input rows give 1 output row.

    The server must notice that it cannot split such an output back into requests.
    """
    name = "bad_split"
    zero = numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")
    graph = helper.make_graph(
        [
            # axes = [0], but computed from the (dynamic) batch size: with constant axes
            # ONNX Runtime's shape inference would pin y to [1, 4] and the server would
            # rightly see an unbatchable output instead of a model that lies about it.
            helper.make_node("Shape", ["x"], ["batch_size"], start=0, end=1),
            helper.make_node("Mul", ["batch_size", "zero"], ["axes"]),
            # Opset 17 takes ReduceSum's axes as an input (since opset 13).
            helper.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1),
        ],
        name,
        [_tensor("x", "FP32", ["batch", 4])],
        [_tensor("y", "FP32", ["batch", 4])],
        [zero],
    )
    save_model(make_model(graph), root / name, config_toml="max_batch_size = 8\n")
    return name


def fixed_shape_model(root: Path) -> str:
    """`y = 2x` on a fixed [2, 3] input and no config.toml: signature comes from the graph."""
    name = "fixed_shape"
    two = numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        name,
        [_tensor("x", "FP32", [2, 3])],
        [_tensor("y", "FP32", [2, 3])],
        [two],
    )
    save_model(make_model(graph), root / name)
    return name


def broken_file_model(root: Path) -> str:
    """A model.onnx that is not a model at all: loading it must fail cleanly."""
    name = "broken"
    version_dir = root / name / "1"
    version_dir.mkdir(parents=True, exist_ok=True)
    # Starts with a protobuf field tag of a wire type that does not exist (7), so no
    # protobuf parser can mistake it for an (empty or partial) ModelProto.
    (version_dir / "model.onnx").write_bytes(b"\xff\xff\xff\xff this is not an ONNX model \x00")
    return name


def broken_config_model(root: Path) -> str:
    """A valid identity model whose config.toml misspells a key: config must be rejected."""
    name = "broken_config"
    save_model(
        make_model(_identity_graph(name, "FP32")),
        root / name,
        config_toml="max_batch_sise = 4\n",
    )
    return name


def versioned_model(root: Path) -> str:
    """Two versions: v1 computes `x + 1`, v2 computes `x + 2`, so replies show the version."""
    name = "versioned"
    config = "max_batch_size = 4\n"
    for version in (1, 2):
        offset = numpy_helper.from_array(np.array(float(version), dtype=np.float32), "offset")
        graph = helper.make_graph(
            [helper.make_node("Add", ["x", "offset"], ["y"])],
            name,
            [_tensor("x", "FP32", ["batch", 2])],
            [_tensor("y", "FP32", ["batch", 2])],
            [offset],
        )
        save_model(make_model(graph), root / name, version=version, config_toml=config)
    return name
