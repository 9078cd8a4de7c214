"""Worker processes sharing one gRPC port: `wattserve serve --workers N`.

One Python process saturates one core well before the machine (docs/performance.md). With
`--workers N` the process started by the command serves nothing itself. It:

1. reserves the port: a socket bound with SO_REUSEPORT that never listens, so port 0 becomes a
   concrete port, nobody else can take it, and the kernel hands connections to workers only;
2. starts N worker processes (spawned, never forked: gRPC and ONNX Runtime threads do not survive
   a fork), each a whole server (`App`) with its own sessions, batchers, meter and energy process,
   pinned to an equal share of the allowed cores when there are at least N of them;
3. serves one Prometheus endpoint that sums the workers' private ones (`WorkersCollector`);
4. starts a worker again when it dies, and gives up when one dies too often;
5. on SIGINT or SIGTERM, stops every worker with the usual graceful shutdown and waits for it.

The kernel balances connections, not requests: a client with one connection talks to one worker.
docs/workers.md has the design, the meter's rules across workers and the measured effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from functools import partial
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any

from wattserve.app import App, WorkerRole, display_address
from wattserve.batching.loop_load import new_event_loop
from wattserve.core.errors import WattserveError
from wattserve.demo import ensure_demo_repository
from wattserve.metering.prometheus import WorkersCollector, serve_metrics
from wattserve.settings import ServeSettings

logger = logging.getLogger(__name__)

RESTART_LIMIT = 5
"""A worker that dies this many times within RESTART_WINDOW_S stops the server (exit status 1):
restarting it again would only hide the fault."""
RESTART_WINDOW_S = 60.0
STOP_MARGIN_S = 15.0
"""How long past the grace period a worker may take to flush its meter before it is killed."""


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port) with SO_REUSEPORT that never listens: it holds the port for
    the workers, whose listening sockets join it, and turns port 0 into a concrete port. The
    kernel hands new connections only to listening sockets, so it never takes one itself.

    The port is first bound without SO_REUSEPORT, which fails if any socket holds it, so the
    workers never join a port that another server (say, a second `--workers` wattserve) shares.
    """
    where = display_address(host, port)
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, protocol) as probe:
            probe.bind(address)  # no SO_REUSEPORT: refused while anyone holds the port
            address = probe.getsockname()
        reserved = socket.socket(family, kind, protocol)
    except OSError as exc:
        raise WattserveError(f"cannot reserve {where} for the workers: {exc}") from exc
    try:
        reserved.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserved.bind(address)
    except OSError as exc:
        reserved.close()
        raise WattserveError(f"cannot reserve {where} for the workers: {exc}") from exc
    return reserved


def core_shares(workers: int, allowed: set[int]) -> list[set[int]] | None:
    """Each worker's cores: equal contiguous shares of `allowed`, or None (no pinning) when there
    are fewer cores than workers."""
    cores = sorted(allowed)
    if workers > len(cores):
        return None
    return [
        set(cores[i * len(cores) // workers : (i + 1) * len(cores) // workers])
        for i in range(workers)
    ]


def _worker_main(
    settings: ServeSettings, role: WorkerRole, cores: set[int] | None, parent: Connection
) -> None:
    """A worker process: one whole server on the shared port, reporting to the parent."""
    logging.basicConfig(
        level=settings.log_level,
        format=f"%(asctime)s %(levelname)s worker {role.index} %(name)s: %(message)s",
    )
    if cores is not None:
        os.sched_setaffinity(0, cores)
        logger.info("pinned to cores %s", ",".join(map(str, sorted(cores))))
    # The parent never writes: the pipe closes only when the parent is gone, however it went.
    threading.Thread(target=_stop_with_parent, args=(parent,), daemon=True).start()

    def ready(app: App) -> None:
        parent.send(("ready", app.metrics_port))

    try:
        with asyncio.Runner(loop_factory=partial(new_event_loop, settings.event_loop)) as runner:
            runner.run(App(settings, role).run_until_signalled(on_ready=ready))
    except WattserveError as exc:
        logger.error("cannot serve: %s", exc)
        parent.send(("failed", str(exc)))
        sys.exit(1)


def _stop_with_parent(parent: Connection) -> None:
    with contextlib.suppress(EOFError, OSError):
        parent.recv()
    os.kill(os.getpid(), signal.SIGTERM)


@dataclass
class _Worker:
    index: int
    process: BaseProcess
    pipe: Connection
    ready: bool = False
    metrics_port: int | None = None


@dataclass
class Supervisor:
    """The parent process of `--workers N` (module docstring)."""

    settings: ServeSettings
    _workers: dict[int, _Worker] = field(default_factory=dict)
    _deaths: dict[int, deque[float]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> int:
        """Serve until SIGINT or SIGTERM (exit status 0), or until the workers cannot (1)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        settings = self.settings
        try:
            reserved = reserve_port(settings.host, settings.port)  # first: fail fast
        except WattserveError as exc:
            logger.error("cannot serve: %s", exc)
            return 1
        with reserved:
            try:
                root = settings.repository or ensure_demo_repository(settings.demo_dir)
            except ModuleNotFoundError as exc:
                logger.error("cannot serve: %s", exc)
                return 1
            if self._stop.is_set():  # interrupted while the demo repository was being built
                return 0
            port = int(reserved.getsockname()[1])
            worker_settings = settings.model_copy(update={"port": port, "repository": root})
            shares = core_shares(settings.workers, os.sched_getaffinity(0))
            context = multiprocessing.get_context("spawn")
            for index in range(settings.workers):
                self._start(context, worker_settings, index, shares)
            try:
                return self._supervise(context, worker_settings, shares, port, root)
            finally:
                self._stop_workers()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _start(
        self, context: Any, settings: ServeSettings, index: int, shares: list[set[int]] | None
    ) -> None:
        ours, theirs = context.Pipe()
        role = WorkerRole(index, settings.workers)
        cores = shares[index] if shares else None
        process = context.Process(
            target=_worker_main,
            args=(settings, role, cores, theirs),
            name=f"wattserve-worker-{index}",
        )
        process.start()
        theirs.close()
        self._workers[index] = _Worker(index, process, ours)

    def _supervise(
        self,
        context: Any,
        settings: ServeSettings,
        shares: list[set[int]] | None,
        port: int,
        root: Path,
    ) -> int:
        started, metrics = False, None
        try:
            while not self._stop.is_set():
                handles: dict[Any, _Worker] = {}
                for worker in self._workers.values():
                    handles[worker.process.sentinel] = worker
                    handles[worker.pipe] = worker
                for handle in wait(list(handles), timeout=0.5):
                    if self._stop.is_set():
                        break  # workers that got the signal too exit now: not a failure
                    worker = handles[handle]
                    if handle is worker.pipe:
                        if not self._receive(worker) and not started:
                            return 1  # a worker could not start: the server cannot
                    elif self._workers.get(worker.index) is worker:
                        worker.process.join(5)  # reap it: its exit code (or signal) for the log
                        if not started:
                            logger.error(
                                "worker %d exited (code %s) before it was ready: see its log above",
                                worker.index,
                                worker.process.exitcode,
                            )
                            return 1
                        if not self._may_restart(worker):
                            return 1
                        worker.pipe.close()
                        self._start(context, settings, worker.index, shares)
                if not started and all(w.ready for w in self._workers.values()):
                    started, metrics = True, self._serve_metrics()
                    logger.info(
                        "wattserve ready: %d worker processes serving on %s (repository %s)",
                        len(self._workers),
                        display_address(settings.host, port),
                        root,
                    )
            logger.info("shutting down %d workers", len(self._workers))
            return 0
        finally:
            if metrics is not None:
                metrics.shutdown()

    def _receive(self, worker: _Worker) -> bool:
        """One message from a worker; False when it says it cannot serve."""
        try:
            kind, value = worker.pipe.recv()
        except (EOFError, OSError):
            return True  # it exited: its sentinel says so
        if kind == "failed":
            logger.error("worker %d cannot serve: %s", worker.index, value)
            return False
        worker.ready, worker.metrics_port = True, value
        return True

    def _may_restart(self, worker: _Worker) -> bool:
        now = time.monotonic()
        deaths = self._deaths.setdefault(worker.index, deque())
        deaths.append(now)
        while deaths and now - deaths[0] > RESTART_WINDOW_S:
            deaths.popleft()
        code = worker.process.exitcode
        if len(deaths) >= RESTART_LIMIT:
            logger.error(
                "worker %d exited (code %s) %d times within %.0f s: stopping the server",
                worker.index,
                code,
                len(deaths),
                RESTART_WINDOW_S,
            )
            return False
        logger.error("worker %d exited (code %s): starting it again", worker.index, code)
        return True

    def _serve_metrics(self) -> Any:
        """The summed endpoint (None where the workers serve none)."""
        settings = self.settings
        if not (settings.metering_enabled and settings.metrics_enabled):
            return None

        def endpoints() -> dict[int, str]:
            return {
                w.index: f"http://127.0.0.1:{w.metrics_port}/metrics"
                for w in self._workers.values()
                if w.ready and w.metrics_port is not None
            }

        server, _, port = serve_metrics(
            settings.metrics_host, settings.metrics_port, WorkersCollector(endpoints)
        )
        logger.info(
            "Prometheus metrics on http://%s/metrics (the workers' sum)",
            display_address(settings.metrics_host, port),
        )
        return server

    def _stop_workers(self) -> None:
        """SIGTERM to every worker (each shuts down gracefully), then wait; kill stragglers."""
        workers = [w for w in self._workers.values() if w.process.is_alive()]
        for worker in workers:
            if worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.settings.grace_period_s + STOP_MARGIN_S
        for worker in workers:
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.is_alive():
                logger.error("worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
                worker.process.join()
        for worker in self._workers.values():
            worker.pipe.close()
        logger.info("wattserve stopped")
