"""`wattserve report`: grouping, the usage and allocation views, the period, exact totals in every
format, and a self-contained HTML page, all read from real ledgers written by `write_interval`."""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
from contextlib import closing
from decimal import Decimal
from html.parser import HTMLParser
from pathlib import Path

import pytest

from wattserve.metering import ledger
from wattserve.metering.report import (
    IDLE_LABEL,
    TOTAL_LABEL,
    LedgerData,
    Report,
    add_report_arguments,
    build_report,
    load,
    parse_time,
    record,
    run_report,
    split,
)
from wattserve.metering.report_text import describe_energy_method

T0 = 1_714_521_600_000  # 2024-05-01T00:00:00Z
DAY_MS = 86_400_000
TIMES = "\N{MULTIPLICATION SIGN}"
METHOD = "cpu=estimated:tdp;ram=estimated:model;gpu=absent"
Use = tuple[str, str, str, int, int | None]  # model, version, tenant, rows, energy_uj


def write(
    connection: sqlite3.Connection,
    start_ms: int,
    energy_uj: int | None,
    usage: list[Use],
    *,
    currency: str = "EUR",
    source: str = "fixed:test-grid",
) -> None:
    """One 1 s interval; carbon is 2 µg and cost 3 nano-EUR per µJ, so every split is exact."""
    idle = None if energy_uj is None else energy_uj - sum(u[4] or 0 for u in usage)

    def carbon_of(uj: int | None) -> int | None:
        return None if uj is None else 2 * uj

    def cost_of(uj: int | None) -> int | None:
        return None if uj is None else 3 * uj

    busy = 0.0 if not energy_uj or idle is None else 1 - idle / energy_uj
    interval = ledger.IntervalRow(
        start_unix_ms=start_ms,
        end_unix_ms=start_ms + 1000,
        energy_uj=energy_uj,
        cpu_energy_uj=energy_uj,
        ram_energy_uj=None,
        gpu_energy_uj=None,
        energy_method=METHOD if energy_uj is not None else "none",
        busy_fraction=busy,
        idle_energy_uj=idle,
        carbon_intensity_g_per_kwh=400.0,
        carbon_intensity_source=source,
        carbon_ug=carbon_of(energy_uj),
        idle_carbon_ug=carbon_of(idle),
        energy_price_per_kwh=0.25,
        instance_price_per_hour=1.5,
        currency=currency,
        cost_nanos=cost_of(energy_uj),
        idle_cost_nanos=cost_of(idle),
        pue=1.0,
        codecarbon_emissions_ug=None,
    )
    rows = [
        ledger.UsageRow(
            m, v, t, n // 2 + 1, n, 1, int(t == "beta"), 100_000 * n, e, carbon_of(e), cost_of(e)
        )
        for m, v, t, n, e in usage
    ]
    ledger.write_interval(connection, interval, rows)


@pytest.fixture
def ledger_path(tmp_path: Path) -> Path:
    """Two days, two models (plus one seen only without energy data), two tenants, idle time,
    an interval with no usage and one with no energy data."""
    path = tmp_path / "usage.sqlite"
    connection = ledger.connect(path)
    write(
        connection,
        T0,
        1_000_000,
        [("iris", "1", "acme", 10, 400_000), ("iris", "1", "beta", 5, 200_000)],
    )
    write(
        connection,
        T0 + 1000,
        2_000_003,
        [("iris", "1", "acme", 4, 500_001), ("wine", "2", "beta", 6, 700_000)],
    )
    write(connection, T0 + 2000, 500_000, [])
    write(
        connection,
        T0 + 3000,
        None,
        [("wine", "2", "acme", 7, None), ("ghost", "1", "beta", 3, None)],
    )
    write(
        connection,
        T0 + DAY_MS + 5000,
        3_000_000,
        [("wine", "2", "acme", 20, 2_000_000), ("iris", "1", "beta", 2, 333_333)],
    )
    connection.close()
    return path


def report_of(path: Path, by: str = "model", view: str = "usage", **period: str) -> Report:
    since, until = (parse_time(period[k], k) if k in period else None for k in ("since", "until"))
    return build_report(load(path, since, until), by, view)


def energy(report: Report) -> dict[tuple[str, ...], int | None]:
    return {key: totals.amounts.get("energy_uj") for key, totals in report.groups.items()}


def sql_sum(path: Path, expression: str, table: str = "intervals") -> int:
    with closing(sqlite3.connect(path)) as connection:
        return int(connection.execute(f"SELECT SUM({expression}) FROM {table}").fetchone()[0])


def cli(path: Path | str, *flags: str) -> int:
    parser = argparse.ArgumentParser()
    add_report_arguments(parser)
    return run_report(parser.parse_args(["--ledger", str(path), *flags]))


def test_by_model_keeps_idle_apart_and_no_data_apart_from_zero(ledger_path: Path) -> None:
    report = report_of(ledger_path)
    assert energy(report) == {
        ("ghost", "1"): None,
        ("iris", "1"): 1_433_334,
        ("wine", "2"): 2_700_000,
    }
    assert report.idle.amounts["energy_uj"] == 2_366_669
    assert report.total.amounts["energy_uj"] == sql_sum(ledger_path, "energy_uj") == 6_500_003
    assert report.total.predictions == sql_sum(ledger_path, "rows", "usage") == 57
    assert report.intervals == {"count": 5, "with_energy": 4, "seconds": 5.0, "workers": 1}
    assert any("1 of 5 intervals have no energy data" in note for note in report.notes)
    wine = record(report.groups[("wine", "2")], report.total)
    # Per 1,000 predictions divides by the 26 predictions that have energy, not all 33.
    assert report.groups[("wine", "2")].predictions == 33
    assert wine["energy_j_per_1k_predictions"] == Decimal("103.846154")
    assert record(report.groups[("ghost", "1")], report.total)["energy_j"] is None


def test_by_tenant_and_by_day(ledger_path: Path) -> None:
    assert energy(report_of(ledger_path, "tenant")) == {("acme",): 2_900_001, ("beta",): 1_233_333}
    by_day = report_of(ledger_path, "day")
    assert energy(by_day) == {("2024-05-01",): 1_800_001, ("2024-05-02",): 2_333_333}
    assert by_day.groups[("2024-05-01",)].predictions == 35


@pytest.mark.parametrize("by", ["model", "tenant", "day"])
def test_allocation_spreads_idle_exactly_over_usage(ledger_path: Path, by: str) -> None:
    usage, allocation = report_of(ledger_path, by), report_of(ledger_path, by, "allocation")
    assert usage.total.amounts == allocation.total.amounts
    # Only the interval without any usage keeps its idle (500,000 µJ, 2 µg and 3 nano-EUR per µJ).
    assert allocation.idle.amounts == {
        "energy_uj": 500_000,
        "carbon_ug": 1_000_000,
        "cost_nanos": 1_500_000,
    }
    for measure in ("energy_uj", "carbon_ug", "cost_nanos"):
        spread = sum(t.amounts.get(measure, 0) for t in allocation.groups.values())
        assert spread + allocation.idle.amounts[measure] == sql_sum(ledger_path, measure)
        assert spread > sum(t.amounts.get(measure, 0) for t in usage.groups.values())
    day2 = report_of(ledger_path, by, "allocation", since="2024-05-02")
    assert sum(t.amounts["energy_uj"] for t in day2.groups.values()) == 3_000_000
    assert not day2.idle.amounts


def test_allocation_without_leftover_idle_has_no_idle_row(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli(ledger_path, "--view", "allocation", "--since", "2024-05-02", "--format", "csv") == 0
    rows = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [r["model"] for r in rows] == ["iris", "wine", TOTAL_LABEL]
    assert sum(Decimal(r["energy_j"]) for r in rows[:-1]) == Decimal(rows[-1]["energy_j"]) == 3


@pytest.mark.parametrize(
    ("period", "starts"),
    [
        ({"since": "2024-05-02"}, [T0 + DAY_MS + 5000]),
        ({"until": "2024-05-02"}, [T0, T0 + 1000, T0 + 2000, T0 + 3000]),
        ({"until": "2024-05-01T02:00:01+02:00"}, [T0]),  # exclusive, any zone
        ({"since": "2024-05-01T00:00:01", "until": "2024-05-01T00:00:03Z"}, [T0 + 1000, T0 + 2000]),
        ({"since": "2024-06-01"}, []),
    ],
)
def test_since_until_select_intervals_by_start(
    ledger_path: Path, period: dict[str, str], starts: list[int]
) -> None:
    since, until = (parse_time(period[k], k) if k in period else None for k in ("since", "until"))
    data: LedgerData = load(ledger_path, since, until)
    assert [i.start_unix_ms for i in data.intervals.values()] == starts
    assert {interval_id for interval_id, _ in data.usage} <= set(data.intervals)


@pytest.mark.parametrize("by", ["model", "tenant", "day"])
@pytest.mark.parametrize("view", ["usage", "allocation"])
def test_csv_and_json_totals_equal_the_ledger_summed_in_sql(
    ledger_path: Path, tmp_path: Path, by: str, view: str
) -> None:
    out_csv, out_json = tmp_path / "r.csv", tmp_path / "r.json"
    assert (
        cli(ledger_path, "--by", by, "--view", view, "--format", "csv", "--output", str(out_csv))
        == 0
    )
    assert (
        cli(ledger_path, "--by", by, "--view", view, "--format", "json", "--output", str(out_json))
        == 0
    )
    rows = list(csv.DictReader(out_csv.read_text().splitlines()))
    document = json.loads(out_json.read_text())
    total = rows[-1]
    assert total[by] == TOTAL_LABEL and total["currency"] == document["currency"] == "EUR"
    for measure, column, scale in (
        ("energy_uj", "energy_j", 10**6),
        ("carbon_ug", "carbon_g", 10**6),
        ("cost_nanos", "cost", 10**9),
    ):
        measured = sql_sum(ledger_path, measure)
        assert Decimal(total[column]) * scale == measured
        assert sum(Decimal(r[column] or 0) for r in rows[:-1]) == Decimal(total[column])
        parts = [g[measure] or 0 for g in document["groups"]] + [document["idle"][measure] or 0]
        assert sum(parts) == document["total"][measure] == measured
        assert document["total"][column] == pytest.approx(measured / scale)
    assert (
        int(total["predictions"])
        == document["total"]["predictions"]
        == sql_sum(ledger_path, "rows", "usage")
    )
    assert document["intervals"] == {"count": 5, "with_energy": 4, "seconds": 5.0, "workers": 1}
    assert document["assumptions"]["energy_methods"] == {METHOD: 4, "none": 1}
    assert document["assumptions"]["carbon_intensity_g_per_kwh"] == [
        {"value": 400.0, "source": "fixed:test-grid", "intervals": 5}
    ]
    assert [(IDLE_LABEL in r.values()) for r in rows].count(True) == 1


def test_no_data_is_never_zero_in_any_format(
    ledger_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for form in ("csv", "json", "table"):
        assert cli(ledger_path, "--format", form) == 0
        out = capsys.readouterr().out
        if form == "csv":
            ghost = next(r for r in csv.DictReader(out.splitlines()) if r["model"] == "ghost")
            assert ghost["energy_j"] == ghost["carbon_g"] == ghost["cost"] == ""
        elif form == "json":
            ghost = next(g for g in json.loads(out)["groups"] if g["model"] == "ghost")
            assert ghost["energy_uj"] is None and ghost["energy_j_per_1k_predictions"] is None
        else:
            line = next(row for row in out.splitlines() if row.startswith("ghost"))
            assert line.count("no data") == 7  # energy, carbon, cost, three per-1k and the share
            assert "1 of 5 intervals have no energy data" in out
            assert "energy J" in out and "cost EUR" in out and "Energy is estimated" in out


class PageChecker(HTMLParser):
    """Tags balanced (void elements aside) and every attribute value collected."""

    VOID = frozenset({"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.open: list[str] = []
        self.errors: list[str] = []
        self.values: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.values += [value or "" for _, value in attrs]
        if tag not in self.VOID:
            self.open.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open.pop() != tag:
            self.errors.append(tag)


def check_page(text: str) -> None:
    checker = PageChecker()
    checker.feed(text)
    checker.close()
    assert checker.errors == [] and checker.open == []
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert not any(v.startswith(("//", "data:", "file:")) for v in checker.values)


def test_html_is_one_self_contained_page_with_charts_and_method(
    ledger_path: Path, tmp_path: Path
) -> None:
    connection = ledger.connect(ledger_path)
    write(connection, T0 + DAY_MS + 9000, 10, [], source="<script>alert('x')</script>")
    connection.close()
    page = tmp_path / "report.html"
    assert cli(ledger_path, "--format", "html", "--by", "tenant", "--output", str(page)) == 0
    text = page.read_text(encoding="utf-8")
    check_page(text)
    assert text.count("<svg") == 5 and "<rect" in text
    assert "Method and assumptions" in text
    assert f"CPU power estimated from TDP {TIMES} load" in text
    assert "Grid carbon intensity: 400 gCO2e/kWh (source: fixed:test-grid)" in text
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in text
    assert "1 of 6 intervals have no energy data" in text
    assert "Energy per 1,000 predictions by model" in text and "Utilisation per hour" in text
    assert "Share of cost by tenant" in text and "Cost per 1,000 predictions" in text
    assert cli(ledger_path, "--format", "html", "--until", "2024-05-02", "--output", str(page)) == 0
    assert "Cost per minute (EUR)" in page.read_text(encoding="utf-8")


def test_html_renders_an_empty_ledger_with_no_data_notes(tmp_path: Path) -> None:
    path = tmp_path / "empty.sqlite"
    ledger.connect(path).close()
    page = tmp_path / "empty.html"
    assert cli(path, "--format", "html", "--output", str(page)) == 0
    text = page.read_text(encoding="utf-8")
    check_page(text)
    assert text.count("No data for this period") == 5
    assert "No intervals in this period." in text


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--since", "yesterday"], "--since 'yesterday' is not an ISO 8601 date or datetime"),
        (["--since", "2024-05-02", "--until", "2024-05-01"], "is not before --until"),
    ],
)
def test_bad_period_exits_2(
    ledger_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    assert cli(ledger_path, *flags) == 2
    assert message in capsys.readouterr().err


def test_missing_ledger_exits_2_without_creating_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nowhere" / "usage.sqlite"
    assert cli(missing) == 2
    assert f"wattserve report: no ledger at {missing}" in capsys.readouterr().err
    assert not missing.parent.exists()


def test_not_a_ledger_and_mixed_currencies_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "other.sqlite"
    other.write_bytes(b"not sqlite at all" * 100)
    assert cli(other) == 2
    assert "is not a readable wattserve ledger" in capsys.readouterr().err
    mixed = tmp_path / "mixed.sqlite"
    connection = ledger.connect(mixed)
    write(connection, T0, 10, [], currency="EUR")
    write(connection, T0 + 1000, 10, [], currency="USD")
    connection.close()
    assert cli(mixed) == 2
    assert "mixes currencies EUR, USD" in capsys.readouterr().err
    assert cli(mixed, "--until", "2024-05-01T00:00:01Z") == 0


@pytest.mark.parametrize(
    ("amount", "weights", "shares"),
    [
        (10, [1, 1, 1], [4, 3, 3]),
        (400_000, [400_000, 200_000], [266_667, 133_333]),
        (5, [0, 3, 0, 1], [0, 4, 0, 1]),
        (1, [1, 1], [1, 0]),
        (0, [2, 5], [0, 0]),
    ],
)
def test_split_is_exact_and_gives_nothing_to_zero_weights(
    amount: int, weights: list[int], shares: list[int]
) -> None:
    assert split(amount, weights) == shares


@pytest.mark.parametrize(
    ("method", "described"),
    [
        (
            METHOD,
            f"CPU power estimated from TDP {TIMES} load; RAM power estimated from a power model; "
            "no GPU",
        ),
        (
            "cpu=measured:rapl;gpu=measured:nvml",
            "CPU energy measured (rapl); GPU energy measured (nvml)",
        ),
        ("none", "no energy measurement"),
    ],
)
def test_energy_methods_read_as_sentences(method: str, described: str) -> None:
    assert describe_energy_method(method) == described
