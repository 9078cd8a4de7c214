"""`wattserve serve --workers N`: worker processes on one port, and the meter's figures across them.

Real processes throughout: the parent reserves the port and spawns the workers; the kernel spreads
connections over them (SO_REUSEPORT). A test finds each worker by its own ModelStatistics, which
count only the requests that worker served.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psutil
import pytest

from tests.metering.test_meter_integration import ledger_usage, report, scrape
from tests.support import ServerProcess, run_server, wait_for
from wattserve.metering.prometheus import MACHINE_WIDE, merge_expositions
from wattserve.protocol import pb, pb_grpc
from wattserve_client import loadgen
from wattserve_client.payloads import PayloadShape
from wattserve_client.sweep import Target, build_request

MODEL = "tabular_classifier"
INSTANCE_PRICE_PER_HOUR = 3.6
ENV = {
    "WATTSERVE_METER_INTERVAL_S": "0.5",
    "WATTSERVE_COUNTRY_ISO_CODE": "FRA",
    "WATTSERVE_INSTANCE_PRICE_PER_HOUR": str(INSTANCE_PRICE_PER_HOUR),
}
SEPARATE = [("grpc.use_local_subchannel_pool", 1)]
"""A channel of its own TCP connection (gRPC otherwise shares one between equal channels)."""


def infer(channel: grpc.Channel, rows: int, tenant: str = "acme") -> Any:
    features = np.random.default_rng(rows).standard_normal((rows, 30)).astype(np.float32)
    request = pb.ModelInferRequest(
        model_name=MODEL,
        inputs=[
            pb.ModelInferRequest.InferInputTensor(
                name="features", datatype="FP32", shape=list(features.shape)
            )
        ],
        raw_input_contents=[features.tobytes()],
    )
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    return stub.ModelInfer(request, metadata=[("x-wattserve-tenant", tenant)], timeout=30)


def served(channel: grpc.Channel) -> int:
    """Successful requests of MODEL counted by the worker behind this connection."""
    stub = pb_grpc.GRPCInferenceServiceStub(channel)
    answer = stub.ModelStatistics(pb.ModelStatisticsRequest(name=MODEL), timeout=30)
    return sum(s.inference_stats.success.count for s in answer.model_stats)


def workers_of(server: ServerProcess) -> list[psutil.Process]:
    """The live worker processes: spawned children running the server, not helper processes,
    and not a killed worker the supervisor has yet to reap (a zombie has no command line)."""
    workers = []
    for child in psutil.Process(server.process.pid).children():
        try:
            command = " ".join(child.cmdline())
        except (psutil.ZombieProcess, psutil.NoSuchProcess):
            continue
        if "resource_tracker" not in command:
            workers.append(child)
    return workers


@pytest.fixture(scope="module")
def two_workers(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    ledger = str(tmp_path_factory.mktemp("workers") / "ledger.sqlite")
    env = {**ENV, "WATTSERVE_LEDGER_PATH": ledger}
    with run_server("--workers", "2", "--demo-dir", str(demo_repository), env=env) as server:
        yield server, ledger


def test_both_workers_serve_one_port_and_the_meter_adds_them_up(two_workers: Any) -> None:
    server, ledger = two_workers
    assert len(workers_of(server)) == 2
    first = grpc.insecure_channel(server.address, options=SEPARATE)
    for _ in range(5):
        infer(first, rows=1)
    assert served(first) == 5
    # New connections until the kernel hands one to the other worker (each does with p = 1/2).
    others = []
    for _ in range(40):
        channel = grpc.insecure_channel(server.address, options=SEPARATE)
        others.append(channel)
        if served(channel) == 0:
            second = channel
            break
    else:
        pytest.fail("40 connections all reached the same worker")
    for _ in range(3):
        infer(second, rows=2, tenant="globex")
    assert (served(first), served(second)) == (5, 3)  # per worker, as documented

    # The ledger: both workers' rows, every prediction once, each worker half the instance.
    wait_for(lambda: sum(u["requests"] for u in ledger_usage(ledger).values()) == 8, 15)
    usage = ledger_usage(ledger)
    assert usage[(MODEL, "acme")]["rows"] == 5 and usage[(MODEL, "globex")]["rows"] == 6
    with sqlite3.connect(ledger) as db:
        assert set(db.execute("SELECT DISTINCT worker, workers FROM intervals")) == {(0, 2), (1, 2)}
        rows = db.execute(
            "SELECT energy_uj, cost_nanos, end_unix_ms - start_unix_ms FROM intervals "
            "WHERE energy_uj IS NOT NULL AND end_unix_ms - start_unix_ms >= 400"
        ).fetchall()
    assert rows
    for energy_uj, cost_nanos, ms in rows:
        energy_nanos = energy_uj / 1e6 / 3.6e6 * 0.15 * 1e9
        instance_nanos = INSTANCE_PRICE_PER_HOUR / 2 * ms / 1000 / 3600 * 1e9
        assert cost_nanos == pytest.approx(energy_nanos + instance_nanos, rel=0.03)

    # Prometheus: one endpoint, the two workers summed; machine-wide figures counted once.
    metrics = scrape(server.metrics_url)
    assert metrics["wattserve_workers"][()] == 2
    success = metrics["nv_inference_request_success_total"]
    assert success[(("model", MODEL), ("version", "1"))] == 8
    predictions = metrics["wattserve_predictions_total"]
    assert sum(v for k, v in predictions.items() if ("model", MODEL) in k) == 11
    assert metrics["nv_cpu_memory_total_bytes"][()] == psutil.virtual_memory().total
    rows_bucket = metrics["wattserve_batch_size_rows_count"]
    assert rows_bucket[(("model", MODEL), ("version", "1"))] == 8  # no batching at 1 in flight
    for channel in [first, *others]:
        channel.close()


def test_a_load_generator_with_several_connections_reaches_every_worker(two_workers: Any) -> None:
    server, _ = two_workers
    probes = [grpc.insecure_channel(server.address, options=SEPARATE) for _ in range(16)]
    before = {id(c): served(c) for c in probes}

    async def load() -> loadgen.Measurement:
        async with loadgen.open_stubs(server.address, 16) as stubs:
            target = Target(server.address, MODEL, shape=PayloadShape())
            request = await build_request(stubs[0], target)
            schedule = loadgen.Schedule(warmup_s=0, window_s=0.5, min_windows=1, max_windows=1)
            return await loadgen.closed_loop(stubs, request, concurrency=16, schedule=schedule)

    measurement = asyncio.run(load())
    assert measurement.errors == 0 and measurement.requests > 0
    grew = {served(c) - before[id(c)] > 0 for c in probes}
    assert grew == {True}, "a worker served none of 16 connections' calls"
    for channel in probes:
        channel.close()


def test_the_report_counts_overlapping_worker_intervals_once(two_workers: Any) -> None:
    _, ledger = two_workers

    def intervals() -> list[tuple[int, int, int]]:
        with sqlite3.connect(ledger) as db:
            return db.execute("SELECT worker, start_unix_ms, end_unix_ms FROM intervals").fetchall()

    wait_for(lambda: {w for w, _, _ in intervals()} == {0, 1}, 15)
    before = intervals()
    overlapping = [
        (a, b)
        for a in before
        if a[0] == 0
        for b in before
        if b[0] == 1 and a[1] < b[2] and b[1] < a[2]
    ]
    assert overlapping, "the two workers' intervals should overlap in time"
    document = json.loads(report(ledger, "json", "model"))  # the server is still writing
    after = intervals()
    summed = sum(end - start for _, start, end in before) / 1000
    wall_before = (max(e for _, _, e in before) - min(s for _, s, _ in before)) / 1000
    wall_after = (max(e for _, _, e in after) - min(s for _, s, _ in after)) / 1000
    assert document["intervals"]["workers"] == 2
    # Overlaps count once: the covered time is the wall time (less any gaps), never the sum.
    assert 0.5 * wall_before <= document["intervals"]["seconds"] <= wall_after < summed
    assert "from 2 worker processes" in report(ledger, "table", "model")


def test_a_second_server_cannot_join_the_workers_port(two_workers: Any) -> None:
    server, _ = two_workers
    port = server.address.rsplit(":", 1)[1]
    result = subprocess.run(
        [sys.executable, "-m", "wattserve", "serve", "--workers", "2", "--port", port],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert result.returncode == 1
    assert f"cannot reserve 127.0.0.1:{port}" in result.stderr


def test_a_killed_worker_is_started_again_and_the_server_goes_on(two_workers: Any) -> None:
    server, _ = two_workers
    success = (("model", MODEL), ("version", "1"))
    before = scrape(server.metrics_url)["nv_inference_request_success_total"][success]
    victim = workers_of(server)[0]
    victim.send_signal(signal.SIGKILL)
    wait_for(lambda: "starting it again" in server.text(), 30)
    assert "exited (code -9): starting it again" in server.text()  # reaped: the signal is named
    wait_for(lambda: len([w for w in workers_of(server) if w.pid != victim.pid]) == 2, 30)
    wait_for(lambda: server.text().count("wattserve ready: serving") >= 3, 90)
    for _ in range(10):  # fresh connections land on either worker: every one must answer
        with grpc.insecure_channel(server.address, options=SEPARATE) as channel:
            assert infer(channel, rows=1).model_name == MODEL
    # The replaced worker's counts stay in the sum: the server's counter never goes backwards.
    after = scrape(server.metrics_url)
    assert after["nv_inference_request_success_total"][success] == before + 10
    assert after["wattserve_workers"][()] == 2


def test_workers_stop_by_themselves_when_the_parent_is_killed(demo_repository: Path) -> None:
    with run_server(
        "--workers", "2", "--demo-dir", str(demo_repository), "--metering-enabled", "false"
    ) as server:
        workers = workers_of(server)
        assert len(workers) == 2
        server.process.send_signal(signal.SIGKILL)
        server.process.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=30)
        assert not alive, f"workers outlived their parent: {[w.pid for w in alive]}"


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--model-control-mode", "explicit"], "model_control_mode = explicit"),
        (["--tracking-mode", "machine"], "tracking_mode = machine"),
    ],
)
def test_settings_that_workers_cannot_honour_are_refused(flags: list[str], named: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "wattserve", "serve", "--workers", "2", *flags],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert named in result.stderr and "workers = 2" in result.stderr


def test_merging_adds_per_process_figures_and_reads_machine_figures_once() -> None:
    def exposition(requests: int, queue_s: float, memory: int) -> str:
        return (
            # As prometheus_client writes a counter: the family named with its _total suffix.
            "# HELP nv_inference_request_success_total Successful requests\n"
            "# TYPE nv_inference_request_success_total counter\n"
            f'nv_inference_request_success_total{{model="m",version="1"}} {requests}\n'
            "# HELP wattserve_queue_duration_seconds Queued\n"
            "# TYPE wattserve_queue_duration_seconds histogram\n"
            f'wattserve_queue_duration_seconds_bucket{{model="m",le="0.001"}} {requests - 1}\n'
            f'wattserve_queue_duration_seconds_bucket{{model="m",le="+Inf"}} {requests}\n'
            f'wattserve_queue_duration_seconds_count{{model="m"}} {requests}\n'
            f'wattserve_queue_duration_seconds_sum{{model="m"}} {queue_s}\n'
            "# HELP nv_cpu_memory_total_bytes Machine memory\n"
            "# TYPE nv_cpu_memory_total_bytes gauge\n"
            f"nv_cpu_memory_total_bytes {memory}\n"
        )

    def merged(texts: list[str], retired: list[str]) -> dict[Any, float]:
        return {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in merge_expositions(texts, retired=retired)
            for s in family.samples
        }

    assert "nv_cpu_memory_total_bytes" in MACHINE_WIDE
    model = (("model", "m"),)
    assert merged([exposition(3, 0.5, 64), exposition(7, 0.25, 64)], []) == {
        ("nv_inference_request_success_total", (*model, ("version", "1"))): 10,
        ("wattserve_queue_duration_seconds_bucket", (("le", "0.001"), *model)): 8,
        ("wattserve_queue_duration_seconds_bucket", (("le", "+Inf"), *model)): 10,
        ("wattserve_queue_duration_seconds_count", model): 10,
        ("wattserve_queue_duration_seconds_sum", model): 0.75,
        ("nv_cpu_memory_total_bytes", ()): 64,
    }
    # A replaced worker's last answer: its counters and histograms stay, its gauges do not.
    with_retired = merged([exposition(3, 0.5, 64)], [exposition(7, 0.25, 999)])
    assert with_retired[("nv_inference_request_success_total", (*model, ("version", "1")))] == 10
    assert with_retired[("wattserve_queue_duration_seconds_sum", model)] == 0.75
    assert with_retired[("nv_cpu_memory_total_bytes", ())] == 64


def test_a_version_1_ledger_gains_the_worker_columns(tmp_path: Path) -> None:
    from wattserve.metering import ledger

    path = tmp_path / "v1.sqlite"
    schema = ";\n".join(ledger.SCHEMA)
    v1_schema = schema.replace(
        ",\n  worker INTEGER NOT NULL DEFAULT 0,\n  workers INTEGER NOT NULL DEFAULT 1", ""
    )
    assert v1_schema != schema
    with sqlite3.connect(path) as db:
        db.executescript(v1_schema)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute(
            "INSERT INTO intervals (start_unix_ms, end_unix_ms, energy_method, busy_fraction) "
            "VALUES (0, 1000, 'none', 0.0)"
        )
    document = json.loads(report(str(path), "json", "model"))  # read as it is, untouched
    assert document["intervals"]["workers"] == 1 and document["intervals"]["seconds"] == 1
    connection = ledger.connect(path)
    try:
        found = connection.execute("SELECT worker, workers FROM intervals").fetchall()
        version = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        assert found == [(0, 1)] and version.fetchone()[0] == str(ledger.SCHEMA_VERSION)
    finally:
        connection.close()


def test_two_servers_cannot_share_a_port_by_accident(demo_repository: Path) -> None:
    """Only worker processes opt in to SO_REUSEPORT: a second plain server is refused."""
    with run_server("--demo-dir", str(demo_repository), "--metering-enabled", "false") as first:
        port = first.address.rsplit(":", 1)[1]
        result = subprocess.run(
            [
                *(sys.executable, "-m", "wattserve", "serve", "--workers", "2", "--port", port),
                *("--demo-dir", str(demo_repository), "--metering-enabled", "false"),
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert result.returncode == 1
        assert f"cannot reserve 127.0.0.1:{port}" in result.stderr


def test_the_sweep_refuses_fewer_streams_in_flight_than_connections() -> None:
    result = subprocess.run(
        [
            *(sys.executable, "-m", "wattserve", "sweep", "--model", MODEL, "--stream"),
            *("--connections", "4", "--concurrency", "1,8"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "every --concurrency >= 4 (one per stream)" in result.stderr
    assert (
        "got --concurrency 1,8 with 4 streams (--stream alone: one per connection, "
        "--connections 4)" in result.stderr
    )
