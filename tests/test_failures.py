"""Failures stay contained: a failing batch, an unsplittable output, a full queue, a passed
deadline, a stream that goes away with requests queued, and shutdown with requests in flight."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.grpc.aio as triton_aio
from tritonclient.utils import InferenceServerException

from tests.grpc.test_errors import dense, raw_request
from tests.grpc.test_tritonclient import triton_input
from tests.support import run_server, wait_for
from wattserve.protocol import pb, pb_grpc


def failing_inputs(index: int) -> list[triton.InferInput]:
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    return [
        triton_input(triton, "data", data, "FP32"),
        triton_input(triton, "index", np.array([[1], [index]], np.int64), "INT64"),
    ]


def test_onnx_runtime_failure_fails_only_that_batch(address: str, server: object) -> None:
    with triton.InferenceServerClient(address) as client:
        with pytest.raises(InferenceServerException) as caught:
            client.infer("failing", failing_inputs(index=7))
        assert caught.value.status() == "StatusCode.INTERNAL"
        assert "model 'failing' version 1: ONNX Runtime failed" in caught.value.message()
        assert "Out of range" in caught.value.message()
        # The same model and the others keep serving.
        picked = client.infer("failing", failing_inputs(index=2)).as_numpy("picked")
        assert picked.tolist() == [[1.0], [6.0]]
        assert client.is_server_ready()
    assert "ONNX Runtime failed" in server.text()  # type: ignore[attr-defined]


def test_output_that_cannot_be_split_fails_the_batch(address: str) -> None:
    x = np.ones((3, 4), np.float32)
    with (
        triton.InferenceServerClient(address) as client,
        pytest.raises(InferenceServerException) as caught,
    ):
        client.infer("bad_split", [triton_input(triton, "x", x, "FP32")])
    assert caught.value.status() == "StatusCode.INTERNAL"
    message = caught.value.message()
    assert "model 'bad_split' version 1: output 'y' has shape [1, 4]" in message
    assert "first dimension of 3" in message


def test_request_whose_timeout_passed_in_the_queue_is_not_run(address: str) -> None:
    a = np.ones((1, 4), np.float32)
    inputs = [triton_input(triton, "a", a, "FP32"), triton_input(triton, "b", a, "FP32")]
    with triton.InferenceServerClient(address) as client:
        before = client.get_inference_statistics("sum_model").model_stats[0].execution_count
        with pytest.raises(InferenceServerException) as caught:
            client.infer("sum_model", inputs, timeout=1)  # the `timeout` parameter, in µs
        after = client.get_inference_statistics("sum_model").model_stats[0].execution_count
        assert client.infer("sum_model", inputs, timeout=10_000_000).as_numpy("sum").tolist() == [
            [2.0] * 4
        ]
    assert caught.value.status() == "StatusCode.DEADLINE_EXCEEDED"
    assert "model 'sum_model' version 1: deadline passed" in caught.value.message()
    assert after == before


@pytest.fixture(scope="module")
def small_queue_repository(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dense model with room for only two waiting requests."""
    root = tmp_path_factory.mktemp("small-queue")
    (root / "dense" / "1").mkdir(parents=True)
    (root / "dense" / "1" / "model.onnx").hardlink_to(
        demo_repository / "dense" / "1" / "model.onnx"
    )
    (root / "dense" / "config.toml").write_text(
        "max_batch_size = 128\nwarmup = false\n[dynamic_batching]\nmax_queue_size = 2\n"
    )
    return root


async def test_full_queue_rejects_with_resource_exhausted_and_keeps_serving(
    small_queue_repository: Path,
) -> None:
    x = np.ones((128, 512), np.float32)
    with run_server("--repository", str(small_queue_repository)) as server:
        async with triton_aio.InferenceServerClient(server.address) as client:
            outcomes = await asyncio.gather(
                *(
                    client.infer("dense", [triton_input(triton_aio, "input", x, "FP32")])
                    for _ in range(24)
                ),
                return_exceptions=True,
            )
            rejected = [o for o in outcomes if isinstance(o, InferenceServerException)]
            served = [o for o in outcomes if not isinstance(o, BaseException)]
            assert len(rejected) + len(served) == 24
            assert rejected, "a queue of 2 took 24 concurrent requests"
            assert len(served) >= 3  # one running, two queued
            for error in rejected:
                assert error.status() == "StatusCode.RESOURCE_EXHAUSTED"
                assert "model 'dense' version 1: queue is full" in error.message()
                assert "max_queue_size" in error.message()
            again = await client.infer("dense", [triton_input(triton_aio, "input", x[:1], "FP32")])
            assert again.as_numpy("output").shape == (1, 512)


async def test_stream_cancelled_with_requests_queued_drops_them_and_counts_them(
    demo_repository: Path,
) -> None:
    """A client cancels its stream after the first answer, with most of its requests still
    queued: those never run, each is counted as CANCELLED (statistics, metrics, ledger), and the
    server goes on serving. (The test fails if the stream's queued requests are not cancelled.)"""
    sent = 40
    message = raw_request("dense", dense(rows=64))  # 2 per batch of 128 rows: ~20 batches
    with run_server("--repository", str(demo_repository)) as server:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
            call = stub.ModelStreamInfer()
            for index in range(sent):
                message.id = str(index)
                await call.write(message)
            first = await call.read()
            call.cancel()
            assert not first.error_message
            assert first.infer_response.outputs[0].shape == [64, 512]
            # Settled: every request the server read has ended, answered or dropped. (Those it
            # had not read yet were cancelled with the stream by gRPC and reach nobody's count.)
            seen: list[tuple[int, int, int]] = []
            while len(seen) < 5 or len(set(seen[-5:])) > 1:
                response = await stub.ModelStatistics(pb.ModelStatisticsRequest(name="dense"))
                stats = response.model_stats[0]
                durations = stats.inference_stats
                seen.append((durations.success.count, durations.fail.count, stats.inference_count))
                assert len(seen) < 200, seen[-5:]
                await asyncio.sleep(0.1)
            ok, cancelled, rows = seen[-1]
            assert ok >= 1 and ok + cancelled <= sent, (ok, cancelled)
            # A batch running when the stream went away still ran: its requests count as
            # cancelled (their answers had nowhere to go). The others never ran.
            ran_unanswered = rows // 64 - ok
            assert 0 <= ran_unanswered <= 2, (ok, cancelled, rows)
            assert cancelled - ran_unanswered >= 1, (ok, cancelled, rows)
            again = await stub.ModelInfer(raw_request("dense", dense(rows=1)))
            assert again.outputs[0].shape == [1, 512]
        # The meter folds its counts once per interval.
        wait_for(lambda: failures(server.metrics_url, "dense", "CANCELLED") == cancelled)
        server.process.send_signal(signal.SIGTERM)
        wait_for(lambda: server.process.poll() is not None, timeout_s=30)
        with sqlite3.connect(server.ledger_path) as db:
            reached, failed = db.execute(
                "SELECT sum(requests), sum(errors) FROM usage WHERE model = 'dense'"
            ).fetchone()
    assert (reached, failed) == (ok + cancelled + 1, cancelled)


def failures(metrics_url: str, model: str, code: str) -> float:
    """wattserve_request_failures_total for one model and status code (0 before any)."""
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    labels = (f'model="{model}"', f'code="{code}"')
    for line in text.splitlines():
        if line.startswith("wattserve_request_failures_total{") and all(x in line for x in labels):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_shutdown_finishes_accepted_requests(
    small_queue_repository: Path, demo_repository: Path
) -> None:
    """SIGTERM with requests in flight: each is answered, or refused before it was accepted."""
    x = np.ones((64, 512), np.float32)
    with run_server("--repository", str(demo_repository)) as server:
        async with triton_aio.InferenceServerClient(server.address) as client:
            calls = [
                asyncio.ensure_future(
                    client.infer("dense", [triton_input(triton_aio, "input", x, "FP32")])
                )
                for _ in range(40)
            ]
            while True:  # wait until the server is busy with them
                stats = (await client.get_inference_statistics("dense")).model_stats[0]
                if stats.execution_count >= 2:
                    break
                await asyncio.sleep(0.005)
            server.process.send_signal(signal.SIGTERM)
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
        wait_for(lambda: server.process.poll() is not None, timeout_s=30)
        # What the server itself saw: every request that reached its data plane, and how it ended.
        with sqlite3.connect(server.ledger_path) as db:
            reached, failed = db.execute(
                "SELECT sum(requests), sum(errors) FROM usage WHERE model = 'dense'"
            ).fetchone()
    assert server.process.returncode == 0
    answered = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, BaseException)]
    assert len(answered) >= 2
    for result in answered:
        assert result.as_numpy("output").shape == (64, 512)
    # No accepted request lost: each one that reached the data plane was answered.
    assert (reached, failed) == (len(answered), 0)
    for error in refused:  # refused by gRPC before any handler ran
        assert isinstance(error, InferenceServerException), repr(error)
        # UNAVAILABLE for calls that arrive after shutdown began. Calls that arrived earlier but
        # were never handed to a handler get CANCELLED from gRPC's core (grpc/grpc#41785).
        assert error.status() in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"), error
    assert "wattserve stopped" in server.text()
