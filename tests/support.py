"""Helpers for tests that run real servers: start `wattserve serve` and wait on conditions."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

READY = re.compile(r"wattserve ready: serving \d+ model\(s\) on (\S+):(\d+)")
WORKERS_READY = re.compile(r"wattserve ready: \d+ worker processes serving on (\S+):(\d+)")


@dataclass
class ServerProcess:
    """A `wattserve serve` subprocess; `log` collects its output as it runs."""

    process: subprocess.Popen[str]
    address: str = ""
    metrics_url: str = ""
    ledger_path: str = ""
    log: list[str] = field(default_factory=list)

    def text(self) -> str:
        return "".join(self.log)


def _read_log(server: ServerProcess, ready: threading.Event, pattern: re.Pattern[str]) -> None:
    assert server.process.stdout is not None
    for line in server.process.stdout:
        server.log.append(line)
        metrics = METRICS.search(line)
        if metrics:
            server.metrics_url = f"http://127.0.0.1:{metrics.group(2)}/metrics"
        match = pattern.search(line)
        if match and not ready.is_set():
            server.address = f"127.0.0.1:{match.group(2)}"
            ready.set()
    ready.set()  # the process ended: let the waiter see it


METRICS = re.compile(r"Prometheus metrics on http://(\S+):(\d+)/metrics")


@contextlib.contextmanager
def run_server(*args: str, env: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Start `wattserve serve --port 0 ARGS`, wait until it is ready, SIGTERM it afterwards.

    Unless ARGS say otherwise, the server writes a ledger of its own in a fresh temporary folder
    and serves metrics on a free port, so tests never touch a user's ledger.
    """
    ledger_dir = tempfile.mkdtemp(prefix="wattserve-test-")
    defaults = {
        "WATTSERVE_LEDGER_PATH": str(Path(ledger_dir) / "ledger.sqlite"),
        "WATTSERVE_METRICS_PORT": "0",
    }
    command = [sys.executable, "-m", "wattserve", "serve", "--port", "0", *args]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **defaults, **(env or {})},
    )
    merged = {**defaults, **(env or {})}
    server = ServerProcess(process, ledger_path=merged["WATTSERVE_LEDGER_PATH"])
    ready = threading.Event()
    # With worker processes, each worker logs its own ready line: wait for the parent's.
    pattern = WORKERS_READY if "--workers" in args else READY
    reader = threading.Thread(target=_read_log, args=(server, ready, pattern), daemon=True)
    reader.start()
    try:
        if not ready.wait(timeout=90) or not server.address:
            raise RuntimeError(f"server did not become ready:\n{server.text()}")
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        reader.join(timeout=5)
        shutil.rmtree(ledger_dir, ignore_errors=True)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    """Poll `condition()` until true; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


def screenshot(html: Path, png: Path) -> None:
    """Render a self-contained HTML page in headless Chromium (no network) into a PNG."""
    browser = shutil.which("chromium")
    if browser is None:
        if os.environ.get("CI"):
            raise AssertionError("CI must have Chromium: .ci/run installs it")
        pytest.skip("Chromium is not installed (apt-get install chromium); CI installs it")
    with tempfile.TemporaryDirectory() as profile:
        shot = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                "--window-size=1280,1400",
                f"--screenshot={png}",
                html.resolve().as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert shot.returncode == 0 and png.stat().st_size > 0, shot.stderr


class CountingStreams(grpc.aio.StreamStreamClientInterceptor):  # type: ignore[misc]
    """Counts the ModelStreamInfer streams a channel opens and, for those given a request
    iterator, the messages each carries (a stream written to with `call.write` counts as 0)."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    async def intercept_stream_stream(
        self, continuation: Any, details: Any, request_iterator: Any
    ) -> Any:
        stream = len(self.sent)
        self.sent.append(0)
        if request_iterator is None:
            return await continuation(details, None)

        async def counted() -> AsyncIterator[Any]:
            async for request in request_iterator:
                self.sent[stream] += 1
                yield request

        return await continuation(details, counted())
