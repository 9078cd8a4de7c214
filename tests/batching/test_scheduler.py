"""The dynamic batcher's policy: when it waits, what it merges, what it refuses, how it drains."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from wattserve.batching.scheduler import DynamicBatcher, Pending
from wattserve.core.config import DynamicBatchingConfig
from wattserve.core.errors import DeadlineExceeded, ExecutionError, QueueFull, Unavailable
from wattserve.core.statistics import ModelStatistics
from wattserve.core.types import Tensors
from wattserve.execution.onnx import ALL_ROWS


class DoublingModel:
    """y = 2x; each batch waits for `gate`, so a test can hold the instance busy."""

    def __init__(self, *, rows_out: int | None = None) -> None:
        self.batches: list[int] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self._rows_out = rows_out

    async def run(self, inputs: Tensors, rows: int) -> Tensors:
        assert rows == inputs["x"].shape[0]
        self.batches.append(rows)
        await self.gate.wait()
        y = inputs["x"] * 2
        return {"y": y[: self._rows_out] if self._rows_out is not None else y}


def batcher(
    model: DoublingModel,
    *,
    max_batch: int = 8,
    delay_us: int = 0,
    instances: int = 1,
    loop_rows: int = 0,
    **policy: object,
) -> DynamicBatcher:
    b = DynamicBatcher(
        model.run,
        model="double",
        version="1",
        instances=instances,
        max_batch_size=max_batch,
        policy=DynamicBatchingConfig(max_queue_delay_us=delay_us, **policy),  # type: ignore[arg-type]
        statistics=ModelStatistics(),
        loop_rows=loop_rows,
    )
    b.start()
    return b


def submit(
    b: DynamicBatcher, rows: int = 1, key: object = (3,), deadline: float | None = None
) -> asyncio.Future[tuple[Tensors, int]]:
    return b.submit({"x": np.full((rows, 3), rows, np.float32)}, rows, key, deadline)


async def until(condition: object) -> None:
    async with asyncio.timeout(5):
        # Polls batcher state that has no event of its own, bounded by the timeout.
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0)


# A model that runs on the event loop has its batches executed in the batcher's own task (no task
# per batch); the queue, the merge, failures and draining must behave the same.
EXECUTES_INLINE = pytest.mark.parametrize("loop_rows", [0, ALL_ROWS], ids=["task", "inline"])


async def test_a_lone_request_does_not_wait_out_the_queue_delay() -> None:
    model = DoublingModel()
    b = batcher(model, delay_us=2_000_000)
    started = time.perf_counter()
    outputs, _ = await asyncio.wait_for(submit(b, rows=2), timeout=1.0)
    assert time.perf_counter() - started < 1.0
    assert outputs["y"].tolist() == [[4.0] * 3] * 2
    await b.close()


@EXECUTES_INLINE
async def test_requests_queued_behind_a_busy_instance_merge_into_one_batch(
    loop_rows: int,
) -> None:
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model, loop_rows=loop_rows)
    first = submit(b)
    await until(lambda: model.batches == [1])
    rest = [submit(b, rows=n) for n in (1, 2, 3)]
    model.gate.set()
    results = await asyncio.gather(first, *rest)
    assert model.batches == [1, 6]
    for (outputs, queue_ns), rows in zip(results, (1, 1, 2, 3), strict=True):
        assert outputs["y"].tolist() == [[2.0 * rows] * 3] * rows
        assert queue_ns >= 0
    await b.close()


async def test_batches_never_exceed_max_rows_and_keep_arrival_order() -> None:
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model, max_batch=4)
    futures = [submit(b)]
    await until(lambda: model.batches == [1])
    futures += [submit(b, rows=n) for n in (2, 1, 2, 3, 1)]
    model.gate.set()
    await asyncio.gather(*futures)
    assert model.batches == [1, 3, 2, 4]


async def test_preferred_batch_sizes_cap_each_batch() -> None:
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model, max_batch=16, preferred_batch_sizes=[2, 4])
    futures = [submit(b)]
    await until(lambda: model.batches == [1])
    futures += [submit(b) for _ in range(9)]
    model.gate.set()
    await asyncio.gather(*futures)
    assert model.batches == [1, 4, 4, 1]


async def test_requests_with_different_non_batch_shapes_batch_separately() -> None:
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model)
    futures = [submit(b, key="short")]
    await until(lambda: len(model.batches) == 1)
    futures += [submit(b, rows=1, key=k) for k in ("long", "short", "long", "short")]
    model.gate.set()
    await asyncio.gather(*futures)
    assert model.batches == [1, 2, 2]


async def test_full_queue_refuses_with_queue_full() -> None:
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model, max_queue_size=2)
    running = submit(b)
    await until(lambda: model.batches == [1])
    queued = [submit(b), submit(b)]
    with pytest.raises(QueueFull, match=r"model 'double' version 1: queue is full \(2 requests"):
        submit(b)
    model.gate.set()
    await asyncio.gather(running, *queued)


async def test_expired_and_cancelled_requests_are_not_run() -> None:
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model)
    running = submit(b)
    await until(lambda: model.batches == [1])
    expired = submit(b, deadline=time.monotonic() - 1)
    cancelled = submit(b, rows=5)
    kept = submit(b, rows=2)
    cancelled.cancel()
    model.gate.set()
    await asyncio.gather(running, kept)
    with pytest.raises(DeadlineExceeded, match="deadline passed after"):
        await expired
    assert model.batches == [1, 2]


async def test_abandoned_requests_past_the_next_batch_are_dropped_when_they_come_up() -> None:
    """The batcher looks only as far as the next batch reaches; a request abandoned deeper in the
    queue is still never run, and an expired one still fails, when its turn comes."""
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model, max_batch=2)
    running = submit(b)
    await until(lambda: model.batches == [1])
    first = [submit(b), submit(b)]  # the next batch
    expired = submit(b, deadline=time.monotonic() + 0.05)
    cancelled = submit(b)
    last = submit(b)
    cancelled.cancel()
    await asyncio.sleep(0.1)  # the deadline passes while the first batch is still queued
    model.gate.set()
    await asyncio.gather(running, *first, last)
    with pytest.raises(DeadlineExceeded, match="deadline passed after"):
        await expired
    assert model.batches == [1, 2, 1]


@EXECUTES_INLINE
async def test_an_unsplittable_output_fails_every_request_of_the_batch(loop_rows: int) -> None:
    model = DoublingModel(rows_out=1)
    model.gate.clear()
    b = batcher(model, loop_rows=loop_rows)
    first = submit(b)
    await until(lambda: model.batches == [1])
    pair = [submit(b), submit(b)]
    model.gate.set()
    assert (await first)[0]["y"].shape == (1, 3)
    for future in pair:
        with pytest.raises(ExecutionError, match="output 'y' has shape \\[1, 3\\]"):
            await future


@EXECUTES_INLINE
async def test_close_runs_what_is_queued_then_refuses_new_requests(loop_rows: int) -> None:
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model, loop_rows=loop_rows)
    futures = [submit(b)]
    await until(lambda: model.batches == [1])
    futures += [submit(b), submit(b)]
    closing = asyncio.create_task(b.close())
    await until(lambda: b._closing)
    with pytest.raises(Unavailable, match="being unloaded"):
        submit(b)
    model.gate.set()
    await closing
    assert all(f.done() and not f.exception() for f in futures)
    assert model.batches == [1, 2]


async def test_each_instance_runs_its_own_batch_concurrently() -> None:
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model, instances=2)
    first = submit(b)
    await until(lambda: model.batches == [1])
    second = submit(b, rows=2)
    await until(lambda: model.batches == [1, 2])  # both in flight while the gate is shut
    third = submit(b, rows=3)
    await asyncio.sleep(0.01)
    assert model.batches == [1, 2]  # no third instance: it waits in the queue
    model.gate.set()
    await asyncio.gather(first, second, third)
    assert model.batches == [1, 2, 3]


class BrokenBatcher(DynamicBatcher):
    """A scheduling bug: forming any batch raises."""

    def _collect(self) -> tuple[list[Pending], int]:
        raise RuntimeError("bug in batch formation")


async def test_a_crashed_scheduler_answers_its_queue_and_refuses_more(
    caplog: pytest.LogCaptureFixture,
) -> None:
    b = BrokenBatcher(
        DoublingModel().run,
        model="double",
        version="1",
        instances=1,
        max_batch_size=8,
        policy=DynamicBatchingConfig(),
        statistics=ModelStatistics(),
    )
    b.start()
    with pytest.raises(ExecutionError, match="model 'double' version 1: internal error"):
        await asyncio.wait_for(submit(b), timeout=5)
    with pytest.raises(Unavailable, match="stopped after an internal error"):
        submit(b)
    assert "the batcher stopped" in caplog.text


# infer(): the front door, where a lone request to an idle model skips the queue


def infer(b: DynamicBatcher, rows: int = 1) -> asyncio.Task[tuple[Tensors, int]]:
    return asyncio.ensure_future(
        b.infer({"x": np.full((rows, 3), rows, np.float32)}, rows, (3,), None)
    )


async def test_a_lone_request_to_an_idle_model_runs_in_its_caller_without_queueing() -> None:
    model = DoublingModel()
    b = batcher(model, delay_us=2_000_000)
    outputs, queue_ns = await asyncio.wait_for(infer(b, rows=2), timeout=1.0)
    assert outputs["y"].tolist() == [[4.0] * 3] * 2
    assert queue_ns == 0  # never queued
    assert model.batches == [2]
    await b.close()


async def test_requests_behind_a_lone_one_queue_and_merge_when_it_finishes() -> None:
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model)
    first = infer(b)
    await until(lambda: model.batches == [1])
    rest = [infer(b, rows=n) for n in (1, 2, 3)]
    await until(lambda: b.queue_depth == 3)  # the only instance is busy: they queue
    model.gate.set()
    results = await asyncio.gather(first, *rest)
    assert model.batches == [1, 6]
    assert results[0][1] == 0 and all(queue_ns > 0 for _, queue_ns in results[1:])
    await b.close()


async def test_while_requests_arrive_close_together_a_lone_one_waits_to_batch() -> None:
    model = DoublingModel()
    b = batcher(model, delay_us=200_000)
    for _ in range(5):  # teach the batcher that requests come close together
        await asyncio.gather(infer(b), infer(b))
    model.batches.clear()
    results = await asyncio.gather(infer(b), infer(b), infer(b, rows=2))
    assert model.batches == [4]  # queued and merged, not run one by one
    assert all(queue_ns > 0 for _, queue_ns in results)
    await b.close()


async def test_close_waits_for_a_lone_request_running_in_its_caller() -> None:
    model = DoublingModel()
    model.gate.clear()
    b = batcher(model)
    lone = infer(b)
    await until(lambda: model.batches == [1])
    closing = asyncio.ensure_future(b.close())
    await asyncio.sleep(0.01)
    assert not closing.done()
    with pytest.raises(Unavailable):
        await b.infer({"x": np.ones((1, 3), np.float32)}, 1, (3,), None)
    model.gate.set()
    await asyncio.wait_for(closing, timeout=5)
    assert lone.done() and lone.result()[0]["y"].shape == (1, 3)
