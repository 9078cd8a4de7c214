"""The benches still run end to end: short runs of `bench/perf.py`, `bench/ab.py`,
`bench/run_place.py`, `bench/capacity_streams.py`, `bench/workers.py`, `bench/ort_cold.py`,
`bench/lone_request.py`, `bench/request_path.py` and `bench/instructions.py`.

Figures are not judged here (speed is measured by the benches, never asserted in tests); what is
checked is that every part a user reads comes out: for perf.py, each served point without errors,
the ONNX Runtime ceiling, and each paired target with one ratio per round and a verdict; for
ab.py, both sides of every round and the median, with a reference server as a side too; for
run_place.py, every figure of both sides; for capacity_streams.py, both searches and both ratios;
for workers.py, both servers' points and the two ratios, with the load from two processes; for
ort_cold.py, a row per amount of memory read; for lone_request.py, every figure of each round
and the differences drawn from them; for request_path.py, the three handlers' figures;
for instructions.py, a count for every step.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parents[2] / "bench"
PARTS = ("decode", "admit", "schedule", "answer", "encode")
"""The steps of bench/instructions.py that make up one request."""
SHORT = [
    *("--cases", "tabular 1 row", "--concurrency", "1,4"),
    *("--warmup-s", "0.3", "--window-s", "0.5", "--max-windows", "1", "--ort-s", "0.2"),
    *("--rounds", "2", "--pair-window-s", "0.5"),
]


def bench(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run one bench script to its end; it must succeed."""
    run = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def figure(stdout: str, label: str) -> float:
    """The number printed right after `label`."""
    return float(stdout.split(label)[1].split()[0])


def test_perf_runs_and_reports_every_target(tmp_path: Path) -> None:
    results = tmp_path / "perf.json"
    run = bench("perf.py", *SHORT, "--json", str(results))
    document = json.loads(results.read_text())
    points = document["points"]
    assert {(p["server"], p["case"], p["concurrency"]) for p in points} == {
        ("wattserve", "tabular 1 row", 1),
        ("wattserve", "tabular 1 row", 4),
        ("wattserve", "tabular 1 row, stream", 32),
        ("wattserve", "tabular 1 row, stream", 128),
        ("wattserve", "tabular 1 row, 16 streams", 32),
        ("wattserve", "tabular 1 row, 16 streams", 128),
        ("echo", "tabular 1 row", 1),
        ("echo", "tabular 1 row", 4),
        ("echo", "tabular 1 row, stream", 32),
        ("echo", "tabular 1 row, stream", 128),
        ("echo", "tabular 1 row, 16 streams", 32),
        ("echo", "tabular 1 row, 16 streams", 128),
    }
    for point in points:
        assert point["errors"] == 0 and point["requests_per_s"] > 0, point
    assert document["ort"]["tabular_classifier"][0]["samples_per_s"] > 0
    paired = {p["target"]: p for p in document["paired"]}
    assert sorted(paired) == [
        "tabular 1 row, 1 in flight: p50 - echo p50 ≤ ORT batch-1 + 0.25 ms",
        "tabular 1 row, 1 in flight: p50 - minimal server p50 ≤ -0.5 ms",
        "tabular 1 row, 4 in flight ÷ echo floor (req/s)",
        "tabular 1 row, 4 in flight ÷ minimal batching server",
        "tabular 16 streams ÷ unary, best in flight of each (req/s)",
        "tabular stream ÷ unary, best in flight of each (req/s)",
    ]
    for target in paired.values():
        assert len(target["pairs"]) == 2
        assert all(a > 0 and b > 0 for a, b in target["pairs"]), target
        assert math.isfinite(target["median"]) and isinstance(target["met"], bool)
    # The printed verdicts are the paired ones.
    for name, target in paired.items():
        assert f"- {name}: {'met' if target['met'] else 'missed'}" in run.stdout


def test_ab_runs_paired_rounds_of_two_configurations() -> None:
    """An A/A run of `bench/ab.py` on streams: both sides measured in each round, the median
    printed. Side A runs the code of a named checkout (this one), as when comparing a change with
    its base."""
    checkout = f"checkout {BENCH.parent}"
    run = bench(
        "ab.py",
        *("--a", checkout, "--b", "--log-level INFO", "--concurrency", "8", "--rounds", "2"),
        *("--streams", "4", "--warmup-s", "0.5", "--window-s", "1"),
    )
    assert "# tabular_classifier, 1 row(s), 8 in flight, 4 stream(s)" in run.stdout
    sides = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| A |")]
    sides += [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| B |")]
    assert len(sides) == 4
    for side in sides:
        assert float(side[1]) > 0 and side[4].rstrip(" |") == "0", side  # req/s, errors
    assert "B ÷ A, median of 2 rounds: " in run.stdout


def test_ab_runs_the_reference_servers_as_sides() -> None:
    """Echo against issue 5's minimal batching server: both answer the load; only the minimal
    server reports batches."""
    minimal = "minimal --model {demo}/tabular_classifier/1/model.onnx --run-on loop"
    run = bench(
        "ab.py",
        *("--a", "echo", "--b", minimal, "--concurrency", "8", "--rounds", "1"),
        *("--warmup-s", "0.5", "--window-s", "1"),
    )
    rows = {line.split(" | ")[0]: line.split(" | ") for line in run.stdout.splitlines()}
    echo, batching = rows["| A"], rows["| B"]
    assert float(echo[1]) > 0 and echo[3] == "-" and echo[4].rstrip(" |") == "0", echo
    assert float(batching[1]) > 0 and float(batching[3]) >= 1, batching
    assert "B ÷ A, median of 1 rounds: " in run.stdout


def test_echo_does_the_work_it_is_given_before_answering() -> None:
    """Echo reading 48 MB a call against echo spinning as long: both spend well over a plain
    echo call's CPU (a few hundred µs) on each call, so the work was done, one way or the other."""
    run = bench(
        "ab.py",
        *("--a", "echo --read-mb 48", "--b", "echo --spin-mb 48", "--model", "dense"),
        *("--concurrency", "1", "--rounds", "1", "--warmup-s", "0.3", "--window-s", "1"),
    )
    rows = {line.split(" | ")[0]: line.split(" | ") for line in run.stdout.splitlines()}
    for side in rows["| A"], rows["| B"]:
        assert float(side[1]) > 0 and side[4].rstrip(" |") == "0", side
        assert float(side[2]) > 1000, side  # server µs per call: a 48 MB read takes over 1 ms
    assert "B ÷ A, median of 1 rounds: " in run.stdout


def test_lone_request_times_the_run_in_process_and_in_both_places() -> None:
    """Per round: the in-process run, echo's round trip, and for each server its run and whole
    request (the run inside the request) and the round trip (the request inside it, and longer
    than echo's, which runs no model); the paired differences are those of the rounds."""
    run = bench("lone_request.py", "--rounds", "2", "--requests", "40")
    rows = [
        [float(v) for v in line.strip("| ").split(" | ")]
        for line in run.stdout.splitlines()
        if line.startswith("| ") and line[2].isdigit()
    ]
    assert len(rows) == 2, run.stdout
    for in_process, echo, *places in rows:
        assert in_process > 0 and echo > 0
        for infer, success, p50 in (places[0:3], places[3:6]):
            assert 0 < infer <= success < p50, (infer, success, p50)
            assert p50 > echo, (p50, echo)
    handoffs = [row[2] - row[5] for row in rows]
    assert figure(run.stdout, "(thread minus loop): ") == pytest.approx(
        sum(handoffs) / 2, abs=0.0011
    )
    beyond = [row[4] - row[1] - row[0] for row in rows]
    label = "on the thread, p50 minus echo's p50 minus the in-process run: "
    assert figure(run.stdout, label) == pytest.approx(sum(beyond) / 2, abs=0.0011), run.stdout


def test_run_place_measures_both_models_on_both_sides() -> None:
    run = bench(
        "run_place.py",
        *("--b-run-on", "loop", "--rounds", "2", "--warmup-s", "0.3", "--window-s", "0.6"),
    )
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| A |")]
    rows += [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| B |")]
    assert len(rows) == 4, run.stdout
    for row in rows:
        figures = [float(cell.rstrip(" |")) for cell in row[1:]]
        assert len(figures) == 5 and all(f > 0 for f in figures), row
    for figure in ("dense p50 ms", "tabular req/s", "tabular p50 ms", "tabular p99 ms"):
        assert f"- {figure}: A " in run.stdout, run.stdout


def test_capacity_streams_runs_both_searches_and_reports_their_ratios() -> None:
    run = bench(
        "capacity_streams.py",
        *("--rounds", "1", "--streams", "2", "--warmup-s", "0.3", "--window-s", "0.5"),
        *("--slo-p99-ms", "2000", "--max-steps", "2"),
    )
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| round")]
    assert [row[0] for row in rows] == ["| round 1, unary", "| round 1, 2 streams"], run.stdout
    for row in rows:
        peak, p99, replicas, energy = (float(cell.replace(",", "")) for cell in row[1:5])
        assert peak > 0 and p99 > 0 and replicas >= 1 and energy > 0, row
    for what in ("peak req/s", "energy per million predictions"):
        [line] = [x for x in run.stdout.splitlines() if x.startswith(f"streams ÷ unary, {what}")]
        assert float(line.split("median ")[1].split()[0]) > 0, line


def test_workers_compares_two_workers_with_one_process_under_load_from_two_processes() -> None:
    run = bench(
        "workers.py",
        *("--rounds", "1", "--cases", "tabular", "--window-s", "0.5", "--processes", "2"),
        *("--concurrency", "8", "--connections", "4"),
    )
    assert "over 4 connections from 2 load generator process(es)" in run.stdout
    points = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| 1 |")]
    assert [row[1] for row in points] == ["1", "2"], run.stdout
    for row in points:
        requests_per_s, server_cores, load_cores, errors = map(float, (row[3], *row[6:9]))
        assert requests_per_s > 0 and server_cores > 0 and load_cores > 0 and errors == 0, row
    [ratios] = [x for x in run.stdout.splitlines() if x.startswith("| tabular 1 row |")]
    assert all(float(cell) > 0 for cell in ratios.strip(" |").split(" | ")[1:]), ratios


def test_ort_cold_times_warm_and_cold_runs_for_every_amount_of_memory() -> None:
    run = bench("ort_cold.py", "--runs", "5", "--megabytes", "0,2")
    rows = [line.split(" | ") for line in run.stdout.splitlines() if " MB | " in line]
    assert [row[0] for row in rows] == ["| 0 MB", "| 2 MB"], run.stdout
    for row in rows:
        warm, cold = float(row[1]), float(row[2])
        assert warm > 0 and cold > 0, row
        assert row[3].strip(" |")[0] in "+-", row


def test_request_path_compares_the_servicer_with_echo_and_minimal_in_process() -> None:
    run = bench("request_path.py", "--requests", "300")
    rows = [line.split(" | ") for line in run.stdout.splitlines() if line.startswith("| 1")]
    assert [row[0] for row in rows] == ["| 1", "| 128"]
    for row in rows:
        ours, echo, least = float(row[1]), float(row[2]), float(row[3])
        assert ours > 0 and echo > 0 and least > 0, row
        assert float(row[4]) == pytest.approx(ours - echo, abs=0.11), row
        assert float(row[5]) == pytest.approx(ours - least, abs=0.11), row
        batches = [float(n) for n in row[6].rstrip(" |").split(", ")]
        assert len(batches) == 2 and min(batches) >= 1, row
    lone = rows[0][6].rstrip(" |")
    assert lone == "1.0, 1.0", lone  # one caller: every batch is its one row, in both servers


@pytest.mark.timeout(600)  # valgrind runs the server's start-up 50 times slower
def test_instructions_counts_every_step_of_the_request_path() -> None:
    """Under valgrind: one count per step, each positive; the parts of a request each cost less
    than the whole, and together about as much (the script says their sum is close to it)."""
    if shutil.which("valgrind") is None:
        if os.environ.get("CI"):
            raise AssertionError("CI must have valgrind: .ci/run installs it")
        pytest.skip("valgrind is not installed (apt-get install valgrind); CI installs it")
    run = bench("instructions.py", "--calls", "40", "--warmup", "5")
    lines = run.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("step "))
    counts = {
        line[: line.rindex("  ")].strip(): int(line.split()[-1].replace(",", ""))
        for line in lines[header + 1 :]
    }
    assert list(counts) == [
        "request (ModelInfer), alone",
        "request (ModelInfer), in a batch of 8",
        "decode (protobuf to InferRequest)",
        "admit (find the model, validate)",
        "schedule and run (the batcher's front door)",
        "of which ONNX Runtime (the runner's run)",
        "answer (InferResponse, statistics)",
        "encode (InferResponse to protobuf)",
        "serialise the response (gRPC's part, for scale)",
    ]
    assert all(n > 0 for n in counts.values()), counts
    whole = counts["request (ModelInfer), alone"]
    parts = [counts[name] for name in counts if name.startswith(PARTS)]
    assert len(parts) == 5 and all(part < whole for part in parts), counts
    assert 0.75 * whole < sum(parts) < 1.1 * whole, counts
    run_only = counts["of which ONNX Runtime (the runner's run)"]
    assert run_only < counts["schedule and run (the batcher's front door)"], counts


def test_a_side_may_set_environment_variables_for_its_server_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Leading `NAME=value` words of a side are its server's environment, as in a shell; the rest
    is parsed as before (a checkout, a reference server, or `wattserve serve` arguments)."""
    monkeypatch.syspath_prepend(str(BENCH))
    from _server import ServerSpec, server_environment

    demo = Path("/demo")
    spec = ServerSpec.parse(f"GRPC_EXPERIMENTS=a,b X_Y='1 2' checkout {BENCH.parent} --k v", demo)
    assert spec.env == {"GRPC_EXPERIMENTS": "a,b", "X_Y": "1 2"}
    assert (spec.code, spec.args) == (BENCH.parent, ["--k", "v"])
    echo = ServerSpec.parse("OMP_NUM_THREADS=1 echo --uvloop", demo)
    assert echo.env == {"OMP_NUM_THREADS": "1"} and echo.command is not None
    assert echo.command[1:] == [str(BENCH / "_echo.py"), "--uvloop"]
    plain = ServerSpec.parse("--max-batch=4 --label=a=b", demo)  # '=' inside arguments stays
    assert (plain.env, plain.args) == ({}, ["--max-batch=4", "--label=a=b"])
    # A checkout's packages come first on PYTHONPATH, then the side's own PYTHONPATH.
    environment = server_environment(Path("/code"), {"PYTHONPATH": "/extra", "A": "1"})
    paths = environment["PYTHONPATH"].split(os.pathsep)
    assert paths == ["/code/server", "/code/clients", "/extra"]
    assert environment["A"] == "1" and environment["PATH"] == os.environ["PATH"]
    assert server_environment(None, {"PYTHONPATH": "/extra"})["PYTHONPATH"] == "/extra"
