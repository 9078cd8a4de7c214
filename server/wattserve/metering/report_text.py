"""The report in words: the terminal table and the plain sentences that state its assumptions."""

from __future__ import annotations

from decimal import Decimal

from wattserve.metering.report import (
    ASSUMED,
    COUNTS,
    KEY_COLUMNS,
    MEASURES,
    VIEWS,
    Report,
    in_units,
    iso,
    labelled,
    record,
)

_PART = {"cpu": "CPU", "ram": "RAM", "gpu": "GPU"}
_HOW = {"tdp": "from TDP \N{MULTIPLICATION SIGN} load", "model": "from a power model"}


def describe_energy_method(method: str) -> str:
    """'cpu=estimated:tdp;gpu=absent' -> 'CPU power estimated from TDP x load; no GPU'."""
    if method.strip() in ("", "none"):
        return "no energy measurement"
    described = []
    for part in filter(None, (p.strip() for p in method.split(";"))):
        name, _, how = part.partition("=")
        kind, _, detail = how.partition(":")
        label, detail = _PART.get(name, name), _HOW.get(detail, f"({detail})" if detail else "")
        if kind == "absent":
            described.append(f"no {label}")
        elif kind == "measured":
            described.append(f"{label} energy measured {detail}".strip())
        else:
            described.append(f"{label} power {kind or 'unknown'} {detail}".strip())
    return "; ".join(described)


def assumption_lines(report: Report) -> list[str]:
    """The report's basis in plain sentences, for under the table and on the HTML page."""
    methods = report.assumptions["energy_methods"]
    kind = "estimated, not metered" if any("estimated" in m for m in methods) else "measured"
    if not methods or set(methods) == {"none"}:
        kind = "not measured"
    described = [f"{describe_energy_method(m)} [{m}: {n} intervals]" for m, n in methods.items()]
    lines = [f"Energy is {kind}: {'; '.join(described) or 'no intervals'}."]
    for name, (label, unit, _) in ASSUMED.items():
        for seen in report.assumptions[name]:
            value, unit = seen["value"], unit.format(cur=report.currency or "")
            text = "not set" if value is None else f"{value:g} {unit}".strip()
            source = f" (source: {seen['source'] or 'none'})" if "source" in seen else ""
            lines.append(f"{label}: {text}{source} in {seen['intervals']} intervals.")
    return [*lines, VIEWS[report.view], *report.notes]


def number(value: Decimal | int | None) -> str:
    """About four significant digits, thousands separated, never past nano-units (cost)."""
    if value is None or isinstance(value, int):
        return "no data" if value is None else f"{value:,}"
    decimals = 0 if abs(value) >= 1000 or not value else min(9, 3 - value.adjusted())
    return f"{value:,.{decimals}f}"


def table_cells(report: Report) -> tuple[list[str], list[list[str]]]:
    """Headers (with units) and formatted cells, shared by the terminal table and the HTML page."""
    energy_j = in_units(report.total.amounts.get("energy_uj")) or 0
    carbon_g = in_units(report.total.amounts.get("carbon_ug")) or 0
    energy_unit, energy_scale = ("kWh", 3_600_000) if energy_j >= 3_600_000 else ("J", 1)
    if 3600 <= energy_j < 3_600_000:
        energy_unit, energy_scale = "Wh", 3600
    carbon_unit, carbon_scale = ("kgCO2e", 1000) if carbon_g >= 10_000 else ("gCO2e", 1)
    cur = report.currency or "cost"
    scales = {"energy_j": energy_scale, "carbon_g": carbon_scale, "energy_share": Decimal("0.01")}
    headers = [*KEY_COLUMNS[report.by], *COUNTS, "compute s", f"energy {energy_unit}"]
    headers += [f"carbon {carbon_unit}", f"cost {cur}", "J/1k pred", "gCO2e/1k pred"]
    headers += [f"{cur}/1k pred", "energy share %"]
    rows = []
    for key, totals in labelled(report):
        row = {k: v for k, v in record(totals, report.total).items() if k not in MEASURES}
        cells = [v if v is None or k not in scales else v / scales[k] for k, v in row.items()]
        rows.append([*key, *map(number, cells)])
    return headers, rows


def to_table(report: Report) -> str:
    headers, rows = table_cells(report)
    keys = len(KEY_COLUMNS[report.by])
    widths = [max(len(line[i]) for line in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i < keys else c.rjust(w) for i, (c, w) in pairs).rstrip()

    period = f"{iso(report.since) or 'start of ledger'} to {iso(report.until) or 'end of ledger'}"
    n = report.intervals
    summary = f"{n['count']} intervals ({n['with_energy']} with energy data), {n['seconds']:g} s"
    summary += f" from {n['workers']} worker processes." if n["workers"] > 1 else "."
    body = [f"wattserve report: {period}, by {report.by}, {report.view} view", ""]
    body += [line(headers), line(["-" * w for w in widths]), *map(line, rows), "", summary]
    return "\n".join([*body, *assumption_lines(report)]) + "\n"
