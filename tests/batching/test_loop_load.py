"""The loop-load gauge, and the batcher holding requests back only while the loop is saturated.

These tests run their own event loop, made by `new_event_loop` as the server's is, and measure it
for real: idle means blocked in the selector (a sleep), busy means running callbacks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

from wattserve.batching.loop_load import WINDOW_NS, LoopLoad, new_event_loop
from wattserve.batching.scheduler import DynamicBatcher
from wattserve.core.config import DynamicBatchingConfig
from wattserve.core.statistics import ModelStatistics
from wattserve.core.types import Tensors

T = TypeVar("T")
WINDOW_S = WINDOW_NS / 1e9


def run_on_gauged_loop(main: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(main())  # type: ignore[arg-type]


async def keep_busy(seconds: float) -> None:
    """Occupy the loop with callbacks (no blocking wait) for `seconds`, yielding every 0.2 ms."""
    end = time.perf_counter() + seconds
    while (now := time.perf_counter()) < end:
        while time.perf_counter() - now < 0.0002:
            pass
        await asyncio.sleep(0)


def gauge() -> LoopLoad:
    load = LoopLoad.of(asyncio.get_running_loop())
    assert load is not None
    return load


def test_only_loops_made_by_new_event_loop_have_a_gauge() -> None:
    plain = asyncio.new_event_loop()
    try:
        assert LoopLoad.of(plain) is None
    finally:
        plain.close()

    async def main() -> bool:
        return LoopLoad.of(asyncio.get_running_loop()) is not None

    assert run_on_gauged_loop(main)


def test_a_loop_blocked_on_io_is_not_saturated_and_a_busy_one_is() -> None:
    async def main() -> list[bool]:
        load = gauge()
        verdicts = []
        await asyncio.sleep(2 * WINDOW_S)  # idle: blocked in the selector
        verdicts.append(load.saturated())
        await keep_busy(2 * WINDOW_S)
        verdicts.append(load.saturated())
        await asyncio.sleep(2 * WINDOW_S)
        verdicts.append(load.saturated())
        return verdicts

    assert run_on_gauged_loop(main) == [False, True, False]


class InstantModel:
    def __init__(self) -> None:
        self.batches: list[int] = []

    async def run(self, inputs: Tensors) -> Tensors:
        self.batches.append(inputs["x"].shape[0])
        return {"y": inputs["x"] * 2}


def gauged_batcher(model: InstantModel, delay_us: int) -> DynamicBatcher:
    b = DynamicBatcher(
        model.run,
        model="double",
        version="1",
        instances=1,
        max_batch_size=8,
        policy=DynamicBatchingConfig(max_queue_delay_us=delay_us),
        statistics=ModelStatistics(),
        loop_load=gauge(),
    )
    b.start()
    return b


async def infer(b: DynamicBatcher) -> tuple[Tensors, int]:
    return await b.infer({"x": np.ones((1, 3), np.float32)}, 1, (3,), None)


def test_a_closed_loop_client_on_an_idle_loop_never_waits_however_close_its_requests() -> None:
    """Requests 3 ms apart are well inside the 200 ms delay, so the arrival gap alone would hold
    each one back; but the loop sits idle between them: nothing else is coming, so none waits."""

    async def main() -> tuple[list[int], list[int], float]:
        model = InstantModel()
        b = gauged_batcher(model, delay_us=200_000)
        queued, started = [], time.perf_counter()
        for _ in range(12):
            _, queue_ns = await infer(b)
            queued.append(queue_ns)
            await asyncio.sleep(0.003)  # the client's think time and the network: loop idle
        elapsed = time.perf_counter() - started
        await b.close()
        return model.batches, queued, elapsed

    batches, queued, elapsed = run_on_gauged_loop(main)
    assert batches == [1] * 12
    assert queued == [0] * 12
    assert elapsed < 1.0  # 12 x (3 ms + a run)


def test_on_a_saturated_loop_requests_close_together_wait_to_batch() -> None:
    async def main() -> list[int]:
        model = InstantModel()
        b = gauged_batcher(model, delay_us=20_000)
        busy = asyncio.ensure_future(keep_busy(5.0))  # cancelled below
        await asyncio.sleep(2 * WINDOW_S)  # the gauge sees a busy window
        for _ in range(6):  # requests come close together
            await asyncio.gather(infer(b), infer(b))
        model.batches.clear()
        results = await asyncio.gather(infer(b), infer(b), infer(b))
        assert all(queue_ns > 0 for _, queue_ns in results)
        busy.cancel()
        await asyncio.gather(busy, return_exceptions=True)
        await b.close()
        return model.batches

    assert run_on_gauged_loop(main) == [3]
