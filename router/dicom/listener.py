"""The listening side of the SCP: sockets, access control, TLS and the pynetdicom AE.

:func:`start_listener` binds the plain and/or TLS ports and serves each association in its own
thread, with the C-STORE handler of :mod:`router.dicom.scp`. Several router processes may share
a port: each gets the listening socket its parent made (``inherited``) and the least busy one
accepts the next connection (:mod:`router.dicom.balance`).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

from pynetdicom import AE, evt
from pynetdicom.events import EventHandlerType
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import ThreadedAssociationServer

from router.dicom.application_context import application_context_problem
from router.dicom.balance import AcceptBalance
from router.dicom.guard import ConnectionLimiter, GuardedRequestHandler, PeerLimits, install_log_filter
from router.dicom.scp import STORAGE_TRANSFER_SYNTAXES, VERIFICATION_SOP_CLASS, StoreHandler
from router.logsafety import uid_for_log

LOG = logging.getLogger(__name__)


class RouterAssociationServer(ThreadedAssociationServer):
    """pynetdicom's threaded server with the router's socket policy.

    - connections from addresses outside ``allowed_networks`` are closed before any DICOM
      exchange (``socketserver`` ``verify_request``, in the accept loop; no thread is started);
    - TCP_NODELAY on every accepted socket (C-STORE responses are small: without it a sender
      with Nagle on waits for the delayed ACK, about 40 ms per instance);
    - in the connection's own thread, never in the accept loop, with ``handshake_timeout``
      seconds (``listener.acse_timeout``) for each step: wait for the peer's first byte, then
      on the TLS port run the handshake (PS3.15 Annex B.1). A peer that hangs up before sending
      anything (a TCP health check, a port scan), says nothing, is not speaking TLS on the TLS
      port, or fails the handshake is closed there and never becomes an association. Otherwise
      pynetdicom would hold it as one until its ARTIM timer expired, taking a place among
      ``max_associations`` and delaying a drain;
    - connection threads are daemon threads: a stalled handshake never holds up shutdown
      (``socketserver.ThreadingMixIn`` would otherwise join them on close);
    - connections over ``max_connections`` or ``max_connections_per_address`` are closed in
      the accept loop, and every association reads through
      :class:`~router.dicom.guard.GuardedAssociationSocket` (PDU length limits, one deadline
      for the whole association request from the accept, TLS handshake included);
      see :mod:`router.dicom.guard`.
    """

    daemon_threads = True

    def __init__(
        self,
        *args: Any,
        allowed_networks: Iterable[Any] = (),
        tcp_nodelay: bool = True,
        handshake_timeout: float = 30.0,
        peer_limits: PeerLimits | None = None,
        listening_socket: socket.socket | None = None,
        balance: AcceptBalance | None = None,
        **kwargs: Any,
    ) -> None:
        self.allowed_networks = tuple(allowed_networks)
        self.tcp_nodelay = tcp_nodelay
        self.handshake_timeout = handshake_timeout
        self.listening_socket = listening_socket
        self.balance = balance
        self.peer_limits = peer_limits or PeerLimits()
        kwargs.setdefault("request_handler", GuardedRequestHandler)
        super().__init__(*args, **kwargs)
        self.limiter = ConnectionLimiter(self.peer_limits, lambda: self.ae.active_associations)
        self.contexts = SharedContexts(deepcopy(self.contexts))

    def server_bind(self) -> None:
        """Bind as pynetdicom does, or take the inherited listening socket (non-blocking: another
        process sharing it may accept the connection this one was woken for)."""
        assert self.socket is not None
        if self.listening_socket is not None:
            self.socket.close()
            self.socket = self.listening_socket
            self.socket.setblocking(False)
            self.server_address = self.socket.getsockname()
            return
        super().server_bind()

    def server_activate(self) -> None:
        """Listen (an inherited socket already listens)."""
        if self.listening_socket is None:
            super().server_activate()

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        """Accept a connection (plain TCP: TLS is set up later, in the connection's thread).

        Raises ``BlockingIOError`` (``socketserver`` then waits for the next one) when another
        process sharing the socket took the connection or, being less busy, should take it.
        """
        assert self.socket is not None
        if self.balance is not None and self.balance.defer(self.limiter.load()):
            time.sleep(0.001)  # the socket stays readable until the other process accepts
            raise BlockingIOError
        client_socket, address = self.socket.accept()
        if self.tcp_nodelay:
            try:
                client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # pragma: no cover - not a TCP socket
                pass
        return client_socket, address

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """``True`` if the peer is in ``allowed_networks`` (or the list is empty) and within the
        connection limits (then it is counted until its association ends).
        """
        if not self.address_allowed(client_address):
            return False
        address = str(client_address[0])
        refused = self.limiter.admit(address)
        if refused is not None:
            if self.limiter.should_warn(address):
                LOG.warning("connections from %s refused: %s (logged once a minute per address)", address, refused)
            return False
        return True

    def address_allowed(self, client_address: Any) -> bool:
        """``True`` if the peer is in ``allowed_networks`` (or the list is empty).

        An IPv4-mapped IPv6 peer (``::ffff:a.b.c.d``, seen on a dual-stack ``::`` listener) is
        compared as the IPv4 address; an IPv6 zone (``%eth0``) is ignored.
        """
        if not self.allowed_networks:
            return True
        try:
            peer = ipaddress.ip_address(str(client_address[0]).split("%")[0])
        except ValueError:
            return False
        if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
            peer = peer.ipv4_mapped
        allowed = any(peer in network for network in self.allowed_networks)
        if not allowed:
            LOG.warning("connection from %s refused: address not in listener.allowed_addresses", peer)
        return allowed

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start the connection's thread (``socketserver.ThreadingMixIn``); if no thread can be
        started, the connection counted by :meth:`verify_request` no longer counts (it is
        closed by ``socketserver``), instead of taking a place until the process restarts."""
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.limiter.started(str(client_address[0]))
            raise

    def finish_request(self, request: Any, client_address: Any) -> None:
        """Runs in the connection's thread: pre-checks and TLS, then hand over to pynetdicom."""
        deadline = time.monotonic() + self.peer_limits.association_request_timeout
        handler: Any = None
        try:
            ready = self._prepare(request, str(client_address[0]), deadline)
            if ready is not None:
                self.limiter.make_room(str(client_address[0]))
                handler = self.RequestHandlerClass(ready, client_address, self, deadline)  # type: ignore[call-arg, arg-type]
        finally:
            if not getattr(handler, "counted", False):
                self.limiter.started(str(client_address[0]))

    def _prepare(self, request: socket.socket, peer: str, deadline: float) -> socket.socket | None:
        """The socket to run the association on; ``None`` once a refused connection is closed."""
        current = request
        started = time.monotonic()
        try:
            # the first byte, then the whole TLS handshake (CPython applies a socket timeout to
            # do_handshake as a whole, not per read), by the association-request deadline
            current.settimeout(max(0.001, min(self.handshake_timeout, deadline - time.monotonic())))
            first = current.recv(1, socket.MSG_PEEK)
            if not first:
                LOG.debug("connection from %s closed before sending anything", peer)
                return _closed(current)
            if self.ssl_context is not None:
                if first != b"\x16":  # not a TLS handshake record (RFC 8446 section 5.1)
                    LOG.warning(
                        "connection from %s to the TLS port is not TLS (first byte 0x%02X); closed", peer, first[0]
                    )
                    return _closed(current)
                current = self.ssl_context.wrap_socket(current, server_side=True, do_handshake_on_connect=False)
                current.settimeout(max(0.001, min(self.handshake_timeout, deadline - time.monotonic())))
                current.do_handshake()
            current.settimeout(None)  # pynetdicom expects a blocking socket (it selects before reading)
        except TimeoutError:
            now = time.monotonic()
            setting = "listener.association_request_timeout" if now >= deadline else "listener.acse_timeout"
            LOG.info("connection from %s sent nothing or stalled for %.0f s (%s); closed", peer, now - started, setting)
            return _closed(current)
        except ssl.SSLError as exc:
            LOG.warning("TLS handshake with %s failed: %s", peer, exc.reason or exc)
            return _closed(current)
        except OSError as exc:
            LOG.debug("connection from %s lost before the association: %s", peer, exc)
            return _closed(current)
        return current


class SharedContexts(list[PresentationContext]):
    """The server's supported presentation contexts, given to every association as they are.

    pynetdicom deep-copies the server's list for each association it accepts
    (``RequestHandler._create_association``). With every storage SOP class supported, each
    with the router's 39 transfer syntaxes (171 contexts, 6,700 UIDs), that copy was two thirds
    of the CPU of an association's set-up (a DCMTK ``storescu`` association sending one
    instance cost 50 ms of router CPU with it, 16 without; docs/benchmarks.md). Nothing writes
    to them afterwards: the negotiation (``pynetdicom.presentation.negotiate_as_acceptor`` and
    ``negotiate_unrestricted``) reads them and builds new contexts for its answer. The list is
    copied once, when the server is made, so no later change to the AE's contexts reaches it;
    ``copy.deepcopy`` of it returns the list itself.
    """

    def __deepcopy__(self, memo: dict[int, Any]) -> SharedContexts:
        return self


def _closed(sock: socket.socket) -> socket.socket | None:
    """Shut down and close a connection that never became an association; returns ``None``
    (no socket to run an association on)."""
    for step in (lambda: sock.shutdown(socket.SHUT_RDWR), sock.close):
        try:
            step()
        except OSError:
            pass
    return None


@dataclass(frozen=True)
class ListenerOptions:
    """What :func:`start_listener` needs (taken from the router settings)."""

    ae_title: str
    host: str
    port: int
    max_associations: int = 16
    acse_timeout: float = 30.0
    dimse_timeout: float = 60.0
    network_timeout: float = 120.0
    max_pdu_length: int = 262_144
    tcp_nodelay: bool = True
    allowed_addresses: tuple[str, ...] = ()
    tls_port: int | None = None
    tls_host: str | None = None
    ssl_context: ssl.SSLContext | None = None
    plain: bool = True
    # listening sockets made by the parent process, by port (several processes share them)
    inherited: tuple[tuple[int, socket.socket], ...] = ()
    balance: AcceptBalance | None = None  # the least busy of the processes sharing them accepts
    allowed_calling_ae_titles: tuple[str, ...] = ()  # set before the first association is accepted
    require_called_ae_title: bool = False  # refuse associations that call another AE title
    max_connections: int = 64
    max_connections_per_address: int = 8
    association_request_timeout: float = 10.0  # seconds from the accept to a complete A-ASSOCIATE-RQ
    max_association_request_bytes: int = 1 << 20
    ae_title_subjects: tuple[tuple[str, str], ...] = ()  # calling AE title -> client certificate name
    idle_eviction_seconds: float = 5.0  # when full, abort an association idle this long for a newcomer


class Listener:
    """A running SCP: one AE with a plain and/or a TLS server."""

    def __init__(self, ae: AE, servers: list[RouterAssociationServer], threads: list[threading.Thread]) -> None:
        self.ae = ae
        self.servers = servers
        self._threads = threads

    @property
    def ports(self) -> list[int]:
        """Bound ports, plain first then TLS (useful when port 0 asked for a free one)."""
        return [int(server.server_address[1]) for server in self.servers]

    def set_allowed_calling_ae_titles(self, titles: Iterable[str]) -> None:
        """Replace the allowed calling AE titles; empty allows every sender.

        Any other calling AE title gets A-ASSOCIATE-RJ rejected-permanent, service-user,
        "calling-AE-title-not-recognized" (PS3.8 section 9.3.4, Table 9-21: result 1, source 1,
        diagnostic 3). The comparison is exact after trailing spaces are stripped.

        Raises
        ------
        ValueError
            If a title is not a valid AE title (PS3.5 section 6.2, VR AE).
        """
        self.ae.require_calling_aet = sorted({title.strip() for title in titles})

    @property
    def allowed_calling_ae_titles(self) -> tuple[str, ...]:
        """The calling AE titles let in now; empty means every sender."""
        return tuple(self.ae.require_calling_aet)

    def active_associations(self) -> int:
        """Associations currently open."""
        return len(self.ae.active_associations)

    def stop_accepting(self) -> None:
        """Close the listening sockets; associations in flight carry on."""
        for server in list(self.servers):
            if server.balance is not None:
                server.balance.stop()
            server.shutdown()

    def publish_load(self) -> None:
        """Publish this process's load to the processes it shares its sockets with (called
        periodically, so a process's share is current even when no connection arrived lately)."""
        for server in self.servers:
            if server.balance is not None:
                server.balance.publish(server.limiter.load())
                return

    def drain(self, timeout: float) -> bool:
        """Stop accepting, wait up to ``timeout`` seconds for open associations, then abort the rest.

        Returns ``True`` if every association finished on its own.
        """
        self.stop_accepting()
        deadline = time.monotonic() + timeout
        while self.ae.active_associations and time.monotonic() < deadline:
            time.sleep(0.05)
        finished = not self.ae.active_associations
        self.ae.shutdown()
        return finished

    def close(self) -> None:
        """Stop at once: close the servers and abort every association."""
        self.ae.shutdown()


def _rejection_reason(assoc: Any, calling: str, called: str) -> str:
    """Why pynetdicom rejected an association request, in the terms of the router's config.

    Mirrors the checks of ``pynetdicom.acse.ACSE._negotiate_as_acceptor`` (PS3.8 section 9.3.4,
    A-ASSOCIATE-RJ): calling AE title not allowed (diagnostic 3), called AE title not ours
    (diagnostic 7), too many associations (transient, local limit exceeded); before those, an
    application context name other than DICOM's (diagnostic 2, :mod:`router.dicom.application_context`).
    """
    context_problem = application_context_problem(assoc.requestor.primitive)
    if context_problem is not None:  # checked first, and alone (router.dicom.application_context)
        return context_problem
    ae = assoc.ae
    allowed = [title.strip() for title in ae.require_calling_aet]
    # pynetdicom's later checks override earlier ones in what it sends: the same order here
    if len([item for item in ae.active_associations if item.is_acceptor]) > ae.maximum_associations:
        return f"listener.max_associations ({ae.maximum_associations}) reached; the sender may retry"
    if ae.require_called_aet and called != assoc.acceptor.ae_title.strip():
        return f"called AE title {called!r} is not ours ({assoc.acceptor.ae_title.strip()!r}; listener.require_called_ae_title)"
    if allowed and calling not in allowed:
        return "calling AE title not in listener.allowed_calling_ae_titles nor a registered facility"
    return "refused during negotiation"


def _log_rejected(event: evt.Event) -> None:
    """One WARNING per refused association: who (AE titles, address) and why; never PHI."""
    assoc = event.assoc
    request = assoc.requestor.primitive
    calling = str(getattr(request, "calling_ae_title", "") or "").strip()
    called = str(getattr(request, "called_ae_title", "") or "").strip()
    LOG.warning(
        "association from %r at %s:%s calling %r rejected: %s",
        calling,
        assoc.requestor.address,
        assoc.requestor.port,
        called,
        _rejection_reason(assoc, calling, called),
    )


#: Presentation context results of an A-ASSOCIATE-AC other than acceptance (PS3.8 Table 9-18).
_CONTEXT_REFUSALS = {
    0x01: "refused by the user",
    0x02: "refused, no reason given",
    0x03: "abstract syntax not supported",
    0x04: "transfer syntaxes not supported",
}
#: Most distinct abstract syntaxes named in the WARNING of an association that can send nothing.
_NAMED_SYNTAXES_MAX = 5


def _log_nothing_accepted(event: evt.Event) -> None:
    """EVT_ACCEPTED: one WARNING when the association was accepted with no presentation context.

    PS3.8 section 9.3.3 lets the acceptor accept an association while refusing every context
    (DCMTK and Orthanc do so too), but the sender can then send nothing: a DICOMDIR (Media
    Storage Directory Storage, which is not a storage SOP class to be archived), a SOP class
    proposed only with transfer syntaxes the router cannot read, a request with no context at
    all. The line names the calling AE title, the address and, per refusal reason, up to
    :data:`_NAMED_SYNTAXES_MAX` abstract syntax UIDs (never PHI), so an admin can tell the
    sender's operator what it proposed.
    """
    assoc = event.assoc
    # pynetdicom's own dict (accepted_contexts sorts a copy of it, for every association)
    if getattr(assoc, "_accepted_cx", None):
        return
    request = assoc.requestor.primitive
    calling = str(getattr(request, "calling_ae_title", "") or "").strip()
    refused: dict[str, list[str]] = {}
    for context in assoc.rejected_contexts:
        reason = _CONTEXT_REFUSALS.get(context.result or 0, f"result {context.result}")
        syntaxes = refused.setdefault(reason, [])
        abstract = uid_for_log(context.abstract_syntax)
        if abstract not in syntaxes:
            syntaxes.append(abstract)
    if refused:
        parts = []
        for reason, syntaxes in refused.items():
            named = ", ".join(syntaxes[:_NAMED_SYNTAXES_MAX])
            more = len(syntaxes) - _NAMED_SYNTAXES_MAX
            parts.append(f"{reason}: {named}" + (f" and {more} more" if more > 0 else ""))
        why = "; ".join(parts)
    else:
        why = "it proposed none"
    LOG.warning(
        "association from %r at %s:%s accepted with no presentation context (%s); it can send nothing",
        calling,
        assoc.requestor.address,
        assoc.requestor.port,
        why,
    )


def build_ae(options: ListenerOptions) -> AE:
    """An AE with the router's timeouts, PDU size and presentation contexts."""
    ae = AE(ae_title=options.ae_title)
    ae.maximum_associations = options.max_associations
    ae.acse_timeout = options.acse_timeout
    ae.dimse_timeout = options.dimse_timeout
    ae.network_timeout = options.network_timeout
    ae.maximum_pdu_size = options.max_pdu_length
    ae.require_calling_aet = sorted({title.strip() for title in options.allowed_calling_ae_titles if title.strip()})
    ae.require_called_aet = options.require_called_ae_title
    ae.add_supported_context(VERIFICATION_SOP_CLASS)
    # With UNRESTRICTED_STORAGE_SERVICE every storage SOP class proposed is accepted with one of
    # these transfer syntaxes; list the standard ones too so negotiation works without it.
    from pynetdicom import AllStoragePresentationContexts

    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(context.abstract_syntax, list(STORAGE_TRANSFER_SYNTAXES))
    return ae


def start_listener(options: ListenerOptions, handler: StoreHandler) -> Listener:
    """Bind and serve in background threads. Returns once the sockets are listening.

    Raises
    ------
    OSError
        If a port cannot be bound.
    """
    ae = build_ae(options)
    install_log_filter()
    networks = tuple(ipaddress.ip_network(item, strict=False) for item in options.allowed_addresses)
    handlers: list[EventHandlerType] = [
        (evt.EVT_C_STORE, handler),
        (evt.EVT_C_ECHO, _handle_echo),
        (evt.EVT_REJECTED, _log_rejected),
        (evt.EVT_ACCEPTED, _log_nothing_accepted),
        (evt.EVT_CONN_OPEN, handler.connection_opened),
        (evt.EVT_CONN_CLOSE, handler.connection_closed),
    ]
    servers: list[RouterAssociationServer] = []
    threads: list[threading.Thread] = []
    binds: list[tuple[str, int, ssl.SSLContext | None]] = []
    if options.plain:
        binds.append((options.host, options.port, None))
    if options.ssl_context is not None and options.tls_port is not None:
        binds.append((options.tls_host or options.host, options.tls_port, options.ssl_context))
    try:
        for host, port, context in binds:
            server = ae.make_server(
                (host, port),
                ssl_context=context,
                evt_handlers=handlers,
                server_class=RouterAssociationServer,
                allowed_networks=networks,
                tcp_nodelay=options.tcp_nodelay,
                handshake_timeout=options.acse_timeout,
                listening_socket=dict(options.inherited).get(port),
                balance=options.balance,
                peer_limits=PeerLimits(
                    max_connections=options.max_connections,
                    max_connections_per_address=options.max_connections_per_address,
                    association_request_timeout=options.association_request_timeout,
                    max_association_request_bytes=options.max_association_request_bytes,
                    max_pdu_length=options.max_pdu_length,
                    ae_title_subjects=options.ae_title_subjects,
                    max_associations=options.max_associations,
                    idle_eviction_seconds=options.idle_eviction_seconds,
                ),
            )
            assert isinstance(server, RouterAssociationServer)  # made with server_class
            ae._servers.append(server)  # so ae.shutdown() stops it (as start_server does)
            thread = threading.Thread(target=server.serve_forever, name=f"listener:{port}", daemon=True)
            thread.start()
            servers.append(server)
            threads.append(thread)
    except OSError:
        ae.shutdown()
        raise
    return Listener(ae, servers, threads)


def _handle_echo(event: Any) -> int:
    """C-ECHO (Verification SOP Class, PS3.4 Annex A): always Success."""
    return 0x0000
