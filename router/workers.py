"""Several receiving processes on one port (``[listener] workers``), to use every core.

pynetdicom serves each association in a thread of one Python process, so concurrent
associations share one interpreter lock. With ``workers`` > 1, ``router serve`` starts that
many worker processes. The parent binds the listening port(s) and hands each worker the
listening sockets: they share one accept queue and the least busy worker accepts the next
connection (:mod:`router.dicom.balance`); a connection arriving while a worker restarts waits
in the queue for another. Each worker runs its own C-STORE SCP, database connections and
archive writer. The parent process keeps what must happen once: start-up reconciliation, the
routing timer, forwarding, and supervision (a worker that dies is started again).

Every acknowledgement still means durable on disk and committed (each worker's own
transaction); SQLite serialises the writers across processes with its file lock and busy
timeout, PostgreSQL with row locks. A worker whose parent has gone (killed) stops at once, so a
restarted router never shares its port with orphans.
"""

from __future__ import annotations

import contextlib
import gc
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
from router.dicom.balance import NOT_ACCEPTING
from router.metrics import MULTIPROCESS_ENV
from router.node import ListenerError

LOG = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect once, then move every object alive now out of the cyclic garbage collector's
    reach (:func:`gc.freeze`); call it when a serving process has finished starting.

    pynetdicom's server runs a full ``gc.collect()`` every 60 accepted connections (and every
    60 idle half-seconds), and Python runs its own full collections as objects accumulate.
    Each full collection walks every tracked object: in a router process after start-up about
    160,000 of them (pydicom's dictionaries, SQLAlchemy's mappers, the supported presentation
    contexts), 75-110 ms with the interpreter lock held, a stall of every association of that
    process. Frozen, those start-up objects are skipped and a full collection walks only what
    was made since (4-20 ms measured; docs/benchmarks.md, lever 20). Objects freed by reference
    counting are freed as before; only reference cycles among the frozen objects that die later
    are never reclaimed, and start-up objects live as long as the process.

    Returns the number of objects frozen (:func:`gc.get_freeze_count`).
    """
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


#: Seconds a worker may take to open its database and bind before start-up fails.
START_TIMEOUT = 60.0
#: Connections the kernel queues on a listening port until a worker accepts them.
LISTEN_BACKLOG = 128


def _worker_main(
    settings: Settings,
    index: int,
    port: int | None,
    tls_port: int | None,
    sockets: tuple[tuple[int, socket.socket], ...],
    loads: Any,
    conn: Connection,
    parent_pid: int,
    metrics_dir: str | None = None,
    verbose: bool = False,
) -> None:
    """Entry point of a worker process (spawned: nothing is inherited but the arguments and the
    environment, which carries ``PROMETHEUS_MULTIPROC_DIR`` when ``metrics_dir`` is set)."""
    from prometheus_client import CollectorRegistry

    from router.app import RouterApp
    from router.dicom.balance import AcceptBalance
    from router.dicom.scp import configure_pynetdicom
    from router.logsafety import configure_logging
    from router.metrics import ReceiveMetrics
    from router.node import ListenerNode

    configure_logging(settings.logging.level, verbose=verbose, log_format=settings.logging.format)
    # In multiprocess mode (set before this interpreter started) the counters go to files in
    # metrics_dir, summed by the parent at scrape time.
    metrics = ReceiveMetrics(CollectorRegistry()) if metrics_dir is not None else None
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        app = RouterApp.open(settings)
        app.archive.prepare()
        configure_pynetdicom(app.archive.incoming, direct_io=app.archive.places_by_rename)
        node = ListenerNode(app, metrics)
        # the parent's listening sockets (by port), shared with the other workers
        node.start(port=port, tls_port=tls_port, inherited=sockets, balance=AcceptBalance(loads, index))
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which fails start-up
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        os._exit(1)
    freeze_startup_heap()
    try:
        conn.send(("ready", node.ports))
    except OSError:  # the parent died while this worker started: nobody to serve for
        node.drain(0.0)
        app.close()
        os._exit(1)
    interval = max(0.2, min(settings.routing.poll_interval, 2.0))
    orphaned = False
    while not stop.wait(interval):
        if os.getppid() != parent_pid:
            orphaned = True
            break
        node.refresh_allowed_titles()
        if node.listener is not None:
            node.listener.publish_load()
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
        self._sockets: list[tuple[int, socket.socket]] = []  # listening, shared by the workers
        # each worker's load (open connections), for the least busy one to accept (router.dicom.balance)
        self._loads: Any = self._context.RawArray("i", self.count)
        self._stopping = False
        self._lock = threading.Lock()  # the timer's supervise() and stop() may race

    @property
    def ports(self) -> list[int]:
        """Bound ports (plain first, then TLS), shared by every worker."""
        return list(self._ports)

    def start(self) -> None:
        """Bind and listen on the port(s) (port 0: a free one), start every worker with the
        listening sockets and wait until each serves.

        Raises
        ------
        ListenerError
            A port could not be bound, or a worker could not open the database; none is left
            running.
        """
        listener = self.settings.listener
        try:
            if listener.enabled:
                self._plain_port = self._listen(listener.host, listener.port)
            if listener.tls.enabled:
                self._tls_port = self._listen(listener.tls.host or listener.host, listener.tls.port)
            for index in range(self.count):
                self._workers.append(self._spawn(index))
        except ListenerError:
            self.stop(0.0)
            raise

    def _listen(self, host: str, port: int) -> int:
        """Bind ``host:port`` and listen (as pynetdicom's server would: ``SO_REUSEADDR``);
        returns the bound port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(LISTEN_BACKLOG)
        except OSError as exc:
            sock.close()
            raise ListenerError(f"cannot listen on {host} port {port}: {exc.strerror or exc}") from exc
        bound = int(sock.getsockname()[1])
        self._sockets.append((bound, sock))
        return bound

    def _spawn(self, index: int) -> _Worker:
        self._loads[index] = 0
        parent_end, child_end = self._context.Pipe(duplex=False)
        metrics_dir = str(self.metrics_dir) if self.metrics_dir is not None else None
        process = self._context.Process(
            target=_worker_main,
            args=(
                self.settings,
                index,
                self._plain_port,
                self._tls_port,
                tuple(self._sockets),
                self._loads,
                child_end,
                os.getpid(),
                metrics_dir,
                # log as the parent does (``router --verbose``: pynetdicom's logger at DEBUG)
                logging.getLogger("pynetdicom").isEnabledFor(logging.DEBUG),
            ),
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
                self._loads[worker.index] = NOT_ACCEPTING
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
        for _port, sock in self._sockets:
            sock.close()
        return clean
