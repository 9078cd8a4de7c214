"""Every server setting in one typed place: `wattserve serve` flags and WATTSERVE_* variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wattserve.batching.loop_load import uvloop_installed


def default_demo_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "wattserve" / "demo-repository"


def default_ledger_path() -> Path:
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "wattserve" / "ledger.sqlite"


class ServeSettings(BaseSettings):
    """Settings of `wattserve serve`. Each can be set as a flag or a WATTSERVE_<NAME> variable."""

    model_config = SettingsConfigDict(
        env_prefix="WATTSERVE_", extra="forbid", frozen=True, use_attribute_docstrings=True
    )

    repository: Path | None = None
    """Model repository folder (<repo>/<model>/<version>/model.onnx). Default: the built-in demo
    repository, built on first start in --demo-dir."""
    demo_dir: Path = Field(default_factory=default_demo_dir)
    """Where the demo repository is built and kept."""
    host: str = "127.0.0.1"
    """Address to listen on; 0.0.0.0 or :: for every interface."""
    port: Annotated[int, Field(ge=0, le=65535)] = 8001
    """gRPC port; 0 picks a free one (the ready log line says which)."""
    model_control_mode: Literal["none", "explicit"] = "none"
    """none: serve every model in the repository, refuse load/unload RPCs. explicit: serve only
    --load-model models and accept RepositoryModelLoad/Unload."""
    load_model: list[str] = []
    """With explicit model control: models to load at start ("*" for all). Repeatable."""
    max_message_bytes: Annotated[int, Field(ge=1024, le=2**31 - 1)] = 2**31 - 1
    """Largest gRPC message accepted or sent, in bytes."""
    grace_period_s: Annotated[float, Field(ge=0)] = 10.0
    """On shutdown, how long in-flight requests may take to finish before they are cancelled."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severe log messages written to stderr."""
    workers: Annotated[int, Field(ge=1, le=64)] = 1
    """Server processes sharing the gRPC port (SO_REUSEPORT), each with its own sessions and
    batchers and, when there are enough, its own share of the allowed cores. The kernel spreads
    connections (not requests) over them. With more than one, the Prometheus endpoint sums the
    workers, ModelStatistics answers for the worker holding the connection, and explicit model
    control and machine-wide energy tracking are refused (docs/workers.md)."""
    event_loop: Literal["auto", "asyncio", "uvloop"] = "auto"
    """The event loop that runs gRPC, the batchers and the models that run on the loop. auto:
    uvloop where it is installed (a dependency on Linux and macOS), else asyncio's own. uvloop
    spends about a fifth fewer instructions per request (docs/performance.md)."""

    # --- the meter (docs/metering.md) ---
    metering_enabled: bool = True
    """Run the meter at all: usage ledger, energy, Prometheus endpoint. Off, the server keeps only
    Triton's ModelStatistics (for measuring the meter's own cost: bench/meter_overhead.py)."""
    ledger_path: Path = Field(default_factory=default_ledger_path)
    """SQLite usage ledger: per-interval energy, carbon and cost by model, version and tenant."""
    meter_interval_s: Annotated[float, Field(ge=0.2, le=60)] = 1.0
    """Length of one metering interval (also codecarbon's measurement period): the most a crash
    can lose from the ledger."""
    energy_metering: bool = True
    """Measure energy with codecarbon (offline). Off: usage is still recorded, energy is "no
    data" (never zero)."""
    country_iso_code: str | None = None
    """ISO 3166 alpha-3 country of the machine (e.g. FRA, USA) for codecarbon's grid carbon
    intensity; unset means the world average, which reports say."""
    region: str | None = None
    """Region inside the country (e.g. a US state) where codecarbon has regional data."""
    carbon_intensity_g_per_kwh: Annotated[float, Field(ge=0)] | None = None
    """Grid carbon intensity override, gCO2e per kWh (e.g. from your utility)."""
    pue: Annotated[float, Field(ge=1.0, le=5.0)] = 1.0
    """Power usage effectiveness of the data centre: facility energy ÷ IT energy."""
    tracking_mode: Literal["process", "machine"] = "process"
    """Energy of this process's CPU share (process) or of the whole machine (machine)."""
    force_cpu_power_w: Annotated[float, Field(gt=0)] | None = None
    """CPU power (W) at full load when the chip's TDP is unknown; else codecarbon estimates."""
    force_ram_power_w: Annotated[float, Field(gt=0)] | None = None
    """RAM power (W) instead of codecarbon's estimate from installed memory."""
    energy_price_per_kwh: Annotated[float, Field(ge=0)] = 0.15
    """Electricity price per kWh, in --currency (facility energy, i.e. after PUE)."""
    instance_price_per_hour: Annotated[float, Field(ge=0)] = 0.0
    """Price of the machine per hour, in --currency, shared out by usage (idle keeps the rest)."""
    currency: Annotated[str, Field(pattern=r"^[A-Z]{3}$")] = "USD"
    """ISO 4217 code of the prices above."""
    response_figures: bool = False
    """Add each request's estimated energy, carbon and cost to every response (else only when
    the request sets the parameter wattserve_energy = true)."""
    metrics_host: str = "127.0.0.1"
    """Address of the Prometheus endpoint (HTTP /metrics)."""
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 8002
    """Port of the Prometheus endpoint; 0 picks a free one (logged at start)."""
    metrics_enabled: bool = True
    """Serve the Prometheus endpoint."""

    @model_validator(mode="after")
    def _uvloop_installed(self) -> ServeSettings:
        if self.event_loop == "uvloop" and not uvloop_installed():
            raise ValueError("event_loop = uvloop, but uvloop is not installed: pip install uvloop")
        return self

    @model_validator(mode="after")
    def _workers_compatible(self) -> ServeSettings:
        if self.workers == 1:
            return self
        if self.model_control_mode == "explicit":
            raise ValueError(
                f"workers = {self.workers} cannot be combined with model_control_mode = "
                "explicit: a load or unload request would reach only the worker holding its "
                "connection"
            )
        if self.metering_enabled and self.energy_metering and self.tracking_mode == "machine":
            raise ValueError(
                f"workers = {self.workers} cannot be combined with tracking_mode = machine: "
                "every worker would count the whole machine's energy (use process)"
            )
        return self
