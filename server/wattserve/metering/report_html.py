"""The `wattserve report --format html` page: one self-contained file for a finance reader.

Inline CSS and SVG charts drawn here; no scripts, fonts, images or links to fetch, so the page
reads the same offline, attached to an email or archived. Every text from the ledger is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from decimal import Decimal
from html import escape

from wattserve.metering.report import (
    IDLE_LABEL,
    KEY_COLUMNS,
    LedgerData,
    Report,
    build_report,
    from_ms,
    iso,
    record,
)
from wattserve.metering.report_text import assumption_lines, number, table_cells

_WIDTH = 640
_DAY_MS = 86_400_000
# Time buckets for the charts over time: the finest that keeps a chart to at most 60 columns.
_STEPS = ((60_000, "minute"), (900_000, "15 minutes"), (3_600_000, "hour"), (_DAY_MS, "day"))
_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2430;
       background: #f6f7f9; margin: 0; }
main { max-width: 1200px; margin: 0 auto; padding: 24px 32px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; } h2 { font-size: 19px; margin: 32px 0 12px; }
.period { color: #556; margin: 0 0 20px; }
.cards { display: grid; grid-template-columns: repeat(5, 1fr); gap: 12px; }
.card { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; padding: 12px 14px; }
.card .label { display: block; color: #556; font-size: 13px; }
.card .value { display: block; font-size: 22px; font-weight: 600; }
.charts { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
figure { background: #fff; border: 1px solid #dde1e7; border-radius: 8px; margin: 0;
         padding: 12px; }
figcaption { font-weight: 600; margin-bottom: 6px; }
svg { width: 100%; height: auto; font-size: 11px; fill: #445; }
svg .grid { stroke: #e3e6eb; } svg .cost { fill: #2f6db5; } svg .carbon { fill: #3d8b5a; }
svg .energy { fill: #c07a1c; } svg .share { fill: #7a4fb0; } svg .busy { fill: #5a6b80; }
svg .nodata { font-size: 14px; fill: #889; }
table { border-collapse: collapse; background: #fff; width: 100%; font-size: 13px; }
th, td { border-bottom: 1px solid #e3e6eb; padding: 6px 8px; text-align: right; }
th { background: #eef0f4; } td { white-space: nowrap; } td.key, th.key { text-align: left; }
tr.idle td { color: #556; font-style: italic; } tr.total td { font-weight: 600; }
#method { background: #fff8e6; border: 1px solid #ecd9a0; border-radius: 8px; padding: 4px 20px; }
.notes { color: #7a4a00; }
"""


def render_html(data: LedgerData, report: Report) -> str:
    """The whole page, grouped as `report` is, with charts from all of `data`."""
    title = "Inference energy, carbon and cost"
    period = _period(data, report)
    body = [
        f"<header><h1>{title}</h1><p class='period'>{escape(period)}</p></header>",
        _headline(report),
        "<h2>Charts</h2><div class='charts'>",
        *_charts(data, report),
        "</div>",
        f"<h2>By {escape(report.by)} ({escape(report.view)} view)</h2>",
        _table(report),
        _method(report),
    ]
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{title}: {escape(period)}</title><style>{_CSS}</style></head>\n"
        "<body><main>\n" + "\n".join(body) + "\n</main></body></html>\n"
    )


def _period(data: LedgerData, report: Report) -> str:
    starts = [i.start_unix_ms for i in data.intervals.values()]
    ends = [i.end_unix_ms for i in data.intervals.values()]
    since = iso(report.since) or (iso(from_ms(min(starts))) if starts else "start of ledger")
    until = iso(report.until) or (iso(from_ms(max(ends))) if ends else "end of ledger")
    return f"{since} to {until}, {report.intervals['count']} metering intervals"


def _quantity(micros: int | None, units: Sequence[tuple[str, int]]) -> str:
    """A micro-unit amount in the first unit it reaches at least 1 of (the last one otherwise)."""
    if micros is None:
        return "no data"
    name, scale = next(((n, s) for n, s in units if abs(micros) >= s), units[-1])
    return f"{number(Decimal(micros) / scale)} {name}"


def _energy(uj: int | None) -> str:
    return _quantity(uj, [("kWh", 3_600_000_000_000), ("Wh", 3_600_000_000), ("J", 1_000_000)])


def _headline(report: Report) -> str:
    total, currency = report.total, report.currency or ""
    row = record(total, total)
    per_1k = row["cost_per_1k_predictions"]
    cards = [
        ("Energy", _energy(total.amounts.get("energy_uj"))),
        (
            "Carbon",
            _quantity(total.amounts.get("carbon_ug"), [("kg CO2e", 10**9), ("g CO2e", 10**6)]),
        ),
        ("Cost", _quantity(total.amounts.get("cost_nanos"), [(currency, 10**9)])),
        ("Predictions", f"{total.predictions:,}"),
        (
            "Cost per 1,000 predictions",
            "no data" if per_1k is None else f"{number(per_1k)} {currency}",
        ),
    ]
    return (
        "<div class='cards'>"
        + "".join(
            f"<div class='card'><span class='label'>{escape(label)}</span>"
            f"<span class='value'>{escape(value.strip())}</span></div>"
            for label, value in cards
        )
        + "</div>"
    )


def _charts(data: LedgerData, report: Report) -> list[str]:
    labels, cost, carbon, busy, per = _timeline(data)
    currency = report.currency or "currency units"
    by_model = build_report(data, "model", report.view)
    energy_per_1k = [
        record(t, by_model.total)["energy_j_per_1k_predictions"] for t in by_model.groups.values()
    ]
    by_tenant = build_report(data, "tenant", report.view)
    # Share of cost where there is any (a tiny server's cost can round to nothing), else energy.
    measure = "cost_nanos" if by_tenant.total.amounts.get("cost_nanos") else "energy_uj"
    shares = [(k[0], t) for k, t in by_tenant.groups.items()]
    if by_tenant.idle.amounts.get(measure):
        shares.append((IDLE_LABEL, by_tenant.idle))
    whole = by_tenant.total.amounts.get(measure)
    share_values = [
        None if not whole or measure not in t.amounts else 100 * t.amounts[measure] / whole
        for _, t in shares
    ]
    return [
        _columns(f"Cost per {per} ({currency})", labels, cost, "cost"),
        _columns(f"Carbon per {per} (g CO2e)", labels, carbon, "carbon"),
        _bars(
            f"Energy per 1,000 predictions by model (J, {report.view} view)",
            [" v".join(k) for k in by_model.groups],
            [None if v is None else float(v) for v in energy_per_1k],
            "energy",
            " J",
        ),
        _bars(
            f"Share of {'cost' if measure == 'cost_nanos' else 'energy'} by tenant (%)",
            [name for name, _ in shares],
            share_values,
            "share",
            "%",
        ),
        _columns(
            f"Utilisation per {per} (% of time a model was computing)",
            labels,
            busy,
            "busy",
            top=100.0,
        ),
    ]


def _timeline(
    data: LedgerData,
) -> tuple[list[str], list[float | None], list[float | None], list[float | None], str]:
    """Cost (currency), carbon (g) and busy time (%) per time bucket, and the bucket's name."""
    intervals = sorted(data.intervals.values(), key=lambda i: i.start_unix_ms)
    if not intervals:
        return [], [], [], [], "day"
    first, last = intervals[0].start_unix_ms, intervals[-1].start_unix_ms
    step, per = next((s, p) for s, p in _STEPS if last // s - first // s < 60 or s == _DAY_MS)
    count = last // step - first // step + 1
    cost: list[float | None] = [None] * count
    carbon: list[float | None] = [None] * count
    busy_ms, length_ms = [0.0] * count, [0] * count
    for interval in intervals:
        k = interval.start_unix_ms // step - first // step
        if interval.cost_nanos is not None:
            cost[k] = (cost[k] or 0) + interval.cost_nanos / 1e9
        if interval.carbon_ug is not None:
            carbon[k] = (carbon[k] or 0) + interval.carbon_ug / 1e6
        length = interval.end_unix_ms - interval.start_unix_ms
        busy_ms[k] += interval.busy_fraction * length
        length_ms[k] += length
    busy = [100 * b / n if n else None for b, n in zip(busy_ms, length_ms, strict=True)]
    pattern = "%Y-%m-%d" if step == _DAY_MS else "%m-%d %H:%M"
    labels = [from_ms((first // step + k) * step).strftime(pattern) for k in range(count)]
    return labels, cost, carbon, busy, per


def _short(value: float) -> str:
    return number(Decimal(repr(value)))


def _nice(top: float) -> float:
    """The axis maximum: 1, 2, 2.5 or 5 times a power of ten, at or above `top`."""
    power = 10 ** math.floor(math.log10(top))
    return float(next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= top * (1 - 1e-9)))


def _figure(title: str, svg: str) -> str:
    return f"<figure><figcaption>{escape(title)}</figcaption>{svg}</figure>"


def _empty(title: str) -> str:
    svg = (
        f"<svg viewBox='0 0 {_WIDTH} 80' role='img' aria-label='{escape(title)}: no data'>"
        f"<text x='{_WIDTH / 2}' y='44' text-anchor='middle' class='nodata'>"
        "No data for this period</text></svg>"
    )
    return _figure(title, svg)


def _columns(
    title: str, labels: list[str], values: list[float | None], kind: str, top: float | None = None
) -> str:
    """A column chart over time; a missing value leaves a gap, never a zero column."""
    known = [v for v in values if v is not None]
    if not known:
        return _empty(title)
    top = top or _nice(max(max(known), 0) or 1.0)
    height, left, right, upper, lower = 220, 64, 8, 10, 30
    plot_w, plot_h = _WIDTH - left - right, height - upper - lower
    step = plot_w / len(values)
    parts = [f"<svg viewBox='0 0 {_WIDTH} {height}' role='img' aria-label='{escape(title)}'>"]
    for fraction in (0.0, 0.5, 1.0):
        y = upper + plot_h * (1 - fraction)
        parts.append(
            f"<line x1='{left}' x2='{_WIDTH - right}' y1='{y:.1f}' y2='{y:.1f}' class='grid'/>"
        )
        tick = f"{top * fraction:,g}"
        parts.append(f"<text x='{left - 6}' y='{y + 4:.1f}' text-anchor='end'>{tick}</text>")
    every = -(-len(values) // 8)
    for k, (label, value) in enumerate(zip(labels, values, strict=True)):
        x = left + k * step
        if value is not None:
            bar = plot_h * min(max(value, 0) / top, 1)
            parts.append(
                f"<rect class='{kind}' x='{x + step * 0.1:.1f}' y='{upper + plot_h - bar:.1f}' "
                f"width='{max(step * 0.8, 1):.1f}' height='{bar:.1f}'>"
                f"<title>{escape(label)}: {_short(value)}</title></rect>"
            )
        if k % every == 0:
            parts.append(
                f"<text x='{x + step / 2:.1f}' y='{height - 10}' text-anchor='middle'>"
                f"{escape(label)}</text>"
            )
    return _figure(title, "".join(parts) + "</svg>")


def _bars(title: str, labels: list[str], values: list[float | None], kind: str, unit: str) -> str:
    """Horizontal bars, one per label; a label without data says so instead of drawing zero."""
    if not labels or all(v is None for v in values):
        return _empty(title)
    top = max(max(v for v in values if v is not None), 0) or 1.0
    label_w, value_w, row_h = 180, 110, 26
    bar_w = _WIDTH - label_w - value_w
    height = row_h * len(labels) + 8
    parts = [f"<svg viewBox='0 0 {_WIDTH} {height}' role='img' aria-label='{escape(title)}'>"]
    for n, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = 4 + n * row_h
        short = label if len(label) <= 26 else label[:25] + "\N{HORIZONTAL ELLIPSIS}"
        parts.append(
            f"<text x='{label_w - 8}' y='{y + 17}' text-anchor='end'>{escape(short)}</text>"
        )
        width = 0.0 if value is None else bar_w * max(value, 0) / top
        if value is not None:
            parts.append(
                f"<rect class='{kind}' x='{label_w}' y='{y + 4}' width='{width:.1f}' height='18'>"
                f"<title>{escape(label)}: {_short(value)}{unit}</title></rect>"
            )
        text = "no data" if value is None else f"{_short(value)}{unit}"
        parts.append(f"<text x='{label_w + width + 6:.1f}' y='{y + 17}'>{escape(text)}</text>")
    return _figure(title, "".join(parts) + "</svg>")


def _table(report: Report) -> str:
    headers, rows = table_cells(report)
    keys = len(KEY_COLUMNS[report.by])

    def cells(tag: str, values: list[str]) -> str:
        return "".join(
            f"<{tag}{' class=key' if i < keys else ''}>{escape(v)}</{tag}>"
            for i, v in enumerate(values)
        )

    body = []
    for n, row in enumerate(rows):
        kind = "total" if n == len(rows) - 1 else "idle" if row[0] == IDLE_LABEL else "group"
        body.append(f"<tr class='{kind}'>{cells('td', row)}</tr>")
    head = f"<thead><tr>{cells('th', headers)}</tr></thead>"
    return f"<table>{head}<tbody>{''.join(body)}</tbody></table>"


def _method(report: Report) -> str:
    counts = report.intervals
    lines = [
        f"Metering intervals: {counts['count']}, {counts['with_energy']} of them with energy data"
        + (
            f", from {counts['workers']} worker processes (each measures its own processes and "
            "carries its share of the instance price)."
            if counts["workers"] > 1
            else "."
        ),
        *assumption_lines(report),
        "How the figures are made: each interval's energy is split by the share of time a model "
        "was computing; that part goes to models by compute time and to tenants by rows "
        "(predictions); the rest is idle/overhead. Carbon = energy (kWh) \N{MULTIPLICATION SIGN} "
        "grid intensity. Cost = energy (kWh) \N{MULTIPLICATION SIGN} energy price + instance "
        "price \N{MULTIPLICATION SIGN} time. Sums are exact to a millionth of a unit.",
    ]
    items = "".join(f"<li>{escape(line)}</li>" for line in lines)
    return f"<section id='method'><h2>Method and assumptions</h2><ul>{items}</ul></section>"
