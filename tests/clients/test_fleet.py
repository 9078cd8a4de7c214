"""The load generator spread over processes (`--processes`, `wattserve_client.fleet`), against a
real server over loopback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from tests.clients.test_load_tools import QUICK, capacity, wattserve
from wattserve_client.fleet import LOAD_GENERATOR_BUSIEST, FleetError, dealt, load_generator
from wattserve_client.loadgen import (
    LOAD_GENERATOR,
    Measurement,
    Schedule,
    Window,
    load_generator_cpu,
    shares,
)
from wattserve_client.sweep import Target, build_request, point


@contextlib.contextmanager
def patch_affinity(cores: set[int]) -> Iterator[None]:
    """This process pinned to `cores` for a while."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def agents_of(me: psutil.Process) -> list[psutil.Process]:
    return [c for c in me.children() if "wattserve_client._agent" in " ".join(c.cmdline())]


def connections_to(process: psutil.Process, port: int) -> int:
    return sum(
        1
        for c in process.net_connections(kind="tcp")
        if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED
    )


@pytest.mark.parametrize("streams", [0, 5])
async def test_a_fleet_deals_connections_and_load_to_its_processes_and_pools_their_windows(
    address: str, streams: int
) -> None:
    port = int(address.rsplit(":", 1)[1])
    me = psutil.Process()
    schedule = Schedule(0.3, 0.5, 2, 4, 0.5)
    async with load_generator(address, connections=3, processes=2) as loads:
        agents = agents_of(me)
        assert len(agents) == 2
        request = await build_request(loads.stub, Target(address, "tabular_classifier"))
        cpu_before = [a.cpu_times().user + a.cpu_times().system for a in agents]
        closed = await loads.closed_loop(
            request,
            concurrency=10,
            schedule=schedule,
            streams=streams,
            cpu_probes=[load_generator_cpu],
        )
        cpu_after = [a.cpu_times().user + a.cpu_times().system for a in agents]
        # gRPC connects on the first call; the connections stay open for the next load.
        assert sorted(connections_to(a, port) for a in agents) == [1, 2]
        opened = await loads.open_loop(request, rate_per_s=400, schedule=schedule, streams=streams)
    assert closed.requests > 0 and closed.errors == 0, closed.error_messages
    assert closed.in_flight_max == 10
    assert all(after - before > 0.05 for before, after in zip(cpu_before, cpu_after, strict=True))
    total, busiest = closed.cpu_cores(LOAD_GENERATOR), closed.cpu_cores(LOAD_GENERATOR_BUSIEST)
    assert total is not None and busiest is not None and 0 < busiest < total
    # Open loop: the rate is shared out, and the pooled windows deliver all of it.
    assert opened.errors == 0, opened.error_messages
    assert opened.requests_per_s == pytest.approx(400, rel=0.1)
    for window in opened.windows:  # both agents' completions fall in the parent's windows
        assert window.requests_per_s > 0.7 * 400, "one agent's share (half) is missing"
    assert agents_of(me) == []


async def test_a_fleet_whose_process_dies_fails_with_its_name_and_stops_the_others(
    address: str,
) -> None:
    me = psutil.Process()
    schedule = Schedule(0.2, 0.5, 3, 60, -1.0)  # never stable: runs until stopped
    with pytest.raises(
        FleetError,
        match=r"load generator process \d \(pid \d+\) exited with "
        r"code -9 at '(mark|cut)'",
    ):
        async with load_generator(address, connections=2, processes=2) as loads:
            request = await build_request(loads.stub, Target(address, "tabular_classifier"))
            run = asyncio.create_task(loads.closed_loop(request, concurrency=4, schedule=schedule))
            await asyncio.sleep(1.0)
            agents = agents_of(me)
            os.kill(agents[0].pid, signal.SIGKILL)
            await asyncio.wait_for(run, timeout=10)
    assert agents_of(me) == []


def test_sweep_and_capacity_from_several_processes_name_them_in_their_reports(
    address: str, tmp_path: Path
) -> None:
    out_json = tmp_path / "sweep.json"
    done = wattserve(
        "sweep", "--target", address, "--model", "tabular_classifier", "--concurrency", "1,6",
        "--processes", "2", "--json", str(out_json), *QUICK,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(out_json.read_text())
    assert result["mode"] == "closed-loop concurrency sweep from 2 load generator processes"
    assert result["load_generator_processes"] == 2 and result["connections"] == 2
    for p in result["points"]:  # at concurrency 1, one of the processes has nothing to send
        assert p["requests"] > 0 and p["errors"] == 0
        assert 0 < p["load_generator_busiest_process_cores"] <= p["load_generator_cpu_cores"]
    code, output, report = capacity(
        address, tmp_path, "--slo-p99-ms", "2000", "--processes", "2", "--streams", "4"
    )
    assert code == 0, output
    assert (
        report["mode"] == "open-loop capacity search on 4 streams from 2 load generator processes"
    )
    assert report["load_generator_processes"] == 2 and report["connections"] == 2
    assert report["peak"]["passed"] and report["peak"]["errors"] == 0


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        (["--processes", "3", "--connections", "2"], "got --processes 3 and --connections 2"),
        (["--processes", "0"], "need --processes >= 1"),
    ],
)
def test_more_processes_than_connections_are_refused(
    address: str, extra: list[str], refusal: str
) -> None:
    for command in ("sweep", "capacity"):
        refused = wattserve(
            command, "--target", address, "--model", "tabular_classifier", "--slo-p99-ms", "100",
            *extra,
        )  # fmt: skip
        assert refused.returncode == 2
        assert f"wattserve {command}: need --processes >= 1 and --connections >= --processes" in (
            refused.stderr
        )
        assert refusal in refused.stderr


@pytest.mark.parametrize("connections", range(1, 9))
def test_every_process_owns_a_connection_a_stream_on_each_and_a_request_on_each_stream(
    connections: int,
) -> None:
    for processes in range(1, connections + 1):
        owned = dealt(connections, connections, processes)
        assert sum(owned) == connections and min(owned) >= 1
        for streams in range(connections, 3 * connections + 2):
            mine = dealt(streams, connections, processes)
            assert sum(mine) == streams
            assert all(s >= c for s, c in zip(mine, owned, strict=True)), (streams, mine, owned)
            for concurrency in range(streams, streams + 7):
                in_flight = dealt(streams, connections, processes, shares(concurrency, streams))
                assert sum(in_flight) == concurrency
                assert all(n >= s for n, s in zip(in_flight, mine, strict=True))


def test_an_agent_whose_parent_has_gone_exits_quietly() -> None:
    agent = subprocess.Popen(
        [sys.executable, "-m", "wattserve_client._agent"],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert agent.stdin is not None and agent.stderr is not None
    agent.stdin.close()  # what a parent's death looks like from the agent
    code = agent.wait(timeout=30)
    stderr = agent.stderr.read().decode()
    assert code == 0 and stderr == "", stderr


def test_processes_sharing_one_core_are_busy_together() -> None:
    """Two processes pinned to one core each use half of it: neither is near a full core, but
    together they have no more to give."""
    window = Window(0, 10**9, np.ones(5, np.int64), 0, {LOAD_GENERATOR: 0.95})
    window.cpu_cores[LOAD_GENERATOR_BUSIEST] = 0.48
    m = Measurement(windows=[window], stable=True, windows_run=1)
    with patch_affinity({0}):
        on_one_core = point("concurrency", 8, m, 1, processes=2)
    assert on_one_core["load_generator_busiest_process_cores"] == 0.48
    assert on_one_core["load_generator_busy"]
    # With a core each (where the machine has two), they had half of their CPU left.
    on_every_core = point("concurrency", 8, m, 1, processes=2)
    assert on_every_core["load_generator_busy"] is (len(os.sched_getaffinity(0)) < 2)
