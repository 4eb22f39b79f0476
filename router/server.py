"""``router serve``: the listener, the routing timer and the forwarder, in one process.

Start-up order: archive folders, process-wide pynetdicom settings, node registration (its
first heartbeat), reconciliation after a crash, node-run record, then the listener; the timer
thread routes stable studies, accounts for late instances, works the outbox and refreshes the
allowed calling AE titles. Two more threads: the heartbeat (renews this node's claims, see
:mod:`router.services.cluster`) and the periodic recheck and storage accrual, each run once per
``recheck_interval`` for the whole cluster under a lease, never on the timer's thread. Stopping drains: no new
associations, in-flight ones finish (up to ``listener.drain_timeout``), then a clean shutdown
is recorded and this node's claims are given back.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path

from prometheus_client.multiprocess import MultiProcessCollector

from router.app import RouterApp
from router.archive import clean_incoming_of
from router.config import Settings
from router.db.engine import check_connection
from router.dicom.extract import read_header
from router.dicom.listener import Listener
from router.dicom.scp import ConditionLog, configure_pynetdicom
from router.dicom.scu import Forwarder, client_tls_context
from router.domain.enums import StudyStatus
from router.domain.infra_cost import rate_microcents
from router.errors import RouterError, first_line
from router.hl7.mllp import MllpListener, TlsFiles
from router.metrics import ReceiveMetrics, ServerMetrics, server_registry
from router.node import ListenerError, ListenerNode
from router.ops_http import Check, HttpEndpoint, archive_writable
from router.services.cluster import ClusterService, resolve_node_id
from router.services.escalation import escalate_breached
from router.services.forwarding import ForwardingPolicy, ForwardingService
from router.services.hl7_inbox import Hl7Inbox
from router.services.orders import OrderService
from router.services.recovery import RecoveryReport, RecoveryService
from router.services.reports import ReportService
from router.workers import WorkerPool

LOG = logging.getLogger(__name__)


def forwarder(settings: Settings) -> Forwarder:
    """The forwarding sender, with the ``[forwarding.tls]`` client context.

    Raises
    ------
    SendError
        If the CA, certificate or key cannot be loaded.
    """
    tls = settings.forwarding.tls
    context = client_tls_context(tls.ca_file, tls.cert_file, tls.key_file, tls.check_hostname)
    return Forwarder(context, tls.destinations)


class RouterServer:
    """A running router node: listener (in this process or in worker processes) and timer."""

    def __init__(self, app: RouterApp) -> None:
        self.app = app
        settings = app.settings
        node_id = app.node_id or resolve_node_id(settings, create=True)
        assert node_id is not None
        self.node_id = node_id
        self.cluster = ClusterService(app.sessions, node_id, settings.node.lease_seconds, app.clock)
        self.forwarding = ForwardingService(
            app.sessions,
            app.archive,
            forwarder(settings),
            ForwardingPolicy(
                calling_ae_title=settings.forwarding.calling_ae_title or settings.listener.ae_title,
                max_attempts=settings.forwarding.max_attempts,
                initial_backoff=settings.forwarding.initial_backoff,
                max_backoff=settings.forwarding.max_backoff,
                transmission_microcents_per_gib=rate_microcents(settings.billing.transmission_cents_per_gib),
            ),
            app.clock,
            node_id=node_id,
            claim_seconds=settings.node.lease_seconds,
        )
        self.recovery = RecoveryService(app.sessions, app.archive, app.intake, read_header, app.clock, node_id=node_id)
        self.orders = OrderService(app.sessions, app.clock)
        self.hl7_inbox = Hl7Inbox(
            app.sessions,
            self.orders,
            ReportService(app.reads, app.routing),
            app.clock,
            settings.hl7.application,
        )
        self.hl7: MllpListener | None = None
        self.node: ListenerNode | None = None
        self.workers: WorkerPool | None = None
        self.recovery_report: RecoveryReport | None = None
        self._run_id: int | None = None
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._timer_condition = ConditionLog(LOG)
        self._background: list[threading.Thread] = []
        # Metrics: the database gauges and, when this process listens, its C-STORE counters.
        self.registry = server_registry(app.sessions, None)
        self.metrics = ServerMetrics(self.registry)
        self.receive_metrics = ReceiveMetrics(self.registry) if settings.listener.workers == 1 else None
        self._metrics_dir: Path | None = None  # worker processes' counters (multiprocess mode)
        self.http: HttpEndpoint | None = None

    @property
    def listener(self) -> Listener | None:
        """The in-process listener (``None`` when worker processes listen)."""
        return self.node.listener if self.node is not None else None

    @property
    def ports(self) -> list[int]:
        """Bound ports (plain first, then TLS)."""
        if self.workers is not None:
            return self.workers.ports
        return self.node.ports if self.node else []

    def start(self) -> None:
        """Reconcile, then listen and start the timer. Returns once listening.

        Raises
        ------
        ArchiveError
            The archive folders cannot be created.
        ListenerError
            A port cannot be bound (or a worker process could not start).
        """
        app = self.app
        app.archive.prepare()
        configure_pynetdicom(app.archive.incoming, direct_io=app.archive.places_by_rename)
        self.cluster.register()
        self.recovery_report = self.recovery.reconcile()
        self._run_id = self.recovery.start_run()
        listener_settings = app.settings.listener
        if listener_settings.workers > 1:
            self._metrics_dir = Path(tempfile.mkdtemp(prefix="router-metrics-"))
            MultiProcessCollector(self.registry, path=str(self._metrics_dir))
            self.workers = WorkerPool(app.settings, self._metrics_dir)
            self.workers.start()
        else:
            self.node = ListenerNode(app, self.receive_metrics)
            self.node.start()
        http = app.settings.http
        if http.enabled:
            self.http = HttpEndpoint(http.host, http.port, self.registry, self.health_checks())
            self.http.start()
            LOG.info("HTTP /healthz and /metrics on %s port %d", http.host, self.http.bound_port)
        self._start_hl7()
        self._timer = threading.Thread(target=self._tick_loop, name="router-timer", daemon=True)
        self._timer.start()
        for target, name in ((self._heartbeat_loop, "router-heartbeat"), (self._recheck_loop, "router-recheck")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._background.append(thread)
        LOG.info(
            "listening as %s on %s port(s) %s with %d process(es) as node %s; archive %s",
            listener_settings.ae_title,
            listener_settings.host,
            ",".join(str(port) for port in self.ports),
            listener_settings.workers,
            self.node_id,
            app.archive.root,
        )

    @property
    def hl7_port(self) -> int | None:
        """The bound MLLP port, or ``None`` when ``[hl7] enabled`` is false."""
        return self.hl7.port if self.hl7 is not None else None

    def _start_hl7(self) -> None:
        settings = self.app.settings.hl7
        if not settings.enabled:
            return
        tls = None
        if settings.tls:
            assert settings.cert_file is not None and settings.key_file is not None
            tls = TlsFiles(
                str(settings.cert_file), str(settings.key_file), str(settings.ca_file) if settings.ca_file else None
            )
        try:
            self.hl7 = MllpListener(
                settings.host,
                settings.port,
                self.hl7_inbox.handle,
                self.hl7_inbox.refuse_frame,
                settings.max_message_bytes,
                settings.timeout,
                tls,
                max_connections=settings.max_connections,
                max_connections_per_address=settings.max_connections_per_address,
            )
        except OSError as exc:
            raise ListenerError(
                f"cannot listen for HL7 on {settings.host}:{settings.port}: {exc.strerror or exc}"
            ) from exc
        self.hl7.start()
        LOG.info("HL7 MLLP listening on %s port %d%s", settings.host, self.hl7.port, " (TLS)" if tls else "")

    def tick(self) -> None:
        """One pass of the timer: match orders to new studies, route, forward, refresh the
        allow-list, clean stale temp files (the periodic re-check has its own thread)."""
        self.orders.match_pending()
        started = time.perf_counter()
        routed = self.app.routing.route_due()
        self.metrics.observe_routing([result.status.value for result in routed], time.perf_counter() - started)
        if self.app.settings.forwarding.enabled:
            self.forwarding.run_due()
        if self.node is not None:
            self.node.refresh_allowed_titles()
        if self.workers is not None:
            self.workers.supervise()
        self.app.archive.clean_incoming(older_than_seconds=self._stale_after())

    def _stale_after(self) -> float:
        """Seconds after which a temporary file in an incoming folder is debris (seconds)."""
        return 2 * self.app.settings.listener.network_timeout + 60

    def sweep_incoming_if_due(self) -> bool:
        """Run :meth:`sweep_dead_nodes_incoming` here if no node of the cluster ran it in the last
        stale-file interval; returns whether it ran here."""
        return self.cluster.run_once_per_interval("incoming-sweep", self._stale_after(), self.sweep_dead_nodes_incoming)

    def sweep_dead_nodes_incoming(self) -> int:
        """Delete stale temporary files of dead nodes (no heartbeat within their lease) from
        their incoming folders in the shared archive folder; returns the count. Done once per
        interval for the cluster (a node only ever empties its own folder otherwise)."""
        dead = [node.node_id for node in self.cluster.nodes() if not node.alive and node.node_id != self.node_id]
        removed = clean_incoming_of(self.app.settings.paths.archive, dead, self._stale_after())
        if removed:
            LOG.info("removed %d stale temporary file(s) of %d dead node(s)", removed, len(dead))
        return removed

    def recheck(self) -> None:
        """Re-check every open assignment and held study against today's roster.

        Nothing else changes eligibility over time without a roster command: a license or
        Letter of Qualification expiring at midnight, the 90-day Compact hold ending, a
        privilege lapsing; and a roster command whose own re-evaluation failed (database
        busy) relies on this pass.
        """
        results = self.app.routing.reevaluate("periodic recheck", skip_locked=True)
        escalated = escalate_breached(self.app.routing)
        if escalated:
            LOG.warning("periodic recheck: %d read(s) past their turnaround target escalated", len(escalated))
        withdrawn = sum(1 for result in results if result.withdrawn_npi is not None)
        assigned = sum(
            1 for result in results if result.withdrawn_npi is None and result.status == StudyStatus.ASSIGNED
        )
        if withdrawn or assigned:
            LOG.info(
                "periodic recheck: %d withdrawn from a reader no longer eligible, %d held assigned", withdrawn, assigned
            )

    def health_checks(self) -> dict[str, Check]:
        """The ``/healthz`` checks: listener up, database reachable, archive writable."""
        return {
            "listener": self._listener_health,
            "database": self._database_health,
            "archive": lambda: archive_writable(self.app.archive.incoming),
        }

    def _database_health(self) -> str:
        check_connection(self.app.engine)
        return "connected"

    def _listener_health(self) -> str:
        if self._stop.is_set():
            raise RouterError("stopping")
        if self.workers is not None:
            alive = self.workers.alive()
            if alive < self.workers.count:
                raise RouterError(f"{alive} of {self.workers.count} receiving processes running")
        elif self.node is None or not self.node.ports:
            raise RouterError("not listening")
        return f"listening on port(s) {', '.join(str(port) for port in self.ports)}"

    def _tick_loop(self) -> None:
        interval = self.app.settings.routing.poll_interval
        while not self._stop.wait(interval):
            try:
                self.tick()
            except Exception as exc:
                # One line when a condition starts and one when it clears, not a traceback every
                # pass; the traceback is at DEBUG (``-v``).
                LOG.debug("routing timer pass failed", exc_info=True)
                self._timer_condition.failed(
                    "routing timer",
                    f"routing timer pass failed, retrying every {interval:g} s: {type(exc).__name__}: {first_line(exc)}",
                )
            else:
                self._timer_condition.succeeded("routing timer")

    def recheck_if_due(self) -> bool:
        """Run :meth:`recheck` here if no node of the cluster ran it in the last
        ``routing.recheck_interval`` seconds; returns whether it ran here."""
        return self.cluster.run_once_per_interval("recheck", self.app.settings.routing.recheck_interval, self.recheck)

    def accrue_if_due(self) -> bool:
        """Accrue storage through last month (:mod:`router.services.accrual`) if no node of the
        cluster did in the last ``routing.recheck_interval`` seconds; returns whether it ran here."""
        return self.cluster.run_once_per_interval(
            "storage_accrual", self.app.settings.routing.recheck_interval, self.app.accrual.accrue
        )

    def _heartbeat_loop(self) -> None:
        condition = ConditionLog(LOG)
        interval = self.app.settings.node.heartbeat_interval
        while not self._stop.wait(interval):
            try:
                self.cluster.heartbeat()
            except Exception as exc:
                LOG.debug("heartbeat failed", exc_info=True)
                condition.failed("heartbeat", f"heartbeat of node {self.node_id} failed: {first_line(exc)}")
            else:
                condition.succeeded("heartbeat")

    def _recheck_loop(self) -> None:
        condition = ConditionLog(LOG)
        # Look often enough that a cluster whose recheck holder died is late by little.
        interval = max(0.2, min(self.app.settings.routing.recheck_interval, self.app.settings.node.heartbeat_interval))
        while True:
            for name, due in (
                ("periodic recheck", self.recheck_if_due),
                ("storage accrual", self.accrue_if_due),
                ("incoming sweep", self.sweep_incoming_if_due),
            ):
                try:
                    due()
                except Exception as exc:
                    LOG.debug("%s failed", name, exc_info=True)
                    condition.failed(name, f"{name} failed, retried: {type(exc).__name__}: {first_line(exc)}")
                else:
                    condition.succeeded(name)
            if self._stop.wait(interval):
                return

    def _refresh_allowed_titles(self) -> None:
        """Refresh the in-process listener's allow-list now (tests; the timer does it each tick)."""
        if self.node is not None:
            self.node.refresh_allowed_titles()

    def stop(self, drain_timeout: float | None = None) -> bool:
        """Drain and stop; records a clean shutdown. Returns True if nothing had to be aborted."""
        timeout = self.app.settings.listener.drain_timeout if drain_timeout is None else drain_timeout
        finished = True
        if self.http is not None:
            self.http.stop()
        if self.hl7 is not None:
            self.hl7.stop()
        if self.node is not None:
            finished = self.node.drain(timeout)
        if self.workers is not None:
            finished = self.workers.stop(timeout)
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=max(5.0, self.app.settings.routing.poll_interval * 2))
        for thread in self._background:
            thread.join(timeout=5.0)
        try:
            self.cluster.stop()
        except Exception as exc:  # noqa: BLE001 - the claims then expire after node.lease_seconds
            LOG.warning("could not give back the claims of node %s: %s", self.node_id, first_line(exc))
        if self._run_id is not None and finished:
            # Only a full drain is a clean shutdown: an aborted association's handler may still
            # have been storing, so the next start reconciles.
            self.recovery.finish_run(self._run_id)
        if self._metrics_dir is not None:
            shutil.rmtree(self._metrics_dir, ignore_errors=True)
        LOG.info("stopped%s", "" if finished else " (associations still open after the drain timeout were aborted)")
        return finished
