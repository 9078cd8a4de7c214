"""Spike: a steady base load, a sudden burst, then the base again, to see the server absorb the
burst (queueing, RESOURCE_EXHAUSTED) and recover.

    locust -f loadtests/locustfile.py,loadtests/shapes/spike.py --headless -H HOST:PORT \\
        --spike-base-users 4 --spike-users 64 --spike-at-s 20 --spike-hold-s 10 --spike-after-s 20
"""

from __future__ import annotations

from typing import Any

from locust import LoadTestShape, events


@events.init_command_line_parser.add_listener
def _(parser: Any) -> None:
    group = parser.add_argument_group("spike shape")
    group.add_argument("--spike-base-users", type=int, default=4, help="Users before and after")
    group.add_argument("--spike-users", type=int, default=64, help="Users during the spike")
    group.add_argument("--spike-at-s", type=float, default=20.0, help="When the spike starts")
    group.add_argument("--spike-hold-s", type=float, default=10.0, help="How long it lasts")
    group.add_argument(
        "--spike-after-s", type=float, default=20.0, help="How long the base runs after it"
    )


class Spike(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None  # Locust sets it before the first tick
        options: Any = self.runner.environment.parsed_options
        t = self.get_run_time()
        spike_end = options.spike_at_s + options.spike_hold_s
        if t >= spike_end + options.spike_after_s:
            return None
        if options.spike_at_s <= t < spike_end:
            # All spike users at once: a burst, not a ramp.
            return options.spike_users, float(options.spike_users)
        return options.spike_base_users, float(options.spike_users)
