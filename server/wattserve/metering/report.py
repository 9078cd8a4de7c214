"""`wattserve report`: a ledger period's usage, energy, carbon and cost, grouped and totalled, as
CSV or JSON (the terminal table lives in `report_text`, the HTML page in `report_html`).

Amounts stay integers (µJ, µg CO2e, nano-currency) until they are printed, so the
total row equals the sum of the intervals' measured figures exactly. A measure an interval did not
record is "no data": it is left out of sums and shown as such, never as zero.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sqlite3
import sys
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from wattserve.metering import attribution
from wattserve.metering.ledger import READABLE_VERSIONS, IntervalRow, UsageRow

MEASURES = ("energy_uj", "carbon_ug", "cost_nanos")
_UNIT = {"energy_uj": "energy_j", "carbon_ug": "carbon_g", "cost_nanos": "cost"}
# Powers of ten from each stored integer to its unit: µJ, µg CO2e, nano-currency.
EXPONENT = {"energy_uj": -6, "carbon_ug": -6, "cost_nanos": -9}
COUNTS = ("requests", "predictions", "batches", "errors")
KEY_COLUMNS = {"model": ("model", "version"), "tenant": ("tenant",), "day": ("day",)}
IDLE_LABEL = "(idle/overhead)"
TOTAL_LABEL = "(total)"
VIEWS = {
    "usage": f"Usage view: energy spent while no model computed is the {IDLE_LABEL} row.",
    "allocation": "Allocation view: each interval's idle/overhead energy, carbon and cost is "
    "spread over its usage rows pro rata to their attributed energy.",
}
ASSUMED = {  # interval setting -> (label, unit, the column that qualifies it)
    "carbon_intensity_g_per_kwh": ("Grid carbon intensity", "gCO2e/kWh", "carbon_intensity_source"),
    "energy_price_per_kwh": ("Energy price", "{cur}/kWh", "currency"),
    "instance_price_per_hour": ("Instance price", "{cur}/h", "currency"),
    "pue": ("PUE (power usage effectiveness)", "", None),
}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


class ReportError(Exception):
    """A report that cannot be made (no ledger, a bad period, mixed currencies): exit status 2."""


@dataclass(frozen=True, slots=True)
class LedgerData:
    """The intervals that started in [since, until) and their usage rows, as stored."""

    since: datetime | None
    until: datetime | None
    intervals: dict[int, IntervalRow]
    usage: list[tuple[int, UsageRow]]


@dataclass(slots=True)
class Totals:
    """One row of a report. A measure missing from `amounts` has no data; `metered` counts the
    predictions behind each amount, the divisor of its per-1,000 figure."""

    requests: int = 0
    predictions: int = 0
    batches: int = 0
    errors: int = 0
    compute_ns: int = 0
    amounts: dict[str, int] = field(default_factory=dict)
    metered: dict[str, int] = field(default_factory=dict)

    def add(self, measure: str, amount: int | None, predictions: int) -> None:
        if amount is not None:
            self.amounts[measure] = self.amounts.get(measure, 0) + amount
            self.metered[measure] = self.metered.get(measure, 0) + predictions

    def count(self, usage: UsageRow) -> None:
        self.requests += usage.requests
        self.predictions += usage.rows
        self.batches += usage.batches
        self.errors += usage.errors
        self.compute_ns += usage.compute_ns


@dataclass(frozen=True, slots=True)
class Report:
    """A period grouped by model, tenant or day, in the usage or the allocation view."""

    by: str
    view: str
    since: datetime | None
    until: datetime | None
    groups: dict[tuple[str, ...], Totals]
    idle: Totals
    total: Totals
    intervals: dict[str, int | float]  # count, with_energy, seconds (wall), workers
    currency: str | None
    assumptions: dict[str, Any]
    notes: list[str]


def parse_time(text: str, flag: str) -> datetime:
    """An ISO 8601 date or datetime; UTC when it names no zone."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(f"{flag} {text!r} is not an ISO 8601 date or datetime") from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat().replace("+00:00", "Z")


def from_ms(unix_ms: int) -> datetime:
    return _EPOCH + unix_ms * _MS


def load(path: Path, since: datetime | None, until: datetime | None) -> LedgerData:
    """Read a ledger without writing to it (a running server may own it)."""
    if not path.is_file():
        raise ReportError(f"no ledger at {path}")
    bounds = ((">=", since), ("<", until))
    where = " AND ".join(f"i.start_unix_ms {op} {(t - _EPOCH) // _MS}" for op, t in bounds if t)
    where = (where or "1") + " ORDER BY i.start_unix_ms, i.id"
    interval_columns = [f"i.{f.name}" for f in fields(IntervalRow)]
    usage_columns = ", ".join(f"u.{f.name}" for f in fields(UsageRow))
    try:
        connection = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            query = connection.execute
            version = query("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if version is None:
                raise ReportError(f"{path} is not a wattserve ledger (it has no schema version)")
            if int(version[0]) not in READABLE_VERSIONS:
                raise ReportError(
                    f"{path} is a version {version[0]} ledger; this wattserve reads versions "
                    f"{', '.join(map(str, READABLE_VERSIONS))}: upgrade wattserve to report it"
                )
            if int(version[0]) == 1:  # one process: worker 0 of 1
                interval_columns[-2:] = ["0", "1"]
            columns = ", ".join(interval_columns)
            found = query(f"SELECT i.id, {columns} FROM intervals i WHERE {where}")
            intervals = {row[0]: IntervalRow(*row[1:]) for row in found}
            found = query(
                f"SELECT u.interval_id, {usage_columns} FROM usage u "
                f"JOIN intervals i ON i.id = u.interval_id WHERE {where}"
            )
            usage = [(row[0], UsageRow(*row[1:])) for row in found]
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise ReportError(f"{path} is not a readable wattserve ledger: {exc}") from exc
    return LedgerData(since, until, intervals, usage)


def split(amount: int, weights: Sequence[int]) -> list[int]:
    """Largest-remainder split of `amount` by non-negative `weights` (Σ weights > 0), exact."""
    return list(attribution.split(amount, dict(enumerate(weights))).values())


def _key(by: str, interval: IntervalRow, usage: UsageRow) -> tuple[str, ...]:
    if by == "model":
        return (usage.model, usage.version)
    if by == "tenant":
        return (usage.tenant,)
    return (from_ms(interval.start_unix_ms).date().isoformat(),)


def build_report(data: LedgerData, by: str, view: str) -> Report:
    """Group the usage rows; idle stays on its own row (usage) or follows energy (allocation)."""
    intervals = list(data.intervals.values())
    currencies = sorted({i.currency for i in intervals if i.currency})
    if len(currencies) > 1:
        raise ReportError(f"the period mixes currencies {', '.join(currencies)}; narrow it")
    rows_of: defaultdict[int, list[UsageRow]] = defaultdict(list)
    for interval_id, usage in data.usage:
        rows_of[interval_id].append(usage)
    groups: defaultdict[tuple[str, ...], Totals] = defaultdict(Totals)
    idle, total = Totals(), Totals()
    for interval_id, interval in data.intervals.items():
        rows = rows_of[interval_id]
        keys = [_key(by, interval, usage) for usage in rows]
        for key, usage in zip(keys, rows, strict=True):
            groups[key].count(usage)
            total.count(usage)
            for measure in MEASURES:
                groups[key].add(measure, getattr(usage, measure), usage.rows)
        weights = [usage.energy_uj or 0 for usage in rows]
        for measure in MEASURES:
            total.add(measure, getattr(interval, measure), sum(u.rows for u in rows))
            idle_amount = getattr(interval, f"idle_{measure}")
            if view == "allocation" and idle_amount is not None and sum(weights) > 0:
                shares = split(idle_amount, weights)
                for key, weight, share in zip(keys, weights, shares, strict=True):
                    if weight:
                        groups[key].add(measure, share, 0)
            else:
                idle.add(measure, idle_amount, 0)
    with_energy = sum(1 for i in intervals if i.energy_uj is not None)
    notes = [] if intervals else ["No intervals in this period."]
    if with_energy < len(intervals):
        notes.append(
            f"{len(intervals) - with_energy} of {len(intervals)} intervals have no energy data: "
            "their usage is counted, their energy, carbon and cost are shown as no data, not zero."
        )
    for measure in (m for m in MEASURES if m in total.amounts):
        parts = sum(g.amounts.get(measure, 0) for g in [*groups.values(), idle])
        if parts != (measured := total.amounts[measure]):
            notes.append(f"Inconsistent ledger: {measure} of groups and idle {parts} != {measured}")
    counts = {
        "count": len(intervals),
        "with_energy": with_energy,
        "seconds": _covered_ms(intervals) / 1000,
        "workers": max((i.workers for i in intervals), default=1),
    }
    currency = currencies[0] if currencies else None
    ordered, assumed = dict(sorted(groups.items())), _assumptions(intervals)
    return Report(
        by, view, data.since, data.until, ordered, idle, total, counts, currency, assumed, notes
    )


def _covered_ms(intervals: list[IntervalRow]) -> int:
    """Wall time the intervals cover; worker processes' intervals overlap and count once."""
    covered, reached = 0, None
    for start, end in sorted((i.start_unix_ms, i.end_unix_ms) for i in intervals):
        if reached is None or start > reached:
            covered += end - start
            reached = end
        elif end > reached:
            covered += end - reached
            reached = end
    return covered


def _assumptions(intervals: list[IntervalRow]) -> dict[str, Any]:
    """Each distinct setting the intervals were measured under, with how many intervals used it."""
    found: dict[str, Any] = {
        "energy_methods": dict(sorted(Counter(i.energy_method for i in intervals).items()))
    }
    for name, (_, _, qualifier) in ASSUMED.items():
        seen = Counter((getattr(i, name), qualifier and getattr(i, qualifier)) for i in intervals)
        detail = () if qualifier is None else (qualifier.removeprefix("carbon_intensity_"),)
        found[name] = [
            {"value": value, **{key: extra for key in detail}, "intervals": n}
            for (value, extra), n in sorted(seen.items(), key=repr)
        ]
    return found


def in_units(amount: int | None, exponent: int = -6) -> Decimal | None:
    return None if amount is None else Decimal(amount).scaleb(exponent)


def _ratio(part: int | None, whole: int | None) -> Decimal | None:
    if part is None or not whole:
        return None
    return (Decimal(part) / Decimal(whole)).quantize(Decimal("0.000001"))


def labelled(report: Report) -> Iterator[tuple[tuple[str, ...], Totals]]:
    """The rows in order: groups, idle (usage view, or idle left unallocated), total."""
    pad = ("",) * (len(KEY_COLUMNS[report.by]) - 1)
    yield from report.groups.items()
    if report.view == "usage" or any(report.idle.amounts.values()):
        yield (IDLE_LABEL, *pad), report.idle
    yield (TOTAL_LABEL, *pad), report.total


def record(totals: Totals, total: Totals) -> dict[str, Any]:
    """One row in explicit units: decimals exact from the micro-unit integers; None = no data."""
    row: dict[str, Any] = {name: getattr(totals, name) for name in COUNTS}
    row["compute_s"] = Decimal(totals.compute_ns).scaleb(-9)
    for measure in MEASURES:
        row[measure] = totals.amounts.get(measure)
        row[_UNIT[measure]] = in_units(row[measure], EXPONENT[measure])
    for measure in MEASURES:
        per_1k = _ratio(totals.amounts.get(measure), 1000 * totals.metered.get(measure, 0))
        row[f"{_UNIT[measure]}_per_1k_predictions"] = per_1k
    row["energy_share"] = _ratio(totals.amounts.get("energy_uj"), total.amounts.get("energy_uj"))
    return row


def to_json(report: Report) -> str:
    def plain(totals: Totals) -> dict[str, Any]:
        row = record(totals, report.total)
        return {k: float(v) if isinstance(v, Decimal) else v for k, v in row.items()}

    names = KEY_COLUMNS[report.by]
    document = {
        "since": iso(report.since),
        "until": iso(report.until),
        "by": report.by,
        "view": report.view,
        "currency": report.currency,
        "intervals": report.intervals,
        "assumptions": report.assumptions,
        "groups": [dict(zip(names, k, strict=True), **plain(t)) for k, t in report.groups.items()],
        "idle": plain(report.idle),
        "total": plain(report.total),
        "notes": report.notes,
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def to_csv(report: Report) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for n, (key, totals) in enumerate(labelled(report)):
        row = {k: v for k, v in record(totals, report.total).items() if k not in MEASURES}
        row["currency"] = report.currency or ""
        if n == 0:
            writer.writerow([*KEY_COLUMNS[report.by], *row])
        writer.writerow([*key, *(f"{v:f}" if isinstance(v, Decimal) else v for v in row.values())])
    return out.getvalue()


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of `wattserve report`."""
    add = parser.add_argument
    add("--ledger", type=Path, required=True, help="the ledger (SQLite file) to read")
    add("--since", help="start of the period: ISO 8601 date or datetime, UTC if no zone given")
    add("--until", help="end of the period, exclusive (same format as --since)")
    add("--by", choices=tuple(KEY_COLUMNS), default="model", help="group rows by (default model)")
    add("--view", choices=tuple(VIEWS), default="usage", help="idle on its own row, or spread")
    add("--format", choices=("table", "csv", "json", "html"), default="table", help="output format")
    add("--output", type=Path, help="write to this file instead of stdout")


def run_report(args: argparse.Namespace) -> int:
    """Make the report; exit status 2 for a missing or unreadable ledger or a bad period."""
    try:
        since = None if args.since is None else parse_time(args.since, "--since")
        until = None if args.until is None else parse_time(args.until, "--until")
        if since is not None and until is not None and since >= until:
            raise ReportError(f"--since {iso(since)} is not before --until {iso(until)}")
        data = load(args.ledger, since, until)
        report = build_report(data, args.by, args.view)
    except ReportError as exc:
        sys.stderr.write(f"wattserve report: {exc}\n")
        return 2
    if args.format == "html":
        from wattserve.metering.report_html import render_html

        text = render_html(data, report)
    else:
        from wattserve.metering.report_text import to_table

        text = {"table": to_table, "csv": to_csv, "json": to_json}[args.format](report)
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        args.output.write_text(text, encoding="utf-8")
    except OSError as exc:
        sys.stderr.write(f"wattserve report: cannot write {args.output}: {exc}\n")
        return 1
    return 0
