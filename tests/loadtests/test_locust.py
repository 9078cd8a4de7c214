"""The Locust suites in loadtests/, run for real (headless, local and `--processes 2`) against a
real server over loopback; judged by their exit code, their outputs and what the server saw."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest

from tests.support import run_server
from wattserve.protocol import pb, pb_grpc

ROOT = Path(__file__).resolve().parents[2]
LOCUST = [sys.executable, "-m", "locust", "--headless", "--loglevel", "WARNING"]
SMOKE = f"{ROOT}/loadtests/locustfile.py,{ROOT}/loadtests/shapes/smoke.py"


def locust(address: str, tmp_path: Path, *args: str) -> tuple[int, str, dict[str, Any]]:
    summary = tmp_path / "summary.json"
    done = subprocess.run(
        [*LOCUST, "-f", SMOKE, "-H", address, "--summary-json", str(summary), *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # the suites must not depend on the working directory
    )
    output = done.stdout + done.stderr
    assert summary.exists(), output
    return done.returncode, output, json.loads(summary.read_text())


def load_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "loadtests" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fine_latencies_resolve_sub_millisecond_percentiles_and_merge() -> None:
    latency = load_module("latency")
    worker_a, worker_b, master = latency.Latencies(), latency.Latencies(), latency.Latencies()
    for us in range(1, 1001):  # 1 µs .. 1 ms, split between two workers
        (worker_a if us % 2 else worker_b).add("m", us * 1000, ok=True)
    worker_b.add("m", 5_000, ok=False)
    for worker in (worker_a, worker_b):
        master.merge(json.loads(json.dumps(worker.drain())))  # as shipped: plain JSON types
    assert worker_a.successes("m") == 0  # drained
    assert master.successes("m") == 1000 and master.failures["m"] == 1
    for p, exact_ms in ((50, 0.5), (95, 0.95), (99, 0.99)):
        assert master.percentile_ms("m", p) == pytest.approx(exact_ms, rel=0.006)
        assert master.percentile_ms(latency.TOTAL, p) == master.percentile_ms("m", p)
    assert master.percentile_ms("other", 50) is None


@pytest.mark.parametrize("method", ["ModelInfer", "ModelStreamInfer"])
def test_smoke_suite_passes_and_the_server_saw_its_mix_of_models_and_tenants(
    demo_repository: Path, tmp_path: Path, method: str
) -> None:
    ledger = tmp_path / "ledger.sqlite"
    stream = ["--stream"] if method == "ModelStreamInfer" else []
    with run_server("--demo-dir", str(demo_repository), "--ledger-path", str(ledger)) as server:
        code, output, summary = locust(
            server.address, tmp_path, "--smoke-s", "12", "--smoke-users", "4",
            "--models", "tabular_classifier:3,dense:1", "--tenants", "acme:3,globex:1",
            "--slo-p99-ms", "2000", "--min-rps", "5", "--csv", "run", "--html", "run.html",
            *stream,
        )  # fmt: skip
        with grpc.insecure_channel(server.address) as channel:
            stats = pb_grpc.GRPCInferenceServiceStub(channel).ModelStatistics(
                pb.ModelStatisticsRequest()
            )
    assert code == 0, output
    assert summary["passed"] and not summary["distributed"]
    assert "wattserve gates: PASS" in output
    calls = summary["calls"]
    assert set(calls) == {f"{method}/tabular_classifier", f"{method}/dense", "Aggregated"}
    for row in calls.values():
        assert row["failures"] == 0 and row["successes_timed"] == row["requests"] > 0
        assert 0 < row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"] < 2000
    tabular, dense = calls[f"{method}/tabular_classifier"], calls[f"{method}/dense"]
    assert 0.70 < tabular["requests"] / (tabular["requests"] + dense["requests"]) < 0.80

    # The server ran every call Locust counted, and at most one more per user that was cut off
    # when the run stopped.
    served = {s.name: s.inference_count for s in stats.model_stats}
    for model in ("tabular_classifier", "dense"):
        counted = calls[f"{method}/{model}"]["requests"]
        assert counted <= served[model] <= counted + 4
    assert served["text_classifier"] == 0

    # Each call carried its tenant: the meter's ledger splits them 3 to 1.
    report = subprocess.run(
        [sys.executable, "-m", "wattserve", "report", "--ledger", str(ledger), "--by", "tenant",
         "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    by_tenant = {g["tenant"]: g["requests"] for g in json.loads(report.stdout)["groups"]}
    assert set(by_tenant) == {"acme", "globex"}
    assert 0.70 < by_tenant["acme"] / sum(by_tenant.values()) < 0.80

    # Locust's own outputs: CSV with a row per call name, and the HTML report. Locust writes its
    # last CSV as the users stop, before the final summary: a call finishing meanwhile is in one.
    rows = {r["Name"]: r for r in csv.DictReader((tmp_path / "run_stats.csv").open())}
    for model, row in (("tabular_classifier", tabular), ("dense", dense)):
        in_csv = int(rows[f"{method}/{model}"]["Request Count"])
        assert row["requests"] - 4 <= in_csv <= row["requests"]
    assert f"{method}/tabular_classifier" in (tmp_path / "run.html").read_text()


def test_a_streaming_user_whose_stream_is_refused_fails_the_run_with_the_servers_reason(
    address: str, tmp_path: Path
) -> None:
    code, output, summary = locust(
        address, tmp_path, "--smoke-s", "3", "--smoke-users", "2", "--stream",
        "--models", "tabular_classifier", "--tenants", "no way!",
    )  # fmt: skip
    assert code == 1, output
    calls = summary["calls"]["ModelStreamInfer/tabular_classifier"]
    assert calls["requests"] > 0 and calls["failures"] == calls["requests"]
    assert "gate error rate: 1 (limit 0) FAIL" in output
    assert "x-wattserve-tenant must be" in output  # the server's reason, in Locust's error report


# (The passing local run is the smoke test above.)
@pytest.mark.parametrize(
    ("processes", "slo_p99_ms", "expected"), [(1, "0.001", 1), (2, "0.001", 1), (2, "2000", 0)]
)
def test_gates_decide_the_exit_code_also_in_distributed_runs(
    address: str, tmp_path: Path, processes: int, slo_p99_ms: str, expected: int
) -> None:
    extra = ["--processes", str(processes)] if processes > 1 else []
    code, output, summary = locust(
        address, tmp_path, "--smoke-s", "5", "--models", "tabular_classifier",
        "--slo-p99-ms", slo_p99_ms, *extra,
    )  # fmt: skip
    assert code == expected, output
    assert summary["distributed"] is (processes > 1)
    gate = next(g for g in summary["gates"] if g["name"].startswith("p99"))
    assert gate["limit"] == float(slo_p99_ms) and gate["passed"] is (expected == 0)
    assert f"gate p99 latency, ms: {gate['measured']:.4g}" in output
    total = summary["calls"]["Aggregated"]
    # Every call the workers made reached the master's fine latencies.
    assert total["requests"] > 0 and total["successes_timed"] == total["requests"]
    assert math.isclose(gate["measured"], total["p99_ms"])


@pytest.mark.parametrize(
    ("shape", "settings", "peak_users"),
    [
        ("step", ["--step-users", "2", "--step-s", "2", "--steps", "3"], 6),
        ("spike", ["--spike-base-users", "1", "--spike-users", "5", "--spike-at-s", "2",
                   "--spike-hold-s", "2", "--spike-after-s", "2"], 5),
        ("soak", ["--soak-users", "3", "--soak-ramp-s", "1", "--soak-s", "4"], 3),
    ],
)  # fmt: skip
def test_each_load_shape_runs_its_users_and_stops_by_itself(
    address: str, tmp_path: Path, shape: str, settings: list[str], peak_users: int
) -> None:
    files = f"{ROOT}/loadtests/locustfile.py,{ROOT}/loadtests/shapes/{shape}.py"
    done = subprocess.run(
        [*LOCUST, "-f", files, "-H", address, "--models", "tabular_classifier",
         "--slo-p99-ms", "2000", "--csv", "run", "--csv-full-history", *settings],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    history = list(csv.DictReader((tmp_path / "run_stats_history.csv").open()))
    users = [int(row["User Count"]) for row in history]
    assert max(users) == peak_users
    if shape == "spike":  # back to the base load after the burst
        assert users[-1] == 1
