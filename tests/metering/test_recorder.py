"""The recorder sums batches as they finish; what it hands over must attribute as the full list."""

from __future__ import annotations

import dataclasses
import random
from collections import Counter

from wattserve.metering.attribution import Batch, Measured, attribute
from wattserve.metering.recorder import IntervalUsage, UsageRecorder

SEED = 20261122


def random_batches(rng: random.Random, end_ns: int) -> list[Batch]:
    """Batches on odd nanoseconds (interval boundaries are even), some on two instances at once."""
    batches = []
    for _ in range(rng.randrange(1, 20)):
        start = 2 * rng.randrange(0, end_ns // 2 - 1) + 1
        length = 2 * rng.choice([rng.randrange(1, 20), rng.randrange(1, end_ns // 2)])
        tenants = rng.sample(["a", "b", "c"], rng.randrange(1, 4))
        rows = {t: rng.randrange(0, 5) for t in tenants}
        batches.append(Batch(rng.choice("xy"), "1", start, min(start + length, end_ns - 1), rows))
    return batches


def replay(batches: list[Batch], bounds: list[int]) -> list[IntervalUsage]:
    """Drive a recorder through starts, finishes and closes in time order, as the server does."""
    events = [(b.start_ns, 1, i) for i, b in enumerate(batches)]
    events += [(b.end_ns, 0, i) for i, b in enumerate(batches)]
    events += [(t, 2, -1) for t in bounds[1:]]
    recorder = UsageRecorder(bounds[0])
    tokens: dict[int, int] = {}
    closed = []
    for time_ns, kind, i in sorted(events):
        if kind == 1:
            b = batches[i]
            tokens[i] = recorder.batch_started(
                (b.model, b.version), time_ns, b.tenant_rows, sum(b.tenant_rows.values())
            )
        elif kind == 0:
            recorder.batch_finished(tokens.pop(i), time_ns)
        else:
            closed.append(recorder.close(time_ns))
    return closed


def test_each_closed_interval_attributes_exactly_as_its_batches_would() -> None:
    rng = random.Random(SEED)
    for _ in range(300):
        bounds = [0, 250, 500, 750, 1000]
        batches = random_batches(rng, bounds[-1])
        for usage in replay(batches, bounds):
            start_ns, end_ns = usage.start_ns, usage.end_ns
            measured = Measured(rng.randrange(10**9), rng.randrange(10**6), rng.randrange(10**6))
            got = usage.tally.attribute(end_ns, measured)
            finished = [b for b in batches if start_ns < b.end_ns <= end_ns]
            # Still running at the close: cut there, weighed as far as it is known; its rows
            # count only where it really ends.
            running = [
                dataclasses.replace(b, end_ns=end_ns)
                for b in batches
                if b.start_ns < end_ns < b.end_ns
            ]
            expected = attribute(finished + running, start_ns, end_ns, measured)
            assert got.busy_fraction == expected.busy_fraction
            assert got.idle == expected.idle
            ended_rows: dict[tuple[str, str, str], int] = {}
            for b in finished:
                for tenant, n in b.tenant_rows.items():
                    key = (b.model, b.version, tenant)
                    ended_rows[key] = ended_rows.get(key, 0) + n
            assert [dataclasses.replace(s, rows=0) for s in got.shares] == [
                dataclasses.replace(s, rows=0) for s in expected.shares
            ]
            assert {(s.model, s.version, s.tenant): s.rows for s in got.shares if s.rows} == {
                k: n for k, n in ended_rows.items() if n
            }
            # The histogram samples and per-tenant batch counts are the finished batches'.
            samples = usage.batches
            assert sorted(s for model in samples.values() for s in model) == sorted(
                (b.end_ns - b.start_ns, sum(b.tenant_rows.values())) for b in finished
            )
            assert sum(t.batches for t in usage.totals.values()) == sum(
                len(b.tenant_rows) for b in finished
            )


def test_reset_forgets_what_came_before_the_first_interval() -> None:
    recorder = UsageRecorder(0)
    recorder.batch_finished(recorder.batch_started(("m", "1"), 10, {"t": 3}, 3), 20)
    recorder.request("m", "1", "t", "OK", 3, 15, 5)
    recorder.reset(100)
    usage = recorder.close(200)
    assert usage.start_ns == 100
    assert usage.totals == {} and usage.batches == {}
    assert usage.tally.attribute(200, Measured(50, 5, 5)).idle == Measured(50, 5, 5)


def test_requests_are_summed_per_model_version_and_tenant_with_failures_by_code() -> None:
    rng = random.Random(SEED)
    for _ in range(100):
        recorder = UsageRecorder(0)
        requests = [
            (
                rng.choice("xy"),
                "1",
                rng.choice(["a", "b"]),
                rng.choice(["OK", "OK", "OK", "INVALID_ARGUMENT", "CANCELLED"]),
                rng.randrange(0, 5),
                rng.randrange(1, 10**6),
                rng.choice([None, rng.randrange(0, 10**5)]),
            )
            for _ in range(rng.randrange(1, 40))
        ]
        for request in requests:
            recorder.request(*request)
        totals = recorder.close(1000).totals
        assert set(totals) == {r[:3] for r in requests}
        for key, got in totals.items():
            mine = [r for r in requests if r[:3] == key]
            assert got.requests == len(mine)
            assert got.rows == sum(r[4] for r in mine if r[3] == "OK")
            assert got.errors == sum(r[3] != "OK" for r in mine)
            assert dict(got.failures) == dict(Counter(r[3] for r in mine if r[3] != "OK"))
            assert got.total_ns == [r[5] for r in mine]  # in arrival order, for the histograms
            assert got.queue_ns == [r[6] for r in mine if r[6] is not None]
        assert recorder.close(2000).totals == {}  # handed over once
