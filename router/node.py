"""The C-STORE SCP of one router process: listener options from settings, TLS, allow-list.

Used by ``router serve`` in its own process (one worker) and by each worker process when
several share the port (:mod:`router.workers`).
"""

from __future__ import annotations

import logging
import socket
import ssl

from sqlalchemy import select

from router.app import RouterApp
from router.db.models import Facility
from router.dicom.balance import AcceptBalance
from router.dicom.listener import Listener, ListenerOptions, start_listener
from router.errors import ConfigError, RouterError
from router.metrics import MeteredStoreHandler, ReceiveMetrics
from router.services.intake import Sender

LOG = logging.getLogger(__name__)


class ListenerError(RouterError):
    """The listening socket could not be opened (port in use, address not available)."""


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
    context.verify_mode = (
        ssl.CERT_REQUIRED if tls.require_client_cert else (ssl.CERT_OPTIONAL if tls.ca_file else ssl.CERT_NONE)
    )
    return context


def listener_options(
    app: RouterApp,
    allowed: tuple[str, ...],
    *,
    port: int | None = None,
    tls_port: int | None = None,
    inherited: tuple[tuple[int, socket.socket], ...] = (),
    balance: AcceptBalance | None = None,
) -> ListenerOptions:
    """The listener options the settings describe; ``port``/``tls_port`` override the configured
    ones; ``inherited`` and ``balance`` come from the parent of a worker process."""
    listener = app.settings.listener
    tls = listener.tls
    return ListenerOptions(
        ae_title=listener.ae_title,
        host=listener.host,
        port=listener.port if port is None else port,
        max_associations=listener.max_associations,
        acse_timeout=listener.acse_timeout,
        dimse_timeout=listener.dimse_timeout,
        network_timeout=listener.network_timeout,
        max_pdu_length=listener.max_pdu_length,
        tcp_nodelay=listener.tcp_nodelay,
        allowed_addresses=listener.allowed_addresses,
        tls_port=(tls.port if tls_port is None else tls_port) if tls.enabled else None,
        tls_host=tls.host,
        ssl_context=tls_context(app),
        plain=listener.enabled,
        inherited=inherited,
        balance=balance,
        allowed_calling_ae_titles=allowed,
        require_called_ae_title=listener.require_called_ae_title,
        max_connections=max(listener.max_connections, listener.max_associations),
        max_connections_per_address=listener.max_connections_per_address,
        association_request_timeout=listener.association_request_timeout,
        max_association_request_bytes=listener.max_association_request_bytes,
        ae_title_subjects=tuple(tls.subject_bindings().items()) if tls.enabled else (),
        idle_eviction_seconds=listener.idle_eviction_seconds,
    )


def allowed_calling_ae_titles(app: RouterApp) -> tuple[str, ...]:
    """The configured calling AE titles plus every registered facility's (empty: everyone).

    Raises
    ------
    sqlalchemy.exc.SQLAlchemyError
        If the facility list cannot be read.
    """
    configured = app.settings.listener.allowed_calling_ae_titles
    if not configured:
        return ()
    with app.sessions() as session:
        registered = [title for title in session.scalars(select(Facility.ae_title)) if title and title.strip()]
    return (*configured, *registered)


class ListenerNode:
    """The C-STORE SCP of one process, with its allow-list kept up to date."""

    def __init__(self, app: RouterApp, metrics: ReceiveMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics  # counts each C-STORE answer when given
        self.listener: Listener | None = None

    @property
    def ports(self) -> list[int]:
        """Bound ports (plain first, then TLS)."""
        return self.listener.ports if self.listener else []

    def start(
        self,
        *,
        port: int | None = None,
        tls_port: int | None = None,
        inherited: tuple[tuple[int, socket.socket], ...] = (),
        balance: AcceptBalance | None = None,
    ) -> None:
        """Bind (or take the ``inherited`` listening sockets) and serve; the allow-list is in
        force before the first association.

        Raises
        ------
        ListenerError
            A port cannot be bound.
        """
        settings = self.app.settings.listener
        try:
            allowed = allowed_calling_ae_titles(self.app)
        except Exception:  # noqa: BLE001 - database down at start-up: the configured titles alone
            allowed = settings.allowed_calling_ae_titles
        options = listener_options(
            self.app, allowed, port=port, tls_port=tls_port, inherited=inherited, balance=balance
        )
        try:
            handler = MeteredStoreHandler(
                self.app.intake, Sender, max_inflated_bytes=settings.max_inflated_bytes, metrics=self.metrics
            )
            self.listener = start_listener(options, handler)
        except OSError as exc:
            raise ListenerError(f"cannot listen on {settings.host} port {options.port}: {exc.strerror or exc}") from exc

    def refresh_allowed_titles(self) -> None:
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
            titles = allowed_calling_ae_titles(self.app)
        except Exception:  # noqa: BLE001 - keep the previous list while the database is down
            if not self.listener.allowed_calling_ae_titles:
                self.listener.set_allowed_calling_ae_titles(configured)
            LOG.warning(
                "could not refresh allowed calling AE titles from the facility list; keeping %d title(s)",
                len(self.listener.allowed_calling_ae_titles),
            )
            return
        self.listener.set_allowed_calling_ae_titles(titles)

    def drain(self, timeout: float) -> bool:
        """Stop accepting, let associations finish up to ``timeout`` seconds; True if all did."""
        return self.listener.drain(timeout) if self.listener is not None else True
