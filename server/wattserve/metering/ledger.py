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

SCHEMA_VERSION = 2
"""2 added intervals.worker and intervals.workers (worker processes, docs/workers.md)."""
READABLE_VERSIONS = (1, 2)

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)
""",
    """
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
  codecarbon_emissions_ug INTEGER,
  worker INTEGER NOT NULL DEFAULT 0,
  workers INTEGER NOT NULL DEFAULT 1
)
""",
    """
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
)
""",
    """
CREATE INDEX IF NOT EXISTS intervals_by_start ON intervals (start_unix_ms)
""",
)
"""The statements that create a ledger (each `IF NOT EXISTS`)."""
MIGRATIONS = {
    1: (
        "ALTER TABLE intervals ADD COLUMN worker INTEGER NOT NULL DEFAULT 0",
        "ALTER TABLE intervals ADD COLUMN workers INTEGER NOT NULL DEFAULT 1",
    ),
}
"""From each older version, the statements that bring it to the next."""


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
    worker: int = 0
    """The worker process that measured this interval (0 without worker processes)."""
    workers: int = 1
    """Worker processes the server ran: each measures its own processes' energy and is charged
    instance_price_per_hour ÷ workers, so that the workers' intervals add up to the machine."""


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
    """Open (creating or migrating if needed) a ledger; WAL so readers never block the writer.

    Worker processes open the same file at once: the schema is created or migrated inside one
    immediate (write-locked) transaction, so exactly one of them does it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Writers wait for each other's one-interval transactions rather than fail (5 s is plenty).
    connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5.0)
    connection.execute("PRAGMA journal_mode=WAL")
    # NORMAL in WAL mode loses at most the last commits on power loss, never consistency.
    connection.execute("PRAGMA synchronous=NORMAL")
    with connection:
        connection.execute("BEGIN IMMEDIATE")
        for statement in SCHEMA:
            connection.execute(statement)
        found = connection.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        version = int(row[0]) if (row := found.fetchone()) else SCHEMA_VERSION
        if version not in READABLE_VERSIONS:
            raise RuntimeError(
                f"ledger {path} has schema version {version}; this wattserve writes version "
                f"{SCHEMA_VERSION}"
            )
        for older in range(version, SCHEMA_VERSION):
            for statement in MIGRATIONS[older]:
                connection.execute(statement)
        connection.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)",
            (str(SCHEMA_VERSION),),
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
