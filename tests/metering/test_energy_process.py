"""EnergyProcess: codecarbon in a child process that charges the server (this test process)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tests.metering.test_energy import Readings, settings
from wattserve.metering import energy
from wattserve.metering.energy import EnergyMeterError, _ProcessTree
from wattserve.metering.energy_process import EnergyProcess

CPU_W = 100.0


def busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_the_child_charges_the_parent_and_hands_over_the_last_reading() -> None:
    readings = Readings()
    meter = EnergyProcess(
        settings(interval_s=0.5, force_cpu_power_w=CPU_W, force_ram_power_w=1.0), readings
    )
    meter.start()
    assert meter.method.startswith("cpu=estimated:forced;ram=estimated:forced;gpu=")
    readings.wait_for(2, timeout_s=10)
    children = [  # the session's test server is a child of this process too
        c for c in psutil.Process().children() if "wattserve.metering.energy_process" in c.cmdline()
    ]
    assert len(children) == 1
    started = len(readings.items)
    cpu_before, wall_before = time.process_time(), time.perf_counter()
    busy(1.5)  # this process, not the child, burns CPU: the readings must show it
    cpu_s, wall_s = time.process_time() - cpu_before, time.perf_counter() - wall_before
    meter.stop()
    assert not children[0].is_running()
    during = readings.items[started:]
    assert during, "no reading arrived while this process was busy, or after stop()"
    energy_j = sum(r.cpu_energy_uj for r in during) / 1e6
    covered_s = sum(r.duration_s for r in during)
    # Process mode: TDP x (this process's CPU share of the machine). The readings also cover a
    # little idle time around the busy loop, hence the generous lower bound.
    expected_w = CPU_W * (cpu_s / wall_s) / psutil.cpu_count()
    assert energy_j / covered_s >= 0.5 * expected_w, (energy_j, covered_s, expected_w)
    # The last reading is in before stop() returns: nothing arrives after it.
    count = len(readings.items)
    time.sleep(1.0)
    assert len(readings.items) == count


def test_a_child_that_dies_at_start_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "executable", "/bin/false")  # the child exits without a word
    readings = Readings()
    meter = EnergyProcess(settings(), readings)
    with pytest.raises(EnergyMeterError, match="exited at start"):
        meter.start()
    with pytest.raises(RuntimeError):
        _ = meter.method
    meter.stop()  # nothing to stop: a no-op
    assert readings.items == []


def test_the_child_stops_when_the_server_is_killed() -> None:
    server = textwrap.dedent(
        """
        import sys, time
        from tests.metering.test_energy import Readings, settings
        from wattserve.metering.energy_process import EnergyProcess
        meter = EnergyProcess(settings(interval_s=0.5), Readings())
        meter.start()
        print("started", flush=True)
        time.sleep(60)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", server], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None and process.stdout.readline() == "started\n"
        (child,) = psutil.Process(process.pid).children()  # the energy process, alone
        process.kill()  # SIGKILL: no clean-up code runs in the server
        process.wait()
        child.wait(timeout=10)  # psutil.TimeoutExpired fails the test if it lingers
    finally:
        process.kill()


def test_charged_children_are_found_again_at_each_refresh_and_dropped_when_they_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """codecarbon charges the server's descendants too; the energy process looks them up every
    CHILDREN_REFRESH_S instead of scanning /proc three times per second."""

    def sleeper() -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def pids() -> set[int]:
        return {child.pid for child in tree.children(recursive=True)}

    monkeypatch.setattr(energy, "CHILDREN_REFRESH_S", 3600.0)
    first = sleeper()
    second: subprocess.Popen[bytes] | None = None
    try:
        tree = _ProcessTree(os.getpid())
        assert first.pid in pids()  # the first call looks
        second = sleeper()
        assert second.pid not in pids()  # not looked for again before the refresh
        first.kill()
        first.wait()
        assert first.pid not in pids()  # an exited child is dropped at once
        monkeypatch.setattr(energy, "CHILDREN_REFRESH_S", 0.0)
        assert second.pid in pids()
    finally:
        for process in (first, second):
            if process is not None:
                process.kill()
                process.wait()
