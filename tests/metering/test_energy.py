"""EnergyMeter against the real codecarbon (no mocks of it); grid_intensity on its bundled data."""

from __future__ import annotations

import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from codecarbon import OfflineEmissionsTracker
from codecarbon.core.config import get_hierarchical_config

from wattserve.metering.energy import (
    EnergyMeter,
    EnergyMeterError,
    EnergyReading,
    EnergySettings,
    grid_intensity,
)

UJ_PER_KWH = 3.6e12
HAS_RAPL = Path("/sys/class/powercap/intel-rapl").exists()
HAS_NVIDIA = shutil.which("nvidia-smi") is not None

# What a user's environment could hold: every network output on, and values that would show if
# they won over ours (India's grid, PUE 3, a 60 s interval, a lock file, a forced intensity).
HOSTILE_ENV = {
    "CODECARBON_SAVE_TO_API": "true",
    "CODECARBON_API_ENDPOINT": "http://192.0.2.1",
    "CODECARBON_OUTPUT_METHODS": "csv,api,prometheus",
    "CODECARBON_SAVE_TO_FILE": "true",
    "CODECARBON_EMISSIONS_ENDPOINT": "http://192.0.2.1/emissions",
    "CODECARBON_PROMETHEUS_URL": "http://192.0.2.1:9091",
    "CODECARBON_ELECTRICITYMAPS_API_TOKEN": "token",
    "CODECARBON_CO2_SIGNAL_API_TOKEN": "token",
    "CODECARBON_COUNTRY_ISO_CODE": "IND",
    "CODECARBON_FORCE_CARBON_INTENSITY_G_CO2E_KWH": "999",
    "CODECARBON_PUE": "3",
    "CODECARBON_MEASURE_POWER_SECS": "60",
    "CODECARBON_API_CALL_INTERVAL": "100",
    "CODECARBON_ALLOW_MULTIPLE_RUNS": "false",
    "CODECARBON_CLOUD_PROVIDER": "aws",
    "CODECARBON_CLOUD_REGION": "us-east-1",
    "CODECARBON_LOG_LEVEL": "debug",
}
HOSTILE_CONFIG = "[codecarbon]\nsave_to_api = true\noutput_methods = csv,api\nlog_level = debug\n"


def settings(**overrides: Any) -> EnergySettings:
    values: dict[str, Any] = {
        "country_iso_code": "FRA",
        "region": None,
        "carbon_intensity_g_per_kwh": None,
        "pue": 1.0,
        "interval_s": 0.5,
        "tracking_mode": "process",
        "force_cpu_power_w": None,
        "force_ram_power_w": None,
        "gpu_ids": None,
    }
    values.update(overrides)
    return EnergySettings(**values)


@dataclass
class Run:
    """What one EnergyMeter run produced."""

    readings: list[EnergyReading]
    method: str
    final: Any  # codecarbon's own EmissionsData for the whole run
    readings_at_stop: int = 0
    connection_attempts: list[object] = field(default_factory=list)


class Readings:
    def __init__(self) -> None:
        self.items: list[EnergyReading] = []
        self._changed = threading.Condition()

    def __call__(self, reading: EnergyReading) -> None:
        with self._changed:
            self.items.append(reading)
            self._changed.notify_all()

    def wait_for(self, count: int, timeout_s: float) -> None:
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.items) >= count, timeout_s), self.items


def run_meter(energy_settings: EnergySettings, readings_wanted: int) -> Run:
    readings = Readings()
    meter = EnergyMeter(energy_settings, readings)
    meter.start()
    try:
        readings.wait_for(readings_wanted, timeout_s=10)
    finally:
        meter.stop()
    readings_at_stop = len(readings.items)
    for timer in [t for t in threading.enumerate() if isinstance(t, threading.Timer)]:
        timer.join(timeout=2)  # cancelled timers exit at once; a live one would not
        assert not timer.is_alive(), "a codecarbon timer survived stop()"
    return Run(
        readings=list(readings.items),
        method=meter.method,
        final=meter._tracker.final_emissions_data,  # codecarbon's own total, to check against
        readings_at_stop=readings_at_stop,
    )


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    """One run with CODECARBON_* variables and config files that switch every output on, and with
    every outbound connection (and DNS lookup) failing and recorded."""
    home, cwd = tmp_path_factory.mktemp("home"), tmp_path_factory.mktemp("cwd")
    (home / ".codecarbon.config").write_text(HOSTILE_CONFIG)
    (cwd / ".codecarbon.config").write_text(HOSTILE_CONFIG)
    attempts: list[object] = []

    def refuse(*args: object) -> Any:
        attempts.append(args)
        raise OSError("network disabled by test_energy")

    sigterm_handler = signal.getsignal(signal.SIGTERM)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(home))
        patch.chdir(cwd)
        for name, value in HOSTILE_ENV.items():
            patch.setenv(name, value)
        patch.setenv("CODECARBON_OUTPUT_DIR", str(cwd))
        csv_in_tmp = Path(tempfile.gettempdir()) / "emissions.csv"  # our (unused) output_dir
        csv_before = csv_in_tmp.stat().st_mtime_ns if csv_in_tmp.exists() else None
        patch.setattr(socket.socket, "connect", lambda sock, address: refuse("connect", address))
        patch.setattr(socket.socket, "connect_ex", lambda sock, address: refuse("connect", address))
        patch.setattr(socket, "create_connection", lambda *a, **k: refuse("create_connection", a))
        patch.setattr(socket, "getaddrinfo", lambda *a, **k: refuse("getaddrinfo", a))

        # Controls: the trap catches, codecarbon does read this environment, and a tracker built
        # without explicit values would send data to the API and the HTTP endpoint.
        with pytest.raises(OSError):
            socket.create_connection(("192.0.2.1", 80))
        assert attempts.pop()[0] == "create_connection"
        conf = get_hierarchical_config()
        assert conf["save_to_api"] == "true" and conf["output_methods"] == "csv,api,prometheus"
        plain = OfflineEmissionsTracker(
            country_iso_code="FRA", allow_multiple_runs=True, log_level="error"
        )
        outputs = {type(handler).__name__ for handler in plain._output_handlers}
        assert {"CodeCarbonAPIOutput", "HTTPOutput", "FileOutput"} <= outputs

        run = run_meter(settings(), readings_wanted=4)
        run.connection_attempts = attempts
        assert not list(cwd.glob("*.csv")), "codecarbon wrote a file"
        assert (csv_in_tmp.stat().st_mtime_ns if csv_in_tmp.exists() else None) == csv_before
    assert signal.getsignal(signal.SIGTERM) is sigterm_handler
    yield run


def test_meter_stays_offline_and_ignores_codecarbon_env_and_config(hostile_run: Run) -> None:
    assert hostile_run.connection_attempts == []
    readings = hostile_run.readings
    assert len(readings) >= 4
    assert len(readings) == hostile_run.readings_at_stop  # nothing arrived after stop()
    # The 0.5 s interval won over CODECARBON_MEASURE_POWER_SECS=60 (first and last are partial).
    assert all(0.3 < r.duration_s < 1.5 for r in readings[1:-2])
    assert all(r.energy_uj > 0 for r in readings if r.duration_s > 0.1)
    expected_cpu = "cpu=measured:rapl" if HAS_RAPL else "cpu=estimated:tdp"
    assert hostile_run.method.startswith(expected_cpu + ";ram=estimated:model;gpu=")
    assert all(r.method == hostile_run.method for r in readings)
    if not HAS_NVIDIA:
        assert hostile_run.method.endswith("gpu=absent")
        assert all(r.gpu_energy_uj is None for r in readings)


def test_readings_add_up_to_codecarbons_own_total(hostile_run: Run) -> None:
    readings, final = hostile_run.readings, hostile_run.final
    # Exact: readings are differences of rounded cumulative totals (at most 1 µJ per reading off).
    assert sum(r.energy_uj for r in readings) == round(final.energy_consumed * UJ_PER_KWH)
    assert sum(r.cpu_energy_uj for r in readings) == round(final.cpu_energy * UJ_PER_KWH)
    assert sum(r.ram_energy_uj for r in readings) == round(final.ram_energy * UJ_PER_KWH)
    assert sum(r.codecarbon_emissions_ug for r in readings) == round(final.emissions * 1e9)
    assert sum(r.duration_s for r in readings) == pytest.approx(final.duration, abs=1e-6)
    assert final.pue == 1.0 and final.country_iso_code == "FRA"  # not CODECARBON_PUE / _COUNTRY


def test_codecarbon_emissions_match_our_grid_intensity(hostile_run: Run) -> None:
    intensity = grid_intensity("FRA", None, None).g_per_kwh
    readings = hostile_run.readings
    for reading in readings:  # per reading: 1 % or the 1 µg rounding of small intervals
        expected_ug = reading.energy_uj / UJ_PER_KWH * intensity * 1e6
        assert reading.codecarbon_emissions_ug == pytest.approx(expected_ug, rel=0.01, abs=1)
    total_kwh = sum(r.energy_uj for r in readings) / UJ_PER_KWH
    total_ug = sum(r.codecarbon_emissions_ug for r in readings)
    assert total_ug == pytest.approx(total_kwh * intensity * 1e6, rel=0.01)


def test_forced_power_and_pue_show_in_readings_and_method() -> None:
    run = run_meter(
        settings(
            country_iso_code="DEU",
            pue=2.0,
            interval_s=0.5,
            tracking_mode="machine",
            force_cpu_power_w=20.0,
            force_ram_power_w=10.0,
        ),
        readings_wanted=4,
    )
    assert run.method.startswith("cpu=estimated:forced;ram=estimated:forced;gpu=")
    intensity = grid_intensity("DEU", None, None).g_per_kwh
    readings = [r for r in run.readings if r.duration_s > 0.3]
    assert len(readings) >= 3
    # codecarbon times each part from the end of its previous measurement, the reading's duration
    # from another clock; a thread stalled on a loaded machine (CI) parts the two by tens of ms.
    # So each reading is held to 20 % (a lost PUE would be 50 % off) and the run to 5 %.
    for reading in readings:
        # RAM is a constant 10 W, times PUE 2; the CPU 20 W scaled by load, at least 10 %.
        assert reading.ram_energy_uj == pytest.approx(10 * 2 * reading.duration_s * 1e6, rel=0.2)
        cpu_w = reading.cpu_energy_uj / 1e6 / reading.duration_s
        assert 20 * 0.1 * 2 * 0.8 <= cpu_w <= 20 * 2 * 1.2
        parts = reading.cpu_energy_uj + reading.ram_energy_uj + (reading.gpu_energy_uj or 0)
        assert reading.energy_uj == pytest.approx(parts, abs=3)
        expected_ug = reading.energy_uj / UJ_PER_KWH * intensity * 1e6
        assert reading.codecarbon_emissions_ug == pytest.approx(expected_ug, rel=0.01, abs=1)
    duration_s = sum(r.duration_s for r in readings)
    ram_uj = sum(r.ram_energy_uj for r in readings)
    assert ram_uj == pytest.approx(10 * 2 * duration_s * 1e6, rel=0.05)
    cpu_w = sum(r.cpu_energy_uj for r in readings) / 1e6 / duration_s
    assert 20 * 0.1 * 2 * 0.95 <= cpu_w <= 20 * 2 * 1.05


def test_start_failure_is_a_clear_error_not_silence(monkeypatch: pytest.MonkeyPatch) -> None:
    # codecarbon suppresses its own exceptions; a missing output_dir is one it raises early.
    monkeypatch.setattr(tempfile, "gettempdir", lambda: "/nonexistent/wattserve-test")
    readings = Readings()
    meter = EnergyMeter(settings(), readings)
    with pytest.raises(EnergyMeterError, match="could not start") as failure:
        meter.start()
    assert "nonexistent" in str(failure.value.__cause__)
    with pytest.raises(RuntimeError):
        _ = meter.method
    meter.stop()  # nothing to stop: a no-op
    assert readings.items == []


@pytest.mark.parametrize(
    ("country", "region", "g_per_kwh", "source"),
    [
        ("FRA", None, 56.039, "codecarbon global_energy_mix: FRA"),
        ("USA", None, 369.473, "codecarbon global_energy_mix: USA"),
        ("DEU", None, 380.95, "codecarbon global_energy_mix: DEU"),
        ("IND", None, 713.441, "codecarbon global_energy_mix: IND"),
        ("fra", None, 56.039, "codecarbon global_energy_mix: FRA"),
        ("USA", "California", 179.064, "codecarbon regional data: USA/california"),
        ("CAN", "ontario", 64.722, "codecarbon regional data: CAN/ontario"),
        ("CHN", "Beijing", 555.4, "codecarbon regional data: CHN/beijing"),
        ("SWE", "SE1", 25.9, "codecarbon regional data: SWE/se1"),
        (None, None, 475.0, "codecarbon world average (no country set)"),
    ],
)
def test_grid_intensity_from_bundled_data(
    country: str | None, region: str | None, g_per_kwh: float, source: str
) -> None:
    intensity = grid_intensity(country, region, None)
    assert intensity.g_per_kwh == pytest.approx(g_per_kwh, abs=0.001)
    assert intensity.source == source


def test_grid_intensity_override_wins() -> None:
    assert grid_intensity("FRA", None, 123.0).g_per_kwh == 123.0
    assert grid_intensity(None, None, 0.0).source == "override"
    with pytest.raises(ValueError):
        grid_intensity(None, None, -1.0)


@pytest.mark.parametrize(
    ("country", "region", "named"),
    [
        ("XXX", None, "XXX"),
        ("FR", None, "FR"),
        ("USA", "Atlantis", "atlantis"),
        ("SWE", "SE9", "se9"),
        ("FRA", "Bretagne", "FRA"),
        (None, "California", "California"),
    ],
)
def test_unknown_places_are_errors_not_world_averages(
    country: str | None, region: str | None, named: str
) -> None:
    with pytest.raises(ValueError, match=f"(?i){named}"):
        grid_intensity(country, region, None)
    with pytest.raises(ValueError, match=f"(?i){named}"):  # before codecarbon is ever started
        EnergyMeter(settings(country_iso_code=country, region=region), Readings())


@pytest.mark.parametrize(
    "overrides",
    [{"pue": 0.9}, {"interval_s": 0}, {"tracking_mode": "gpu"}, {"force_ram_power_w": -1.0}],
)
def test_settings_are_validated(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        settings(**overrides)
