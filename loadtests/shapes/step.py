"""Step ramp: `--step-users` more users every `--step-s` seconds, `--steps` times; Locust's stats
history (`--csv-full-history`) then shows throughput and latency at each concurrency.

    locust -f loadtests/locustfile.py,loadtests/shapes/step.py --headless -H HOST:PORT \\
        --step-users 8 --step-s 30 --steps 6 --csv results/step --csv-full-history
"""

from __future__ import annotations

import math
from typing import Any

from locust import LoadTestShape, events


@events.init_command_line_parser.add_listener
def _(parser: Any) -> None:
    group = parser.add_argument_group("step shape")
    group.add_argument("--step-users", type=int, default=8, help="Users added at each step")
    group.add_argument("--step-s", type=float, default=30.0, help="How long each step holds")
    group.add_argument("--steps", type=int, default=5, help="Number of steps")


class Step(LoadTestShape):
    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None  # Locust sets it before the first tick
        options: Any = self.runner.environment.parsed_options
        step = math.floor(self.get_run_time() / options.step_s) + 1
        if step > options.steps:
            return None
        return step * options.step_users, float(options.step_users)
