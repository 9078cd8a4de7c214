"""Latency bookkeeping fine enough for sub-millisecond calls, mergeable across Locust workers.

Each call's time in nanoseconds lands in a logarithmic bucket 1% wide (`round(100 * ln(ns))`), so
a percentile is known to within 0.5% from 1 µs to hours, in a few hundred counters per name.
Workers ship their buckets to the master with every stats report and start again from empty; the
master (or a local runner) adds them up, so the percentiles cover every call of the run.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from typing import Any

BUCKETS_PER_E = 100
"""Buckets per factor e of latency: a bucket spans 1%."""
TOTAL = "Aggregated"
"""The name under which every call is counted once more (as Locust names its total row)."""


class Latencies:
    """Successful calls' times in log buckets and failed calls counted, per call name."""

    def __init__(self) -> None:
        self.buckets: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self.failures: Counter[str] = Counter()

    def add(self, name: str, elapsed_ns: int, *, ok: bool) -> None:
        if not ok:
            self.failures[name] += 1
            self.failures[TOTAL] += 1
            return
        bucket = round(BUCKETS_PER_E * math.log(max(elapsed_ns, 1)))
        self.buckets[name][bucket] += 1
        self.buckets[TOTAL][bucket] += 1

    def drain(self) -> dict[str, Any]:
        """Everything counted since the last drain, as plain lists (Locust's message format
        takes no custom types), and start again from empty."""
        message = {
            "buckets": {name: sorted(c.items()) for name, c in self.buckets.items()},
            "failures": dict(self.failures),
        }
        self.buckets.clear()
        self.failures.clear()
        return message

    def merge(self, message: dict[str, Any]) -> None:
        for name, pairs in message["buckets"].items():
            counter = self.buckets[name]
            for bucket, count in pairs:
                counter[int(bucket)] += int(count)
        self.failures.update(message["failures"])

    def names(self) -> list[str]:
        """Call names, the total last."""
        named = sorted((set(self.buckets) | set(self.failures)) - {TOTAL})
        return [*named, TOTAL]

    def successes(self, name: str) -> int:
        return sum(self.buckets[name].values())

    def percentile_ms(self, name: str, percentile: float) -> float | None:
        """The latency below which `percentile`% of the successful calls fall (nearest rank), in
        milliseconds; None without a successful call."""
        counter = self.buckets.get(name)
        total = sum(counter.values()) if counter else 0
        if not counter or not total:
            return None
        rank = max(1, math.ceil(percentile / 100 * total))
        seen = 0
        for bucket in sorted(counter):
            seen += counter[bucket]
            if seen >= rank:
                return math.exp(bucket / BUCKETS_PER_E) / 1e6
        raise AssertionError("unreachable: the rank is at most the total")
