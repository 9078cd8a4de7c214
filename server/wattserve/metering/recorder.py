"""The hot-path seam of the meter: batches and requests are appended, folded once per interval."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

from wattserve.metering.attribution import Batch

ModelKey = tuple[str, str]
"""(model, version)"""
UsageKey = tuple[str, str, str]
"""(model, version, tenant)"""


@dataclass(slots=True)
class RequestTotals:
    requests: int = 0
    rows: int = 0
    errors: int = 0
    batches: int = 0


@dataclass(slots=True)
class RequestSample:
    """One finished request, kept until the interval closes (latency histograms need each one)."""

    model: str
    version: str
    tenant: str
    code: str
    rows: int
    total_ns: int
    queue_ns: int | None


@dataclass(slots=True)
class IntervalUsage:
    """Everything the request path reported between two interval boundaries."""

    start_ns: int
    end_ns: int
    batches: list[Batch]
    """Batches that finished in the interval (whole: attribution clips them to the interval)."""
    running: list[Batch]
    """Batches still running at `end_ns`, cut there; they come back whole when they finish."""
    requests: list[RequestSample]
    totals: dict[UsageKey, RequestTotals] = field(default_factory=dict)


class UsageRecorder:
    """Called by the batcher and the data plane; only appends (one event loop, no locks)."""

    def __init__(self, start_ns: int) -> None:
        self._start_ns = start_ns
        self._batches: list[Batch] = []
        self._requests: list[RequestSample] = []
        self._running: dict[int, tuple[str, str, int, Mapping[str, int]]] = {}
        self._tokens = itertools.count()

    def reset(self, start_ns: int) -> None:
        """Forget anything recorded so far; the first interval starts at start_ns."""
        self._start_ns = start_ns
        self._batches.clear()
        self._requests.clear()

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
        self._requests.append(RequestSample(model, version, tenant, code, rows, total_ns, queue_ns))

    def close(self, end_ns: int) -> IntervalUsage:
        """Hand over what was recorded since the last close; running batches are cut at end_ns
        here and appear again, whole, when they finish (attribution clips each to its interval).
        """
        batches, self._batches = self._batches, []
        requests, self._requests = self._requests, []
        running = [
            Batch(model, version, start_ns, end_ns, tenant_rows)
            for model, version, start_ns, tenant_rows in self._running.values()
        ]
        usage = IntervalUsage(self._start_ns, end_ns, batches, running, requests)
        self._start_ns = end_ns
        for sample in requests:
            totals = usage.totals.setdefault(
                (sample.model, sample.version, sample.tenant), RequestTotals()
            )
            totals.requests += 1
            if sample.code == "OK":
                totals.rows += sample.rows
            else:
                totals.errors += 1
        for batch in batches:
            for tenant in batch.tenant_rows:
                key = (batch.model, batch.version, tenant)
                usage.totals.setdefault(key, RequestTotals()).batches += 1
        return usage
