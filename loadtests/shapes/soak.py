"""Soak: a constant load for a long time, to find leaks and slow drift (memory, latency, the
meter's ledger growing) that a short run cannot show.

    locust -f loadtests/locustfile.py,loadtests/shapes/soak.py --headless -H HOST:PORT \\
        --soak-users 16 --soak-s 3600 --csv results/soak --csv-full-history
"""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape, events


@events.init_command_line_parser.add_listener
def _(parser: Any) -> None:
    group = parser.add_argument_group("soak shape")
    group.add_argument("--soak-users", type=int, default=16, help="Users for the whole run")
    group.add_argument("--soak-ramp-s", type=float, default=10.0, help="Time to start them all")
    group.add_argument("--soak-s", type=float, default=3600.0, help="How long to run, seconds")


class Soak(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None  # Locust sets it before the first tick
        options: Any = self.runner.environment.parsed_options
        if self.get_run_time() >= options.soak_s:
            return None
        return options.soak_users, options.soak_users / max(options.soak_ramp_s, 1e-3)
