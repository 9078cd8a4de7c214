"""The heavy model for the benchmarks: a small convolutional network at ≥ 30 ms per sample on one
core, where every served millisecond should be ONNX Runtime's. Built here, seeded, never shipped
in the demo repository (its 30+ ms per request would make `make serve`'s first look sluggish)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wattserve.demo import make_model, save_model
from wattserve.demo._files import render_config

NAME = "heavy"
SEED = 3
CHANNELS = 128
SIDE = 32
LAYERS = 10
CLASSES = 10


def build() -> onnx.ModelProto:
    """LAYERS x (3x3 convolution, CHANNELS -> CHANNELS, ReLU) on a CHANNELS x SIDE x SIDE input,
    global average pooling, then a linear layer to CLASSES logits: about 1.5 GMAC per sample."""
    rng = np.random.default_rng(SEED)
    initializers = []
    nodes = []
    current = "image"
    scale = np.float32(math.sqrt(2.0 / (CHANNELS * 9)))
    for index in range(LAYERS):
        weight = rng.standard_normal((CHANNELS, CHANNELS, 3, 3), dtype=np.float32) * scale
        initializers.append(numpy_helper.from_array(weight, f"conv{index}.weight"))
        nodes.append(
            helper.make_node(
                "Conv",
                [current, f"conv{index}.weight"],
                [f"conv{index}"],
                pads=[1, 1, 1, 1],
                name=f"conv{index}",
            )
        )
        nodes.append(helper.make_node("Relu", [f"conv{index}"], [f"relu{index}"]))
        current = f"relu{index}"
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["features"]))
    head = rng.standard_normal((CHANNELS, CLASSES), dtype=np.float32) * np.float32(0.1)
    initializers.append(numpy_helper.from_array(head, "head.weight"))
    nodes.append(helper.make_node("MatMul", ["features", "head.weight"], ["logits"]))
    graph = helper.make_graph(
        nodes,
        NAME,
        [
            helper.make_tensor_value_info(
                "image", TensorProto.FLOAT, ["batch", CHANNELS, SIDE, SIDE]
            )
        ],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        initializers,
    )
    return make_model(graph, doc_string="Random-weight 10-layer 3x3 CNN, 128 channels, 32x32.")


def write(repository: Path) -> Path:
    """Save the heavy model (and its config) under `repository`; return its model.onnx."""
    config = render_config(
        max_batch_size=8,
        max_queue_delay_us=500,
        max_queue_size=256,
        comment="Compute-bound CNN for bench/perf.py: tens of ms per sample.",
    )
    return save_model(build(), repository / NAME, config_toml=config)
