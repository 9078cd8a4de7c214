"""Real traffic for two models and two tenants through a real metered server: the ledger, the
Prometheus scrape, per-response figures and `wattserve report` agree with each other and with
codecarbon; figures survive a restart; a SIGKILL loses at most the last interval."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from tests.grpc.test_tritonclient import triton_input
from tests.support import run_server, wait_for
from wattserve.protocol import pb, pb_grpc

TENANTS = ("acme", "globex")
METER_ENV = {"WATTSERVE_METER_INTERVAL_S": "0.5", "WATTSERVE_COUNTRY_ISO_CODE": "FRA"}
RNG = np.random.default_rng(11)


def send(address: str, model: str, tenant: str, rows: int, figures: bool = False) -> Any:
    if model == "tabular_classifier":
        inputs = [
            triton_input(
                triton, "features", RNG.standard_normal((rows, 30)).astype(np.float32), "FP32"
            )
        ]
    else:
        inputs = [
            triton_input(
                triton, "input_ids", RNG.integers(0, 5000, (rows, 6)).astype(np.int64), "INT64"
            )
        ]
    with triton.InferenceServerClient(address) as client:
        return client.infer(
            model,
            inputs,
            headers={"x-wattserve-tenant": tenant},
            parameters={"wattserve_energy": True} if figures else None,
        )


def send_undecodable(address: str, model: str, tenant: str) -> None:
    """A request whose raw content does not match its shape: refused before it is queued."""
    request = pb.ModelInferRequest(
        model_name=model,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(name="features", datatype="FP32", shape=[1, 30])
        ],
        raw_input_contents=[b"\0" * 7],
    )
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ModelInfer(request, metadata=[("x-wattserve-tenant", tenant)])
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def ledger_intervals(path: str) -> int:
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM intervals").fetchone()[0])


def ledger_usage(path: str) -> dict[tuple[str, str], dict[str, int]]:
    with sqlite3.connect(path) as db:
        rows = db.execute(
            "SELECT model, tenant, sum(rows), sum(requests), sum(errors), sum(energy_uj), "
            "sum(carbon_ug), sum(cost_nanos) FROM usage GROUP BY model, tenant"
        ).fetchall()
    return {
        (m, t): {
            "rows": r,
            "requests": q,
            "errors": x,
            "energy_uj": e,
            "carbon_ug": c,
            "cost_nanos": k,
        }
        for m, t, r, q, x, e, c, k in rows
    }


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = defaultdict(dict)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name][tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def report(ledger: str, fmt: str, by: str) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "wattserve",
            "report",
            "--ledger",
            ledger,
            "--format",
            fmt,
            "--by",
            by,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@pytest.fixture(scope="module")
def metered_run(
    demo_repository: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """Traffic of known size; the scrape taken once the meter has settled; then a clean stop."""
    ledger = str(tmp_path_factory.mktemp("meter") / "ledger.sqlite")
    sent: dict[tuple[str, str], int] = defaultdict(int)
    estimates: dict[tuple[str, str], float] = defaultdict(float)
    with run_server(
        "--demo-dir", str(demo_repository), env={**METER_ENV, "WATTSERVE_LEDGER_PATH": ledger}
    ) as server:
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            for model in ("tabular_classifier", "text_classifier"):
                for tenant, rows in zip(TENANTS, (3, 1), strict=True):
                    result = send(server.address, model, tenant, rows, figures=True)
                    sent[(model, tenant)] += rows
                    energy = result.get_response().parameters.get("wattserve_energy_j")
                    if energy is not None:
                        estimates[(model, tenant)] += energy.double_param
        send_undecodable(server.address, "tabular_classifier", "acme")
        closed = ledger_intervals(ledger)
        wait_for(lambda: ledger_intervals(ledger) >= closed + 2, timeout_s=10)  # settled
        metrics = scrape(server.metrics_url)
        last = send(server.address, "tabular_classifier", "acme", 2, figures=True)
    sent[("tabular_classifier", "acme")] += 2
    yield {
        "ledger": ledger,
        "sent": sent,
        "estimates": estimates,
        "metrics": metrics,
        "last": last,
        "log": server.text(),
        "returncode": server.process.returncode,
    }


def test_ledger_counts_every_prediction_by_model_and_tenant(metered_run: dict[str, Any]) -> None:
    usage = ledger_usage(metered_run["ledger"])
    assert metered_run["returncode"] == 0
    assert {key: u["rows"] for key, u in usage.items()} == dict(metered_run["sent"])
    assert all(u["energy_uj"] > 0 for u in usage.values())
    assert {key: u["errors"] for key, u in usage.items() if u["errors"]} == {
        ("tabular_classifier", "acme"): 1
    }
    # A second of a small server costs far below a micro-dollar: kept, not rounded away.
    assert all(u["cost_nanos"] > 0 for u in usage.values())


def test_attributed_plus_idle_equals_measured_for_every_interval(
    metered_run: dict[str, Any],
) -> None:
    with sqlite3.connect(metered_run["ledger"]) as db:
        rows = db.execute(
            """SELECT i.id, i.energy_uj, i.idle_energy_uj, i.carbon_ug, i.idle_carbon_ug,
                      i.cost_nanos, i.idle_cost_nanos, coalesce(sum(u.energy_uj), 0),
                      coalesce(sum(u.carbon_ug), 0), coalesce(sum(u.cost_nanos), 0)
               FROM intervals i LEFT JOIN usage u ON u.interval_id = i.id GROUP BY i.id"""
        ).fetchall()
        methods = {m for (m,) in db.execute("SELECT DISTINCT energy_method FROM intervals")}
    assert len(rows) >= 8
    # Every interval was measured (NULL would mean "no data"); a final sliver may measure 0.
    assert sum(row[1] for row in rows) > 0
    for _, energy, idle, carbon, idle_carbon, cost, idle_cost, used, used_carbon, used_cost in rows:
        assert energy is not None
        assert used + idle == energy
        assert used_carbon + idle_carbon == carbon
        assert used_cost + idle_cost == cost
    assert all("cpu=estimated" in m for m in methods), methods  # no RAPL on this machine


def test_carbon_agrees_with_codecarbon(metered_run: dict[str, Any]) -> None:
    with sqlite3.connect(metered_run["ledger"]) as db:
        ours, theirs, intensity = db.execute(
            """SELECT sum(carbon_ug), sum(codecarbon_emissions_ug), max(carbon_intensity_g_per_kwh)
               FROM intervals"""
        ).fetchone()
    assert intensity == pytest.approx(56, abs=5)  # France, codecarbon's bundled data
    assert ours == pytest.approx(theirs, rel=0.02)


def test_prometheus_agrees_with_the_ledger(metered_run: dict[str, Any]) -> None:
    metrics, sent = metered_run["metrics"], dict(metered_run["sent"])
    sent[("tabular_classifier", "acme")] -= 2  # the last request came after the scrape
    predictions = metrics["wattserve_predictions_total"]
    for (model, tenant), rows in sent.items():
        assert predictions[(("model", model), ("tenant", tenant), ("version", "1"))] == rows
    triton_rows = metrics["nv_inference_count_total"]
    for model in ("tabular_classifier", "text_classifier"):
        assert triton_rows[(("model", model), ("version", "1"))] == sum(
            rows for (m, _), rows in sent.items() if m == model
        )
    energy = sum(metrics["wattserve_energy_joules_total"].values())
    idle = sum(metrics["wattserve_idle_energy_joules_total"].values())
    measured = sum(metrics["wattserve_measured_energy_joules_total"].values())
    assert energy + idle == pytest.approx(measured, rel=1e-6)
    assert metrics["wattserve_request_duration_seconds_count"]
    failures = metrics["wattserve_request_failures_total"]
    key = (("code", "INVALID_ARGUMENT"), ("model", "tabular_classifier"), ("version", "1"))
    assert failures == {key: 1.0}
    assert (
        metrics["nv_inference_request_failure_total"][
            (("model", "tabular_classifier"), ("version", "1"))
        ]
        == 1
    )
    assert "nv_cpu_utilization" in metrics
    assert "nv_gpu_utilization" not in metrics  # no GPU here: absent, not zero


def test_per_response_figures_agree_with_the_ledger(metered_run: dict[str, Any]) -> None:
    parameters = metered_run["last"].get_response().parameters
    energy_j = parameters["wattserve_energy_j"].double_param
    assert energy_j > 0
    with sqlite3.connect(metered_run["ledger"]) as db:
        (intensity,) = db.execute(
            "SELECT max(carbon_intensity_g_per_kwh) FROM intervals"
        ).fetchone()
    # Carbon = energy x grid intensity, unrounded: a small interval's share must not read 0 g.
    assert parameters["wattserve_carbon_g"].double_param == pytest.approx(
        energy_j / 3.6e6 * intensity, rel=1e-9
    )
    assert parameters["wattserve_currency"].string_param == "USD"
    usage = ledger_usage(metered_run["ledger"])
    for key, estimated_j in metered_run["estimates"].items():
        ledger_j = usage[key]["energy_uj"] / 1e6
        assert 0.5 < estimated_j / ledger_j < 2.0, (key, estimated_j, ledger_j)


def test_report_totals_agree_with_the_ledger(metered_run: dict[str, Any]) -> None:
    ledger = metered_run["ledger"]
    with sqlite3.connect(ledger) as db:
        energy_uj, predictions = db.execute(
            "SELECT (SELECT sum(energy_uj) FROM intervals), (SELECT sum(rows) FROM usage)"
        ).fetchone()
    document = json.loads(report(ledger, "json", "tenant"))
    assert document["total"]["predictions"] == predictions
    assert document["total"]["energy_j"] == pytest.approx(energy_uj / 1e6, rel=1e-9)
    by_tenant = {g["tenant"] if "tenant" in g else g["key"]: g for g in document["groups"]}
    assert set(by_tenant) == set(TENANTS)
    csv_text = report(ledger, "csv", "model")
    assert "tabular_classifier" in csv_text and "text_classifier" in csv_text


def test_figures_survive_a_restart(demo_repository: Path, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger.sqlite")
    env = {**METER_ENV, "WATTSERVE_LEDGER_PATH": ledger}
    for _ in range(2):
        with run_server("--demo-dir", str(demo_repository), env=env) as server:
            send(server.address, "tabular_classifier", "acme", 5)
    document = json.loads(report(ledger, "json", "model"))
    assert document["total"]["predictions"] == 10


def test_sigkill_loses_at_most_the_last_interval(demo_repository: Path, tmp_path: Path) -> None:
    ledger = str(tmp_path / "ledger.sqlite")
    env = {**METER_ENV, "WATTSERVE_LEDGER_PATH": ledger}
    with run_server("--demo-dir", str(demo_repository), env=env) as server:
        send(server.address, "text_classifier", "globex", 7)
        closed = ledger_intervals(ledger)
        wait_for(lambda: ledger_intervals(ledger) >= closed + 2, timeout_s=10)
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
    assert ledger_usage(ledger)[("text_classifier", "globex")]["rows"] == 7


CHART_COLOURS = {  # the fills report_html gives each chart
    "cost over time": (0x2F, 0x6D, 0xB5),
    "carbon over time": (0x3D, 0x8B, 0x5A),
    "energy per 1,000 predictions": (0xC0, 0x7A, 0x1C),
    "share by tenant": (0x7A, 0x4F, 0xB0),
    "utilisation": (0x5A, 0x6B, 0x80),
}


def test_html_report_draws_its_charts_in_headless_chromium(
    metered_run: dict[str, Any], tmp_path: Path
) -> None:
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            raise AssertionError("CI must have Chromium: .ci/run installs it")
        pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it")
    png = tmp_path / "report.png"
    script = Path(__file__).parents[2] / "docs" / "report-screenshot.sh"
    shot = subprocess.run(
        ["bash", str(script), metered_run["ledger"], str(png), "--by", "tenant"],
        env={**os.environ, "PYTHON": sys.executable},
        timeout=180,
        capture_output=True,
        text=True,
    )
    assert shot.returncode == 0, shot.stderr
    with Image.open(png) as image:
        rgb = np.asarray(image.convert("RGB"))
    for chart, colour in CHART_COLOURS.items():
        drawn = int((rgb == colour).all(axis=2).sum())
        assert drawn > 200, f"the {chart} chart drew {drawn} pixels"
