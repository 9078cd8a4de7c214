"""The hot-path seam of the meter: batches and requests are added to per-key accumulators, which
the meter takes over once per interval."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from wattserve.metering.attribution import Batch

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
    batches: list[Batch]
    """Batches that finished in the interval (whole: attribution clips them to the interval)."""
    running: list[Batch]
    """Batches still running at `end_ns`, cut there; they come back whole when they finish."""
    totals: dict[UsageKey, RequestTotals]


class UsageRecorder:
    """Called by the batcher and the data plane on the event loop (one thread, no locks)."""

    def __init__(self, start_ns: int) -> None:
        self._start_ns = start_ns
        self._batches: list[Batch] = []
        self._totals: dict[UsageKey, RequestTotals] = {}
        self._running: dict[int, tuple[str, str, int, Mapping[str, int]]] = {}
        self._tokens = itertools.count()

    def reset(self, start_ns: int) -> None:
        """Forget anything recorded so far; the first interval starts at start_ns."""
        self._start_ns = start_ns
        self._batches.clear()
        self._totals.clear()

    def batch_started(
        self, model: str, version: str, start_ns: int, tenant_rows: Mapping[str, int]
    ) -> int:
        token = next(self._tokens)
        self._running[token] = (model, version, start_ns, tenant_rows)
        return token

    def batch_finished(self, token: int, end_ns: int) -> None:
        model, version, start_ns, tenant_rows = self._running.pop(token)
        self._batches.append(Batch(model, version, start_ns, end_ns, tenant_rows))

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
        """Hand over what was recorded since the last close; running batches are cut at end_ns
        here and appear again, whole, when they finish (attribution clips each to its interval).
        """
        batches, self._batches = self._batches, []
        totals, self._totals = self._totals, {}
        running = [
            Batch(model, version, start_ns, end_ns, tenant_rows)
            for model, version, start_ns, tenant_rows in self._running.values()
        ]
        for batch in batches:
            for tenant in batch.tenant_rows:
                key = (batch.model, batch.version, tenant)
                entry = totals.get(key)
                if entry is None:
                    entry = totals[key] = RequestTotals()
                entry.batches += 1
        usage = IntervalUsage(self._start_ns, end_ns, batches, running, totals)
        self._start_ns = end_ns
        return usage
