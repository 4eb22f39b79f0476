"""Several receiving processes on one port (``[listener] workers``), to use every core.

pynetdicom serves each association in a thread of one Python process, so concurrent
associations share one interpreter lock. With ``workers`` > 1, ``router serve`` starts that
many worker processes; each binds the listening port(s) with ``SO_REUSEPORT`` (the kernel then
spreads new connections over them) and runs its own C-STORE SCP, database connections and
archive writer. The parent process keeps what must happen once: start-up reconciliation, the
routing timer, forwarding, and supervision (a worker that dies is started again).

Every acknowledgement still means durable on disk and committed (each worker's own
transaction); SQLite serialises the writers across processes with its file lock and busy
timeout, PostgreSQL with row locks. A worker whose parent has gone (killed) stops at once, so a
restarted router never shares its port with orphans.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from router.config import Settings
from router.metrics import MULTIPROCESS_ENV
from router.node import ListenerError

LOG = logging.getLogger(__name__)

#: Seconds a worker may take to open its database and bind before start-up fails.
START_TIMEOUT = 60.0


def _worker_main(
    settings: Settings,
    index: int,
    port: int | None,
    tls_port: int | None,
    conn: Connection,
    parent_pid: int,
    metrics_dir: str | None = None,
) -> None:
    """Entry point of a worker process (spawned: nothing is inherited but the arguments and the
    environment, which carries ``PROMETHEUS_MULTIPROC_DIR`` when ``metrics_dir`` is set)."""
    from prometheus_client import CollectorRegistry

    from router.app import RouterApp
    from router.dicom.scp import configure_pynetdicom
    from router.logsafety import configure_logging
    from router.metrics import ReceiveMetrics
    from router.node import ListenerNode

    configure_logging(settings.logging.level, log_format=settings.logging.format)
    # In multiprocess mode (set before this interpreter started) the counters go to files in
    # metrics_dir, summed by the parent at scrape time.
    metrics = ReceiveMetrics(CollectorRegistry()) if metrics_dir is not None else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        app = RouterApp.open(settings)
        app.archive.prepare()
        configure_pynetdicom(app.archive.incoming)
        node = ListenerNode(app, metrics)
        node.start(port=port, tls_port=tls_port, reuse_port=True)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails start-up
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        os._exit(1)
    conn.send(("ready", node.ports))
    interval = max(0.2, min(settings.routing.poll_interval, 2.0))
    orphaned = False
    while not stop.wait(interval):
        if os.getppid() != parent_pid:
            orphaned = True
            break
        node.refresh_allowed_titles()
    finished = node.drain(0.0 if orphaned else settings.listener.drain_timeout)
    app.close()
    LOG.info("worker %d stopped%s", index, "" if finished else " (open associations aborted)")
    os._exit(0 if finished else 3)


@contextlib.contextmanager
def _environment(name: str, value: str | None) -> Iterator[None]:
    """Set (or, with ``None``, leave alone) one environment variable while a child is spawned:
    prometheus-client picks its multiprocess mode when the child imports it."""
    if value is None:
        yield
        return
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


@dataclass
class _Worker:
    index: int
    process: Any  # multiprocessing.Process (spawn context)


class WorkerPool:
    """Starts, supervises and stops the worker processes of one router node."""

    def __init__(self, settings: Settings, metrics_dir: Path | None = None) -> None:
        self.settings = settings
        self.metrics_dir = metrics_dir  # workers count C-STORE answers in files here when set
        self.count = settings.listener.workers
        self._context = multiprocessing.get_context("spawn")
        self._workers: list[_Worker] = []
        self._ports: list[int] = []
        self._plain_port: int | None = None
        self._tls_port: int | None = None
        self._stopping = False
        self._lock = threading.Lock()  # the timer's supervise() and stop() may race

    @property
    def ports(self) -> list[int]:
        """Bound ports (plain first, then TLS), shared by every worker."""
        return list(self._ports)

    def start(self) -> None:
        """Start every worker and wait until each listens.

        A configured port 0 is resolved to one free port first, held (``SO_REUSEPORT``, not
        listening) until every worker has bound it.

        Raises
        ------
        ListenerError
            A worker could not open the database or bind the port(s); none is left running.
        """
        listener = self.settings.listener
        reservations: list[socket.socket] = []
        try:
            self._plain_port = self._reserve(listener.host, listener.port, reservations) if listener.enabled else None
            self._tls_port = (
                self._reserve(listener.tls.host or listener.host, listener.tls.port, reservations)
                if listener.tls.enabled
                else None
            )
            for index in range(self.count):
                self._workers.append(self._spawn(index))
        except ListenerError:
            self.stop(0.0)
            raise
        finally:
            for sock in reservations:
                sock.close()

    def _reserve(self, host: str, port: int, reservations: list[socket.socket]) -> int:
        if port != 0:
            return port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        try:
            sock.bind((host, 0))
        except OSError as exc:
            sock.close()
            raise ListenerError(f"cannot reserve a free port on {host}: {exc.strerror or exc}") from exc
        reservations.append(sock)
        return int(sock.getsockname()[1])

    def _spawn(self, index: int) -> _Worker:
        parent_end, child_end = self._context.Pipe(duplex=False)
        metrics_dir = str(self.metrics_dir) if self.metrics_dir is not None else None
        process = self._context.Process(
            target=_worker_main,
            args=(self.settings, index, self._plain_port, self._tls_port, child_end, os.getpid(), metrics_dir),
            name=f"router-worker-{index}",
            daemon=False,
        )
        with _environment(MULTIPROCESS_ENV, metrics_dir):
            process.start()
        child_end.close()
        if not parent_end.poll(START_TIMEOUT):
            process.kill()
            raise ListenerError(f"worker {index} did not start within {START_TIMEOUT:.0f} s")
        try:
            kind, payload = parent_end.recv()
        except EOFError as exc:
            process.join(5)
            raise ListenerError(f"worker {index} exited during start-up (exit code {process.exitcode})") from exc
        finally:
            parent_end.close()
        if kind != "ready":
            process.join(5)
            raise ListenerError(f"worker {index} could not start: {payload}")
        self._ports = list(payload)
        return _Worker(index, process)

    def alive(self) -> int:
        """How many worker processes are running."""
        return sum(1 for worker in self._workers if worker.process.is_alive())

    def supervise(self) -> None:
        """Start again any worker that has died (called by the timer)."""
        with self._lock:
            if self._stopping:
                return
            for position, worker in enumerate(self._workers):
                if worker.process.is_alive():
                    continue
                LOG.error("worker %d exited with code %s; starting it again", worker.index, worker.process.exitcode)
                try:
                    self._workers[position] = self._spawn(worker.index)
                except ListenerError as exc:
                    LOG.error("could not restart worker %d: %s", worker.index, exc)

    def stop(self, drain_timeout: float) -> bool:
        """SIGTERM every worker (they drain), wait, kill what is left. True if all drained."""
        with self._lock:
            self._stopping = True
        for worker in self._workers:
            if worker.process.is_alive():
                worker.process.terminate()
        clean = True
        for worker in self._workers:
            worker.process.join(drain_timeout + 10)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join(5)
                clean = False
            elif worker.process.exitcode != 0:
                clean = False
        return clean
