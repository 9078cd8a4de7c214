"""The unmodified tritonclient (sync and aio) against a real wattserve, as a Triton user sees it."""

from __future__ import annotations

import asyncio
import queue
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.conftest import IDENTITY_TYPES

RNG = np.random.default_rng(7)


def sample(datatype: str, shape: tuple[int, ...] = (2, 3)) -> np.ndarray:
    if datatype == "BYTES":
        words = [b"", b"a", b"wattserve", "caf\u00e9".encode(), b"x" * 300]
        return np.array(
            [[words[(r + c) % 5] for c in range(shape[1])] for r in range(shape[0])], dtype=object
        )
    if datatype == "BOOL":
        return RNG.integers(0, 2, shape).astype(bool)
    dtype = {
        "FP16": np.float16,
        "FP32": np.float32,
        "FP64": np.float64,
        "INT32": np.int32,
        "INT64": np.int64,
        "UINT8": np.uint8,
    }[datatype]
    if np.issubdtype(dtype, np.floating):
        return RNG.standard_normal(shape).astype(dtype)
    return RNG.integers(0, 200, shape).astype(dtype)


def triton_input(module: Any, name: str, array: np.ndarray, datatype: str) -> Any:
    tensor = module.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array)
    return tensor


@pytest.mark.parametrize("datatype", IDENTITY_TYPES)
def test_every_datatype_round_trips_with_the_sync_client(address: str, datatype: str) -> None:
    x = sample(datatype)
    with triton.InferenceServerClient(address) as client:
        result = client.infer(
            f"identity_{datatype.lower()}", [triton_input(triton, "x", x, datatype)]
        )
    y = result.as_numpy("y")
    assert result.get_output("y").datatype == datatype
    assert y.shape == x.shape
    assert y.dtype == x.dtype
    assert (y == x).all()


@pytest.mark.parametrize("datatype", IDENTITY_TYPES)
async def test_every_datatype_round_trips_with_the_aio_client(address: str, datatype: str) -> None:
    x = sample(datatype, (3, 3))
    async with triton_aio.InferenceServerClient(address) as client:
        result = await client.infer(
            f"identity_{datatype.lower()}", [triton_input(triton_aio, "x", x, datatype)]
        )
    assert (result.as_numpy("y") == x).all()


def test_demo_models_answer_with_their_declared_outputs(address: str) -> None:
    features = RNG.standard_normal((5, 30)).astype(np.float32)
    tokens = RNG.integers(0, 5000, (2, 7)).astype(np.int64)
    dense = RNG.standard_normal((3, 512)).astype(np.float32)
    with triton.InferenceServerClient(address) as client:
        tabular = client.infer(
            "tabular_classifier", [triton_input(triton, "features", features, "FP32")]
        )
        text = client.infer("text_classifier", [triton_input(triton, "input_ids", tokens, "INT64")])
        mlp = client.infer("dense", [triton_input(triton, "input", dense, "FP32")])
    assert tabular.as_numpy("label").shape == (5,)
    assert set(tabular.as_numpy("label")) <= {0, 1}
    np.testing.assert_allclose(tabular.as_numpy("probabilities").sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(text.as_numpy("probabilities").sum(axis=1), 1.0, rtol=1e-5)
    assert mlp.as_numpy("output").shape == (3, 512)
    assert np.isfinite(mlp.as_numpy("output")).all()


def test_requested_outputs_come_back_in_the_requested_order(address: str) -> None:
    a = RNG.standard_normal((2, 4)).astype(np.float32)
    b = RNG.standard_normal((2, 4)).astype(np.float32)
    with triton.InferenceServerClient(address) as client:
        result = client.infer(
            "sum_model",
            [triton_input(triton, "a", a, "FP32"), triton_input(triton, "b", b, "FP32")],
            outputs=[triton.InferRequestedOutput("diff"), triton.InferRequestedOutput("sum")],
            request_id="req-42",
        )
    response = result.get_response()
    assert [o.name for o in response.outputs] == ["diff", "sum"]
    assert response.id == "req-42"
    np.testing.assert_allclose(result.as_numpy("diff"), a - b)
    np.testing.assert_allclose(result.as_numpy("sum"), a + b)


def test_server_and_model_readiness_and_metadata(address: str) -> None:
    with triton.InferenceServerClient(address) as client:
        assert client.is_server_live()
        assert client.is_server_ready()
        assert client.is_model_ready("dense")
        assert not client.is_model_ready("broken")
        assert not client.is_model_ready("no_such_model")
        server = client.get_server_metadata()
        metadata = client.get_model_metadata("dense")
        fixed = client.get_model_metadata("fixed_shape")
    assert server.name == "wattserve"
    assert {"model_repository", "model_configuration", "statistics"} <= set(server.extensions)
    assert metadata.platform == "onnxruntime_onnx"
    assert list(metadata.versions) == ["1"]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.inputs] == [
        ("input", "FP32", [-1, 512])
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in metadata.outputs] == [
        ("output", "FP32", [-1, 512])
    ]
    assert [list(t.shape) for t in fixed.inputs] == [[2, 3]]


def test_model_config_reads_like_a_triton_config(address: str) -> None:
    with triton.InferenceServerClient(address) as client:
        dense = client.get_model_config("dense").config
        fixed = client.get_model_config("fixed_shape").config
        as_json = client.get_model_config("text_classifier", as_json=True)["config"]
    assert dense.name == "dense"
    assert dense.platform == "onnxruntime_onnx" and dense.backend == "onnxruntime"
    assert dense.max_batch_size == 128
    assert [(i.name, i.data_type, list(i.dims)) for i in dense.input] == [
        ("input", triton.model_config_pb2.TYPE_FP32, [512])
    ]
    assert dense.HasField("dynamic_batching")
    assert list(dense.dynamic_batching.preferred_batch_size) == [64, 128]
    assert dense.dynamic_batching.max_queue_delay_microseconds == 500
    assert dense.dynamic_batching.default_queue_policy.max_queue_size == 1024
    assert dense.instance_group[0].count == 1
    assert dense.instance_group[0].kind == triton.model_config_pb2.ModelInstanceGroup.KIND_CPU
    # A model without config.toml whose dims are fixed does not batch.
    assert fixed.max_batch_size == 0
    assert not fixed.HasField("dynamic_batching")
    assert list(fixed.input[0].dims) == [2, 3]
    assert as_json["input"][0]["dims"] == ["-1"]  # the sequence dimension is variable
    assert as_json["input"][0]["data_type"] == "TYPE_INT64"


def _stats(client: Any, model: str, version: str = "") -> Any:
    return client.get_inference_statistics(model, version).model_stats[0]


def test_statistics_count_rows_batches_and_durations(address: str) -> None:
    features = RNG.standard_normal((3, 30)).astype(np.float32)
    with triton.InferenceServerClient(address) as client:
        before = _stats(client, "tabular_classifier")
        for _ in range(4):
            client.infer("tabular_classifier", [triton_input(triton, "features", features, "FP32")])
        after = _stats(client, "tabular_classifier")
    assert after.inference_count - before.inference_count == 12  # rows
    assert after.execution_count - before.execution_count == 4  # sequential: one batch each
    stats, old = after.inference_stats, before.inference_stats
    assert stats.success.count - old.success.count == 4
    for phase in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert getattr(stats, phase).count - getattr(old, phase).count == 4
    assert stats.compute_infer.ns > old.compute_infer.ns
    assert stats.success.ns - old.success.ns >= stats.compute_infer.ns - old.compute_infer.ns
    by_size = {b.batch_size: b for b in after.batch_stats}
    old_by_size = {b.batch_size: b.compute_infer.count for b in before.batch_stats}
    assert by_size[3].compute_infer.count - old_by_size.get(3, 0) == 4
    assert after.last_inference > 0


async def test_concurrent_requests_are_batched(address: str) -> None:
    x = RNG.standard_normal((1, 512)).astype(np.float32)
    async with triton_aio.InferenceServerClient(address) as client:
        before = (await client.get_inference_statistics("dense")).model_stats[0]
        results = await asyncio.gather(
            *(
                client.infer("dense", [triton_input(triton_aio, "input", x, "FP32")])
                for _ in range(96)
            )
        )
        after = (await client.get_inference_statistics("dense")).model_stats[0]
    rows = after.inference_count - before.inference_count
    batches = after.execution_count - before.execution_count
    assert rows == 96
    assert batches <= rows // 4, f"{rows} rows ran in {batches} batches"
    first = results[0].as_numpy("output")
    assert all(np.array_equal(r.as_numpy("output"), first) for r in results)
    grown = [b.batch_size for b in after.batch_stats if b.batch_size > 1]
    assert grown, "no batch larger than one row was formed"


def test_batched_results_match_unbatched_results(address: str) -> None:
    """Splitting a merged batch gives every caller exactly its own rows."""
    payloads = [RNG.standard_normal((n, 512)).astype(np.float32) for n in (1, 2, 3, 5)]

    async def concurrently() -> list[np.ndarray]:
        async with triton_aio.InferenceServerClient(address) as client:
            results = await asyncio.gather(
                *(
                    client.infer("dense", [triton_input(triton_aio, "input", p, "FP32")])
                    for p in payloads * 8
                )
            )
        return [r.as_numpy("output") for r in results]

    batched = asyncio.run(concurrently())
    with triton.InferenceServerClient(address) as client:
        alone = [
            client.infer("dense", [triton_input(triton, "input", p, "FP32")]).as_numpy("output")
            for p in payloads
        ]
    for index, result in enumerate(batched):
        np.testing.assert_allclose(result, alone[index % len(payloads)], rtol=1e-4, atol=1e-5)


def test_variable_sequence_lengths_batch_separately(address: str) -> None:
    short = RNG.integers(0, 5000, (1, 4)).astype(np.int64)
    long = RNG.integers(0, 5000, (1, 9)).astype(np.int64)

    async def concurrently() -> list[Any]:
        async with triton_aio.InferenceServerClient(address) as client:
            return await asyncio.gather(
                *(
                    client.infer(
                        "text_classifier", [triton_input(triton_aio, "input_ids", t, "INT64")]
                    )
                    for t in [short, long] * 10
                )
            )

    results = asyncio.run(concurrently())
    with triton.InferenceServerClient(address) as client:
        expected = [
            client.infer(
                "text_classifier", [triton_input(triton, "input_ids", t, "INT64")]
            ).as_numpy("probabilities")
            for t in (short, long)
        ]
    for index, result in enumerate(results):
        np.testing.assert_allclose(result.as_numpy("probabilities"), expected[index % 2], rtol=1e-5)


def test_versions_default_to_the_latest_and_can_be_named(address: str) -> None:
    x = np.zeros((1, 2), np.float32)
    with triton.InferenceServerClient(address) as client:
        latest = client.infer("versioned", [triton_input(triton, "x", x, "FP32")])
        first = client.infer("versioned", [triton_input(triton, "x", x, "FP32")], model_version="1")
        metadata = client.get_model_metadata("versioned")
        assert client.is_model_ready("versioned", "1")
        assert not client.is_model_ready("versioned", "3")
    assert latest.get_response().model_version == "2"
    assert (latest.as_numpy("y") == 2).all()
    assert first.get_response().model_version == "1"
    assert (first.as_numpy("y") == 1).all()
    assert sorted(metadata.versions) == ["1", "2"]


def test_streaming_answers_every_request_and_reports_errors_in_band(address: str) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    payloads = {str(i): RNG.standard_normal((2, 3)).astype(np.float32) for i in range(40)}
    with triton.InferenceServerClient(address) as client:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for request_id, x in payloads.items():
            client.async_stream_infer(
                "identity_fp32", [triton_input(triton, "x", x, "FP32")], request_id=request_id
            )
        bad = triton_input(triton, "a", np.zeros((1, 4), np.float32), "FP32")
        client.async_stream_infer("sum_model", [bad], request_id="bad")
        client.async_stream_infer("no_such_model", [bad], request_id="missing")
        received = [answers.get(timeout=30) for _ in range(len(payloads) + 2)]
        client.stop_stream()
    errors = [e for _, e in received if e is not None]
    results = {r.get_response().id: r for r, e in received if e is None}
    assert sorted(results) == sorted(payloads)
    for request_id, result in results.items():
        np.testing.assert_array_equal(result.as_numpy("y"), payloads[request_id])
    messages = sorted(str(e) for e in errors)
    assert len(messages) == 2
    assert any("missing input 'b'" in m for m in messages)
    assert any("unknown model 'no_such_model'" in m for m in messages)


async def test_streaming_with_the_aio_client(address: str) -> None:
    payloads = [RNG.standard_normal((1, 3)).astype(np.float32) for _ in range(30)]

    async def requests() -> Any:
        for index, x in enumerate(payloads):
            inputs = [triton_input(triton_aio, "x", x, "FP32")]
            yield {"model_name": "identity_fp32", "inputs": inputs, "request_id": str(index)}

    async with triton_aio.InferenceServerClient(address) as client:
        seen = {}
        async for result, error in client.stream_infer(requests()):
            assert error is None
            seen[result.get_response().id] = result.as_numpy("y")
    assert sorted(seen, key=int) == [str(i) for i in range(30)]
    for request_id, y in seen.items():
        np.testing.assert_array_equal(y, payloads[int(request_id)])


def test_unsupported_triton_extensions_answer_unimplemented(address: str) -> None:
    with (
        triton.InferenceServerClient(address) as client,
        pytest.raises(InferenceServerException) as caught,
    ):
        client.get_system_shared_memory_status()
    assert caught.value.status() == "StatusCode.UNIMPLEMENTED"
