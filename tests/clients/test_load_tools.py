"""`wattserve sweep` and `wattserve capacity` against real servers over loopback."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from PIL import Image

from tests.support import CountingStreams, run_server, screenshot
from wattserve.cli import main as wattserve_main
from wattserve.protocol import pb, pb_grpc
from wattserve_client import Client
from wattserve_client._request import infer_request
from wattserve_client.loadgen import CORE_RACE, Schedule, open_loop, stream_closed_loop
from wattserve_client.payloads import PayloadShape, inputs_for
from wattserve_client.sweep import Target, sweep

QUICK = ["--warmup-s", "0.3", "--window-s", "0.5", "--max-windows", "6", "--stability", "0.5"]

P50_BLUE, P99_ORANGE = (0x2F, 0x6D, 0xB5), (0xC0, 0x7A, 0x1C)


def wattserve(*args: str, timeout_s: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "wattserve", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


@pytest.mark.parametrize("model", ["tabular_classifier", "dense", "text_classifier"])
def test_payloads_from_metadata_are_seeded_and_accepted(address: str, model: str) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=model))
        shape = PayloadShape(rows=3, sequence_length=7)
        first, again = inputs_for(metadata, shape, seed=5), inputs_for(metadata, shape, seed=5)
        other = inputs_for(metadata, shape, seed=6)
        for name, array in first.items():
            assert array.shape[0] == 3
            assert np.array_equal(array, again[name])
            assert not np.array_equal(array, other[name])
        with Client(address) as client:
            outputs = client.infer(model, first)
        assert all(o.shape[0] == 3 for o in outputs.values())


def test_sweep_writes_json_and_csv_with_one_row_per_concurrency(
    address: str, tmp_path: Path
) -> None:
    out_json, out_csv = tmp_path / "sweep.json", tmp_path / "sweep.csv"
    done = wattserve(
        "sweep", "--target", address, "--model", "tabular_classifier", "--concurrency", "1,4",
        "--slo-p99-ms", "1000", "--json", str(out_json), "--csv", str(out_csv), *QUICK,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out_json.read_text())
    assert [p["concurrency"] for p in result["points"]] == [1, 4]
    for p in result["points"]:
        assert p["requests"] > 0 and p["errors"] == 0
        latency = p["latency_ms"]
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p95"] <= latency["p99"]
    assert result["peak_within_slo"] in result["points"]
    assert "peak within SLO" in done.stdout
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["concurrency"] for r in rows] == ["1", "4"]
    assert float(rows[1]["requests_per_s"]) == pytest.approx(
        result["points"][1]["requests_per_s"], rel=1e-3
    )
    for p, row in zip(result["points"], rows, strict=True):  # the sweep's own CPU, per point
        cores = p["load_generator_cpu_cores"]
        assert cores > 0 and p["load_generator_busy"] == (cores >= 0.9)
        assert float(row["load_generator_cpu_cores"]) == pytest.approx(cores, abs=1e-3)


@contextlib.contextmanager
def busy_threads() -> Iterator[None]:
    """Two threads hashing without the GIL, keeping this process at about two cores: whatever
    the server could do, a load generator in this process is the suspect."""
    stop = threading.Event()

    def burn() -> None:
        block = bytes(1 << 22)
        while not stop.is_set():
            hashlib.sha256(block).digest()  # releases the GIL for the whole block

    burners = [threading.Thread(target=burn) for _ in range(2)]
    for thread in burners:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in burners:
            thread.join()


async def test_a_sweep_sharing_its_process_with_busy_threads_says_its_figures_may_be_its_own(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with busy_threads():
        result = await sweep(
            Target(address, "tabular_classifier"), [4], Schedule(0.3, 0.5, 2, 2, -1.0)
        )
    [p] = result["points"]
    assert p["load_generator_busy"] and p["load_generator_cpu_cores"] >= 0.9, p
    assert "(load generator busy: " in capsys.readouterr().err


def counts(address: str, model: str) -> np.ndarray:
    """(rows inferred, batches executed) so far, from ModelStatistics."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        stats = stub.ModelStatistics(pb.ModelStatisticsRequest(name=model))
    return np.array([stats.model_stats[0].inference_count, stats.model_stats[0].execution_count])


def test_sweep_on_one_stream_keeps_the_requests_in_flight_and_counts_every_answer(
    address: str, tmp_path: Path
) -> None:
    out_json = tmp_path / "stream.json"
    before = counts(address, "tabular_classifier")
    done = wattserve(
        "sweep", "--target", address, "--model", "tabular_classifier", "--concurrency", "1,16",
        "--stream", "--json", str(out_json), *QUICK,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out_json.read_text())
    assert result["mode"] == "closed-loop concurrency sweep on one stream"
    measured = 0
    for p in result["points"]:
        assert p["requests"] > 0 and p["errors"] == 0
        assert 0 < p["latency_ms"]["p50"] <= p["latency_ms"]["p99"]
        measured += p["requests"]
    # The server ran at least every answer the windows counted (warm-ups and build_request's
    # check call come on top), and 16 in flight on one stream batched: more rows than batches.
    served, batches = counts(address, "tabular_classifier") - before
    assert measured + 2 <= served
    assert batches < served
    # (No speed comparison between the two points: on a shared VM the machine's speed drifts
    # more between two points than 1 and 16 in flight differ; the bench measures that.)
    assert [p["concurrency"] for p in result["points"]] == [1, 16]


def capacity(address: str, tmp_path: Path, *extra: str) -> tuple[int, str, dict[str, Any]]:
    out = tmp_path / "capacity.json"
    done = wattserve(
        "capacity", "--target", address, "--model", "tabular_classifier", "--growth", "3",
        "--max-steps", "3", "--refine", "1", "--json", str(out), *QUICK, *extra,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr, json.loads(out.read_text())


def test_capacity_with_the_meter_reports_peak_replicas_and_cost(
    demo_repository: Path, tmp_path: Path
) -> None:
    html = tmp_path / "capacity.html"
    with run_server("--demo-dir", str(demo_repository)) as server:
        code, output, result = capacity(
            server.address, tmp_path, "--slo-p99-ms", "2000", "--metrics-url",
            server.metrics_url, "--target-predictions-per-s", "5000", "--html", str(html),
        )  # fmt: skip
    assert code == 0, output
    peak, recommended = result["peak"], result["recommended"]
    assert peak["passed"] and peak in result["steps"]
    assert max(s["requests_per_s"] for s in result["steps"] if s["passed"]) == pytest.approx(
        peak["requests_per_s"]
    )
    per_replica = recommended["predictions_per_s_per_replica"]
    assert per_replica == pytest.approx(peak["predictions_per_s"] * 0.8)
    assert recommended["replicas"] == int(np.ceil(5000 / per_replica))
    assert all("process_cpu_utilization" in s["utilization"] for s in result["steps"])
    assert all("gpu_utilization" not in s["utilization"] for s in result["steps"])  # no GPU
    cost = recommended["per_million_predictions"]
    assert cost["energy_j"] > 0 and cost["carbon_g"] > 0 and cost["cost"] > 0
    assert cost["allocated_energy_j"] >= cost["energy_j"]  # idle energy shared out on top
    assert cost["currency"] == "USD"
    png = tmp_path / "capacity.png"
    screenshot(html, png)
    with Image.open(png) as image:
        rgb = np.asarray(image.convert("RGB"))
    page = html.read_text()
    for curve, colour in (("p50", P50_BLUE), ("p99", P99_ORANGE)):
        # One vertex per step in the page; how many pixels the browser paints depends on the
        # data (steps that deliver alike rates bunch up; the p99 curve is drawn over the p50
        # one where they meet), so the screenshot is asked only to show the curve at all.
        polyline = page.split(f"<polyline class='p{curve[1:]}' points='")[1].split("'")[0]
        assert len(polyline.split()) == len(result["steps"]), curve
        drawn = int((rgb == colour).all(axis=2).sum())
        assert drawn > 0, f"the browser drew no pixel of the {curve} curve"


def test_capacity_against_a_server_without_meter_has_no_cost_part(
    demo_repository: Path, tmp_path: Path
) -> None:
    with run_server("--demo-dir", str(demo_repository), "--metering-enabled", "false") as server:
        code, output, result = capacity(server.address, tmp_path, "--slo-p99-ms", "2000")
    assert code == 0, output
    assert result["peak"] is not None
    assert result["recommended"]["per_million_predictions"] is None


def test_capacity_backs_off_when_the_first_rate_is_too_high(address: str, tmp_path: Path) -> None:
    # 30,000/s is past what any server on this machine serves (a fast CI machine served 4,000/s
    # of the tabular model within the SLO), and past what the load generator can send.
    code, output, result = capacity(
        address, tmp_path, "--slo-p99-ms", "2000", "--start-rps", "30000", "--growth", "30"
    )
    assert code == 0, output
    first = result["steps"][0]
    assert first["offered_per_s"] == 30000 and not first["passed"]
    assert result["steps"][1]["offered_per_s"] == pytest.approx(1000)
    assert result["peak"]["passed"] and result["peak"]["offered_per_s"] < 30000
    assert result["knee"]["offered_per_s"] > result["peak"]["offered_per_s"]


def test_capacity_with_an_impossible_slo_fails(address: str, tmp_path: Path) -> None:
    code, output, result = capacity(address, tmp_path, "--slo-p99-ms", "0.001")
    assert code == 1
    assert "no rate met p99 <= 0.001 ms" in output
    assert result["peak"] is None and result["found_knee"]


async def test_a_stream_closed_loop_opens_its_streams_on_the_connections_in_turn(
    address: str,
) -> None:
    counters = [CountingStreams(), CountingStreams()]
    channels = [grpc.aio.insecure_channel(address, interceptors=[c]) for c in counters]
    stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
    request = infer_request("tabular_classifier", {"features": np.ones((1, 30), np.float32)})
    schedule = Schedule(0.2, 0.3, 1, 1, -1.0)
    try:
        m = await stream_closed_loop(stubs, request, concurrency=8, schedule=schedule, streams=4)
        with pytest.raises(ValueError, match=r"at least one stream per connection \(2\), got 1"):
            await stream_closed_loop(stubs, request, concurrency=8, schedule=schedule, streams=1)
    finally:
        for channel in channels:
            await channel.close()
    assert [len(c.sent) for c in counters] == [2, 2]
    assert m.requests > 0 and m.errors == 0


def test_sweep_on_several_streams_names_them_and_refuses_fewer_than_connections(
    address: str, tmp_path: Path
) -> None:
    out_json = tmp_path / "streams.json"
    done = wattserve(
        "sweep", "--target", address, "--model", "tabular_classifier", "--concurrency", "8",
        "--streams", "4", "--json", str(out_json), *QUICK,  # --streams alone implies --stream
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out_json.read_text())
    assert result["mode"] == "closed-loop concurrency sweep on 4 streams"
    assert result["streams"] == 4 and result["connections"] == 1
    assert result["points"][0]["requests"] > 0 and result["points"][0]["errors"] == 0
    refused = wattserve(
        "sweep", "--target", address, "--model", "tabular_classifier", "--concurrency", "8",
        "--stream", "--streams", "2", "--connections", "3", *QUICK,
    )  # fmt: skip
    assert refused.returncode == 2
    assert "--streams >= --connections" in refused.stderr
    assert "got --connections 3 and --streams 2" in refused.stderr


def test_capacity_on_several_streams_over_connections_names_them_in_its_report(
    address: str, tmp_path: Path
) -> None:
    code, output, result = capacity(
        address, tmp_path, "--slo-p99-ms", "2000", "--streams", "4", "--connections", "2"
    )
    assert code == 0, output
    assert result["mode"] == "open-loop capacity search on 4 streams"
    assert result["streams"] == 4 and result["connections"] == 2
    assert result["peak"]["passed"]
    for step in result["steps"]:
        assert step["requests"] > 0
        if step["offered_per_s"] <= result["peak"]["offered_per_s"]:  # backed-off steps too
            assert step["errors"] == 0, step["errors_seen"]
    refused = wattserve(
        "capacity", "--target", address, "--model", "tabular_classifier", "--slo-p99-ms", "10",
        "--streams", "1", "--connections", "2",
    )  # fmt: skip
    assert refused.returncode == 2
    assert "wattserve capacity: need --connections >= 1 and --streams >= --connections" in (
        refused.stderr
    )


async def test_an_open_loop_over_streams_deals_its_requests_out_and_counts_bad_answers(
    address: str,
) -> None:
    counters = [CountingStreams(), CountingStreams()]
    channels = [grpc.aio.insecure_channel(address, interceptors=[c]) for c in counters]
    stubs = [pb_grpc.GRPCInferenceServiceStub(channel) for channel in channels]
    good = infer_request("tabular_classifier", {"features": np.ones((1, 30), np.float32)})
    bad = infer_request("tabular_classifier", {"features": np.ones((1, 29), np.float32)})
    schedule = Schedule(0.5, 0.75, 2, 2, -1.0)
    rate = 200.0
    try:
        m = await open_loop(stubs, good, rate_per_s=rate, schedule=schedule, streams=4)
        failing = await open_loop(stubs, bad, rate_per_s=rate, schedule=schedule, streams=4)
        with pytest.raises(ValueError, match=r"at least one stream per connection \(2\), got 1"):
            await open_loop(stubs, good, rate_per_s=rate, schedule=schedule, streams=1)
    finally:
        for channel in channels:
            await channel.close()
    assert [len(c.sent) for c in counters] == [4, 4]  # 2 runs x 4 streams, dealt over 2
    assert m.errors == 0 and m.error_messages == {}
    # Each answer matched a request by id (an unknown id counts as an error): the loop sent on
    # schedule, never ahead of it, and the server kept up with 200/s.
    assert 0.5 * rate <= m.requests_per_s <= 1.3 * rate, m.requests_per_s
    assert failing.requests == 0 and failing.errors > 0
    [(message, count)] = failing.error_messages.items()
    assert count >= failing.errors  # one message for all (the warm-up's failures count too)
    assert "tabular_classifier" in message and "features" in message, message


async def test_an_open_loop_on_refused_streams_counts_every_request_as_failed_and_ends(
    address: str,
) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        request = infer_request("tabular_classifier", {"features": np.ones((1, 30), np.float32)})
        m = await open_loop(
            stub,
            request,
            rate_per_s=100.0,
            schedule=Schedule(0.2, 0.5, 2, 2, -1.0),
            streams=4,
            metadata=(("x-wattserve-tenant", "no way!"),),
        )
    assert m.requests == 0 and m.errors > 0
    # Each stream reports the server's refusal, unless its first write lost grpc.aio's race with
    # the refusal (grpc/grpc#36066), which it then names; four streams all losing it is unheard of.
    refusals = [text for text in m.error_messages if text.startswith("INVALID_ARGUMENT")]
    assert len(refusals) == 1 and "x-wattserve-tenant" in refusals[0], m.error_messages
    for text in m.error_messages:
        assert text in refusals or text.endswith(CORE_RACE), text


def test_a_capacity_search_whose_load_generator_was_busy_at_the_knee_warns_in_text_and_page(
    address: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    html = tmp_path / "capacity.html"
    with busy_threads():
        code = wattserve_main(
            ["capacity", "--target", address, "--model", "tabular_classifier",
             "--slo-p99-ms", "0.001", "--max-steps", "1", "--html", str(html), *QUICK]
        )  # fmt: skip
    assert code == 1
    out = capsys.readouterr().out
    assert "no rate met p99 <= 0.001 ms; the load generator was busy at the knee" in out
    page = html.read_text()
    assert "<th>load generator cores</th>" in page
    assert "The load generator used " in page
    assert "at the knee (the lowest rate that failed)" in page


class WrongIds(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """A broken server: every streamed answer carries an id no request had."""

    async def ModelStreamInfer(self, requests: Any, context: Any) -> Any:
        async for request in requests:
            yield pb.ModelStreamInferResponse(
                infer_response=pb.ModelInferResponse(model_name=request.model_name, id="bogus")
            )


async def test_an_open_loop_counts_answers_with_unknown_ids_as_errors_and_ends() -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(WrongIds(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    request = infer_request("tabular_classifier", {"features": np.ones((1, 30), np.float32)})
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            m = await open_loop(
                stub, request, rate_per_s=100.0, schedule=Schedule(0.2, 0.5, 1, 1, -1.0), streams=2
            )
    finally:
        await server.stop(None)
    assert m.requests == 0 and m.errors > 0
    # Each bogus answer is an error; the requests it did not answer end with their stream, once
    # the run has half-closed it and the server has finished.
    unknown = "client: an answer with id 'bogus', which no request in flight has"
    ended = "client: the server ended the stream before answering"
    assert set(m.error_messages) == {unknown, ended}, m.error_messages


async def test_a_stream_closed_loop_goes_on_and_ends_when_every_answer_has_an_unknown_id() -> None:
    server = grpc.aio.server()
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(WrongIds(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    request = infer_request("tabular_classifier", {"features": np.ones((1, 30), np.float32)})
    schedule = Schedule(0.2, 0.5, 1, 1, -1.0)  # the streams' deadline is over 30 s away
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.GRPCInferenceServiceStub(channel)
            started = time.monotonic()
            m = await stream_closed_loop(stub, request, concurrency=8, schedule=schedule, streams=2)
            elapsed = time.monotonic() - started
    finally:
        await server.stop(None)
    assert elapsed < 10, "the loop waited for answers the server no longer owed"
    assert m.requests == 0 and m.errors > 8, "each answer should have freed a slot to send again"
    unknown = "client: an answer with id 'bogus', which no request in flight has"
    assert m.error_messages == {unknown: m.error_messages[unknown]}, m.error_messages
