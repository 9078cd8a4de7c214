"""Metering: usage seams, energy measurement, attribution, the ledger, exports. Never changes a
result; see docs/metering.md."""
