"""Paired rounds: a ratio whose two sides are measured next to each other, again and again.

A shared VM's speed drifts by tens of percent within minutes (time stolen by the host, neighbours'
caches), so a ratio of two figures measured minutes apart says as much about the machine as about
the servers. Here each round measures both sides back to back, a few seconds apart, and the
rounds alternate which side goes first (A B, B A, A B, ...), so a steady drift favours neither.
The verdict is on the median of the rounds' ratios; the callers print every round, so the spread
shows how far one round can be trusted. A side that completes nothing in its window is an error,
never a ratio.
"""

from __future__ import annotations

import contextlib
import math
import signal
import statistics
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass

from _server import ServerProcess

Side = Callable[[], Awaitable[float]]
"""Measures one side of a ratio once and returns its figure (requests/s, samples/s, ms)."""


@dataclass(frozen=True, slots=True)
class Rounds:
    """Each round's two figures, in the order the sides were named (not the order run)."""

    pairs: list[tuple[float, float]]

    def median(self, of: Callable[[float, float], float]) -> float:
        """The median round of `of(a, b)` (a ratio, a difference)."""
        return statistics.median(of(a, b) for a, b in self.pairs)


async def alternate(a: Side, b: Side, rounds: int) -> Rounds:
    """`rounds` measurements of each side, in the order A B, B A, A B, ..."""
    pairs = []
    for n in range(rounds):
        if n % 2 == 0:
            first = await a()
            pairs.append((first, await b()))
        else:
            second = await b()
            pairs.append((await a(), second))
        for side, value in zip("AB", pairs[-1], strict=True):
            if not 0 < value < math.inf:
                raise RuntimeError(
                    f"side {side} measured {value} in round {n + 1}: no request completed in "
                    f"its window (the server stalled, or the window is too short here)"
                )
    return Rounds(pairs)


@contextlib.contextmanager
def frozen(*servers: ServerProcess) -> Iterator[None]:
    """Stop servers (and their child processes: the meter's energy process) while another is
    measured, so that their timers and samplers take nothing from its core; resumed on exit."""
    for server in servers:
        server.signal_tree(signal.SIGSTOP)
    try:
        yield
    finally:
        for server in servers:
            server.signal_tree(signal.SIGCONT)
