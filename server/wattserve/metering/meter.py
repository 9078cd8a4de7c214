"""The meter: closes an interval every second, attributes its energy, carbon and cost, writes the
ledger off the event loop, and keeps the running totals that the exports read."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from wattserve.core.errors import WattserveError
from wattserve.core.types import Parameter
from wattserve.metering import ledger
from wattserve.metering.attribution import Measured
from wattserve.metering.energy import EnergyReading, EnergySettings
from wattserve.metering.energy_process import EnergyProcess
from wattserve.metering.hardware import HardwareSample, HardwareSampler
from wattserve.metering.histograms import BATCH_SIZE_BUCKETS, LATENCY_BUCKETS_S, Histogram
from wattserve.metering.intensity import grid_intensity
from wattserve.metering.recorder import IntervalUsage, ModelKey, UsageKey, UsageRecorder

logger = logging.getLogger(__name__)

J_PER_KWH = 3.6e6


@dataclass(frozen=True, slots=True)
class Prices:
    energy_per_kwh: float
    instance_per_hour: float
    currency: str


@dataclass(frozen=True, slots=True)
class MeterConfig:
    ledger_path: Path
    interval_s: float
    energy: EnergySettings | None
    """None: no energy measurement (intervals carry no energy data)."""
    prices: Prices
    worker: int = 0
    """This process's index among the server's worker processes."""
    workers: int = 1
    """Worker processes sharing the machine: this one is charged instance_per_hour ÷ workers."""


@dataclass(slots=True)
class Totals:
    """Cumulative figures of one (model, version, tenant), or of everything measured."""

    requests: int = 0
    rows: int = 0
    errors: int = 0
    energy_uj: int | None = None
    carbon_ug: int | None = None
    cost_nanos: int | None = None

    def add(self, energy_uj: int | None, carbon_ug: int | None, cost_nanos: int | None) -> None:
        if energy_uj is None:
            return
        self.energy_uj = (self.energy_uj or 0) + energy_uj
        self.carbon_ug = (self.carbon_ug or 0) + (carbon_ug or 0)
        self.cost_nanos = (self.cost_nanos or 0) + (cost_nanos or 0)


@dataclass(slots=True)
class Whole:
    energy_uj: int | None = None
    idle_energy_uj: int = 0
    carbon_ug: int = 0
    idle_carbon_ug: int = 0
    cost_nanos: int = 0
    idle_cost_nanos: int = 0


@dataclass(frozen=True, slots=True)
class Estimate:
    """One request's figures at the model's most recent rate per prediction."""

    energy_j: float
    carbon_g: float
    cost: float
    currency: str


class Meter:
    """Owns the recorder, the energy source, the ledger writer and the running totals."""

    def __init__(self, config: MeterConfig) -> None:
        self.config = config
        self.prices = config.prices
        self.recorder = UsageRecorder(time.perf_counter_ns())
        # The core's UsageObserver: requests go straight to the recorder.
        self.request = self.recorder.request
        self._interval_start_ms = time.time_ns() // 1_000_000
        self.intensity = (
            grid_intensity(
                config.energy.country_iso_code,
                config.energy.region,
                config.energy.carbon_intensity_g_per_kwh,
            )
            if config.energy is not None
            else None
        )
        self.energy_method = "none"
        self.usage_totals: dict[UsageKey, Totals] = defaultdict(Totals)
        self.whole = Whole()
        self.failures: Counter[tuple[str, str, str]] = Counter()
        self.histograms: dict[str, dict[ModelKey, Histogram]] = {
            kind: defaultdict(lambda b=bounds: Histogram(b))  # type: ignore[misc]
            for kind, bounds in (
                ("request", LATENCY_BUCKETS_S),
                ("queue", LATENCY_BUCKETS_S),
                ("compute", LATENCY_BUCKETS_S),
                ("batch_rows", BATCH_SIZE_BUCKETS),
            )
        }
        self.hardware_sample: HardwareSample | None = None
        self._rates: dict[ModelKey, tuple[float, float]] = {}
        """(µJ, nano-currency) per prediction in the latest interval that served the model."""
        self._hardware: HardwareSampler | None = None
        self._energy: EnergyProcess | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger")
        self._connection: sqlite3.Connection | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.Task[None] | None = None
        self._last_write: asyncio.Future[object] | None = None
        self._closes = 0

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._connection = await self._loop.run_in_executor(
            self._writer, ledger.connect, self.config.ledger_path
        )
        self._hardware = await asyncio.to_thread(HardwareSampler)
        if self.config.energy is not None:
            energy = EnergyProcess(self.config.energy, self._reading_arrived)
            try:
                await asyncio.to_thread(energy.start)
            except Exception as exc:  # codecarbon could not start: meter without energy data
                logger.error("energy metering is off: %s", exc)
            else:
                self._energy = energy
                self.energy_method = energy.method
                if self.config.workers > 1 and "gpu=absent" not in energy.method:
                    # codecarbon reads a GPU's energy for the whole device, not per process.
                    await asyncio.to_thread(energy.stop)
                    raise WattserveError(
                        f"energy metering found a GPU ({energy.method}); codecarbon measures a "
                        f"GPU whole, so each of the {self.config.workers} worker processes would "
                        "count all of its energy: run one worker, or set --energy-metering false"
                    )
        if self._energy is None:
            self._timer = asyncio.create_task(self._tick(), name="meter intervals")
        self._interval_start_ms = time.time_ns() // 1_000_000
        self.recorder.reset(time.perf_counter_ns())
        logger.info(
            "meter: ledger %s, energy %s, grid intensity %s",
            self.config.ledger_path,
            self.energy_method,
            f"{self.intensity.g_per_kwh} g/kWh ({self.intensity.source})"
            if self.intensity
            else "n/a",
        )

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.config.interval_s)
            self.close_interval(None)

    def _reading_arrived(self, reading: EnergyReading) -> None:
        """On the energy reader's thread: hand the reading to the loop, nothing more."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self.close_interval, reading)

    def close_interval(self, reading: EnergyReading | None) -> None:
        end_ns = time.perf_counter_ns()
        end_ms = time.time_ns() // 1_000_000
        usage = self.recorder.close(end_ns)
        measured = self._measured(reading, (end_ns - usage.start_ns) / 1e9)
        result = usage.tally.attribute(end_ns, measured)
        rows = []
        shares = {(s.model, s.version, s.tenant): s for s in result.shares}
        for key in sorted(usage.totals.keys() | shares.keys()):
            totals = usage.totals.get(key)
            share = shares.get(key)
            rows.append(
                ledger.UsageRow(
                    model=key[0],
                    version=key[1],
                    tenant=key[2],
                    requests=totals.requests if totals else 0,
                    rows=totals.rows if totals else 0,
                    batches=totals.batches if totals else 0,
                    errors=totals.errors if totals else 0,
                    compute_ns=share.compute_ns if share else 0,
                    energy_uj=share.energy_uj if share else (0 if measured else None),
                    carbon_ug=share.carbon_ug if share else (0 if measured else None),
                    cost_nanos=share.cost_nanos if share else (0 if measured else None),
                )
            )
        idle = result.idle
        interval = ledger.IntervalRow(
            start_unix_ms=self._interval_start_ms,
            end_unix_ms=end_ms,
            energy_uj=reading.energy_uj if reading else None,
            cpu_energy_uj=reading.cpu_energy_uj if reading else None,
            ram_energy_uj=reading.ram_energy_uj if reading else None,
            gpu_energy_uj=reading.gpu_energy_uj if reading else None,
            energy_method=reading.method if reading else "none",
            busy_fraction=result.busy_fraction,
            idle_energy_uj=idle.energy_uj if idle else None,
            carbon_intensity_g_per_kwh=self.intensity.g_per_kwh if self.intensity else None,
            carbon_intensity_source=self.intensity.source if self.intensity else None,
            carbon_ug=measured.carbon_ug if measured else None,
            idle_carbon_ug=idle.carbon_ug if idle else None,
            energy_price_per_kwh=self.prices.energy_per_kwh,
            instance_price_per_hour=self.prices.instance_per_hour,
            currency=self.prices.currency,
            cost_nanos=measured.cost_nanos if measured else None,
            idle_cost_nanos=idle.cost_nanos if idle else None,
            pue=self.config.energy.pue if self.config.energy else None,
            codecarbon_emissions_ug=reading.codecarbon_emissions_ug if reading else None,
            worker=self.config.worker,
            workers=self.config.workers,
        )
        self._interval_start_ms = end_ms
        self._write(interval, rows)
        self._fold(usage, rows, measured, idle)
        if self._hardware is not None:
            self.hardware_sample = self._hardware.sample()
        self._closes += 1

    def _measured(self, reading: EnergyReading | None, seconds: float) -> Measured | None:
        if reading is None or self.intensity is None:
            return None
        kwh = reading.energy_uj / 1e6 / J_PER_KWH
        instance_per_hour = self.prices.instance_per_hour / self.config.workers
        cost = kwh * self.prices.energy_per_kwh + instance_per_hour * seconds / 3600
        return Measured(
            energy_uj=reading.energy_uj,
            carbon_ug=round(kwh * self.intensity.g_per_kwh * 1e6),
            cost_nanos=round(cost * 1e9),
        )

    def _write(self, interval: ledger.IntervalRow, rows: list[ledger.UsageRow]) -> None:
        assert self._loop is not None and self._connection is not None
        self._last_write = self._loop.run_in_executor(
            self._writer, ledger.write_interval, self._connection, interval, rows
        )
        self._last_write.add_done_callback(_log_write_failure)

    def _fold(
        self,
        usage: IntervalUsage,
        rows: list[ledger.UsageRow],
        measured: Measured | None,
        idle: Measured | None,
    ) -> None:
        """Add the closed interval to the running totals, histograms and per-row rates."""
        per_model: dict[ModelKey, list[int]] = defaultdict(lambda: [0, 0, 0])
        for row in rows:
            totals = self.usage_totals[(row.model, row.version, row.tenant)]
            totals.requests += row.requests
            totals.rows += row.rows
            totals.errors += row.errors
            totals.add(row.energy_uj, row.carbon_ug, row.cost_nanos)
            if row.energy_uj is not None:
                acc = per_model[(row.model, row.version)]
                acc[0] += row.rows
                acc[1] += row.energy_uj
                acc[2] += row.cost_nanos or 0
        for key, (model_rows, energy, cost) in per_model.items():
            if model_rows:
                self._rates[key] = (energy / model_rows, cost / model_rows)
        if measured is not None and idle is not None:
            whole = self.whole
            whole.energy_uj = (whole.energy_uj or 0) + measured.energy_uj
            whole.carbon_ug += measured.carbon_ug
            whole.cost_nanos += measured.cost_nanos
            whole.idle_energy_uj += idle.energy_uj
            whole.idle_carbon_ug += idle.carbon_ug
            whole.idle_cost_nanos += idle.cost_nanos
        for (model, version, _), entry in usage.totals.items():
            self.histograms["request"][(model, version)].add(entry.total_ns, scale=1e-9)
            self.histograms["queue"][(model, version)].add(entry.queue_ns, scale=1e-9)
            for code, count in entry.failures.items():
                self.failures[(model, version, code)] += count
        for key, samples in usage.batches.items():
            compute_ns, batch_rows = zip(*samples, strict=True)
            self.histograms["compute"][key].add(compute_ns, scale=1e-9)
            self.histograms["batch_rows"][key].add(batch_rows)

    def response_parameters(self, model: str, version: str, rows: int) -> dict[str, Parameter]:
        """Figures for one response, under the wattserve_ prefix (docs/metering.md)."""
        estimate = self.estimate(model, version, rows)
        if estimate is None:
            return {"wattserve_estimate": "no energy data for this model yet"}
        return {
            "wattserve_energy_j": estimate.energy_j,
            "wattserve_carbon_g": estimate.carbon_g,
            "wattserve_cost": estimate.cost,
            "wattserve_currency": estimate.currency,
            "wattserve_estimate": "rows x the model's energy per prediction in the last interval",
        }

    def estimate(self, model: str, version: str, rows: int) -> Estimate | None:
        """A request's energy, carbon and cost at its model's latest rate (None before any)."""
        rate = self._rates.get((model, version))
        if rate is None or self.intensity is None:
            return None
        energy_uj, cost_nanos = rate
        energy_j = energy_uj * rows / 1e6
        return Estimate(
            energy_j=energy_j,
            # From the energy, not from the ledger's rounded micro-grams: a small share of a
            # clean grid's interval rounds to 0 µg while its energy does not.
            carbon_g=energy_j / J_PER_KWH * self.intensity.g_per_kwh,
            cost=cost_nanos * rows / 1e9,
            currency=self.prices.currency,
        )

    async def stop(self) -> None:
        """Close the last partial interval (with codecarbon's final reading); flush the ledger."""
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer
        if self._energy is not None:
            closed_before = self._closes
            await asyncio.to_thread(self._energy.stop)
            # stop() delivered the final reading through call_soon_threadsafe before returning;
            # two loop iterations let that callback run.
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if self._closes == closed_before:  # no final reading: keep the usage all the same
                self.close_interval(None)
        else:
            self.close_interval(None)
        if self._last_write is not None:
            await asyncio.shield(self._last_write)
        if self._connection is not None:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer, self._connection.close)
        self._writer.shutdown(wait=True)
        if self._hardware is not None:
            self._hardware.close()


def _log_write_failure(future: asyncio.Future[object]) -> None:
    if not future.cancelled() and future.exception() is not None:
        logger.error("ledger write failed", exc_info=future.exception())
