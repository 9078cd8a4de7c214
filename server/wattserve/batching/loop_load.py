"""How busy the event loop is lately: the signal that tells the batcher whether holding a request
back to grow its batch can pay (docs/batching.md, "When the batcher waits").

Batches grow only while requests queue. On a model that runs in less time than gRPC takes to hand
over the next request (every model that runs on the event loop), nothing queues by itself: each
request finds the model idle. Holding a request back is then worth it only while the server is
saturated: the loop has other requests to accept, decode and answer meanwhile, so the wait costs
no throughput and the batch saves ONNX Runtime calls. When the loop goes idle between requests,
the next one will not come before this one is answered (a closed-loop client is waiting for it)
and waiting only adds latency.

The measure is the share of wall time the loop spent waiting for I/O, read in one of two ways:

- on asyncio's own loop, the time its selector spent blocked in `select`, counted exactly;
- on uvloop, whose waiting happens inside libuv where Python cannot time it, the loop thread's
  time on a CPU or waiting for one (`/proc/thread-self/schedstat`; elsewhere its CPU time), the
  rest being idle. A hypervisor's steal shows in neither, so under heavy steal a saturated loop
  reads as less busy and the batcher waits less: latency first, never a wait that cannot pay.

`new_event_loop` builds the loop the settings ask for (`event_loop`) and its gauge; the server's
processes run on it (`wattserve.cli`, `wattserve.workers`).
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import os
import selectors
import time
import weakref
from collections.abc import Callable
from typing import Any, Literal

logger = logging.getLogger(__name__)

WINDOW_NS = 10_000_000
"""The loop's load is judged over windows of at least this long (10 ms)."""
SATURATED_BUSY_SHARE = 0.95
"""A window in which the loop was busy (not waiting for I/O) at least this share of the time."""

EventLoopKind = Literal["auto", "asyncio", "uvloop"]

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


class _ThreadIdle:
    """Idle nanoseconds of the thread that made it: wall time less its time on a CPU and its time
    waiting for one. Call it on that thread.

    The time on a CPU comes from `time.thread_time_ns` (schedstat's own figure lags by up to a
    scheduler tick for a running thread); the time waiting, from the second field of
    /proc/thread-self/schedstat (Linux), read with one pread of a file kept open.
    """

    def __init__(self) -> None:
        self._fd: int | None = None
        try:
            self._fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self._waiting_ns()
        except (OSError, ValueError, IndexError):  # not Linux, or a kernel without schedstats
            self.close()
        self._start_ns = time.perf_counter_ns()
        self._base_ns = self._busy_ns()

    def _waiting_ns(self) -> int:
        if self._fd is None:
            return 0
        return int(os.pread(self._fd, 128, 0).split()[1])

    def _busy_ns(self) -> int:
        return time.thread_time_ns() + self._waiting_ns()

    def __call__(self) -> int:
        return time.perf_counter_ns() - self._start_ns - (self._busy_ns() - self._base_ns)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class LoopLoad:
    """Whether the loop it watches was saturated over the last window.

    `idle_ns` is a running count of the nanoseconds the loop has spent waiting for I/O; it must
    be called on the loop's thread.
    """

    def __init__(self, idle_ns: Callable[[], int], *, timers_in_ms: bool = False) -> None:
        self._idle_ns = idle_ns
        self.timers_in_ms = timers_in_ms
        """The loop rounds timers to whole milliseconds (uvloop: libuv's timers)."""
        self._mark_ns = time.perf_counter_ns()
        self._mark_idle_ns = idle_ns()
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
            idle_ns = self._idle_ns()
            self._saturated = idle_ns - self._mark_idle_ns <= elapsed * (1 - SATURATED_BUSY_SHARE)
            self._mark_ns, self._mark_idle_ns = now, idle_ns
        return self._saturated


def uvloop_installed() -> bool:
    return importlib.util.find_spec("uvloop") is not None


def loop_kind(loop: asyncio.AbstractEventLoop) -> str:
    """ "uvloop" or "asyncio", for the log."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def new_event_loop(kind: EventLoopKind = "asyncio") -> asyncio.AbstractEventLoop:
    """An event loop of the `kind` asked for, with its gauge; call it on the thread that will run
    the loop. "auto" is uvloop where it is installed, else asyncio's selector loop (the default
    on Linux)."""
    if kind == "auto":
        kind = "uvloop" if uvloop_installed() else "asyncio"
    loop: asyncio.AbstractEventLoop
    if kind == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
        idle = _ThreadIdle()
        _LOADS[loop] = LoopLoad(idle, timers_in_ms=True)
        weakref.finalize(loop, idle.close)
    else:
        selector = _IdleTimingSelector()
        loop = asyncio.SelectorEventLoop(selector)
        _LOADS[loop] = LoopLoad(lambda: selector.idle_ns)
    return loop
