"""How busy the event loop is lately: the signal that tells the batcher whether holding a request
back to grow its batch can pay (docs/batching.md, "When the batcher waits").

Batches grow only while requests queue. On a model that runs in less time than gRPC takes to hand
over the next request (every model that runs on the event loop), nothing queues by itself: each
request finds the model idle. Holding a request back is then worth it only while the server is
saturated: the loop has other requests to accept, decode and answer meanwhile, so the wait costs
no throughput and the batch saves ONNX Runtime calls. When the loop goes idle between requests,
the next one will not come before this one is answered (a closed-loop client is waiting for it)
and waiting only adds latency.

The measure is the share of wall time the loop spent blocked in its selector, waiting for I/O.
`new_event_loop` builds a standard selector event loop whose selector keeps that count; the
server's processes run on it (`wattserve.cli`, `wattserve.workers`).
"""

from __future__ import annotations

import asyncio
import selectors
import time
import weakref
from typing import Any

WINDOW_NS = 10_000_000
"""The loop's load is judged over windows of at least this long (10 ms)."""
SATURATED_BUSY_SHARE = 0.95
"""A window in which the loop was busy (not blocked on I/O) at least this share of the time."""

_LOADS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopLoad] = weakref.WeakKeyDictionary()


class _IdleTimingSelector(selectors.DefaultSelector):
    """The platform's default selector, counting the nanoseconds spent blocked in `select`."""

    def __init__(self) -> None:
        super().__init__()
        self.idle_ns = 0

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None and timeout <= 0:  # a poll: the loop has work ready
            return super().select(timeout)
        started = time.perf_counter_ns()
        try:
            return super().select(timeout)
        finally:
            self.idle_ns += time.perf_counter_ns() - started


class LoopLoad:
    """Whether the loop it watches was saturated over the last window."""

    def __init__(self, selector: _IdleTimingSelector) -> None:
        self._selector = selector
        self._mark_ns = time.perf_counter_ns()
        self._mark_idle_ns = selector.idle_ns
        self._saturated = False

    @staticmethod
    def of(loop: asyncio.AbstractEventLoop) -> LoopLoad | None:
        """The gauge of a loop made by `new_event_loop`; None for any other loop."""
        return _LOADS.get(loop)

    def saturated(self) -> bool:
        """True when the loop was busy for at least SATURATED_BUSY_SHARE of the last window.

        The verdict is renewed at most once per window, from the time since the last renewal:
        after a quiet spell the first request sees a window that is mostly idle.
        """
        now = time.perf_counter_ns()
        elapsed = now - self._mark_ns
        if elapsed >= WINDOW_NS:
            idle = self._selector.idle_ns - self._mark_idle_ns
            self._saturated = idle <= elapsed * (1 - SATURATED_BUSY_SHARE)
            self._mark_ns, self._mark_idle_ns = now, self._selector.idle_ns
        return self._saturated


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A selector event loop (asyncio's default on Linux) that measures its own load."""
    selector = _IdleTimingSelector()
    loop = asyncio.SelectorEventLoop(selector)
    _LOADS[loop] = LoopLoad(selector)
    return loop
