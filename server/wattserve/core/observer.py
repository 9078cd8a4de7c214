"""What the core tells an observer (the meter) about finished requests; it never changes results."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from wattserve.core.types import Parameter


class UsageObserver(Protocol):
    def request(
        self,
        model: str,
        version: str,
        tenant: str,
        code: str,
        rows: int,
        total_ns: int,
        queue_ns: int | None,
    ) -> None:
        """One request finished with gRPC status `code` ("OK" on success)."""

    def response_parameters(self, model: str, version: str, rows: int) -> Mapping[str, Parameter]:
        """Figures to add to a response whose client asked for them."""


class BatchObserver(Protocol):
    def batch_started(
        self, key: tuple[str, str], start_ns: int, tenant_rows: Mapping[str, int], rows: int
    ) -> int:
        """A batch of (model, version) `key` began running with `rows` rows, `tenant_rows` of
        them per tenant; returns a token for batch_finished. Called once per batch: keep it lean.
        """

    def batch_finished(self, token: int, end_ns: int) -> None: ...
