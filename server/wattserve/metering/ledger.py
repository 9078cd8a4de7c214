"""The usage ledger: an SQLite file (WAL) of closed intervals and their attributed usage rows.

Schema and units are documented in docs/metering.md: energy in µJ, carbon in µg CO2e, money in
nano-units of the configured currency (a second of a small server costs well under a millionth
of a dollar), all integers so that totals add up exactly.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS intervals (
  id INTEGER PRIMARY KEY,
  start_unix_ms INTEGER NOT NULL,
  end_unix_ms INTEGER NOT NULL,
  energy_uj INTEGER,
  cpu_energy_uj INTEGER,
  ram_energy_uj INTEGER,
  gpu_energy_uj INTEGER,
  energy_method TEXT NOT NULL,
  busy_fraction REAL NOT NULL,
  idle_energy_uj INTEGER,
  carbon_intensity_g_per_kwh REAL,
  carbon_intensity_source TEXT,
  carbon_ug INTEGER,
  idle_carbon_ug INTEGER,
  energy_price_per_kwh REAL,
  instance_price_per_hour REAL,
  currency TEXT,
  cost_nanos INTEGER,
  idle_cost_nanos INTEGER,
  pue REAL,
  codecarbon_emissions_ug INTEGER
);
CREATE TABLE IF NOT EXISTS usage (
  interval_id INTEGER NOT NULL REFERENCES intervals(id),
  model TEXT NOT NULL,
  version TEXT NOT NULL,
  tenant TEXT NOT NULL,
  requests INTEGER NOT NULL,
  rows INTEGER NOT NULL,
  batches INTEGER NOT NULL,
  errors INTEGER NOT NULL,
  compute_ns INTEGER NOT NULL,
  energy_uj INTEGER,
  carbon_ug INTEGER,
  cost_nanos INTEGER,
  PRIMARY KEY (interval_id, model, version, tenant)
);
CREATE INDEX IF NOT EXISTS intervals_by_start ON intervals (start_unix_ms);
"""


@dataclass(frozen=True, slots=True)
class IntervalRow:
    """One closed interval: what was measured, and what was left as idle/overhead."""

    start_unix_ms: int
    end_unix_ms: int
    energy_uj: int | None
    cpu_energy_uj: int | None
    ram_energy_uj: int | None
    gpu_energy_uj: int | None
    energy_method: str
    busy_fraction: float
    idle_energy_uj: int | None
    carbon_intensity_g_per_kwh: float | None
    carbon_intensity_source: str | None
    carbon_ug: int | None
    idle_carbon_ug: int | None
    energy_price_per_kwh: float | None
    instance_price_per_hour: float | None
    currency: str | None
    cost_nanos: int | None
    idle_cost_nanos: int | None
    pue: float | None
    codecarbon_emissions_ug: int | None


@dataclass(frozen=True, slots=True)
class UsageRow:
    """What one (model, version, tenant) did in one interval, and its attributed share."""

    model: str
    version: str
    tenant: str
    requests: int
    rows: int
    batches: int
    errors: int
    compute_ns: int
    energy_uj: int | None
    carbon_ug: int | None
    cost_nanos: int | None


def connect(path: Path) -> sqlite3.Connection:
    """Open (creating if needed) a ledger; WAL so readers never block the writer."""
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode loses at most the last commits on power loss, never consistency.
    connection.execute("PRAGMA synchronous=NORMAL")
    connection.executescript(SCHEMA)
    found = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if found is None:
        connection.execute(
            "INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
        )
    elif int(found[0]) != SCHEMA_VERSION:
        raise RuntimeError(
            f"ledger {path} has schema version {found[0]}; this wattserve writes version "
            f"{SCHEMA_VERSION}"
        )
    return connection


_INTERVAL_COLUMNS = [f.name for f in fields(IntervalRow)]
_USAGE_COLUMNS = ["interval_id", *(f.name for f in fields(UsageRow))]
_INSERT_INTERVAL = (
    f"INSERT INTO intervals ({', '.join(_INTERVAL_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_INTERVAL_COLUMNS))})"
)
_INSERT_USAGE = (
    f"INSERT INTO usage ({', '.join(_USAGE_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(_USAGE_COLUMNS))})"
)


def write_interval(
    connection: sqlite3.Connection, interval: IntervalRow, usage: Sequence[UsageRow]
) -> int:
    """Append one interval and its usage rows in one transaction; returns the interval id."""
    with connection:
        connection.execute("BEGIN")
        cursor = connection.execute(_INSERT_INTERVAL, astuple(interval))
        interval_id = cursor.lastrowid
        assert interval_id is not None
        connection.executemany(_INSERT_USAGE, [(interval_id, *astuple(u)) for u in usage])
    return interval_id
