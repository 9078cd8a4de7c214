"""The three demo models: how each is built (seeded, reproducible) and how it is configured."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from wattserve.demo._files import IR_VERSION, OPSET, make_model, render_config

logger = logging.getLogger(__name__)

# Fixed seeds: the repository must come out byte-identical on every build so that a
# rebuild never changes predictions (or energy measurements) behind the user's back.
_TABULAR_SEED = 0
_DENSE_SEED = 1
_TEXT_SEED = 2

_DENSE_WIDTHS = (512, 2048, 2048, 2048, 512)
_TEXT_VOCABULARY = 5000
_TEXT_EMBEDDING_DIM = 64
_TEXT_CLASSES = 4


@dataclass(frozen=True)
class DemoModel:
    """A demo model: its name, how to build the graph, and its config.toml."""

    name: str
    build: Callable[[], onnx.ModelProto]
    config_toml: str


def _set_batch_dim(value_info: onnx.ValueInfoProto) -> None:
    # skl2onnx leaves the batch dimension anonymous; naming it like the other demo
    # models keeps the signatures the server reports consistent.
    dims = value_info.type.tensor_type.shape.dim
    dims[0].Clear()
    dims[0].dim_param = "batch"


def build_tabular_classifier() -> onnx.ModelProto:
    """Standardised logistic regression on the breast-cancer data set.

    It stands in for a credit-scoring style tabular model: 30 numeric features in,
    a class label and class probabilities out.
    """
    # Imported here: scikit-learn and skl2onnx take seconds to import and are only
    # needed on the first start, when the repository is built.
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.datasets import load_breast_cancer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    features, target = load_breast_cancer(return_X_y=True)
    # Fit on the float32 values the served model will actually see.
    features = features.astype(np.float32)
    pipeline = Pipeline(
        [
            ("scaler", StandardScaler()),
            ("classifier", LogisticRegression(max_iter=1000, random_state=_TABULAR_SEED)),
        ]
    )
    pipeline.fit(features, target)

    model: onnx.ModelProto = convert_sklearn(
        pipeline,
        name="tabular_classifier",
        initial_types=[("features", FloatTensorType([None, 30]))],
        options={id(pipeline): {"zipmap": False}},
        target_opset={"": OPSET, "ai.onnx.ml": 3},
    )
    output_names = [output.name for output in model.graph.output]
    if output_names != ["label", "probabilities"]:
        raise RuntimeError(f"skl2onnx produced unexpected outputs {output_names}")

    # skl2onnx names the graph with a random UUID and lists the default opset twice;
    # both are normalised so that the file is reproducible and tidy.
    model.graph.name = "tabular_classifier"
    opsets = {opset.domain: opset.version for opset in model.opset_import}
    del model.opset_import[:]
    model.opset_import.extend(
        helper.make_opsetid(domain, version) for domain, version in sorted(opsets.items())
    )
    model.ir_version = IR_VERSION
    model.doc_string = "Breast-cancer logistic regression (stand-in for a tabular scoring model)."
    for value_info in [*model.graph.input, *model.graph.output]:
        _set_batch_dim(value_info)
    onnx.checker.check_model(model)
    return model


def build_dense() -> onnx.ModelProto:
    """A 512-2048-2048-2048-512 ReLU MLP: a compute-heavy FP32 model for batching."""
    rng = np.random.default_rng(_DENSE_SEED)
    initializers: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    current = "input"
    layers = list(itertools.pairwise(_DENSE_WIDTHS))
    for index, (fan_in, fan_out) in enumerate(layers):
        # He initialisation keeps the activation variance roughly constant through the
        # ReLUs, so outputs stay finite and non-degenerate for unit-scale inputs.
        scale = np.float32(math.sqrt(2.0 / fan_in))
        weight = rng.standard_normal((fan_in, fan_out), dtype=np.float32) * scale
        bias = rng.standard_normal(fan_out, dtype=np.float32) * np.float32(0.01)
        initializers += [
            numpy_helper.from_array(weight, f"dense{index}.weight"),
            numpy_helper.from_array(bias, f"dense{index}.bias"),
        ]
        is_last = index == len(layers) - 1
        gemm_out = "output" if is_last else f"dense{index}.gemm"
        nodes.append(
            helper.make_node(
                "Gemm",
                [current, f"dense{index}.weight", f"dense{index}.bias"],
                [gemm_out],
                name=f"dense{index}",
            )
        )
        current = gemm_out
        if not is_last:
            current = f"dense{index}.relu"
            nodes.append(helper.make_node("Relu", [gemm_out], [current], name=current))

    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", _DENSE_WIDTHS[0]])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", _DENSE_WIDTHS[-1]])],
        initializers,
    )
    return make_model(graph, doc_string="Random-weight ReLU MLP 512-2048-2048-2048-512.")


def build_text_classifier() -> onnx.ModelProto:
    """Bag-of-embeddings classifier: token ids of any length in, 4 class probabilities out."""
    rng = np.random.default_rng(_TEXT_SEED)
    embedding = rng.standard_normal((_TEXT_VOCABULARY, _TEXT_EMBEDDING_DIM), dtype=np.float32)
    # Scaled so that the logits have unit-order spread: the probabilities then differ
    # visibly between inputs instead of all collapsing onto one class or onto 1/4.
    weight = rng.standard_normal((_TEXT_EMBEDDING_DIM, _TEXT_CLASSES), dtype=np.float32)
    weight *= np.float32(1.0 / math.sqrt(_TEXT_EMBEDDING_DIM))
    bias = np.zeros(_TEXT_CLASSES, dtype=np.float32)

    nodes = [
        helper.make_node("Gather", ["embedding", "input_ids"], ["embedded"], axis=0),
        # Opset 17 still takes ReduceMean's axes as an attribute (it became an input in 18).
        helper.make_node("ReduceMean", ["embedded"], ["pooled"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["pooled", "classifier.weight"], ["projected"]),
        helper.make_node("Add", ["projected", "classifier.bias"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "text_classifier",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [
            helper.make_tensor_value_info(
                "probabilities", TensorProto.FLOAT, ["batch", _TEXT_CLASSES]
            )
        ],
        [
            numpy_helper.from_array(embedding, "embedding"),
            numpy_helper.from_array(weight, "classifier.weight"),
            numpy_helper.from_array(bias, "classifier.bias"),
        ],
    )
    return make_model(
        graph,
        doc_string=(
            f"Mean-pooled embedding classifier: vocabulary {_TEXT_VOCABULARY}, "
            f"{_TEXT_CLASSES} classes."
        ),
    )


DEMO_MODELS: tuple[DemoModel, ...] = (
    DemoModel(
        name="tabular_classifier",
        build=build_tabular_classifier,
        config_toml=render_config(
            max_batch_size=256,
            max_queue_delay_us=2000,
            max_queue_size=2048,
            comment="Tiny model: large batches are cheap, so let the batcher merge freely "
            "(it holds requests back only while the server is saturated).",
        ),
    ),
    DemoModel(
        name="dense",
        build=build_dense,
        config_toml=render_config(
            max_batch_size=128,
            max_queue_delay_us=500,
            preferred_batch_sizes=(64, 128),
            max_queue_size=1024,
            comment="Compute-bound MLP: one core runs it fastest per row at 64-128 rows "
            "(bench/serve_vs_ort.py), so dispatch at once when 64 rows wait.",
        ),
    ),
    DemoModel(
        name="text_classifier",
        build=build_text_classifier,
        config_toml=render_config(
            max_batch_size=64,
            max_queue_delay_us=2000,
            max_queue_size=1024,
            comment="Token ids of any sequence length, vocabulary 5000, 4 classes.",
        ),
    ),
)
