"""codecarbon in a process of its own, measuring the server: same interface as EnergyMeter.

Why: each codecarbon measurement in "process" mode walks /proc with psutil, hundreds of small
reads that each release and retake the GIL: inside the server that thread competes with the event
loop for the GIL. In a process of its own it competes for nothing but a little CPU (about 1% of a
core); that CPU time is still charged to the server, as one of the server's children, in
"process" mode.

The two processes talk in JSON lines. The server writes the settings on the child's stdin, then
"stop" (or simply exits: end of file means stop too, so a server killed with SIGKILL leaves no
orphan). The child answers on stdout:

    {"started": "<method>"}      or {"failed": "<why>"}, once
    {"reading": {...}}            one per interval (EnergyReading's fields)
    {"stopped": true}             after the last reading, once

    python -m wattserve.metering.energy_process PID    (the child; started by EnergyProcess)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, NoReturn

from wattserve.metering.energy import EnergyMeter, EnergyMeterError, EnergyReading, EnergySettings

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 120.0
"""Hardware probing takes 1-2 s; importing codecarbon on a busy machine a few more."""
STOP_TIMEOUT_S = 30.0


class EnergyProcess:
    """Runs an EnergyMeter in a child process that charges this process (`os.getpid()`).

    Interface and guarantees as EnergyMeter's: `on_reading` is called once per interval, never
    two at a time (here on a reader thread), and the last reading arrives before stop() returns.
    """

    def __init__(
        self, settings: EnergySettings, on_reading: Callable[[EnergyReading], None]
    ) -> None:
        EnergyMeter(settings, on_reading)  # validates the settings (country, region) here and now
        self._settings = settings
        self._on_reading = on_reading
        self._child: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None
        self._answered = threading.Event()  # "started" or "failed" arrived, or the child died
        self._stopped = False  # the child said "stopped": every reading is in
        self._gone = threading.Event()  # the child closed its stdout (it exited)
        self._method: str | None = None
        self._failure: str | None = None

    @property
    def method(self) -> str:
        if self._method is None:
            raise RuntimeError("EnergyProcess.method is known once start() has succeeded")
        return self._method

    def start(self) -> None:
        """Start the child and wait until it measures (blocking: run it in a thread)."""
        if self._child is not None:
            raise RuntimeError("an EnergyProcess can be started only once")
        self._child = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            bufsize=1,  # line-buffered both ways
        )
        assert self._child.stdin is not None and self._child.stdout is not None
        self._reader = threading.Thread(
            target=self._read, args=(self._child.stdout,), name="energy-reader", daemon=True
        )
        self._reader.start()
        with contextlib.suppress(BrokenPipeError):  # it died already: the reader says so
            self._child.stdin.write(json.dumps(dataclasses.asdict(self._settings)) + "\n")
            self._child.stdin.flush()
        if not self._answered.wait(START_TIMEOUT_S):
            self._kill()
            raise EnergyMeterError(f"the energy process did not start in {START_TIMEOUT_S:g} s")
        if self._method is None:
            self._kill()
            raise EnergyMeterError(self._failure or "the energy process exited at start")

    def stop(self) -> None:
        """Stop measuring; the last, partial interval reaches on_reading before this returns."""
        child = self._child
        if child is None or child.returncode is not None:
            return
        assert child.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # it died already: the reader says so
            child.stdin.write("stop\n")
            child.stdin.close()
        self._gone.wait(STOP_TIMEOUT_S)
        try:
            child.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._kill()
        if not self._stopped:
            raise EnergyMeterError("the energy process did not stop cleanly; last interval lost")

    def _read(self, stdout: IO[str]) -> None:
        """Reader thread: one message per line until the child closes its stdout."""
        for line in stdout:
            message = json.loads(line)
            if "reading" in message:
                self._on_reading(EnergyReading(**message["reading"]))
            elif "started" in message:
                self._method = message["started"]
                self._answered.set()
            elif "failed" in message:
                self._failure = message["failed"]
                self._answered.set()
            elif "stopped" in message:
                self._stopped = True
        if not self._stopped:
            logger.error("the energy process exited; no energy data from now on")
        self._answered.set()
        self._gone.set()

    def _kill(self) -> None:
        if self._child is not None and self._child.returncode is None:
            self._child.kill()
            self._child.wait()


# The child's side.


def _forbid_network() -> None:
    """codecarbon is configured to stay offline; this process makes sure of it."""

    def refuse(*args: Any, **kwargs: Any) -> NoReturn:
        raise OSError("wattserve's energy process makes no network connections")

    socket.socket.connect = refuse  # type: ignore[method-assign]
    socket.socket.connect_ex = refuse  # type: ignore[method-assign]
    socket.create_connection = refuse
    socket.getaddrinfo = refuse


def _child(server_pid: int, stdin: IO[str], stdout: IO[str]) -> int:
    _forbid_network()
    # Ctrl-C in a terminal signals the whole process group: the server decides when this stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    lock = threading.Lock()

    def send(message: dict[str, Any]) -> None:
        with lock, contextlib.suppress(BrokenPipeError):  # the server is gone
            stdout.write(json.dumps(message) + "\n")
            stdout.flush()

    settings = EnergySettings(**json.loads(stdin.readline()))
    meter = EnergyMeter(
        settings, lambda r: send({"reading": dataclasses.asdict(r)}), pid=server_pid
    )
    try:
        meter.start()
    except Exception as exc:
        send({"failed": str(exc)})
        return 1
    send({"started": meter.method})
    for line in stdin:  # until "stop" or the end of file (the server exited)
        if line.strip() == "stop":
            break
    try:
        meter.stop()
    except EnergyMeterError as exc:
        logger.error("%s", exc)
    send({"stopped": True})
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="wattserve energy process: %(message)s")
    sys.exit(_child(int(sys.argv[1]), sys.stdin, sys.stdout))
