"""Cumulative latency and batch-size histograms, folded from each interval's samples with numpy."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

# Seconds: sub-millisecond resolution at the bottom, where a fast model's latencies live.
LATENCY_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
)  # fmt: skip
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


@dataclass(slots=True)
class Histogram:
    """Prometheus-style: counts per upper bound (the last one is +Inf) and the sum of values."""

    bounds: tuple[float, ...]
    counts: np.ndarray = field(init=False)
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = np.zeros(len(self.bounds) + 1, dtype=np.int64)

    def add(self, values: Sequence[float], scale: float = 1.0) -> None:
        """Count `values` times `scale` (e.g. nanoseconds times 1e-9 into seconds)."""
        if not values:
            return
        array = np.asarray(values, dtype=np.float64) * scale
        # side="left": a value equal to a bound belongs to that bucket (le = "less or equal").
        self.counts += np.bincount(
            np.searchsorted(self.bounds, array, side="left"), minlength=self.counts.size
        )
        self.total += float(array.sum())

    def cumulative(self) -> list[tuple[str, float]]:
        running = np.cumsum(self.counts)
        labels = [*(repr(float(b)) for b in self.bounds), "+Inf"]
        return [(label, float(count)) for label, count in zip(labels, running, strict=True)]
