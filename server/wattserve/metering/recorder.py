"""The hot-path seam of the meter: batches and requests are added to per-key accumulators, which
the meter takes over once per interval.

Everything here runs on the event loop once per batch or request, so it only adds numbers: a
finished batch goes straight into the interval's attribution ``Tally`` (integers, no objects), and
closing an interval costs O(keys), not O(batches)."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from wattserve.metering.attribution import Batch, Tally

ModelKey = tuple[str, str]
"""(model, version)"""
UsageKey = tuple[str, str, str]
"""(model, version, tenant)"""


@dataclass(slots=True)
class RequestTotals:
    """One (model, version, tenant)'s requests in one interval."""

    requests: int = 0
    rows: int = 0
    """Predictions: rows of requests that succeeded."""
    errors: int = 0
    batches: int = 0
    """Batches this tenant had rows in."""
    failures: Counter[str] = field(default_factory=Counter)
    """Failed requests by gRPC status name."""
    total_ns: list[int] = field(default_factory=list)
    """End-to-end time of every request (for the latency histograms)."""
    queue_ns: list[int] = field(default_factory=list)


@dataclass(slots=True)
class IntervalUsage:
    """Everything the request path reported between two interval boundaries."""

    start_ns: int
    end_ns: int
    tally: Tally
    """Batches clipped to the interval, running ones cut at ``end_ns`` (they come back, whole,
    when they finish, and are clipped to the interval they finish in)."""
    batches: dict[ModelKey, list[tuple[int, int]]]
    """(compute ns, rows) of every batch that finished in the interval, for the histograms."""
    totals: dict[UsageKey, RequestTotals]


class UsageRecorder:
    """Called by the batcher and the data plane on the event loop (one thread, no locks)."""

    def __init__(self, start_ns: int) -> None:
        self._tally = Tally(start_ns)
        self._batches: dict[ModelKey, list[tuple[int, int]]] = {}
        self._totals: dict[UsageKey, RequestTotals] = {}
        self._running: dict[int, tuple[ModelKey, int, Mapping[str, int], int]] = {}
        self._tokens = itertools.count()

    def reset(self, start_ns: int) -> None:
        """Forget anything recorded so far; the first interval starts at start_ns."""
        self._tally = Tally(start_ns)
        self._batches = {}
        self._totals = {}

    def batch_started(
        self, key: ModelKey, start_ns: int, tenant_rows: Mapping[str, int], rows: int
    ) -> int:
        token = next(self._tokens)
        self._running[token] = (key, start_ns, tenant_rows, rows)
        return token

    def batch_finished(self, token: int, end_ns: int) -> None:
        key, start_ns, tenant_rows, rows = self._running.pop(token)
        tally = self._tally
        if start_ns >= tally.start_ns:
            tally.add_inside(key, start_ns, end_ns, tenant_rows, rows)
        else:  # it started in an earlier interval
            tally.add(Batch(*key, start_ns, end_ns, tenant_rows), end_ns)
        samples = self._batches.get(key)
        if samples is None:
            samples = self._batches[key] = []
        samples.append((end_ns - start_ns, rows))

    def request(
        self,
        model: str,
        version: str,
        tenant: str,
        code: str,
        rows: int,
        total_ns: int,
        queue_ns: int | None,
    ) -> None:
        key = (model, version, tenant)
        totals = self._totals.get(key)
        if totals is None:
            totals = self._totals[key] = RequestTotals()
        totals.requests += 1
        totals.total_ns.append(total_ns)
        if code == "OK":
            totals.rows += rows
        else:
            totals.errors += 1
            totals.failures[code] += 1
        if queue_ns is not None:
            totals.queue_ns.append(queue_ns)

    def close(self, end_ns: int) -> IntervalUsage:
        """Hand over what was recorded since the last close and start the next interval."""
        tally, self._tally = self._tally, Tally(end_ns)
        for model_key, start_ns, tenant_rows, _ in self._running.values():
            tally.add(Batch(*model_key, start_ns, end_ns, tenant_rows), end_ns, running=True)
        batches, self._batches = self._batches, {}
        totals, self._totals = self._totals, {}
        for key, count in tally.batches_ended().items():
            entry = totals.get(key)
            if entry is None:
                entry = totals[key] = RequestTotals()
            entry.batches = count
        return IntervalUsage(tally.start_ns, end_ns, tally, batches, totals)
