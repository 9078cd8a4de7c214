"""One interval's attribution: measured energy, carbon and cost split into model/tenant shares.

Pure arithmetic, no I/O or clocks; the rules are those of docs/metering.md, "Attribution":

1. Every batch's ``[start_ns, end_ns)`` is clipped to the interval ``[start_ns, end_ns)``; the
   union ``B`` of the clipped ranges (concurrent instances count once) gives ``busy = B / T``.
2. ``attributed = total * B // T`` in exact integer arithmetic; the remainder is idle, so
   ``sum(shares) + idle == measured`` exactly, for energy, carbon and cost alike.
3. ``attributed`` is split among (model, version) by clipped compute time ``c_m`` (the sum of the
   model's clipped batch durations: overlaps within a model count in full, as compute used).
4. A model's part is split among tenants by rows. A batch straddling a boundary computes in two
   intervals, so its rows weigh in each interval by the fraction of its duration that lies there:
   its tenants pay for the compute each interval saw, and a model with compute never lacks a
   tenant to charge. A batch wholly inside the interval weighs its plain rows. A batch of only
   zero-row requests still computed, so it weighs each of its tenants as one row.
5. ``Share.rows`` counts a batch's rows in the one interval where the batch *ends*, ``end_ns``
   in ``(start_ns, end_ns]``; over consecutive intervals every row is counted exactly once, and in
   the interval holding its last compute.

Splits use the largest-remainder method (``split``), with ties going to the first key in sorted
(model, version, tenant) order, so the same input always gives the same micro-units.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import TypeVar

K = TypeVar("K", bound=Hashable)
Weight = int | float | Fraction


@dataclass(frozen=True, slots=True)
class Batch:
    """One executed batch, as the recorder saw it."""

    model: str
    version: str
    start_ns: int
    """``perf_counter_ns`` at the start of the ONNX Runtime run."""
    end_ns: int
    tenant_rows: Mapping[str, int]
    """Tenant -> rows of that tenant in the batch."""

    def __post_init__(self) -> None:
        if self.end_ns < self.start_ns:
            raise ValueError(
                f"batch of {self.model}:{self.version} ends ({self.end_ns}) before it starts "
                f"({self.start_ns})"
            )
        if not self.tenant_rows:
            # Every batch holds at least one request, so someone must pay for its compute.
            raise ValueError(f"batch of {self.model}:{self.version} names no tenant")
        if min(self.tenant_rows.values()) < 0:
            raise ValueError(f"batch of {self.model}:{self.version} has negative rows")


@dataclass(frozen=True, slots=True)
class Measured:
    """What an interval (or a part of it) cost: integer µJ, µg CO2e and nano-currency units."""

    energy_uj: int
    carbon_ug: int
    cost_nanos: int

    def __post_init__(self) -> None:
        if min(self.energy_uj, self.carbon_ug, self.cost_nanos) < 0:
            raise ValueError(f"measured amounts must be non-negative, got {self}")


@dataclass(frozen=True, slots=True)
class Share:
    """One (model, version, tenant)'s attributed part; amounts are None with no energy data."""

    model: str
    version: str
    tenant: str
    compute_ns: int
    """This key's share of its model's clipped compute time (split by rows, largest remainder)."""
    rows: int
    """Rows of this key's batches that ended in the interval."""
    energy_uj: int | None
    carbon_ug: int | None
    cost_nanos: int | None


@dataclass(frozen=True, slots=True)
class Attribution:
    """One interval's attribution: ``sum(shares) + idle == measured``, amount by amount."""

    busy_fraction: float
    """|union of clipped batch ranges| / interval length, in [0, 1]."""
    shares: tuple[Share, ...]
    """Sorted by (model, version, tenant)."""
    idle: Measured | None
    """What no model's computing accounts for; None when there was no energy data."""


def _clip(batch: Batch, start_ns: int, end_ns: int) -> tuple[int, int]:
    return max(batch.start_ns, start_ns), min(batch.end_ns, end_ns)


def busy_ns(batches: Sequence[Batch], start_ns: int, end_ns: int) -> int:
    """Length of the union of the batches' [start, end) ranges clipped to [start_ns, end_ns)."""
    return _union_ns([_clip(b, start_ns, end_ns) for b in batches], start_ns)


def _union_ns(clipped: list[tuple[int, int]], start_ns: int) -> int:
    total = 0
    covered_to = start_ns  # sorted by start, so only the part past covered_to is new
    for lo, hi in sorted(r for r in clipped if r[0] < r[1]):
        if hi > covered_to:
            total += hi - max(lo, covered_to)
            covered_to = hi
    return total


def split(total: int, weights: Mapping[K, Weight]) -> dict[K, int]:
    """Largest-remainder split of ``total`` in proportion to ``weights``; sums exactly to it.

    Each key gets the floor of its exact quota, and the units left over go one each to the keys
    with the largest fractional remainders, ties to the earlier key in ``weights``' order. Float
    weights are taken at their exact binary value, so no quota is rounded twice. A key of weight
    0 gets 0. A total of 0 gives every key 0, even if every weight is 0; a positive total with no
    positive weight has nowhere to go and raises ValueError (the caller decides where it belongs).
    """
    if total < 0:
        raise ValueError(f"cannot split a negative total ({total})")
    exact: dict[K, Fraction] = {}
    for key, weight in weights.items():
        if isinstance(weight, float) and not math.isfinite(weight):
            raise ValueError(f"weight of {key!r} is {weight}")
        if weight < 0:
            raise ValueError(f"weight of {key!r} is negative ({weight})")
        exact[key] = Fraction(weight)
    weight_sum = sum(exact.values(), Fraction(0))
    if weight_sum == 0:
        if total:
            raise ValueError(f"cannot split {total} among keys that all weigh 0")
        return dict.fromkeys(exact, 0)
    quotas = {key: total * weight / weight_sum for key, weight in exact.items()}
    parts = {key: math.floor(quota) for key, quota in quotas.items()}
    left = total - sum(parts.values())
    # sorted() is stable, so equal remainders keep the mapping's order: deterministic ties.
    by_remainder = sorted(quotas, key=lambda key: parts[key] - quotas[key])
    for key in by_remainder[:left]:
        parts[key] += 1
    return parts


def _split_measured(amounts: Measured, weights: Mapping[K, Weight]) -> dict[K, Measured]:
    # Carbon and cost follow energy's weights, each split from its own total (never derived from
    # a rounded energy part), so each of the three sums exactly.
    energy = split(amounts.energy_uj, weights)
    carbon = split(amounts.carbon_ug, weights)
    cost = split(amounts.cost_nanos, weights)
    return {key: Measured(energy[key], carbon[key], cost[key]) for key in weights}


def attribute(
    batches: Sequence[Batch], start_ns: int, end_ns: int, measured: Measured | None
) -> Attribution:
    """Attribute one interval ``[start_ns, end_ns)``'s measured amounts to the batches in it.

    ``measured=None`` means "no energy data": busy fraction, compute and rows are still computed,
    but every amount (and idle) is None rather than a misleading zero. Raises ValueError for an
    empty or reversed interval.
    """
    if end_ns <= start_ns:
        raise ValueError(f"interval [{start_ns}, {end_ns}) is empty")
    tally = Tally(start_ns)
    for batch in batches:
        tally.add(batch, end_ns)
    return tally.attribute(end_ns, measured)


@dataclass(slots=True)
class _ModelTally:
    """One (model, version)'s batches in an interval, summed."""

    compute_ns: int = 0
    whole: dict[str, int] = field(default_factory=dict)
    """Tenant -> rows of batches wholly inside the interval (rule 4's plain rows)."""
    part: dict[str, Fraction] = field(default_factory=dict)
    """Tenant -> rows x the fraction of a straddling batch's duration inside the interval."""
    rows: dict[str, int] = field(default_factory=dict)
    """Tenant -> rows of batches that ended in the interval (rule 5)."""
    batches: dict[str, int] = field(default_factory=dict)
    """Tenant -> batches that ended in the interval holding rows of this tenant."""


Started = tuple[tuple[str, str], int, Mapping[str, int], int]
"""A batch as it started: ((model, version), start_ns, tenant_rows, rows in all)."""


class Tally:
    """One interval's batches, summed as they are added, so that attributing costs O(keys).

    ``attribute()`` builds one from a list of batches; the meter's recorder adds the batches that
    finished, in bulk through ``add_finished`` at each interval's close, and those still running
    through ``add``. The rules are the module's.
    """

    def __init__(self, start_ns: int) -> None:
        self.start_ns = start_ns
        self._ranges: list[tuple[int, int]] = []
        self._models: dict[tuple[str, str], _ModelTally] = {}

    def _model(self, model: str, version: str) -> _ModelTally:
        tally = self._models.get((model, version))
        if tally is None:
            tally = self._models[(model, version)] = _ModelTally()
        return tally

    def batches_ended(self) -> dict[tuple[str, str, str], int]:
        """(model, version, tenant) -> batches ending in the interval that held its rows."""
        return {
            (*key, tenant): n
            for key, tally in self._models.items()
            for tenant, n in tally.batches.items()
        }

    def add_finished(self, finished: Iterable[tuple[Started, int]]) -> None:
        """Batches that ended in the interval, as ``((key, start_ns, tenant_rows, rows), end_ns)``
        with ``key`` = (model, version) and ``rows`` their total: the recorder's form. One pass;
        batches that started before the interval go through ``add``, the others through integer
        arithmetic only (the common case, and the meter's bulk work once per interval)."""
        interval_start, ranges, models = self.start_ns, self._ranges, self._models
        for (key, start_ns, tenant_rows, rows), end_ns in finished:
            if start_ns < interval_start:
                self.add(Batch(*key, start_ns, end_ns, tenant_rows), end_ns)
                continue
            tally = models.get(key)
            if tally is None:
                tally = models[key] = _ModelTally()
            duration_ns = end_ns - start_ns
            if duration_ns:
                ranges.append((start_ns, end_ns))
                tally.compute_ns += duration_ns
            elif end_ns == interval_start:
                continue  # an empty batch at the very start ended in the interval before
            whole, ended, batches = tally.whole, tally.rows, tally.batches
            for tenant, n in tenant_rows.items():
                whole[tenant] = whole.get(tenant, 0) + ((n if rows else 1) if duration_ns else 0)
                ended[tenant] = ended.get(tenant, 0) + n
                batches[tenant] = batches.get(tenant, 0) + 1

    def add(self, batch: Batch, end_ns: int, *, running: bool = False) -> None:
        """Any batch, clipped to ``[self.start_ns, end_ns)``. ``running``: a batch cut at the
        interval's end that is still computing; its rows count where it really ends."""
        lo, hi = max(batch.start_ns, self.start_ns), min(batch.end_ns, end_ns)
        clipped_ns = hi - lo if hi > lo else 0
        ends_here = not running and self.start_ns < batch.end_ns <= end_ns
        if not clipped_ns and not ends_here:
            return
        tally = self._model(batch.model, batch.version)
        if clipped_ns:
            self._ranges.append((lo, hi))
            tally.compute_ns += clipped_ns
        duration_ns = batch.end_ns - batch.start_ns
        no_rows = not any(batch.tenant_rows.values())
        for tenant, n in batch.tenant_rows.items():
            weight = 1 if no_rows else n
            if clipped_ns == duration_ns:  # wholly inside (or empty, weighing nothing)
                tally.whole[tenant] = tally.whole.get(tenant, 0) + (weight if clipped_ns else 0)
            else:  # 0 < clipped_ns < duration_ns: its share of the batch's duration
                tally.part[tenant] = tally.part.get(tenant, 0) + Fraction(
                    weight * clipped_ns, duration_ns
                )
                tally.whole.setdefault(tenant, 0)
            tally.rows[tenant] = tally.rows.get(tenant, 0) + (n if ends_here else 0)
            if ends_here:
                tally.batches[tenant] = tally.batches.get(tenant, 0) + 1

    def attribute(self, end_ns: int, measured: Measured | None) -> Attribution:
        """Split ``measured`` (None: no energy data) for the interval ending at ``end_ns``."""
        interval_ns = end_ns - self.start_ns
        if interval_ns <= 0:
            raise ValueError(f"interval [{self.start_ns}, {end_ns}) is empty")
        union_ns = _union_ns(self._ranges, self.start_ns)
        models = sorted(self._models)
        model_parts: dict[tuple[str, str], Measured] | None = None
        idle: Measured | None = None
        if measured is not None:
            attributed = Measured(
                measured.energy_uj * union_ns // interval_ns,
                measured.carbon_ug * union_ns // interval_ns,
                measured.cost_nanos * union_ns // interval_ns,
            )
            idle = Measured(
                measured.energy_uj - attributed.energy_uj,
                measured.carbon_ug - attributed.carbon_ug,
                measured.cost_nanos - attributed.cost_nanos,
            )
            # A positive attributed amount needs union_ns > 0, hence a model with compute: no
            # split below ever has a positive total and only zero weights.
            model_parts = _split_measured(
                attributed, {key: self._models[key].compute_ns for key in models}
            )

        shares: list[Share] = []
        for key in models:
            tally = self._models[key]
            tenants = sorted(tally.whole)
            weights: dict[str, Weight] = {
                tenant: tally.whole[tenant] + tally.part.get(tenant, 0) for tenant in tenants
            }
            compute_parts = split(tally.compute_ns, weights)
            tenant_parts = (
                _split_measured(model_parts[key], weights) if model_parts is not None else None
            )
            for tenant in tenants:
                rows = tally.rows[tenant]
                if not weights[tenant] and not rows:
                    continue  # no rows ending here and no compute weight: nothing to report
                part = tenant_parts[tenant] if tenant_parts is not None else None
                shares.append(
                    Share(
                        model=key[0],
                        version=key[1],
                        tenant=tenant,
                        compute_ns=compute_parts[tenant],
                        rows=rows,
                        energy_uj=part.energy_uj if part is not None else None,
                        carbon_ug=part.carbon_ug if part is not None else None,
                        cost_nanos=part.cost_nanos if part is not None else None,
                    )
                )
        return Attribution(busy_fraction=union_ns / interval_ns, shares=tuple(shares), idle=idle)
