"""The capacity search as one self-contained HTML page: inline SVG, no script, no network."""

from __future__ import annotations

from html import escape
from typing import Any

from wattserve_client.sweep import MORE_CPU, busy_cores

WIDTH, HEIGHT, LEFT, BOTTOM, TOP, RIGHT = 720, 340, 64, 44, 16, 16

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 780px; color: #223; }
h1 { font-size: 1.4rem; } table { border-collapse: collapse; width: 100%; margin: 1rem 0; }
td, th { padding: 3px 8px; border-bottom: 1px solid #e3e6eb; text-align: right; }
th:first-child, td:first-child { text-align: left; } .fail { color: #b3261e; }
svg { width: 100%; height: auto; font-size: 11px; fill: #445; }
svg .grid { stroke: #e3e6eb; } svg .p50 { stroke: #2f6db5; fill: none; stroke-width: 2; }
svg .p99 { stroke: #c07a1c; fill: none; stroke-width: 2; } svg .slo { stroke: #b3261e;
stroke-dasharray: 5 4; } svg .dot50 { fill: #2f6db5; } svg .dot99 { fill: #c07a1c; }
svg .peak { stroke: #3d8b5a; stroke-width: 2; stroke-dasharray: 2 3; }
"""


def render_html(result: dict[str, Any]) -> str:
    peak = result["peak"]
    recommended = result["recommended"]
    headline = (
        f"<p><strong>Peak within the SLO: {peak['predictions_per_s']:,.1f} predictions/s</strong> "
        f"({peak['requests_per_s']:,.1f} requests/s of {result['rows_per_request']} rows, p99 "
        f"{peak['latency_ms']['p99']:.2f} ms against an objective of "
        f"{result['slo']['p99_ms']:g} ms).</p>"
        if peak
        else f"<p class='fail'><strong>No rate met p99 ≤ {result['slo']['p99_ms']:g} ms."
        "</strong></p>"
    )
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Capacity: {escape(result['model'])}</title><style>{STYLE}</style></head><body>"
        f"<h1>Capacity of one replica: model {escape(result['model'])}</h1>"
        f"<p>Server {escape(result['target'])}. {escape(result['mode'])}: each step offers a fixed "
        "request rate and holds until three windows agree within "
        f"{result['rule']['stability']:.0%}; it passes when stable, within the SLO, error rate "
        f"≤ {result['slo']['max_error_rate']:g}, and delivering ≥ "
        f"{result['rule']['delivered_fraction']:.0%} of the offered rate.</p>"
        f"{headline}{_load_generator_warning(result)}"
        f"{_recommendation(recommended, result['rule']['headroom'])}"
        f"<figure><figcaption>Latency against delivered throughput</figcaption>"
        f"{_chart(result)}</figure>{_table(result['steps'])}</body></html>\n"
    )


def _load_generator_warning(result: dict[str, Any]) -> str:
    if not result.get("knee_load_generator_busy"):
        return ""
    return (
        f"<p class='fail'>The load generator used {busy_cores(result['knee'])} at the knee (the "
        "lowest rate that failed): "
        "the failure may be its own, not the server's, and the server may do more. Give the "
        f"load generator {MORE_CPU} and measure again.</p>"
    )


def _recommendation(recommended: dict[str, Any], headroom: float) -> str:
    if recommended["predictions_per_s_per_replica"] is None:
        return ""
    parts = [
        f"<p>Recommended operating point: {recommended['predictions_per_s_per_replica']:,.1f} "
        f"predictions/s per replica ({headroom:.0%} headroom)."
    ]
    if recommended["replicas"]:
        parts.append(
            f" For {recommended['target_predictions_per_s']:,.0f} predictions/s: "
            f"<strong>{recommended['replicas']} replicas</strong>."
        )
    parts.append("</p>")
    cost = recommended["per_million_predictions"]
    if cost:
        parts.append(
            f"<p>Per million predictions at that point (the server's meter, estimated as it "
            f"states its method): {cost['energy_j']:,.1f} J ({cost['energy_kwh']:.6f} kWh) "
            f"attributed to the model, {cost['carbon_g']:,.3f} gCO2e, {cost['cost']:.6f} "
            f"{escape(cost['currency'] or '')}"
            + (
                f"; {cost['allocated_energy_j']:,.1f} J with the server's idle energy shared out"
                if "allocated_energy_j" in cost
                else ""
            )
            + ".</p>"
        )
    else:
        parts.append("<p>No meter figures: the server exposes no wattserve metrics.</p>")
    return "".join(parts)


def _chart(result: dict[str, Any]) -> str:
    steps = sorted(result["steps"], key=lambda s: s["predictions_per_s"])
    slo = result["slo"]["p99_ms"]
    x_top = float(max([s["predictions_per_s"] for s in steps] + [1.0])) * 1.05
    finite = [s["latency_ms"]["p99"] for s in steps if s["latency_ms"]["p99"] < float("inf")]
    # The SLO line joins the scale only when it is near the data: an SLO far above the measured
    # latencies would squash both curves into one line along the axis.
    data_top = float(max(finite, default=slo))
    y_top = (max(data_top, slo) if slo <= 2 * data_top else data_top) * 1.1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def x(value: float) -> float:
        return LEFT + plot_w * value / x_top

    def y(value: float) -> float:
        return TOP + plot_h * (1 - min(value, y_top) / y_top)

    parts = [f"<svg viewBox='0 0 {WIDTH} {HEIGHT}' role='img' aria-label='latency curve'>"]
    for i in range(5):
        value = y_top * i / 4
        parts.append(
            f"<line class='grid' x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{y(value):.1f}' "
            f"y2='{y(value):.1f}'/><text x='{LEFT - 6}' y='{y(value) + 4:.1f}' "
            f"text-anchor='end'>{value:.3g} ms</text>"
        )
        xv = x_top * i / 4
        parts.append(
            f"<text x='{x(xv):.1f}' y='{HEIGHT - BOTTOM + 16}' text-anchor='middle'>"
            f"{xv:,.0f}</text>"
        )
    parts.append(
        f"<text x='{LEFT + plot_w / 2}' y='{HEIGHT - 6}' text-anchor='middle'>"
        "delivered predictions/s</text>"
    )
    if slo <= y_top:
        parts.append(
            f"<line class='slo' x1='{LEFT}' x2='{WIDTH - RIGHT}' y1='{y(slo):.1f}' "
            f"y2='{y(slo):.1f}'/><text x='{WIDTH - RIGHT}' y='{y(slo) - 4:.1f}' "
            f"text-anchor='end'>SLO p99 {slo:g} ms</text>"
        )
    else:
        parts.append(
            f"<text x='{WIDTH - RIGHT}' y='{TOP - 4}' text-anchor='end'>"
            f"SLO p99 {slo:g} ms: above this scale</text>"
        )
    if result["peak"]:
        px = x(result["peak"]["predictions_per_s"])
        parts.append(
            f"<line class='peak' x1='{px:.1f}' x2='{px:.1f}' y1='{TOP}' y2='{TOP + plot_h}'/>"
            f"<text x='{px - 4:.1f}' y='{TOP + 12}' text-anchor='end'>peak</text>"
        )
    for key, css in (("p50", "50"), ("p99", "99")):
        points = [(x(s["predictions_per_s"]), y(s["latency_ms"][key])) for s in steps]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(f"<polyline class='p{css}' points='{path}'/>")
        parts += [f"<circle class='dot{css}' cx='{a:.1f}' cy='{b:.1f}' r='3'/>" for a, b in points]
        if points:
            lx, ly = points[-1]
            parts.append(f"<text x='{lx + 5:.1f}' y='{ly:.1f}'>{key}</text>")
    parts.append("</svg>")
    return "".join(parts)


def _table(steps: list[dict[str, Any]]) -> str:
    rows = [
        "<table><tr><th>step</th><th>offered req/s</th><th>delivered req/s</th>"
        "<th>predictions/s</th><th>p50 ms</th><th>p95 ms</th><th>p99 ms</th><th>errors</th>"
        "<th>server CPU</th><th>GPU</th><th>load generator cores</th><th>result</th></tr>"
    ]
    for s in steps:
        util = s.get("utilization", {})
        cpu = util.get("process_cpu_utilization", util.get("machine_cpu_utilization"))
        gpu = util.get("gpu_utilization")
        cores = s.get("load_generator_cpu_cores")
        busy = " class='fail'" if s.get("load_generator_busy") else ""
        busiest = s.get("load_generator_busiest_process_cores", cores)
        cores_text = "" if cores is None else f"{cores:.2f}"
        if cores is not None and busiest != cores:
            cores_text += f" (busiest process {busiest:.2f})"
        latency = s["latency_ms"]
        rows.append(
            f"<tr><td>{escape(s['role'])}</td><td>{s['offered_per_s']:,.1f}</td>"
            f"<td>{s['requests_per_s']:,.1f}</td><td>{s['predictions_per_s']:,.1f}</td>"
            f"<td>{latency['p50']:.2f}</td><td>{latency['p95']:.2f}</td>"
            f"<td>{latency['p99']:.2f}</td><td>{s['errors']}</td>"
            f"<td>{'' if cpu is None else f'{cpu:.0%}'}</td>"
            f"<td>{'absent' if gpu is None else f'{gpu:.0%}'}</td>"
            f"<td{busy}>{escape(cores_text)}</td>"
            f"<td class='{'' if s['passed'] else 'fail'}'>{'pass' if s['passed'] else 'fail'}</td>"
            "</tr>"
        )
    rows.append("</table>")
    return "".join(rows)
