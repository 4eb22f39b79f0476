"""``router serve``: the listener, the routing timer and the forwarder, in one process.

Start-up order: archive folders, process-wide pynetdicom settings, node registration (its
first heartbeat), reconciliation after a crash, node-run record, then the listener; the timer
thread routes stable studies, accounts for late instances, works the outbox and refreshes the
allowed calling AE titles. Two more threads: the heartbeat (renews this node's claims, see
:mod:`router.services.cluster`) and the periodic recheck, run once per ``recheck_interval``
for the whole cluster under a lease, never on the timer's thread. Stopping drains: no new
associations, in-flight ones finish (up to ``listener.drain_timeout``), then a clean shutdown
is recorded and this node's claims are given back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path

from router.app import RouterApp
from router.dicom.extract import read_header
from router.dicom.listener import Listener
from router.dicom.scp import ConditionLog, configure_pynetdicom
from router.dicom.scu import Destination, send_files
from router.domain.enums import StudyStatus
from router.errors import first_line
from router.node import ListenerNode
from router.services.cluster import ClusterService, resolve_node_id
from router.services.forwarding import ForwardingPolicy, ForwardingService
from router.services.recovery import RecoveryReport, RecoveryService
from router.workers import WorkerPool

LOG = logging.getLogger(__name__)


def _send(paths: Sequence[Path], destination: str, calling_ae_title: str) -> list[bool]:
    results = send_files(list(paths), Destination.parse(destination), calling_ae_title=calling_ae_title)
    return [result.ok for result in results]


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
            _send,
            ForwardingPolicy(
                calling_ae_title=settings.forwarding.calling_ae_title or settings.listener.ae_title,
                max_attempts=settings.forwarding.max_attempts,
                initial_backoff=settings.forwarding.initial_backoff,
                max_backoff=settings.forwarding.max_backoff,
                transmission_cents_per_gib=settings.billing.transmission_cents_per_gib,
            ),
            app.clock,
            node_id=node_id,
            claim_seconds=settings.node.lease_seconds,
        )
        self.recovery = RecoveryService(app.sessions, app.archive, app.intake, read_header, app.clock, node_id=node_id)
        self.node: ListenerNode | None = None
        self.workers: WorkerPool | None = None
        self.recovery_report: RecoveryReport | None = None
        self._run_id: int | None = None
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        self._timer_condition = ConditionLog(LOG)
        self._background: list[threading.Thread] = []

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
        configure_pynetdicom(app.archive.incoming)
        self.cluster.register()
        self.recovery_report = self.recovery.reconcile()
        self._run_id = self.recovery.start_run()
        listener_settings = app.settings.listener
        if listener_settings.workers > 1:
            self.workers = WorkerPool(app.settings)
            self.workers.start()
        else:
            self.node = ListenerNode(app)
            self.node.start()
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

    def tick(self) -> None:
        """One pass of the timer: route, forward, refresh the allow-list, clean stale temp files."""
        self.app.routing.route_due()
        if self.app.settings.forwarding.enabled:
            self.forwarding.run_due()
        if self.node is not None:
            self.node.refresh_allowed_titles()
        if self.workers is not None:
            self.workers.supervise()
        stale_after = 2 * self.app.settings.listener.network_timeout + 60
        self.app.archive.clean_incoming(older_than_seconds=stale_after)

    def recheck(self) -> None:
        """Re-check every open assignment and held study against today's roster.

        Nothing else changes eligibility over time without a roster command: a license or
        Letter of Qualification expiring at midnight, the 90-day Compact hold ending, a
        privilege lapsing; and a roster command whose own re-evaluation failed (database
        busy) relies on this pass.
        """
        results = self.app.routing.reevaluate("periodic recheck", skip_locked=True)
        withdrawn = sum(1 for result in results if result.withdrawn_npi is not None)
        assigned = sum(
            1 for result in results if result.withdrawn_npi is None and result.status == StudyStatus.ASSIGNED
        )
        if withdrawn or assigned:
            LOG.info(
                "periodic recheck: %d withdrawn from a reader no longer eligible, %d held assigned", withdrawn, assigned
            )

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
            try:
                self.recheck_if_due()
            except Exception as exc:
                LOG.debug("periodic recheck failed", exc_info=True)
                condition.failed(
                    "recheck", f"periodic recheck failed, retried: {type(exc).__name__}: {first_line(exc)}"
                )
            else:
                condition.succeeded("recheck")
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
        LOG.info("stopped%s", "" if finished else " (associations still open after the drain timeout were aborted)")
        return finished
