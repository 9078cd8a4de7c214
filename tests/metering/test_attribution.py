"""Attribution of one interval: busy time, largest-remainder splits, exact conservation."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from wattserve.metering.attribution import (
    Attribution,
    Batch,
    Measured,
    Share,
    attribute,
    busy_ns,
    split,
)

SEED = 20240611


def batch(start_ns: int, end_ns: int, model: str = "m", version: str = "1", **rows: int) -> Batch:
    return Batch(model, version, start_ns, end_ns, rows or {"t": 1})


def by_key(result: Attribution) -> dict[tuple[str, str, str], Share]:
    return {(s.model, s.version, s.tenant): s for s in result.shares}


def random_batches(rng: random.Random, start_ns: int, end_ns: int) -> list[Batch]:
    """Batches of a few models and tenants, some overlapping, some straddling or outside."""
    length = end_ns - start_ns
    batches = []
    for _ in range(rng.randrange(0, 12)):
        lo = rng.randrange(start_ns - length // 2, end_ns + length // 2)
        hi = lo + rng.choice([0, rng.randrange(1, length + 1)])
        tenants = rng.sample(["a", "b", "c", "d"], rng.randrange(1, 4))
        rows = {t: rng.randrange(0, 9) for t in tenants}
        batches.append(Batch(rng.choice("xyz"), rng.choice("12"), lo, hi, rows))
    return batches


def random_measured(rng: random.Random) -> Measured:
    return Measured(*(rng.choice([0, 1, 2, 3, rng.randrange(10**12)]) for _ in range(3)))


# split()


@pytest.mark.parametrize(
    ("total", "weights", "expected"),
    [
        (10, {"a": 1, "b": 1}, {"a": 5, "b": 5}),
        (4000, {"a": 3, "b": 1}, {"a": 3000, "b": 1000}),
        (1, {"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 0, "c": 0}),
        (1, {"c": 1, "b": 1, "a": 1}, {"c": 1, "b": 0, "a": 0}),  # ties follow key order
        (2, {"a": 1, "b": 1, "c": 1}, {"a": 1, "b": 1, "c": 0}),
        (10, {"a": 1, "b": 2, "c": 3}, {"a": 2, "b": 3, "c": 5}),  # 1.67, 3.33, 5: a's .67 wins
        (7, {"a": 0.5, "b": 1.5}, {"a": 2, "b": 5}),
        (3, {"a": 0.1, "b": 0.2}, {"a": 1, "b": 2}),
        (5, {"a": Fraction(1, 3), "b": Fraction(2, 3)}, {"a": 2, "b": 3}),
        (10, {"a": 0, "b": 3}, {"a": 0, "b": 10}),
        (0, {"a": 1, "b": 2}, {"a": 0, "b": 0}),
        (0, {"a": 0, "b": 0}, {"a": 0, "b": 0}),
        (0, {}, {}),
    ],
)
def test_split_gives_the_largest_remainder_parts(
    total: int, weights: dict[str, int | float | Fraction], expected: dict[str, int]
) -> None:
    assert split(total, weights) == expected


@pytest.mark.parametrize(
    ("total", "weights"),
    [
        (1, {"a": 0, "b": 0}),  # a positive total with nowhere to go
        (1, {}),
        (-1, {"a": 1}),
        (1, {"a": -1, "b": 2}),
        (1, {"a": math.nan}),
        (1, {"a": math.inf}),
    ],
)
def test_split_refuses_what_it_cannot_place(
    total: int, weights: dict[str, int | float | Fraction]
) -> None:
    with pytest.raises(ValueError):
        split(total, weights)


def test_split_sums_exactly_and_stays_within_one_unit_of_each_quota() -> None:
    rng = random.Random(SEED)
    for _ in range(500):
        keys = range(rng.randrange(1, 8))
        weights: dict[int, int | float] = {
            k: rng.choice([0, rng.randrange(1, 1000), rng.random() * 1e6]) for k in keys
        }
        if not any(weights.values()):
            weights[0] = 1
        total = rng.choice([0, 1, 2, rng.randrange(10**15)])
        parts = split(total, weights)
        assert sum(parts.values()) == total
        weight_sum = sum(Fraction(w) for w in weights.values())
        for key, weight in weights.items():
            quota = total * Fraction(weight) / weight_sum
            assert abs(parts[key] - quota) < 1
            if weight == 0:
                assert parts[key] == 0
        assert split(total, weights) == parts  # deterministic


# busy_ns()


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        ([], 0),
        ([(10, 20), (30, 50)], 30),
        ([(10, 30), (20, 40)], 30),  # two instances overlapping: once
        ([(10, 90), (20, 30)], 80),  # nested
        ([(10, 20), (20, 30)], 20),  # touching
        ([(-50, 10), (90, 150)], 20),  # straddling both ends: clipped
        ([(-50, 0), (100, 150), (40, 40)], 0),  # outside, or empty
        ([(-10, 110)], 100),
        ([(60, 70), (0, 5), (50, 65), (3, 8)], 28),  # unsorted input
    ],
)
def test_busy_ns_is_the_clipped_union(ranges: list[tuple[int, int]], expected: int) -> None:
    assert busy_ns([batch(lo, hi) for lo, hi in ranges], 0, 100) == expected


# attribute(): the rules


@pytest.mark.parametrize(("start_ns", "end_ns"), [(100, 100), (100, 99)])
def test_an_empty_interval_is_refused(start_ns: int, end_ns: int) -> None:
    with pytest.raises(ValueError):
        attribute([], start_ns, end_ns, Measured(1, 1, 1))


@pytest.mark.parametrize(
    "batches",
    [[], [batch(-50, 0), batch(100, 200)]],
    ids=["no-batches", "all-outside"],
)
def test_an_interval_without_traffic_is_all_idle(batches: list[Batch]) -> None:
    measured = Measured(123, 45, 6)
    result = attribute(batches, 0, 100, measured)
    assert result == Attribution(busy_fraction=0.0, shares=(), idle=measured)


def test_without_energy_data_amounts_are_none_but_compute_and_rows_are_counted() -> None:
    result = attribute([batch(0, 40, a=1, b=3), batch(50, 60, "n", b=2)], 0, 100, None)
    assert result.idle is None
    assert result.busy_fraction == 0.5
    assert result.shares == (
        Share(
            "m", "1", "a", compute_ns=10, rows=1, energy_uj=None, carbon_ug=None, cost_nanos=None
        ),
        Share(
            "m", "1", "b", compute_ns=30, rows=3, energy_uj=None, carbon_ug=None, cost_nanos=None
        ),
        Share(
            "n", "1", "b", compute_ns=10, rows=2, energy_uj=None, carbon_ug=None, cost_nanos=None
        ),
    )


@pytest.mark.parametrize("total", [4, 4000, 4 * 10**12])
def test_models_share_a_busy_interval_by_compute_time(total: int) -> None:
    # Two instances at once, so the interval is fully busy while compute is 900:300 = 3:1.
    batches = [batch(0, 900, "big"), batch(300, 600, "small")]
    result = attribute(batches, 0, 900, Measured(total, 2 * total, 3 * total))
    assert result.busy_fraction == 1.0
    assert result.idle == Measured(0, 0, 0)
    big, small = by_key(result)["big", "1", "t"], by_key(result)["small", "1", "t"]
    assert (big.compute_ns, small.compute_ns) == (900, 300)
    assert (big.energy_uj, small.energy_uj) == (total * 3 // 4, total // 4)
    assert (big.carbon_ug, small.carbon_ug) == (total * 6 // 4, total * 2 // 4)
    assert (big.cost_nanos, small.cost_nanos) == (total * 9 // 4, total * 3 // 4)


def test_a_models_part_is_split_among_tenants_by_rows() -> None:
    # Equal compute time, but b had 9 of the 10 rows: per prediction, a row costs the same.
    batches = [batch(0, 50, a=1), batch(50, 100, b=9)]
    result = attribute(batches, 0, 100, Measured(1000, 100, 10))
    shares = by_key(result)
    assert (shares["m", "1", "a"].energy_uj, shares["m", "1", "b"].energy_uj) == (100, 900)
    assert (shares["m", "1", "a"].carbon_ug, shares["m", "1", "b"].carbon_ug) == (10, 90)
    assert (shares["m", "1", "a"].cost_nanos, shares["m", "1", "b"].cost_nanos) == (1, 9)
    assert (shares["m", "1", "a"].compute_ns, shares["m", "1", "b"].compute_ns) == (10, 90)


def test_several_models_versions_and_tenants_in_one_interval() -> None:
    batches = [
        batch(0, 200, "resnet", "2", b=1, a=1),
        batch(100, 300, "resnet", "1", a=3),
        batch(600, 800, "bert", "1", c=1, a=3),
        batch(700, 900, "resnet", "2", a=2),
    ]
    # Busy: [0, 300) and [600, 900) = 600 of 1000; compute: resnet:2 400, resnet:1 200, bert 200.
    result = attribute(batches, 0, 1000, Measured(10_000, 5_000, 1_000))
    assert result.busy_fraction == 0.6
    assert result.idle == Measured(4_000, 2_000, 400)
    assert [
        (s.model, s.version, s.tenant, s.compute_ns, s.rows, s.energy_uj) for s in result.shares
    ] == [
        ("bert", "1", "a", 150, 3, 1125),
        ("bert", "1", "c", 50, 1, 375),
        ("resnet", "1", "a", 200, 3, 1500),
        ("resnet", "2", "a", 300, 3, 2250),
        ("resnet", "2", "b", 100, 1, 750),
    ]


def test_overlapping_instances_count_once_for_busy_but_in_full_for_compute() -> None:
    batches = [batch(0, 60, a=1), batch(40, 100, b=1), batch(40, 100, "n")]
    result = attribute(batches, 0, 200, Measured(1000, 0, 0))
    assert result.busy_fraction == 0.5
    assert result.idle == Measured(500, 0, 0)
    shares = by_key(result)
    assert shares["m", "1", "a"].compute_ns + shares["m", "1", "b"].compute_ns == 120
    assert shares["n", "1", "t"].compute_ns == 60
    # 500 µJ attributed, split 120:60 = 333.3:166.7 between the models; m's 333 split 1:1.
    assert shares["n", "1", "t"].energy_uj == 167
    assert (shares["m", "1", "a"].energy_uj, shares["m", "1", "b"].energy_uj) == (167, 166)


def test_rounding_gives_a_lone_micro_unit_to_exactly_one_tenant_the_first_by_name() -> None:
    result = attribute([batch(0, 99, c=1, a=1, b=1)], 0, 99, Measured(1, 1, 1))
    assert [(s.tenant, s.energy_uj, s.carbon_ug, s.cost_nanos) for s in result.shares] == [
        ("a", 1, 1, 1),
        ("b", 0, 0, 0),
        ("c", 0, 0, 0),
    ]
    assert [s.compute_ns for s in result.shares] == [33, 33, 33]


def test_shares_come_sorted_whatever_the_batch_order() -> None:
    batches = [batch(0, 10, "z", b=1), batch(10, 20, "a", "2"), batch(20, 30, "a", "1", c=1, a=1)]
    for order in (batches, batches[::-1]):
        keys = [(s.model, s.version, s.tenant) for s in attribute(order, 0, 30, None).shares]
        assert keys == [("a", "1", "a"), ("a", "1", "c"), ("a", "2", "t"), ("z", "1", "b")]


# attribute(): boundaries and the rows rule


def test_batches_straddling_the_boundaries_are_clipped() -> None:
    batches = [batch(-50, 50, a=2), batch(75, 175, b=4)]
    result = attribute(batches, 0, 100, Measured(1000, 0, 0))
    assert result.busy_fraction == 0.75
    shares = by_key(result)
    # Rows count where a batch ends: a's here, b's in the next interval.
    assert (shares["m", "1", "a"].rows, shares["m", "1", "b"].rows) == (2, 0)
    # The model computed 50 + 25 ns here. Tenants weigh rows times the fraction of their batch
    # inside: 2 * 1/2 = 1 for a, 4 * 1/4 = 1 for b, so they split compute and energy evenly.
    assert (shares["m", "1", "a"].compute_ns, shares["m", "1", "b"].compute_ns) == (38, 37)
    assert shares["m", "1", "a"].energy_uj == shares["m", "1", "b"].energy_uj == 375


def test_over_consecutive_intervals_each_row_is_counted_once_where_its_batch_ends() -> None:
    batches = [batch(50, 150, a=4), batch(100, 100, b=1), batch(0, 100, c=2)]
    first = by_key(attribute(batches, 0, 100, Measured(1000, 0, 0)))
    second = by_key(attribute(batches, 100, 200, Measured(1000, 0, 0)))
    # a straddles: energy in both intervals (weight 4 * 1/2 = 2 in each), rows only in the second.
    assert (first["m", "1", "a"].rows, second["m", "1", "a"].rows) == (0, 4)
    assert (first["m", "1", "a"].energy_uj, second["m", "1", "a"].energy_uj) == (500, 500)
    assert (first["m", "1", "a"].compute_ns, second["m", "1", "a"].compute_ns) == (75, 50)
    # A batch ending exactly on the boundary belongs to the interval it computed in.
    assert first["m", "1", "c"].rows == 2
    assert ("m", "1", "c") not in second
    # A zero-length batch has rows but no compute, so no energy.
    assert first["m", "1", "b"] == Share("m", "1", "b", 0, 1, 0, 0, 0)
    assert ("m", "1", "b") not in second


def test_a_model_whose_only_batch_spans_the_interval_still_charges_its_tenants() -> None:
    result = attribute([batch(-100, 300, a=1, b=3)], 0, 100, Measured(400, 0, 0))
    assert [(s.tenant, s.rows, s.compute_ns, s.energy_uj) for s in result.shares] == [
        ("a", 0, 25, 100),
        ("b", 0, 75, 300),
    ]


def test_a_batch_of_zero_row_requests_charges_its_tenants_as_one_row_each() -> None:
    result = attribute(
        [batch(0, 50, a=0, b=0), batch(50, 100, "n", c=3)], 0, 100, Measured(90, 0, 0)
    )
    assert [(s.model, s.tenant, s.rows, s.compute_ns, s.energy_uj) for s in result.shares] == [
        ("m", "a", 0, 25, 23),
        ("m", "b", 0, 25, 22),
        ("n", "c", 3, 50, 45),
    ]


# attribute(): properties over random intervals


def test_every_micro_unit_is_attributed_or_idle_exactly() -> None:
    rng = random.Random(SEED)
    for _ in range(500):
        start_ns = rng.randrange(-1000, 1000)
        end_ns = start_ns + rng.randrange(1, 400)
        batches = random_batches(rng, start_ns, end_ns)
        measured = random_measured(rng)
        result = attribute(batches, start_ns, end_ns, measured)
        assert result.idle is not None
        for field in ("energy_uj", "carbon_ug", "cost_nanos"):
            shared = sum(getattr(s, field) for s in result.shares)
            assert shared + getattr(result.idle, field) == getattr(measured, field)
            assert shared == getattr(measured, field) * busy_ns(batches, start_ns, end_ns) // (
                end_ns - start_ns
            )
        # The union, checked against a nanosecond-by-nanosecond count.
        covered = {
            t for b in batches for t in range(max(b.start_ns, start_ns), min(b.end_ns, end_ns))
        }
        assert result.busy_fraction == len(covered) / (end_ns - start_ns)
        # Each model's compute is its clipped batch time, in full, split among its tenants.
        for model in {(b.model, b.version) for b in batches}:
            clipped = sum(
                max(min(b.end_ns, end_ns) - max(b.start_ns, start_ns), 0)
                for b in batches
                if (b.model, b.version) == model
            )
            assert (
                sum(s.compute_ns for s in result.shares if (s.model, s.version) == model) == clipped
            )
        assert list(result.shares) == sorted(
            result.shares, key=lambda s: (s.model, s.version, s.tenant)
        )
        assert attribute(batches, start_ns, end_ns, None).idle is None


def test_tiled_intervals_count_every_row_and_every_compute_nanosecond_once() -> None:
    rng = random.Random(SEED + 1)
    for _ in range(200):
        bounds = sorted(rng.sample(range(0, 1000), 4))
        batches = random_batches(rng, bounds[0], bounds[-1])
        rows: dict[tuple[str, str, str], int] = {}
        compute = 0
        for start_ns, end_ns in itertools.pairwise(bounds):
            for share in attribute(batches, start_ns, end_ns, random_measured(rng)).shares:
                key = (share.model, share.version, share.tenant)
                rows[key] = rows.get(key, 0) + share.rows
                compute += share.compute_ns
        expected: dict[tuple[str, str, str], int] = {}
        for b in batches:
            if bounds[0] < b.end_ns <= bounds[-1]:
                for tenant, n in b.tenant_rows.items():
                    key = (b.model, b.version, tenant)
                    expected[key] = expected.get(key, 0) + n
        assert {k: n for k, n in rows.items() if n} == {k: n for k, n in expected.items() if n}
        assert compute == sum(
            max(min(b.end_ns, bounds[-1]) - max(b.start_ns, bounds[0]), 0) for b in batches
        )


@pytest.mark.parametrize(
    ("args", "cls"),
    [
        (("m", "1", 10, 5, {"t": 1}), Batch),  # ends before it starts
        (("m", "1", 0, 5, {"t": -1}), Batch),
        (("m", "1", 0, 5, {}), Batch),  # nobody to charge
        ((1, -1, 0), Measured),
    ],
)
def test_impossible_inputs_are_refused(args: tuple[object, ...], cls: type) -> None:
    with pytest.raises(ValueError):
        cls(*args)
