"""ONNX Runtime sessions: provider choice (CPU and CUDA), signatures from graphs, load errors."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests import models
from wattserve.core.config import ModelConfig
from wattserve.core.errors import ModelLoadError
from wattserve.execution.onnx import (
    ALL_ROWS,
    CPU,
    CUDA,
    BatchCost,
    OnnxRunner,
    loop_rows,
    providers_for,
)


def test_cpu_device_uses_only_the_cpu_provider() -> None:
    assert providers_for(ModelConfig(), [CUDA, CPU], model="m") == [CPU]


def test_cuda_device_puts_cuda_first_with_its_device_and_cpu_as_fallback_for_unsupported_ops() -> (
    None
):
    config = ModelConfig(device="cuda", device_id=1)
    assert providers_for(config, ["TensorrtExecutionProvider", CUDA, CPU], model="m") == [
        (CUDA, {"device_id": 1}),
        CPU,
    ]


def test_cuda_device_without_the_cuda_provider_is_a_clear_load_error() -> None:
    with pytest.raises(ModelLoadError) as caught:
        providers_for(ModelConfig(device="cuda"), [CPU], model="dense")
    message = str(caught.value)
    assert "model 'dense' asks for device \"cuda\"" in message
    assert "onnxruntime-gpu" in message


@pytest.mark.skipif(CUDA in ort.get_available_providers(), reason="this machine has CUDA")
def test_loading_a_cuda_model_on_this_machine_fails_clearly(tmp_path: Path) -> None:
    models.identity_model(tmp_path, "m", "FP32")
    with pytest.raises(ModelLoadError, match='asks for device "cuda"'):
        OnnxRunner(
            tmp_path / "m" / "1" / "model.onnx", ModelConfig(device="cuda"), model="m", version=1
        )


async def test_runner_reads_the_signature_and_runs(tmp_path: Path) -> None:
    models.two_input_model(tmp_path)
    runner = OnnxRunner(
        tmp_path / "sum_model" / "1" / "model.onnx",
        ModelConfig(instances=2),
        model="sum_model",
        version=1,
    )
    try:
        assert runner.instances == 2
        assert runner.providers == [CPU]
        assert runner.signature.max_batch_size == 64  # default for a graph with dynamic batch dims
        assert [(t.name, t.datatype.name, t.shape) for t in runner.signature.inputs] == [
            ("a", "FP32", (-1, 4)),
            ("b", "FP32", (-1, 4)),
        ]
    finally:
        runner.close()


def test_batching_a_graph_with_fixed_dims_is_a_load_error(tmp_path: Path) -> None:
    models.fixed_shape_model(tmp_path)
    path = tmp_path / "fixed_shape" / "1" / "model.onnx"
    assert (
        OnnxRunner(path, ModelConfig(), model="fixed_shape", version=1).signature.max_batch_size
        == 0
    )
    with pytest.raises(
        ModelLoadError, match=r"max_batch_size = 4, but batching needs a dynamic first dimension"
    ):
        OnnxRunner(path, ModelConfig(max_batch_size=4), model="fixed_shape", version=1)


def test_preferred_sizes_above_the_max_are_a_load_error(tmp_path: Path) -> None:
    models.identity_model(tmp_path, "m", "FP32")
    config = ModelConfig.model_validate(
        {"max_batch_size": 4, "dynamic_batching": {"preferred_batch_sizes": [8]}}
    )
    with pytest.raises(
        ModelLoadError, match=r"preferred_batch_sizes \[8\] must not exceed max_batch_size 4"
    ):
        OnnxRunner(tmp_path / "m" / "1" / "model.onnx", config, model="m", version=1)


FAST = BatchCost(one_row_ns=20_000, full_rows=256, full_ns=200_000)
"""A small model: its largest batch is shorter than either limit."""
MEDIUM = BatchCost(one_row_ns=100_000, full_rows=64, full_ns=730_000)
"""10 µs a row on top of 100 µs: 15 rows fit in 250 µs, the whole batch in 1 ms."""
DENSE = BatchCost(one_row_ns=600_000, full_rows=128, full_ns=13_300_000)
"""100 µs a row on top of 600 µs: 4 rows stay under 1 ms (5 reach it exactly)."""


@pytest.mark.parametrize(
    ("config", "cores", "cost", "expected"),
    [
        ({}, 1, FAST, ALL_ROWS),  # the default: auto
        ({"run_on": "auto"}, 2, FAST, ALL_ROWS),  # cheaper than the hand-off on two cores too
        ({"run_on": "auto"}, 1, MEDIUM, ALL_ROWS),  # 730 µs: under 1 ms on one core
        ({"run_on": "auto"}, 2, MEDIUM, 15),  # over 250 µs beyond 15 rows: a thread overlaps
        ({"run_on": "auto"}, 1, DENSE, 4),  # small batches on the loop, big ones on the thread
        ({"run_on": "auto"}, 2, DENSE, 0),  # even one row takes over 250 µs
        ({"run_on": "auto"}, 1, BatchCost(1_000_000, 8, 8_000_000), 0),  # one row: 1 ms
        ({"run_on": "auto"}, 1, BatchCost(900_000, 1, 900_000), ALL_ROWS),  # no batching
        ({"run_on": "auto"}, 1, BatchCost(900_000, 1, 1_100_000), ALL_ROWS),  # the median decides
        ({"run_on": "auto", "intra_op_threads": 0}, 2, FAST, 0),  # ONNX Runtime's pool
        ({"run_on": "auto"}, 1, None, 0),  # no warm-up, no measurement: stay safe
        ({"run_on": "auto", "instances": 2}, 1, FAST, 0),
        ({"run_on": "auto", "intra_op_threads": 2}, 1, FAST, 0),
        ({"run_on": "auto", "intra_op_threads": 0}, 1, FAST, ALL_ROWS),  # one core: one thread
        ({"run_on": "auto", "device": "cuda"}, 1, FAST, 0),
        ({"run_on": "loop"}, 8, None, ALL_ROWS),
        ({"run_on": "thread"}, 1, FAST, 0),
    ],
)
def test_where_batches_run(
    config: dict[str, object], cores: int, cost: BatchCost | None, expected: int
) -> None:
    assert loop_rows(ModelConfig.model_validate(config), cores, cost) == expected


async def test_a_model_run_on_the_loop_gives_the_same_outputs_and_starts_no_thread(
    tmp_path: Path,
) -> None:
    models.two_input_model(tmp_path)
    path = tmp_path / "sum_model" / "1" / "model.onnx"
    rng = np.random.default_rng(7)
    inputs = {name: rng.standard_normal((3, 4), dtype=np.float32) for name in ("a", "b")}
    outputs = []
    for run_on in ("loop", "thread"):
        runner = OnnxRunner(path, ModelConfig(run_on=run_on), model="sum_model", version=1)
        try:
            assert runner.loop_rows == (ALL_ROWS if run_on == "loop" else 0)
            loop_thread = threading.get_ident()
            outputs.append(await runner.run(inputs, 3))
            assert threading.get_ident() == loop_thread
            assert (len(runner._pool._threads) == 0) is (run_on == "loop")
        finally:
            runner.close()
    loop_run, thread_run = outputs
    assert loop_run.keys() == thread_run.keys()
    for name in loop_run:
        np.testing.assert_array_equal(loop_run[name], thread_run[name])


async def test_batches_up_to_loop_rows_run_on_the_loop_and_bigger_ones_on_the_thread(
    tmp_path: Path,
) -> None:
    models.two_input_model(tmp_path)
    path = tmp_path / "sum_model" / "1" / "model.onnx"
    runner = OnnxRunner(path, ModelConfig(run_on="thread"), model="sum_model", version=1)
    runner.loop_rows = 2  # as "auto" sets it for a model whose 3-row batch would take too long
    try:
        for rows, threads_after in ((1, 0), (2, 0), (3, 1), (2, 1)):
            inputs = {name: np.full((rows, 4), rows, np.float32) for name in ("a", "b")}
            outputs = await runner.run(inputs, rows)
            assert len(runner._pool._threads) == threads_after, f"after a {rows}-row batch"
            assert [o.shape[0] for o in outputs.values()] == [rows] * len(outputs)
    finally:
        runner.close()
