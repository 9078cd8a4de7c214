"""The server under test: `wattserve serve` as a child process, pinned, watched and stopped."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

READY_LINE = re.compile(r"wattserve ready: serving \d+ model\(s\) on (?P<address>\S+:\d+)")
WORKERS_READY_LINE = re.compile(
    r"wattserve ready: \d+ worker processes serving on (?P<address>\S+:\d+)"
)
"""With --workers, every worker logs READY_LINE first: the server is ready at the parent's line."""
METRICS_LINE = re.compile(r"Prometheus metrics on (?P<url>http://\S+)")
READY_TIMEOUT_S = 120.0
# Above the server's default 10 s grace period, so a slow drain is not mistaken for a hang.
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 40

ENV_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=")

REFERENCE_SERVERS = {
    "echo": Path(__file__).with_name("_echo.py"),
    "minimal": Path(__file__).with_name("_minimal.py"),
}


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """A bench's server, as `serving` takes it: `wattserve serve` arguments (run from this code, or
    from another checkout's), or a reference server's command line."""

    args: list[str]
    command: list[str] | None = None
    """A reference server's command line, run instead of wattserve."""
    code: Path | None = None
    """The checkout whose wattserve runs; None for this one."""
    keeps_statistics: bool = True
    """Whether it answers ModelStatistics (every server but echo)."""
    env: dict[str, str] = field(default_factory=dict)
    """Environment variables set for it alone (`GRPC_EXPERIMENTS=...`, `OMP_...`)."""

    @classmethod
    def parse(cls, spec: str, demo_dir: Path) -> ServerSpec:
        """`wattserve serve` arguments; `echo`/`minimal` and that reference server's arguments;
        or `checkout PATH` and `wattserve serve` arguments for the code in PATH (a git worktree).
        `{demo}` stands for the demo repository's folder. As in a shell, leading `NAME=value`
        words set environment variables for that server alone."""
        words = shlex.split(spec.replace("{demo}", str(demo_dir)))
        env = {}
        while words and ENV_WORD.match(words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        first = words[0] if words else ""
        if first in REFERENCE_SERVERS:
            command = [sys.executable, str(REFERENCE_SERVERS[first]), *words[1:]]
            return cls([], command, keeps_statistics=first != "echo", env=env)
        if first == "checkout":
            if len(words) < 2:
                raise ValueError("'checkout' needs the path of a wattserve checkout (git worktree)")
            code = Path(words[1]).resolve()
            if not (code / "server" / "wattserve").is_dir():
                raise ValueError(f"{code} is not a wattserve checkout (no server/wattserve)")
            return cls(words[2:], code=code, env=env)
        return cls(words, env=env)

    def serving(
        self, demo_dir: Path, core: int | None
    ) -> contextlib.AbstractAsyncContextManager[ServerProcess]:
        """`serving` this server (an async context manager yielding its ServerProcess)."""
        return serving(
            demo_dir, core, self.args, command=self.command, code=self.code, env=self.env
        )


def _name(task: Path) -> str:
    return (task / "comm").read_text().rstrip("\n")


def _cpu_seconds(task: Path) -> float:
    """A thread's CPU time: the scheduler's nanosecond count (`se.sum_exec_runtime`, in ms, in
    /proc/.../sched) where the kernel has it; else user + system from /proc/.../stat, in clock
    ticks (10 ms: too coarse for 1 s windows)."""
    with contextlib.suppress(FileNotFoundError):
        for line in (task / "sched").read_text().splitlines():
            if line.startswith("se.sum_exec_runtime"):
                return float(line.rsplit(":", 1)[1]) / 1e3
    fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _threads(pid: int) -> dict[str, tuple[str, float]]:
    """tid -> (thread name, CPU seconds) for the live threads of a process."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads[task.name] = (_name(task), _cpu_seconds(task))
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
    return threads


def cpu_by_thread_group(pid: int) -> dict[str, float]:
    """CPU seconds of a Python process: in total (with its child processes: the meter's energy
    process), on its main thread (the event loop), on the other threads Python started (they keep
    the main thread's name: the ONNX Runtime executor), on threads that named themselves (gRPC
    core's), and in its child processes. Threads that have ended are not counted."""
    groups = dict.fromkeys(("loop", "python", "native"), 0.0)
    # Per process, not per thread: a child's threads come and go (codecarbon's timers).
    groups["children"] = sum(_process_cpu(c) for c in psutil.Process(pid).children(recursive=True))
    threads = _threads(pid)
    main_name = threads[str(pid)][0]
    for tid, (name, seconds) in threads.items():
        group = "loop" if tid == str(pid) else "python" if name == main_name else "native"
        groups[group] += seconds
    groups["total"] = sum(groups.values())
    return groups


def _process_cpu(process: psutil.Process) -> float:
    """User + system seconds of a whole process, ended threads included (clock ticks)."""
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)


def steal_counter() -> tuple[int, int]:
    """(steal, total) jiffies of all CPUs from /proc/stat: a VM's time taken by its host."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7] if len(fields) > 7 else 0, sum(fields[:8])


def steal_since(start: tuple[int, int]) -> float:
    steal, total = steal_counter()
    return (steal - start[0]) / max(total - start[1], 1)


@dataclass(frozen=True, slots=True)
class ServerProcess:
    process: asyncio.subprocess.Process
    address: str
    """host:port from the ready line."""
    metrics_url: str | None = None
    """The Prometheus endpoint the server logged before it was ready, if it logged one."""

    def cpu_seconds(self) -> dict[str, float]:
        """CPU seconds so far, labelled `server` (total) and `server:<thread group>`."""
        groups = cpu_by_thread_group(self.process.pid)
        return {"server": groups.pop("total")} | {f"server:{k}": v for k, v in groups.items()}

    def signal_tree(self, signum: int) -> None:
        """Send a signal to the server and its child processes (SIGSTOP/SIGCONT to freeze it)."""
        with contextlib.suppress(psutil.NoSuchProcess):
            server = psutil.Process(self.process.pid)
            for process in [server, *server.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    process.send_signal(signum)


def server_environment(code: Path | None, env: Mapping[str, str]) -> dict[str, str]:
    """This process's environment with `env` on top; for another checkout's code, its packages
    go first on PYTHONPATH, before any PYTHONPATH that `env` sets."""
    environment = os.environ | dict(env)
    if code is not None:
        paths = [str(code / "server"), str(code / "clients")]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        environment["PYTHONPATH"] = os.pathsep.join(paths)
    return environment


@contextlib.asynccontextmanager
async def serving(
    demo_dir: Path,
    core: int | None,
    extra_args: Sequence[str] = (),
    *,
    command: Sequence[str] | None = None,
    code: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> AsyncIterator[ServerProcess]:
    """`wattserve serve` on a free port (under taskset when `core` is given); always stopped with
    SIGTERM on the way out, and killed if it has not exited STOP_TIMEOUT_S later. Its ledger goes
    to a temporary folder and its metrics endpoint to a free port, never the user's.

    `command`: another server to run the same way instead (it must print wattserve's ready line).
    `code`: run wattserve from that checkout's `server/` and `clients/` instead of this one's.
    `env`: environment variables to set for this server alone.
    """
    scratch = tempfile.mkdtemp(prefix="wattserve-bench-")
    environment = server_environment(code, env or {})
    if command is None:
        command = [sys.executable, "-m", "wattserve", "serve", "--port", "0"]
        command += ["--demo-dir", str(demo_dir), "--metrics-port", "0"]
        command += ["--ledger-path", str(Path(scratch) / "ledger.sqlite"), *extra_args]
    if core is not None:
        command = ["taskset", "-c", str(core), *command]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment,
    )
    assert process.stderr is not None
    tail: collections.deque[str] = collections.deque(maxlen=LOG_TAIL_LINES)
    reader: asyncio.Task[None] | None = None
    try:
        try:
            ready = WORKERS_READY_LINE if "--workers" in extra_args else READY_LINE
            address = await asyncio.wait_for(
                _ready_address(process.stderr, tail, ready), READY_TIMEOUT_S
            )
        except (TimeoutError, EOFError) as exc:
            log = "\n".join(tail)
            raise RuntimeError(f"the server did not become ready ({exc!r}):\n{log}") from exc
        # Keep reading: a full stderr pipe would block the server's logging.
        reader = asyncio.create_task(_read_lines(process.stderr, tail))
        metrics = [m["url"] for line in tail if (m := METRICS_LINE.search(line))]
        yield ServerProcess(process, address, metrics[0] if metrics else None)
    finally:
        await _stop(process)
        if reader is not None:
            await reader  # ends at EOF, now that the server has exited
        shutil.rmtree(scratch, ignore_errors=True)


async def _ready_address(
    stream: asyncio.StreamReader, tail: collections.deque[str], ready: re.Pattern[str]
) -> str:
    while line := (await stream.readline()).decode(errors="replace"):
        tail.append(line.rstrip())
        if match := ready.search(line):
            return match["address"]
    raise EOFError("the server exited")


async def _read_lines(stream: asyncio.StreamReader, tail: collections.deque[str]) -> None:
    while line := await stream.readline():
        tail.append(line.decode(errors="replace").rstrip())


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):  # it exited just now
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), STOP_TIMEOUT_S)
    except TimeoutError:
        print(f"server ignored SIGTERM for {STOP_TIMEOUT_S:.0f} s; killing it", file=sys.stderr)
        process.kill()
        await process.wait()
