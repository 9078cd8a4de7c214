"""Per model-version statistics with Triton's semantics: rows vs batches, durations as count + ns.

`inference_count` counts rows, `execution_count` counts batches. Request durations (success,
fail, queue, compute_*) count requests: every request of a batch is charged that batch's compute
time, as Triton does. `batches` is keyed by batch size in rows and counts batches.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(slots=True)
class Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int, count: int = 1) -> None:
        self.count += count
        self.ns += ns * count


@dataclass(slots=True)
class BatchDurations:
    """Per batch size: how many batches ran and how long their three phases took."""

    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)


@dataclass(slots=True)
class ModelStatistics:
    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    """Wall-clock milliseconds since the epoch of the last finished request (0 = never)."""
    success: Duration = field(default_factory=Duration)
    fail: Duration = field(default_factory=Duration)
    queue: Duration = field(default_factory=Duration)
    compute_input: Duration = field(default_factory=Duration)
    compute_infer: Duration = field(default_factory=Duration)
    compute_output: Duration = field(default_factory=Duration)
    batches: dict[int, BatchDurations] = field(default_factory=dict)

    def record_batch(
        self, rows: int, requests: int, input_ns: int, infer_ns: int, output_ns: int
    ) -> None:
        """One batch ran successfully; charge its phases to the batch size and to each request."""
        self.inference_count += rows
        self.execution_count += 1
        per_size = self.batches.get(rows)
        if per_size is None:
            per_size = self.batches[rows] = BatchDurations()
        per_size.compute_input.add(input_ns)
        per_size.compute_infer.add(infer_ns)
        per_size.compute_output.add(output_ns)
        self.compute_input.add(input_ns, requests)
        self.compute_infer.add(infer_ns, requests)
        self.compute_output.add(output_ns, requests)

    def record_request(self, *, ok: bool, total_ns: int, queue_ns: int | None) -> None:
        """One request finished; `queue_ns` is None when it never reached the queue."""
        (self.success if ok else self.fail).add(total_ns)
        if ok and queue_ns is not None:
            self.queue.add(queue_ns)
        self.last_inference_ms = time.time_ns() // 1_000_000
