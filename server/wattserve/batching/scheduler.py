"""The dynamic batcher of one model version: bounded queue, batch formation clock, futures.

Policy (docs/batching.md has the reasoning): a free instance takes the oldest request and every
queued request with the same non-batch shape, up to the batch limit. It waits for more rows only
while (a) the batch is below its target, (b) the oldest request has delay budget left, (c)
requests have lately been arriving faster than that budget runs out, and (d) the event loop is
saturated (`LoopLoad`), so that waiting costs no throughput. So a request to an idle model runs at
once, batches grow by themselves when requests queue behind busy instances, and a model faster
than its requests arrive is batched only while the server is at capacity.

`infer` is the front door: a request that finds an instance free, nothing queued and no reason
to wait runs straight away in its caller's task, with no hop through the queue and the batcher's
task (on a fast model those hops cost as much as the model). Everything else is `submit`ted.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass

from wattserve.batching.loop_load import LoopLoad
from wattserve.batching.tensors import merge, split
from wattserve.core.config import DynamicBatchingConfig
from wattserve.core.errors import DeadlineExceeded, ExecutionError, QueueFull, Unavailable
from wattserve.core.observer import BatchObserver
from wattserve.core.statistics import ModelStatistics
from wattserve.core.types import DEFAULT_TENANT, Tensors

logger = logging.getLogger(__name__)

# Weight of the newest inter-arrival gap in the running estimate.
_GAP_WEIGHT = 0.2
IDLE_TURN_NS = 10_000
"""A turn of the event loop this short ran nothing but the batcher's own poll (an idle uvloop
turns in about 2 µs on the machines of BENCHMARKS.md; one gRPC callback takes tens)."""


@dataclass(slots=True, eq=False)
class Work:
    """What running a batch needs of each of its requests."""

    inputs: Tensors
    rows: int
    tenant: str


@dataclass(slots=True, eq=False)
class Pending(Work):
    """A validated request waiting in the queue for its batch."""

    shape_key: Hashable
    """Requests batch together only when their non-batch dimensions agree."""
    deadline: float | None
    future: asyncio.Future[tuple[Tensors, int]]
    """Resolves to (outputs, queue_ns)."""
    enqueued_ns: int


class DynamicBatcher:
    """Merges queued requests of one model version into batches and runs them on its instances."""

    def __init__(
        self,
        run: Callable[[Tensors, int], Awaitable[Tensors]],
        *,
        model: str,
        version: str,
        instances: int,
        max_batch_size: int,
        policy: DynamicBatchingConfig,
        statistics: ModelStatistics,
        observer: BatchObserver | None = None,
        loop_load: LoopLoad | None = None,
        loop_rows: int = 0,
    ) -> None:
        """`loop_load`: the gauge of the loop the batcher runs on. Without one (a loop not made by
        `loop_load.new_event_loop`) the arrival gap alone decides whether to wait.

        `run(inputs, rows)` computes batches of up to `loop_rows` rows on the event loop without
        yielding, so nothing could run beside them. The batcher's task then executes each batch
        itself instead of starting a task for it (a task costs about 10 µs, as much as a small
        model's batch). `OnnxRunner` allows it only with one instance, which runs one batch at a
        time anyway, so a batch on its thread holds up nothing the task could have started."""
        self._run = run
        self._executes_inline = loop_rows > 0
        self._loop_load = loop_load
        self._polls = (
            loop_rows >= max(max_batch_size, 1) and loop_load is not None and loop_load.timers_in_ms
        )
        self._key = (model, version)
        self.label = f"model '{model}' version {version}"
        self._observer = observer
        self._max_rows = max(max_batch_size, 1)
        self._batches = max_batch_size > 0
        preferred = sorted(policy.preferred_batch_sizes)
        self._fill_rows = preferred[0] if preferred else self._max_rows
        self._take_rows = preferred[-1] if preferred else self._max_rows
        self._max_delay_ns = policy.max_queue_delay_us * 1000
        self._max_queue = policy.max_queue_size
        self._stats = statistics
        self._queue: collections.deque[Pending] = collections.deque()
        self._arrived = asyncio.Event()
        """Set when the queue stops being empty or holds enough rows to fill a batch: not on
        every arrival, which would wake the batcher's task once per request."""
        self._queued_rows = 0
        self._instances = instances
        self._free = instances
        """Instances not running a batch."""
        self._freed = asyncio.Event()
        self._closing = False
        self._refusal = "is being unloaded and takes no new requests"
        self._loop_task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop
        """Set by `start`, which must run before any request is submitted. Kept because on
        Python 3.11 every `asyncio.get_running_loop()` (and so every `asyncio.create_task`)
        checks the process id with a system call."""
        self._running: set[asyncio.Task[None]] = set()
        self._last_arrival_ns = 0
        # Start pessimistic: until requests show they come close together, never wait.
        self._gap_ns = float(4 * self._max_delay_ns)

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_task = self._loop.create_task(self._schedule(), name=f"batcher {self.label}")
        self._loop_task.add_done_callback(self._report_crash)

    def _report_crash(self, task: asyncio.Task[None]) -> None:
        """A bug in scheduling must not leave callers waiting forever: answer them, refuse more."""
        if task.cancelled() or task.exception() is None:
            return
        logger.critical(
            "%s: the batcher stopped; the model takes no more requests",
            self.label,
            exc_info=task.exception(),
        )
        self._closing = True
        self._refusal = "stopped after an internal error (see the server log); reload the model"
        for pending in self._queue:
            if not pending.future.done():
                pending.future.set_exception(ExecutionError(f"{self.label}: internal error"))
        self._queue.clear()
        self._queued_rows = 0

    async def infer(
        self,
        inputs: Tensors,
        rows: int,
        shape_key: Hashable,
        deadline: float | None,
        tenant: str = DEFAULT_TENANT,
    ) -> tuple[Tensors, int]:
        """Run one request: at once when the model is idle and waiting could not pay, else
        through the queue. Returns (outputs, ns spent queued)."""
        if self._queue or not self._free or self._closing or not self._runs_alone(rows):
            return await self.submit(inputs, rows, shape_key, deadline, tenant)
        self._note_arrival()
        if deadline is not None and deadline <= time.monotonic():
            raise DeadlineExceeded(f"{self.label}: deadline passed before the request ran")
        self._free -= 1
        try:  # no queue, so no Pending and no future: the answer is returned
            parts, _ = await self._compute([Work(inputs, rows, tenant)])
            return parts[0], 0
        finally:
            self._release()

    def _runs_alone(self, rows: int) -> bool:
        """The batch policy's verdict on a lone request to an idle model: run it now?"""
        # As _next_batch decides for a batch whose oldest request has just arrived.
        return (
            not self._batches
            or rows >= self._fill_rows
            or self._max_delay_ns <= 0
            or not self._waiting_pays(self._max_delay_ns)
        )

    def _waiting_pays(self, budget_ns: float) -> bool:
        """Whether to hold a batch open for `budget_ns` more: requests come faster than that and
        the loop is saturated (an idle loop means no other request is on its way)."""
        if self._gap_ns > budget_ns:
            return False
        return self._loop_load is None or self._loop_load.saturated()

    def submit(
        self,
        inputs: Tensors,
        rows: int,
        shape_key: Hashable,
        deadline: float | None,
        tenant: str = DEFAULT_TENANT,
    ) -> asyncio.Future[tuple[Tensors, int]]:
        """Queue one request for the batcher's task; resolves to (outputs, ns spent queued)."""
        if self._closing:
            raise Unavailable(f"{self.label} {self._refusal}")
        if len(self._queue) >= self._max_queue:
            raise QueueFull(
                f"{self.label}: queue is full ({self._max_queue} requests waiting, the "
                f"configured max_queue_size); retry later or add instances"
            )
        now = self._note_arrival()
        future: asyncio.Future[tuple[Tensors, int]] = self._loop.create_future()
        self._queue.append(Pending(inputs, rows, tenant, shape_key, deadline, future, now))
        self._queued_rows += rows
        if len(self._queue) == 1 or self._queued_rows >= self._fill_rows:
            self._arrived.set()
        return future

    def _note_arrival(self) -> int:
        now = time.perf_counter_ns()
        if self._last_arrival_ns:
            gap = min(now - self._last_arrival_ns, 4 * self._max_delay_ns)
            self._gap_ns += _GAP_WEIGHT * (gap - self._gap_ns)
        self._last_arrival_ns = now
        return now

    def _release(self) -> None:
        self._free += 1
        self._freed.set()

    async def _schedule(self) -> None:
        while True:
            batch = await self._next_batch()
            if batch is None:  # closing and nothing left
                return
            self._free -= 1
            if self._executes_inline:
                await self._execute(batch)
                continue
            task = self._loop.create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[Pending] | None:
        """Wait for a free instance and a batch worth sending; take it off the queue."""
        patient = True
        while True:
            if not self._free:  # every instance busy (a lone request may have taken the last)
                self._freed.clear()
                await self._freed.wait()
                continue
            self._drop_abandoned()
            if not self._queue:
                if self._closing:
                    return None
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch, rows = self._collect()
            if rows >= self._fill_rows or not self._batches or self._closing:
                return self._take(batch)
            budget_ns = batch[0].enqueued_ns + self._max_delay_ns - time.perf_counter_ns()
            if budget_ns <= 0 or not patient or not self._waiting_pays(budget_ns):
                return self._take(batch)
            self._arrived.clear()
            waiting_since = self._last_arrival_ns
            if not await self._wait_for_arrival(min(budget_ns, 2 * self._gap_ns)):
                # Nothing came within two usual gaps: the clients are waiting for this batch.
                patient = self._last_arrival_ns != waiting_since

    async def _wait_for_arrival(self, wait_ns: float) -> bool:
        """Wait up to `wait_ns` for `_arrived`; False if the time ran out."""
        if self._polls:
            # uvloop rounds a timer to whole milliseconds: a 0.4 ms wait would end at once. So
            # the batcher yields to the loop until the time is up, which keeps microsecond
            # precision and costs one task step per turn while the loop has other work. A turn
            # that comes back at once had none: the loop is idle but for this polling (which the
            # load gauge counts as busy), nothing is being handed over, and the gRPC threads that
            # would deliver the next request need the core the polling takes. Stop waiting then.
            # (Not for a model on a thread: the polling would take the core from it.)
            now = time.perf_counter_ns()
            until_ns = now + wait_ns
            while not self._arrived.is_set():
                if now >= until_ns:
                    return False
                turn_ns = now
                await asyncio.sleep(0)
                now = time.perf_counter_ns()
                if now - turn_ns < IDLE_TURN_NS and not self._arrived.is_set():
                    return False
            return True
        try:
            async with asyncio.timeout(wait_ns / 1e9):
                await self._arrived.wait()
        except TimeoutError:
            return False
        return True

    def _collect(self) -> tuple[list[Pending], int]:
        """The oldest request and the queued ones that can share its batch, in arrival order."""
        first = self._queue[0]
        batch, rows = [first], first.rows
        if self._batches:
            for pending in itertools.islice(self._queue, 1, None):
                if pending.shape_key != first.shape_key:
                    continue
                if rows + pending.rows > self._take_rows:
                    break
                batch.append(pending)
                rows += pending.rows
        return batch, rows

    def _take(self, batch: list[Pending]) -> list[Pending]:
        queue = self._queue
        if all(queue[i] is p for i, p in enumerate(batch)):  # the usual case: the oldest ones
            for _ in batch:
                queue.popleft()
        else:  # requests of another shape were queued in between
            chosen = set(map(id, batch))
            self._queue = collections.deque(p for p in queue if id(p) not in chosen)
        self._queued_rows -= sum(p.rows for p in batch)
        return batch

    def _drop_abandoned(self) -> None:
        """Forget cancelled requests and fail those whose deadline passed while queued, among
        those the next batch could take; deeper ones are dealt with when they come up.

        The batcher's task calls this before every batch and every wake-up, so it looks only as
        far as a batch reaches (a scan of the whole queue, 100+ requests under load, cost more
        than the rest of `_next_batch`)."""
        now = time.monotonic()
        abandoned: list[Pending] = []
        rows, shape_key = 0, None
        for p in self._queue:
            if p.future.done() or (p.deadline is not None and p.deadline <= now):
                abandoned.append(p)
                continue
            if shape_key is None:
                shape_key = p.shape_key
            elif p.shape_key != shape_key:
                continue  # `_collect` passes over it as well
            rows += p.rows
            if rows >= self._take_rows:
                break
        if not abandoned:
            return
        for p in abandoned:
            if not p.future.done():
                waited_ms = (time.perf_counter_ns() - p.enqueued_ns) / 1e6
                p.future.set_exception(
                    DeadlineExceeded(
                        f"{self.label}: deadline passed after {waited_ms:.1f} ms in the queue; "
                        f"the request was not run"
                    )
                )
        gone = set(map(id, abandoned))
        self._queue = collections.deque(p for p in self._queue if id(p) not in gone)
        self._queued_rows -= sum(p.rows for p in abandoned)

    async def _execute(self, batch: list[Pending]) -> None:
        """Run a batch taken off the queue and answer its requests."""
        try:
            parts, start = await self._compute(batch)
        except ExecutionError as exc:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        finally:
            self._release()
        for p, part in zip(batch, parts, strict=True):
            if not p.future.done():
                p.future.set_result((part, start - p.enqueued_ns))

    async def _compute(self, batch: Sequence[Work]) -> tuple[list[Tensors], int]:
        """Merge, run, check and split one batch: each request's outputs in order, and when the
        batch started. Failures are logged here and raised as ExecutionError."""
        try:
            start = time.perf_counter_ns()
            merged = merge([p.inputs for p in batch])
            merged_at = time.perf_counter_ns()
            row_counts = [p.rows for p in batch]
            rows = sum(row_counts)
            token = self._observe_start(batch, merged_at, rows)
            try:
                outputs = await self._run(merged, rows)
            finally:
                ran_at = time.perf_counter_ns()
                if self._observer is not None:
                    self._observer.batch_finished(token, ran_at)
            parts = split(outputs, row_counts, label=self.label) if self._batches else [outputs]
            done_at = time.perf_counter_ns()
        except ExecutionError as exc:
            logger.error("%s: batch of %d request(s) failed: %s", self.label, len(batch), exc)
            raise
        except Exception as exc:
            logger.exception("%s: unexpected failure running a batch", self.label)
            raise ExecutionError(f"{self.label}: internal error") from exc
        self._stats.record_batch(
            rows, len(batch), merged_at - start, ran_at - merged_at, done_at - ran_at
        )
        return parts, start

    def _observe_start(self, batch: Sequence[Work], start_ns: int, rows: int) -> int:
        if self._observer is None:
            return 0
        if len(batch) == 1:  # the usual case at low load
            return self._observer.batch_started(self._key, start_ns, {batch[0].tenant: rows}, rows)
        tenant_rows: dict[str, int] = {}
        for p in batch:
            tenant_rows[p.tenant] = tenant_rows.get(p.tenant, 0) + p.rows
        return self._observer.batch_started(self._key, start_ns, tenant_rows, rows)

    async def close(self) -> None:
        """Stop taking requests, run everything already queued, wait for running batches."""
        self._closing = True
        self._arrived.set()
        if self._loop_task is not None:
            await self._loop_task
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._free < self._instances:  # lone requests still running in their callers
            self._freed.clear()
            await self._freed.wait()
