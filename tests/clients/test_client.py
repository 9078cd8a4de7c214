"""wattserve_client's async and sync clients against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np
import pytest

from tests.support import CountingStreams
from wattserve_client import AsyncClient, Client, InferenceError

RNG = np.random.default_rng(3)


async def test_async_client_infers_and_selects_outputs(address: str) -> None:
    a = RNG.standard_normal((3, 4)).astype(np.float32)
    b = RNG.standard_normal((3, 4)).astype(np.float32)
    async with AsyncClient(address) as client:
        assert await client.server_live()
        assert await client.server_ready()
        assert await client.model_ready("sum_model")
        outputs = await client.infer("sum_model", {"a": a, "b": b})
        only_diff = await client.infer("sum_model", {"a": a, "b": b}, outputs=["diff"])
        metadata = await client.model_metadata("sum_model")
        config = await client.model_config("sum_model")
        stats = await client.model_statistics("sum_model")
    assert list(outputs) == ["sum", "diff"]
    np.testing.assert_allclose(outputs["sum"], a + b)
    assert list(only_diff) == ["diff"]
    assert [t.name for t in metadata.inputs] == ["a", "b"]
    assert config.max_batch_size == 8
    assert stats[0].inference_count >= 6


async def test_async_client_round_trips_bytes_and_raises_inference_errors(address: str) -> None:
    words = np.array([["caf\u00e9".encode(), b"", b"x"]], dtype=object)
    async with AsyncClient(address) as client:
        outputs = await client.infer("identity_bytes", {"x": words})
        with pytest.raises(InferenceError) as caught:
            await client.infer("dense", {"input": np.zeros((1, 3), np.float32)})
    assert outputs["y"].tolist() == words.tolist()
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "input 'input' expects shape [-1, 512]" in caught.value.message


async def test_async_client_streams_many_requests(address: str) -> None:
    batches = [{"x": RNG.standard_normal((2, 3)).astype(np.float32)} for _ in range(25)]
    async with AsyncClient(address) as client:
        answers = {
            rid: result async for rid, result in client.stream_infer("identity_fp32", batches)
        }
    assert sorted(answers, key=int) == [str(i) for i in range(25)]
    for request_id, result in answers.items():
        assert not isinstance(result, InferenceError)
        np.testing.assert_array_equal(result["y"], batches[int(request_id)]["x"])


def test_sync_client(address: str) -> None:
    x = RNG.standard_normal((2, 512)).astype(np.float32)
    with Client(address) as client:
        assert client.server_ready()
        outputs = client.infer("dense", {"input": x}, request_id="abc", timeout_s=30)
        with pytest.raises(InferenceError) as caught:
            client.infer("nope", {"input": x})
        assert client.model_config("dense").max_batch_size == 128
    assert outputs["output"].shape == (2, 512)
    assert caught.value.code == grpc.StatusCode.NOT_FOUND
    assert "unknown model 'nope'" in str(caught.value)


async def test_async_client_spreads_a_stream_over_several_streams(address: str) -> None:
    batches = [{"x": RNG.standard_normal((1, 3)).astype(np.float32)} for _ in range(40)]
    batches[7] = {"x": np.zeros((1, 5), np.float32)}  # the wrong shape: fails alone

    async def slowly() -> AsyncIterator[dict[str, np.ndarray]]:
        for inputs in batches:
            await asyncio.sleep(0.001)  # every stream is waiting for the next one by now
            yield inputs

    counting = CountingStreams()
    async with AsyncClient(address, interceptors=[counting]) as client:
        answers = {
            rid: result
            async for rid, result in client.stream_infer("identity_fp32", slowly(), streams=4)
        }
        with pytest.raises(ValueError, match="streams must be >= 1, got 0"):
            async for _ in client.stream_infer("identity_fp32", batches, streams=0):
                pass
    assert len(counting.sent) == 4 and sum(counting.sent) == 40
    assert min(counting.sent) > 0, counting.sent
    assert sorted(answers, key=int) == [str(i) for i in range(40)]
    failed = answers.pop("7")
    assert isinstance(failed, InferenceError)
    assert "identity_fp32" in failed.message and "[-1, 3]" in failed.message
    for request_id, result in answers.items():
        assert not isinstance(result, InferenceError), result
        np.testing.assert_array_equal(result["y"], batches[int(request_id)]["x"])


class BadTenant(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Sends a tenant header the server refuses, which fails the whole stream."""

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        details = details._replace(metadata=grpc.aio.Metadata(("x-wattserve-tenant", "no way!")))
        return await continuation(details, request_iterator)


async def test_async_client_raises_when_one_of_its_streams_fails(address: str) -> None:
    async def late() -> AsyncIterator[dict[str, np.ndarray]]:
        # After the server has refused the streams: a write racing the refusal can end the call
        # with grpc.aio's own INTERNAL ("Internal error from Core") instead of the server's status.
        await asyncio.sleep(0.5)
        for _ in range(4):
            yield {"x": np.zeros((1, 3), np.float32)}

    async with AsyncClient(address, interceptors=[BadTenant()]) as client:
        with pytest.raises(InferenceError) as caught:
            async for _ in client.stream_infer("identity_fp32", late(), streams=2):
                pass
        # The client is still usable: the failed streams were cancelled, not left open.
        assert await client.server_live()
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "x-wattserve-tenant" in caught.value.message
