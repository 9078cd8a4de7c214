"""The heavy model for the benchmarks: a small convolutional network at ≥ 30 ms per sample on one
core, where every served millisecond should be ONNX Runtime's. Built here, seeded, never shipped
in the demo repository (its 30+ ms per request would make `make serve`'s first look sluggish).

Issue 5 defines the heavy case by its time, not its shape, so `write` deepens the network until a
sample takes at least 30 ms on this machine: 10 layers took about 40 ms on the Intel Xeon host of
sessions 7-13 and 13 ms on the AMD EPYC host of session 14."""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from wattserve.demo import make_model, save_model
from wattserve.demo._files import render_config

NAME = "heavy"
SEED = 3
CHANNELS = 128
SIDE = 32
LAYERS = 10
"""The depth to start from; `write` adds layers on a faster machine."""
CLASSES = 10
MIN_MS_PER_SAMPLE = 30.0


def build(layers: int = LAYERS) -> onnx.ModelProto:
    """`layers` x (3x3 convolution, CHANNELS -> CHANNELS, ReLU) on a CHANNELS x SIDE x SIDE input,
    global average pooling, then a linear layer to CLASSES logits: about 0.15 GMAC per sample per
    layer."""
    rng = np.random.default_rng(SEED)
    initializers = []
    nodes = []
    current = "image"
    scale = np.float32(math.sqrt(2.0 / (CHANNELS * 9)))
    for index in range(layers):
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
    return make_model(
        graph, doc_string=f"Random-weight {layers}-layer 3x3 CNN, 128 channels, 32x32."
    )


def ms_per_sample(model: onnx.ModelProto) -> float:
    """Median of three batch-1 runs after a warm-up, one intra-op thread (the server's setting)."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options)
    image = np.random.default_rng(SEED).standard_normal((1, CHANNELS, SIDE, SIDE), np.float32)
    session.run(None, {"image": image})
    times = []
    for _ in range(3):
        started = time.perf_counter()
        session.run(None, {"image": image})
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


def write(repository: Path, *, min_ms: float = MIN_MS_PER_SAMPLE) -> Path:
    """Save the heavy model (and its config) under `repository`, deep enough to take at least
    `min_ms` per sample here; return its model.onnx."""
    layers = LAYERS
    model = build(layers)
    while (ms := ms_per_sample(model)) < min_ms:
        layers = math.ceil(layers * min_ms / ms * 1.1)
        model = build(layers)
    config = render_config(
        max_batch_size=8,
        max_queue_delay_us=500,
        max_queue_size=256,
        comment=f"Compute-bound CNN for bench/perf.py: {layers} layers, {ms:.0f} ms a sample here.",
    )
    return save_model(model, repository / NAME, config_toml=config)
