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
from wattserve.execution.onnx import CPU, CUDA, OnnxRunner, providers_for, runs_on_loop


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


@pytest.mark.parametrize(
    ("config", "cores", "warm_up_ns", "expected"),
    [
        ({}, 1, 200_000, True),  # the default: auto
        ({"run_on": "auto"}, 1, 900_000, True),  # a fast CPU model on one core: no hand-off
        ({"run_on": "auto"}, 2, 200_000, True),  # still cheaper than the hand-off on two cores
        ({"run_on": "auto"}, 2, 400_000, False),  # a second core: the thread overlaps the loop
        ({"run_on": "auto"}, 1, 5_000_000, False),  # 5 ms batches would stall everything else
        ({"run_on": "auto", "intra_op_threads": 0}, 2, 200_000, False),  # ONNX Runtime's pool
        ({"run_on": "auto"}, 1, None, False),  # no warm-up, no measurement: stay safe
        ({"run_on": "auto", "instances": 2}, 1, 200_000, False),
        ({"run_on": "auto", "intra_op_threads": 2}, 1, 200_000, False),
        ({"run_on": "auto", "intra_op_threads": 0}, 1, 200_000, True),  # one core: one thread
        ({"run_on": "auto", "device": "cuda"}, 1, 200_000, False),
        ({"run_on": "loop"}, 8, None, True),
        ({"run_on": "thread"}, 1, 200_000, False),
    ],
)
def test_where_batches_run(
    config: dict[str, object], cores: int, warm_up_ns: int | None, expected: bool
) -> None:
    assert runs_on_loop(ModelConfig.model_validate(config), cores, warm_up_ns) is expected


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
            assert runner.runs_on_loop is (run_on == "loop")
            loop_thread = threading.get_ident()
            outputs.append(await runner.run(inputs))
            assert threading.get_ident() == loop_thread
            assert (len(runner._pool._threads) == 0) is (run_on == "loop")
        finally:
            runner.close()
    loop_run, thread_run = outputs
    assert loop_run.keys() == thread_run.keys()
    for name in loop_run:
        np.testing.assert_array_equal(loop_run[name], thread_run[name])
