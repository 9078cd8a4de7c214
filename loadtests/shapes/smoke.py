"""Smoke: a few users for a short while, to check that a deployment answers within its gates.

locust -f loadtests/locustfile.py,loadtests/shapes/smoke.py --headless -H HOST:PORT
"""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape, events


@events.init_command_line_parser.add_listener
def _(parser: Any) -> None:
    group = parser.add_argument_group("smoke shape")
    group.add_argument("--smoke-users", type=int, default=4, help="Users, all started at once")
    group.add_argument("--smoke-s", type=float, default=15.0, help="How long to run, seconds")


class Smoke(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None  # Locust sets it before the first tick
        options: Any = self.runner.environment.parsed_options
        if self.get_run_time() >= options.smoke_s:
            return None
        return options.smoke_users, float(options.smoke_users)
