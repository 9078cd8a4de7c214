"""`wattserve capacity`: the peak throughput one replica sustains within a latency objective, the
replicas a target needs, and what a million predictions cost at the recommended operating point.

The search offers load in an **open loop** (a fixed request rate, latencies counted from the
scheduled send time), so queueing shows up in the latencies instead of slowing the load down:

1. probe: one request at a time, to learn the serial rate r1;
2. ramp: offer r1, r1 x growth, ... Each step holds until three windows agree within the
   stability margin (perf_analyzer's rule). A step **passes** when it is stable, its p99 is
   within the SLO, its error rate within the limit, and it delivered >= 95% of the offered rate.
   If r1 itself fails (the probe caught a fast moment on a shared core), the ramp backs off by
   the growth factor until a step passes or `--max-steps` runs out;
3. past the knee (the first failing step), bisect between the last pass and the first failure;
4. the **peak** is the best passing step; the **recommended operating point** is the peak less
   the headroom, measured as one more step. With the server's Prometheus endpoint
   (`--metrics-url`) each step records CPU/GPU utilisation, and the operating point gets the
   meter's energy, carbon and cost per million predictions. Any other Open Inference Protocol
   server works too: utilisation from Triton's `nv_*` gauges where present, no cost part.

The load travels as unary calls, or with `--streams N` dealt out over N ModelStreamInfer streams,
for a deployment whose clients stream; `--connections` spreads it over TCP connections (a server
with `--workers` balances connections, so use at least one per worker).

    wattserve capacity --target 127.0.0.1:8001 --model dense --rows 16 --slo-p99-ms 100 \\
        --metrics-url http://127.0.0.1:8002/metrics --target-predictions-per-s 5000 \\
        --json capacity.json --html capacity.html
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from wattserve_client.capacity_html import render_html
from wattserve_client.fleet import load_generator
from wattserve_client.loadgen import Schedule, closed_loop, load_generator_cpu
from wattserve_client.sweep import (
    Target,
    add_target_arguments,
    add_transport_arguments,
    build_request,
    busy_note,
    connections_of,
    load_generator_limit,
    point,
    schedule_of,
    streams_of,
    target_of,
    transport_mode,
    transport_refusal,
    within_slo,
)

DELIVERED = 0.95
"""A step must deliver this fraction of the offered rate to pass."""
METER_SETTLE_S = 1.5
"""Wait after the operating-point step so the meter closes its last interval (1 s default)."""
GAUGES = {
    "machine_cpu_utilization": "nv_cpu_utilization",
    "process_cpu_utilization": "wattserve_process_cpu_utilization",
    "gpu_utilization": "nv_gpu_utilization",
    "gpu_power_w": "nv_gpu_power_usage",
}
MODEL_COUNTERS = {
    "predictions": "wattserve_predictions",
    "energy_j": "wattserve_energy_joules",
    "carbon_g": "wattserve_carbon_grams",
    "cost": "wattserve_cost",
}
WHOLE_COUNTERS = {"measured_energy_j": "wattserve_measured_energy_joules"}


class Metrics:
    """The server's Prometheus endpoint, or nothing (any server without one)."""

    def __init__(self, url: str | None) -> None:
        self.url = url

    def scrape(self, model: str) -> dict[str, Any]:
        if self.url is None:
            return {}
        with urllib.request.urlopen(self.url, timeout=10) as answer:
            text = answer.read().decode()
        gauges: dict[str, list[float]] = {}
        counters: dict[str, float] = {}
        currency = None
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                for key, name in GAUGES.items():
                    if sample.name == name:
                        gauges.setdefault(key, []).append(sample.value)
                for key, name in MODEL_COUNTERS.items():
                    if sample.name == f"{name}_total" and sample.labels.get("model") == model:
                        counters[key] = counters.get(key, 0.0) + sample.value
                        currency = sample.labels.get("currency", currency)
                for key, name in WHOLE_COUNTERS.items():
                    if sample.name == f"{name}_total":
                        counters[key] = counters.get(key, 0.0) + sample.value
        found: dict[str, Any] = {k: sum(v) / len(v) for k, v in gauges.items()}
        return found | {"counters": counters, "currency": currency}


def _passes(p: dict[str, Any], slo_p99_ms: float, max_error_rate: float) -> bool:
    """The sweep's SLO test, plus: the server delivered (almost) all it was offered. A step whose
    windows never agreed still passes if every one of them met the SLO: on a noisy machine a
    few-ms median can wander by more than the margin, while overload shows as p99 past the SLO."""
    delivered = p["requests_per_s"] >= DELIVERED * p["offered_per_s"]
    settled = p["stable"] or p["every_window_within_slo"]
    return delivered and within_slo(p | {"stable": settled}, slo_p99_ms, max_error_rate)


async def search(
    target: Target,
    schedule: Schedule,
    metrics: Metrics,
    args: argparse.Namespace,
    *,
    connections: int = 1,
    streams: int = 0,
    processes: int = 1,
) -> dict[str, Any]:
    """`streams` > 0: the load goes over that many ModelStreamInfer streams, opened on the
    `connections` in turn; the probe then runs on one stream. `processes` > 1: the load comes
    from that many processes (`fleet`); the probe from this one."""
    rows = target.shape.rows
    generator = load_generator(target.address, connections=connections, processes=processes)
    async with generator as loads:
        request = await build_request(loads.stub, target)

        async def step(rate: float, role: str) -> dict[str, Any]:
            before = metrics.scrape(target.model)
            m = await loads.open_loop(
                request,
                rate_per_s=rate,
                schedule=schedule,
                streams=streams,
                metadata=target.metadata,
                cpu_probes=[load_generator_cpu],
            )
            p = point("offered_per_s", rate, m, rows, processes) | {"role": role}
            p["every_window_within_slo"] = all(
                w.latencies_ns.size and np.percentile(w.latencies_ns, 99) / 1e6 <= args.slo_p99_ms
                for w in m.windows
            )
            after = metrics.scrape(target.model)
            p["utilization"] = {k: v for k, v in after.items() if k in GAUGES}
            p["passed"] = _passes(p, args.slo_p99_ms, args.max_error_rate)
            p["_meter"] = (before, after)
            print(_row(p), file=sys.stderr)
            return p

        probe = await closed_loop(
            loads.stub,
            request,
            concurrency=1,
            schedule=Schedule(0.5, schedule.window_s, 1, 1),
            streams=min(streams, 1),
            metadata=target.metadata,
        )
        rate = args.start_rps or max(1.0, probe.requests_per_s)
        steps: list[dict[str, Any]] = []
        passed: dict[str, Any] | None = None
        failed: dict[str, Any] | None = None
        while len(steps) < args.max_steps:
            latest = await step(rate, "ramp")
            steps.append(latest)
            if latest["passed"]:
                passed = latest
                if failed is not None:
                    break  # came down from a failure: the knee is bracketed
                rate *= args.growth
            else:
                failed = latest
                if passed is not None:
                    break
                rate /= args.growth  # the probe was optimistic (a noisy core): back off
        for _ in range(args.refine if passed and failed else 0):
            assert passed is not None and failed is not None
            middle = await step(
                math.sqrt(passed["offered_per_s"] * failed["offered_per_s"]), "refine"
            )
            steps.append(middle)
            if middle["passed"]:
                passed = middle
            else:
                failed = middle
        operating = None
        if passed is not None:
            operating = await step(passed["requests_per_s"] * (1 - args.headroom), "operating")
            await asyncio.sleep(METER_SETTLE_S)
            operating["_meter"] = (operating["_meter"][0], metrics.scrape(target.model))
    transport = {
        "connections": connections,
        "streams": streams,
        "load_generator_processes": processes,
    }
    return _result(target, args, transport, steps, passed, failed, operating)


def _result(
    target: Target,
    args: argparse.Namespace,
    transport: dict[str, int],
    steps: list[dict[str, Any]],
    peak: dict[str, Any] | None,
    knee: dict[str, Any] | None,
    operating: dict[str, Any] | None,
) -> dict[str, Any]:
    rows = target.shape.rows
    per_replica = peak["predictions_per_s"] * (1 - args.headroom) if peak else None
    replicas = None
    if per_replica and args.target_predictions_per_s:
        replicas = math.ceil(args.target_predictions_per_s / per_replica)
    cost = _cost_per_million(operating["_meter"]) if operating else None
    for s in steps:
        s.pop("_meter", None)
    streams = transport["streams"]
    return {
        "mode": "open-loop capacity search"
        + transport_mode(streams, transport["load_generator_processes"]),
        "target": target.address,
        "model": target.model,
        "rows_per_request": rows,
        **transport,
        "slo": {"p99_ms": args.slo_p99_ms, "max_error_rate": args.max_error_rate},
        "rule": {
            "delivered_fraction": DELIVERED,
            "stability": args.stability,
            "window_s": args.window_s,
            "growth": args.growth,
            "refine_steps": args.refine,
            "headroom": args.headroom,
        },
        "steps": steps,
        "peak": peak,
        "knee": knee,
        "found_knee": knee is not None,
        "knee_load_generator_busy": knee is not None and knee["load_generator_busy"],
        "recommended": {
            "operating_point": operating,
            "predictions_per_s_per_replica": per_replica,
            "target_predictions_per_s": args.target_predictions_per_s,
            "replicas": replicas,
            "per_million_predictions": cost,
        },
    }


def _cost_per_million(meter: tuple[dict[str, Any], dict[str, Any]]) -> dict[str, Any] | None:
    """Energy, carbon and cost per million predictions from the meter's counters over the
    operating-point step: attributed to the model ("usage"), and with the server's idle energy
    shared out by predictions ("allocation", assuming this model was the only traffic)."""
    before, after = meter
    first, last = before.get("counters", {}), after.get("counters", {})
    if "energy_j" not in last or "predictions" not in last:
        return None
    delta = {k: last[k] - first.get(k, 0.0) for k in last}
    predictions = delta["predictions"]
    if predictions <= 0:
        return None
    scale = 1e6 / predictions
    result: dict[str, Any] = {
        "predictions_metered": predictions,
        "energy_j": delta["energy_j"] * scale,
        "energy_kwh": delta["energy_j"] * scale / 3.6e6,
        "carbon_g": delta.get("carbon_g", 0.0) * scale,
        "cost": delta.get("cost", 0.0) * scale,
        "currency": after.get("currency"),
        "source": "wattserve meter (Prometheus counters), usage view",
    }
    if "measured_energy_j" in delta:
        result["allocated_energy_j"] = delta["measured_energy_j"] * scale
    return result


def _row(p: dict[str, Any]) -> str:
    latency = p["latency_ms"]
    return (
        f"{p['role']:>9} offered {p['offered_per_s']:9.1f}/s  got {p['requests_per_s']:9.1f} "
        f"req/s  p50 {latency['p50']:8.2f} ms  p99 {latency['p99']:8.2f} ms  "
        f"errors {p['errors']:>4}  {'pass' if p['passed'] else 'FAIL'}" + busy_note(p)
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target_arguments(parser)
    add_transport_arguments(parser, "the offered load")
    parser.add_argument("--metrics-url", default=None, help="server's Prometheus endpoint")
    parser.add_argument("--start-rps", type=float, default=None, help="default: serial rate")
    parser.add_argument("--growth", type=float, default=1.5, help="rate factor per ramp step")
    parser.add_argument("--refine", type=int, default=3, help="bisection steps past the knee")
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--headroom", type=float, default=0.2, help="kept free per replica")
    parser.add_argument("--target-predictions-per-s", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--html", type=Path, default=None)


def run(args: argparse.Namespace) -> int:
    if args.slo_p99_ms is None:
        print("wattserve capacity: --slo-p99-ms is required", file=sys.stderr)
        return 2
    if not (0 <= args.headroom < 1 and args.growth > 1):
        print("wattserve capacity: need 0 <= --headroom < 1 and --growth > 1", file=sys.stderr)
        return 2
    streams = streams_of(args)
    if (refusal := transport_refusal(args, streams)) is not None:
        print(f"wattserve capacity: {refusal}", file=sys.stderr)
        return 2
    started = time.time()
    metrics = Metrics(args.metrics_url)
    result = asyncio.run(
        search(
            target_of(args),
            schedule_of(args),
            metrics,
            args,
            connections=connections_of(args),
            streams=streams,
            processes=args.processes,
        )
    )
    result["duration_s"] = time.time() - started
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.html:
        args.html.write_text(render_html(result))
    peak = result["peak"]
    warning = load_generator_limit("at the knee") if result["knee_load_generator_busy"] else ""
    if peak is None:
        print(f"no rate met p99 <= {args.slo_p99_ms} ms{warning}")
        return 1
    recommended = result["recommended"]
    print(
        f"peak within SLO: {peak['predictions_per_s']:.1f} predictions/s "
        f"({peak['requests_per_s']:.1f} req/s, p99 {peak['latency_ms']['p99']:.2f} ms); "
        f"per replica at {args.headroom:.0%} headroom: "
        f"{recommended['predictions_per_s_per_replica']:.1f}/s"
        + (f"; replicas for target: {recommended['replicas']}" if recommended["replicas"] else "")
        + warning
    )
    return 0
