"""Service-level gates: a run passes or fails by its exit code, decided on the master only.

The thresholds (`--slo-p50-ms`, `--slo-p95-ms`, `--slo-p99-ms`, `--max-error-rate`, `--min-rps`)
are checked when the run quits, against the fine latencies of every call (`latency.py`, shipped
from the workers with each stats report) and Locust's own request and failure counts. Workers also
fire `quitting`, with nothing to judge; only a master or a local runner sets
`environment.process_exit_code`. It is always set there, 0 or 1, so the gates and not Locust's
"any failure" default decide. A table of the fine percentiles is printed, and written as JSON with
`--summary-json`.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from latency import TOTAL, Latencies
from locust import events
from locust.runners import MasterRunner, WorkerRunner

PERCENTILES = (50, 95, 99)
LATENCY_KEY = "wattserve_latencies"


@dataclass(frozen=True, slots=True)
class Gate:
    name: str
    limit: float
    measured: float | None
    passed: bool

    def __str__(self) -> str:
        shown = "none" if self.measured is None else f"{self.measured:.4g}"
        return f"{self.name}: {shown} (limit {self.limit:g}) {'PASS' if self.passed else 'FAIL'}"


def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("wattserve gates (exit code 1 when one fails)")
    for p in PERCENTILES:
        group.add_argument(
            f"--slo-p{p}-ms",
            type=float,
            default=None,
            help=f"Most the p{p} latency of successful calls may be, in ms",
        )
    group.add_argument(
        "--max-error-rate",
        type=float,
        default=0.0,
        help="Largest fraction of failed calls allowed (default 0: any failure fails the run)",
    )
    group.add_argument(
        "--min-rps", type=float, default=None, help="Least mean requests/s over the run"
    )
    group.add_argument(
        "--summary-json", default="", help="Write the fine percentiles and the gates here"
    )


def evaluate(options: Any, latencies: Latencies, requests: int, rps: float) -> list[Gate]:
    """The gates that were asked for, judged on the whole run."""
    gates = []
    for p in PERCENTILES:
        limit = getattr(options, f"slo_p{p}_ms")
        if limit is not None:
            measured = latencies.percentile_ms(TOTAL, p)
            passed = measured is not None and measured <= limit
            gates.append(Gate(f"p{p} latency, ms", limit, measured, passed))
    failures = latencies.failures[TOTAL]
    error_rate = failures / requests if requests else None
    passed = error_rate is not None and error_rate <= options.max_error_rate
    gates.append(Gate("error rate", options.max_error_rate, error_rate, passed))
    if options.min_rps is not None:
        gates.append(Gate("requests/s", options.min_rps, rps, rps >= options.min_rps))
    return gates


def summary(latencies: Latencies, environment: Any) -> dict[str, Any]:
    """Per call name: requests, failures, mean requests/s (Locust's counts) and the fine
    percentiles in ms (successful calls)."""
    rows = {}
    for name in latencies.names():
        entry = (
            environment.stats.total
            if name == TOTAL
            else environment.stats.get(name, "grpc")  # the interceptor's request_type
        )
        rows[name] = {
            "requests": entry.num_requests,
            "failures": entry.num_failures,
            "requests_per_s": entry.total_rps,
            "successes_timed": latencies.successes(name),
            **{f"p{p}_ms": latencies.percentile_ms(name, p) for p in PERCENTILES},
        }
    return rows


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def install(latencies: Latencies) -> None:
    """Wire `latencies` into Locust's events: shipped from workers, merged and judged on the
    master (or the local runner)."""

    @events.init_command_line_parser.add_listener
    def _(parser: Any) -> None:
        add_arguments(parser)

    @events.report_to_master.add_listener
    def _(client_id: str, data: dict[str, Any]) -> None:
        data[LATENCY_KEY] = latencies.drain()

    @events.worker_report.add_listener
    def _(client_id: str, data: dict[str, Any]) -> None:
        if LATENCY_KEY in data:
            latencies.merge(data[LATENCY_KEY])

    @events.quitting.add_listener
    def _(environment: Any, **_: Any) -> None:
        runner = environment.runner
        if runner is None or isinstance(runner, WorkerRunner):
            return  # workers have shipped their calls; the master judges
        total = environment.stats.total
        rows = summary(latencies, environment)
        gates = evaluate(environment.parsed_options, latencies, total.num_requests, total.total_rps)
        print("\nwattserve latencies (successful calls, ms; 1% buckets)")
        line = "{:<40} {:>9} {:>6} {:>8} {:>9} {:>9} {:>9}"
        print(line.format("name", "requests", "fails", "req/s", "p50", "p95", "p99"))
        for name, row in rows.items():
            percentiles = (_ms(row[f"p{p}_ms"]) for p in PERCENTILES)
            rps = f"{row['requests_per_s']:.1f}"
            print(line.format(name, row["requests"], row["failures"], rps, *percentiles))
        for gate in gates:
            print(f"gate {gate}")
        passed = all(g.passed for g in gates)
        print(f"wattserve gates: {'PASS' if passed else 'FAIL'}")
        environment.process_exit_code = 0 if passed else 1
        path = environment.parsed_options.summary_json
        if path:
            distributed = isinstance(runner, MasterRunner)
            Path(path).write_text(
                json.dumps(
                    {
                        "distributed": distributed,
                        "calls": rows,
                        "gates": [asdict(g) for g in gates],
                        "passed": passed,
                    },
                    indent=2,
                )
            )
