"""The repository API: an index with reasons, load/unload only under explicit model control."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException

from tests.grpc.test_tritonclient import triton_input
from tests.support import ServerProcess, run_server
from wattserve.protocol import pb, pb_grpc


def test_index_lists_broken_models_with_their_reason(address: str) -> None:
    with triton.InferenceServerClient(address) as client:
        index = {(m.name, m.version): m for m in client.get_model_repository_index().models}
    with grpc.insecure_channel(address) as channel:
        # tritonclient cannot ask for ready models only; the protocol can.
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        ready = {m.name for m in stub.RepositoryIndex(pb.RepositoryIndexRequest(ready=True)).models}
    assert index[("dense", "1")].state == "READY"
    assert {("versioned", "1"), ("versioned", "2")} <= set(index)
    assert index[("broken", "")].state == "UNAVAILABLE"
    assert "ONNX Runtime cannot load" in index[("broken", "")].reason
    assert index[("broken_config", "")].state == "UNAVAILABLE"
    assert "max_batch_sise: Extra inputs are not permitted" in index[("broken_config", "")].reason
    assert "dense" in ready
    assert not {"broken", "broken_config"} & ready


def test_load_and_unload_are_refused_without_explicit_model_control(address: str) -> None:
    with triton.InferenceServerClient(address) as client:
        for call in (client.load_model, client.unload_model):
            with pytest.raises(InferenceServerException) as caught:
                call("dense")
            assert caught.value.status() == "StatusCode.FAILED_PRECONDITION"
            assert "model 'dense'" in caught.value.message()
            assert "--model-control-mode explicit" in caught.value.message()
        assert client.is_model_ready("dense")


@pytest.fixture(scope="module")
def explicit_server(repository: Path) -> Iterator[ServerProcess]:
    args = [
        "--repository",
        str(repository),
        "--model-control-mode",
        "explicit",
        "--load-model",
        "identity_fp32",
    ]
    with run_server(*args) as server:
        yield server


def test_explicit_mode_loads_only_the_named_models_then_on_request(
    explicit_server: ServerProcess,
) -> None:
    x = np.ones((1, 4), np.float32)
    inputs = [triton_input(triton, "a", x, "FP32"), triton_input(triton, "b", x, "FP32")]
    with triton.InferenceServerClient(explicit_server.address) as client:
        assert client.is_model_ready("identity_fp32")
        assert not client.is_model_ready("sum_model")
        with pytest.raises(InferenceServerException) as caught:
            client.infer("sum_model", inputs)
        assert caught.value.status() == "StatusCode.UNAVAILABLE"

        client.load_model("sum_model")
        assert client.is_model_ready("sum_model")
        assert client.infer("sum_model", inputs).as_numpy("sum").tolist() == [[2.0] * 4]

        client.unload_model("sum_model")
        assert not client.is_model_ready("sum_model")
        with pytest.raises(InferenceServerException) as caught:
            client.infer("sum_model", inputs)
        assert caught.value.status() == "StatusCode.UNAVAILABLE"
        assert (
            "model 'sum_model' is not ready (state UNAVAILABLE: unloaded)" in caught.value.message()
        )

        client.load_model("sum_model")  # and back again
        assert client.infer("sum_model", inputs).as_numpy("diff").tolist() == [[0.0] * 4]


@pytest.mark.parametrize(
    ("name", "status", "fragment"),
    [
        (
            "../models",
            "StatusCode.INVALID_ARGUMENT",
            "must be a folder directly inside the model repository",
        ),
        (
            "/etc",
            "StatusCode.INVALID_ARGUMENT",
            "must be a folder directly inside the model repository",
        ),
        (
            "dense/1",
            "StatusCode.INVALID_ARGUMENT",
            "must be a folder directly inside the model repository",
        ),
        (
            "no_such_model",
            "StatusCode.NOT_FOUND",
            "model 'no_such_model' is not in the model repository",
        ),
        ("broken", "StatusCode.INVALID_ARGUMENT", "ONNX Runtime cannot load"),
        ("broken_config", "StatusCode.INVALID_ARGUMENT", "max_batch_sise"),
    ],
)
def test_explicit_load_refuses_what_is_not_a_valid_model_inside_the_repository(
    explicit_server: ServerProcess, name: str, status: str, fragment: str
) -> None:
    with triton.InferenceServerClient(explicit_server.address) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.load_model(name)
        assert client.is_server_ready()
    assert caught.value.status() == status
    assert fragment in caught.value.message()


def test_explicit_load_refuses_file_and_config_overrides(explicit_server: ServerProcess) -> None:
    with (
        triton.InferenceServerClient(explicit_server.address) as client,
        pytest.raises(InferenceServerException) as caught,
    ):
        client.load_model("sum_model", config='{"max_batch_size": 2}')
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "only from the files in its repository" in caught.value.message()
