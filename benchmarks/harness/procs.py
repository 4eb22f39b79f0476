"""Processes the benchmark starts: a registry that kills every one of them at the end.

Every process is started in its own session (process group) so it and its children can be
stopped by its own id; nothing is ever stopped by name. Receivers get the environment without
``TCP_NODELAY`` (DCMTK reads it on both ends), so they run as shipped.
"""

from __future__ import annotations

import contextlib
import os
import resource
import select
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from harness.setup_env import ECHOSCU

LOOPBACK = "127.0.0.1"


class Registry:
    """Every process started; :meth:`stop_all` ends them (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []

    def start(
        self,
        args: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        log: Path | None = None,
        cwd: Path | None = None,
    ) -> subprocess.Popen[Any]:
        """Start ``args`` in a new session; stdout and stderr go to ``log`` (or are discarded)."""
        with open(log, "ab") if log is not None else contextlib.nullcontext(subprocess.DEVNULL) as handle:
            # The child has its own copy of the descriptor: ours is closed once it started.
            proc = subprocess.Popen(
                list(args),
                env=env,
                cwd=cwd,
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self._procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[Any], grace: float = 15.0) -> int | None:
        """SIGTERM the process group, wait up to ``grace`` seconds, then SIGKILL it."""
        if proc.poll() is None:
            _signal_group(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if proc in self._procs:
            self._procs.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        """Stop every process still registered."""
        for proc in list(self._procs):
            try:
                self.stop(proc, grace=5.0)
            except Exception:
                pass


def wait_exits(procs: Sequence[subprocess.Popen[Any]], deadline: float) -> float | None:
    """Wait until every process in ``procs`` has exited or ``time.monotonic()`` passes ``deadline``.

    Returns the ``time.monotonic()`` at which the last one exited, or None on timeout. Each exit
    is seen when it happens (a pidfd per process, Linux 5.3+): ``Popen.wait(timeout=...)``
    polls with sleeps that double up to 50 ms, which added 0-50 ms to a measured wall time
    (a 512 KB x4 cell lasts 150-250 ms; docs/benchmarks.md). Without pidfds, it polls every 1 ms.
    """
    waiting = {proc.pid: proc for proc in procs if proc.poll() is None}
    last = time.monotonic()
    pidfds: dict[int, int] = {}
    try:
        for pid in list(waiting):
            try:
                pidfds[os.pidfd_open(pid)] = pid
            except (AttributeError, OSError):
                break
        else:
            poller = select.poll()
            for fd in pidfds:
                poller.register(fd, select.POLLIN)
            while waiting:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                for fd, _ in poller.poll(remaining * 1000):
                    poller.unregister(fd)
                    proc = waiting.pop(pidfds[fd])
                    proc.wait()
                    last = time.monotonic()
            return last
        while waiting:  # no pidfd: poll finely
            for pid, proc in list(waiting.items()):
                if proc.poll() is not None:
                    del waiting[pid]
                    last = time.monotonic()
            if waiting:
                if time.monotonic() >= deadline:
                    return None
                time.sleep(0.001)
        return last
    finally:
        for fd in pidfds:
            os.close(fd)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def receiver_env(**extra: str) -> dict[str, str]:
    """This environment without TCP_NODELAY and the router's own variables, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in {"TCP_NODELAY", "ROUTER_CONFIG", "ROUTER_DATA_DIR"}}
    env.update(extra)
    return env


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_ready(port: int, proc: subprocess.Popen[Any], called_ae: str, timeout: float = 60.0) -> None:
    """Wait until a C-ECHO to ``port`` succeeds (DCMTK echoscu); raise if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with status {proc.returncode} before listening")
        result = subprocess.run(
            [ECHOSCU, "-aet", "BENCHECHO", "-aec", called_ae, "-to", "2", LOOPBACK, str(port)],
            capture_output=True,
            env=receiver_env(),
        )
        if result.returncode == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"receiver on port {port} not ready after {timeout:.0f} s")


def wait_logged(log: Path, text: str, proc: subprocess.Popen[Any], timeout: float = 60.0) -> None:
    """Wait until ``text`` appears in the receiver's ``log`` (raise if the process died).

    The router answers C-ECHO as soon as its first worker listens; it logs "listening as"
    once every worker has started, and the CPU of the start-up must not count as ingest.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"receiver exited with status {proc.returncode} before {text!r}")
        if log.exists() and text in log.read_text(errors="replace"):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{text!r} not in {log.name} after {timeout:.0f} s")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, its reaped children and its live descendants."""
    user, system = cpu_times_split(pid)
    return user + system


def cpu_times_split(pid: int) -> tuple[float, float]:
    """User and system CPU seconds, apart, of a process, its reaped children and its live
    descendants; (nan, nan) if the process is gone."""
    try:
        proc = psutil.Process(pid)
        times = proc.cpu_times()
        user, system = times.user + times.children_user, times.system + times.children_system
        for child in proc.children(recursive=True):
            try:
                child_times = child.cpu_times()
            except psutil.NoSuchProcess:
                continue
            user += child_times.user
            system += child_times.system
        return user, system
    except psutil.NoSuchProcess:
        return float("nan"), float("nan")


def vm_hwm_kib(pid: int) -> int | None:
    """Peak resident set size (VmHWM) of a process, in KiB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def host_cpu_times() -> Any:
    """The machine's CPU times so far (psutil: user, system, idle, ..., steal on Linux), seconds."""
    return psutil.cpu_times()


def steal_share(before: Any, after: Any) -> float | None:
    """Share (0-1) of the machine's CPU time between two :func:`host_cpu_times` readings that the
    hypervisor gave to other guests (Linux ``steal``); None where the platform does not report it.

    A guest whose vCPUs are stolen runs everything slower, the receivers' CPU per instance
    included: runs with a high share are read apart (docs/benchmarks.md).
    """
    if not hasattr(after, "steal"):
        return None
    total = sum(after) - sum(before)
    return (after.steal - before.steal) / total if total > 0 else None


def idle_share(before: Any, after: Any) -> float | None:
    """Share (0-1) of the machine's CPU time between two :func:`host_cpu_times` readings that no
    process used (``idle`` plus, on Linux, ``iowait``); None if no time passed.

    With four associations on two cores the receiver and its four ``storescu`` senders keep the
    machine 85-95 % busy, so a receiver's rate there follows the CPU per instance of receiver and
    senders together, and what it leaves idle while waiting (docs/benchmarks.md).
    """
    total = sum(after) - sum(before)
    if total <= 0:
        return None
    idle = after.idle - before.idle + getattr(after, "iowait", 0.0) - getattr(before, "iowait", 0.0)
    return idle / total


def children_cpu_seconds() -> float:
    """User plus system CPU seconds of this process's children that have exited and been waited
    for (``getrusage(RUSAGE_CHILDREN)``): the difference over a send is its senders' CPU, since
    the receiver is waited for only when it is stopped, after the send."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_quiet(pid: int, window: float = 0.25, most_cpu: float = 0.005, timeout: float = 5.0) -> float:
    """Wait until the process tree of ``pid`` used at most ``most_cpu`` CPU seconds in one
    ``window`` (seconds), at most ``timeout`` seconds; returns the seconds waited.

    A receiver that answers C-ECHO may still be finishing its start-up: the router used
    110-130 ms of CPU in the first quarter second after it logged "listening as" (worker and
    parent start-up work, docs/benchmarks.md), which a 40-instance run would count as ingest.
    Every receiver is measured from quiet.
    """
    started = time.monotonic()
    last = cpu_seconds(pid)
    while time.monotonic() - started < timeout:
        time.sleep(window)
        now = cpu_seconds(pid)
        if now - last <= most_cpu:
            break
        last = now
    return time.monotonic() - started
