"""``router serve``: the listener, the routing timer and the forwarder, in one process.

Start-up order: archive folders, process-wide pynetdicom settings, reconciliation after a
crash, node-run record, then the listener; the timer thread routes stable studies, accounts for
late instances, works the outbox and refreshes the allowed calling AE titles. Stopping drains:
no new associations, in-flight ones finish (up to ``listener.drain_timeout``), then a clean
shutdown is recorded.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import select

from router.app import RouterApp
from router.db.models import Facility
from router.dicom.extract import read_header
from router.dicom.scp import Listener, ListenerOptions, StoreHandler, configure_pynetdicom, start_listener
from router.dicom.scu import Destination, send_files
from router.errors import ConfigError, RouterError
from router.services.forwarding import ForwardingPolicy, ForwardingService
from router.services.intake import Sender
from router.services.recovery import RecoveryReport, RecoveryService

LOG = logging.getLogger(__name__)


class ListenerError(RouterError):
    """The listening socket could not be opened (port in use, address not available)."""


def _send(paths: Sequence[Path], destination: str, calling_ae_title: str) -> list[bool]:
    results = send_files(list(paths), Destination.parse(destination), calling_ae_title=calling_ae_title)
    return [result.ok for result in results]


def tls_context(app: RouterApp) -> ssl.SSLContext | None:
    """The server-side TLS context from ``[listener.tls]`` (PS3.15 B.1 profile), or ``None``.

    Raises
    ------
    ConfigError
        If the certificate, key or CA file cannot be loaded.
    """
    tls = app.settings.listener.tls
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
        if tls.ca_file is not None:
            context.load_verify_locations(cafile=str(tls.ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("listener.tls", f"cannot load certificate, key or CA: {exc}") from exc
    context.verify_mode = ssl.CERT_REQUIRED if tls.require_client_cert else (ssl.CERT_OPTIONAL if tls.ca_file else ssl.CERT_NONE)
    return context


class RouterServer:
    """A running router node."""

    def __init__(self, app: RouterApp) -> None:
        self.app = app
        settings = app.settings
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
        )
        self.recovery = RecoveryService(app.sessions, app.archive, app.intake, read_header, app.clock)
        self.listener: Listener | None = None
        self.recovery_report: RecoveryReport | None = None
        self._run_id: int | None = None
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None

    @property
    def ports(self) -> list[int]:
        """Bound ports (plain first, then TLS)."""
        return self.listener.ports if self.listener else []

    def start(self) -> None:
        """Reconcile, then listen and start the timer. Returns once listening.

        Raises
        ------
        ArchiveError
            The archive folders cannot be created.
        OSError
            A port cannot be bound.
        """
        app = self.app
        app.archive.prepare()
        configure_pynetdicom(app.archive.incoming)
        self.recovery_report = self.recovery.reconcile()
        self._run_id = self.recovery.start_run()
        listener_settings = app.settings.listener
        tls = listener_settings.tls
        options = ListenerOptions(
            ae_title=listener_settings.ae_title,
            host=listener_settings.host,
            port=listener_settings.port,
            max_associations=listener_settings.max_associations,
            acse_timeout=listener_settings.acse_timeout,
            dimse_timeout=listener_settings.dimse_timeout,
            network_timeout=listener_settings.network_timeout,
            max_pdu_length=listener_settings.max_pdu_length,
            tcp_nodelay=listener_settings.tcp_nodelay,
            allowed_addresses=listener_settings.allowed_addresses,
            tls_port=tls.port if tls.enabled else None,
            tls_host=tls.host,
            ssl_context=tls_context(app),
            plain=listener_settings.enabled,
        )
        try:
            self.listener = start_listener(options, StoreHandler(app.intake, Sender))
        except OSError as exc:
            raise ListenerError(f"cannot listen on {listener_settings.host} port {listener_settings.port}: {exc.strerror or exc}") from exc
        self._refresh_allowed_titles()
        self._timer = threading.Thread(target=self._tick_loop, name="router-timer", daemon=True)
        self._timer.start()
        LOG.info(
            "listening as %s on %s port(s) %s; archive %s",
            listener_settings.ae_title,
            listener_settings.host,
            ",".join(str(port) for port in self.ports),
            app.archive.root,
        )

    def tick(self) -> None:
        """One pass of the timer: route, forward, refresh the allow-list, clean stale temp files."""
        self.app.routing.route_due()
        if self.app.settings.forwarding.enabled:
            self.forwarding.run_due()
        self._refresh_allowed_titles()
        stale_after = 2 * self.app.settings.listener.network_timeout + 60
        self.app.archive.clean_incoming(older_than_seconds=stale_after)

    def _tick_loop(self) -> None:
        interval = self.app.settings.routing.poll_interval
        while not self._stop.wait(interval):
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the timer must survive a bad pass (database down...)
                LOG.exception("routing timer pass failed; retrying in %.0f s", interval)

    def _refresh_allowed_titles(self) -> None:
        """Let in the configured calling AE titles plus every registered facility's.

        With ``listener.allowed_calling_ae_titles`` empty every sender is accepted and the
        facility list changes nothing. While the database cannot be read the previous list is
        kept; if there is none yet (down at start-up), the configured titles alone are set, so
        the listener is never left open to every sender.
        """
        configured = self.app.settings.listener.allowed_calling_ae_titles
        if not configured or self.listener is None:
            return
        try:
            with self.app.sessions() as session:
                registered = [title for title in session.scalars(select(Facility.ae_title)) if title and title.strip()]
        except Exception:  # noqa: BLE001 - keep the previous list while the database is down
            if not self.listener.allowed_calling_ae_titles:
                self.listener.set_allowed_calling_ae_titles(configured)
            LOG.warning("could not refresh allowed calling AE titles from the facility list; keeping %d title(s)",
                        len(self.listener.allowed_calling_ae_titles))
            return
        self.listener.set_allowed_calling_ae_titles([*configured, *registered])

    def stop(self, drain_timeout: float | None = None) -> bool:
        """Drain and stop; records a clean shutdown. Returns True if nothing had to be aborted."""
        timeout = self.app.settings.listener.drain_timeout if drain_timeout is None else drain_timeout
        finished = True
        if self.listener is not None:
            finished = self.listener.drain(timeout)
        self._stop.set()
        if self._timer is not None:
            self._timer.join(timeout=max(5.0, self.app.settings.routing.poll_interval * 2))
        if self._run_id is not None and finished:
            # Only a full drain is a clean shutdown: an aborted association's handler may still
            # have been storing, so the next start reconciles.
            self.recovery.finish_run(self._run_id)
        LOG.info("stopped%s", "" if finished else " (associations still open after the drain timeout were aborted)")
        return finished
