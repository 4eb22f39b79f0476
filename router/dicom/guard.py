"""Limits on what one peer can hold: connections, bytes buffered, time to associate.

pynetdicom reads each PDU whole into memory after its 6-byte header (PS3.8 section 9.3.1:
type, reserved, 4-byte length), whatever the length says, and reads an A-ASSOCIATE-RQ with no
deadline but the socket's per-read timeout, so a peer trickling one byte a second holds its
thread and a place among ``max_associations`` for as long as it likes. The router hooks
pynetdicom where it is meant to be extended, for its own server only:

- :class:`ConnectionLimiter`, asked by the server's ``verify_request`` in the accept loop:
  at most ``max_connections`` connections at any stage and ``max_connections_per_address``
  from one IP address; a connection over either limit is closed before any DICOM exchange;
- :class:`GuardedRequestHandler`, the server's ``request_handler``: the association it builds
  reads through a :class:`GuardedAssociationSocket`, which checks each PDU's length in its
  header **before** reading the body (A-ASSOCIATE-RQ at most
  ``max_association_request_bytes``; P-DATA-TF at most the Maximum Length we offered,
  PS3.8 Annex D.1; release and abort PDUs are 4 bytes) and answers a longer one with A-ABORT
  (source: service provider, reason: invalid PDU parameter value; PS3.8 section 9.3.8) and
  closes the connection, as it does a header of a PDU type PS3.8 does not define (reason:
  unrecognized-PDU); which gives the whole A-ASSOCIATE-RQ one deadline counted from
  the connection (``association_request_timeout``), not one per read; and which, when calling
  AE titles are bound to client certificates (``[listener.tls] ae_title_subjects``), answers
  an A-ASSOCIATE-RQ whose calling AE title is bound to another certificate name, or that
  came without a client certificate, with A-ASSOCIATE-RJ (rejected-permanent, service-user,
  calling-AE-title-not-recognized; PS3.8 section 9.3.4, Table 9-21).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from pynetdicom import evt
from pynetdicom.transport import AssociationSocket, RequestHandler

from router.dicom.pdata import P_DATA_TF_TYPE, PDU_NAMES, PDU_TYPES

LOG = logging.getLogger(__name__)

#: A-ABORT PDU: type 7, length 4, reserved, reserved, source 2 (service provider), reason 6
#: (invalid PDU parameter value). PS3.8 section 9.3.8, Table 9-26.
A_ABORT_INVALID_PARAMETER = struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x06)
#: The same with reason 1 (unrecognized-PDU), for a PDU type PS3.8 section 9.3.1 does not define.
A_ABORT_UNRECOGNIZED_PDU = struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0x02, 0x01)
#: Largest PDU of any other type accepted (A-ASSOCIATE-AC/RJ are not expected by an acceptor;
#: A-RELEASE-RQ/RP and A-ABORT are 4 bytes), in bytes.
OTHER_PDU_MAX = 65_536
#: A-ASSOCIATE-RJ PDU: result 1 (rejected-permanent), source 1 (service-user), reason 3
#: (calling-AE-title-not-recognized). PS3.8 section 9.3.4.
A_ASSOCIATE_RJ_CALLING_AE = struct.pack(">BBIBBBB", 0x03, 0, 4, 0, 1, 1, 3)
#: Offset of the Calling-AE-title field in an A-ASSOCIATE-RQ body (after the 6-byte header):
#: protocol version (2), reserved (2), Called-AE-title (16). PS3.8 section 9.3.2, Table 9-11.
_CALLING_AE_OFFSET = 20
#: Largest single read from an established association's socket, in bytes.
_READ_SIZE = 262_144
#: Set in a network (DUL) thread once this module closed its connection (see ClosedHereFilter).
_DUL_THREAD = threading.local()
#: How pynetdicom's DUL reports a PDU cut short (``dul.DULServiceProvider._read_pdu_data``).
_SHORT_PDU_REPORT = "The received PDU is shorter than expected"


@dataclass(frozen=True)
class PeerLimits:
    """The limits (from ``[listener]``); sizes in bytes, times in seconds."""

    max_connections: int = 64
    max_connections_per_address: int = 8
    association_request_timeout: float = 10.0
    max_association_request_bytes: int = 1 << 20
    max_pdu_length: int = 262_144  # 0: no limit on P-DATA-TF (the offer was "unlimited")
    #: (calling AE title, certificate name) pairs: that AE title only with that client certificate
    ae_title_subjects: tuple[tuple[str, str], ...] = ()
    max_associations: int = 16
    #: when every association slot is taken, one idle at least this long (seconds) is aborted to
    #: make room for a new connection; 0: never
    idle_eviction_seconds: float = 5.0

    def pdu_limit(self, pdu_type: int) -> tuple[int | None, str]:
        """Largest length accepted for ``pdu_type`` (``None``: no limit) and the config key behind it."""
        if pdu_type == 0x01:
            return self.max_association_request_bytes, "listener.max_association_request_bytes"
        if pdu_type == 0x04:
            return (self.max_pdu_length or None), "listener.max_pdu_length"
        return OTHER_PDU_MAX, "the PDU's size in PS3.8"


def bad_context_id(body: bytes) -> int | None:
    """The first presentation context ID of an A-ASSOCIATE-RQ's body (the bytes after its 6-byte
    PDU header) that is not an odd number from 1 to 255 (PS3.8 section 9.3.2.2), or ``None``.

    Walks the variable items (from offset 68, PS3.8 Table 9-11) by their lengths; stops at an
    item running past the end (pynetdicom's decoder then judges the PDU).
    """
    offset = 68
    while offset + 4 <= len(body):
        item_type, length = body[offset], struct.unpack(">H", body[offset + 2 : offset + 4])[0]
        if item_type == 0x20 and length >= 1 and offset + 4 < len(body):
            context_id = body[offset + 4]
            if context_id % 2 == 0:
                return context_id
        offset += 4 + length
    return None


class ConnectionLimiter:
    """Counts the connections of one server, per peer address; used from its accept loop (the
    DICOM listener's, and the MLLP listener's with no associations: there a connection counts
    until its thread ends).

    A connection counts from the accept until its association thread has started
    (``pending``), then as long as that thread lives (pynetdicom's ``active_associations``), so
    a count can never leak: a connection whose thread ended no longer counts.
    """

    def __init__(self, limits: PeerLimits, associations: Callable[[], list[Any]], section: str = "listener") -> None:
        self.limits = limits
        self._associations = associations
        self._section = section  # the config section the limits come from, named in refusals
        self._pending: dict[str, int] = {}
        self._lock = threading.Lock()
        self._last_warning: dict[str, float] = {}

    def admit(self, address: str) -> str | None:
        """Count a new connection from ``address``; returns why it is refused, or ``None``."""
        with self._lock:
            live = self._live()
            total = len(live) + sum(self._pending.values())
            from_peer = self._pending.get(address, 0) + sum(
                1 for assoc in live if str(assoc.requestor.address) == address
            )
            if total >= self.limits.max_connections:
                return f"{self._section}.max_connections ({self.limits.max_connections}) reached"
            if from_peer >= self.limits.max_connections_per_address:
                return (
                    f"{self._section}.max_connections_per_address ({self.limits.max_connections_per_address}) reached"
                )
            self._pending[address] = self._pending.get(address, 0) + 1
        return None

    def load(self) -> int:
        """Connections counted now: open associations plus connections still being set up."""
        with self._lock:
            return len(self._live()) + sum(self._pending.values())

    def _live(self) -> list[Any]:
        """The open associations this server accepted."""
        return [assoc for assoc in self._associations() if assoc.is_acceptor]

    def started(self, address: str) -> None:
        """The connection from ``address`` now has its association thread, or was closed."""
        with self._lock:
            self._drop_pending(address)

    def start_counted(self, address: str, start: Callable[[], None]) -> None:
        """Run ``start`` (which starts the connection's association thread) and stop counting
        the connection from ``address`` as pending, in one step under the lock.

        Done separately (:meth:`started` once ``start`` returned), a connection counted twice
        for as long as its new thread kept the interpreter lock negotiating the association:
        its process published a load of 2 for one association, and the least-busy accept
        (:mod:`router.dicom.balance`) put 3 of 4 associations on the other process in about
        half the 4-association benchmark rounds (docs/benchmarks.md, lever 33). ``start`` must
        not use this limiter (``Thread.start`` returns once the thread runs, before its target).
        If ``start`` raises (no thread could be started), the connection is still pending: the
        caller's :meth:`started` ends that, once.
        """
        with self._lock:
            start()
            self._drop_pending(address)

    def _drop_pending(self, address: str) -> None:
        count = self._pending.get(address, 0) - 1
        if count > 0:
            self._pending[address] = count
        else:
            self._pending.pop(address, None)

    def make_room(self, address: str, wait: float = 2.0) -> None:
        """When every association slot is taken, abort the established association idle the
        longest (at least ``idle_eviction_seconds``), so a new sender is not kept out by
        associations that hold a slot and send nothing. Runs in the new connection's thread
        and returns once the evicted association has ended (at most ``wait`` seconds).
        """
        limit = self.limits.idle_eviction_seconds
        if limit <= 0:
            return
        with self._lock:
            live = [assoc for assoc in self._live() if assoc.is_alive()]
            if len(live) < self.limits.max_associations:
                return
            idle = [(_idle_seconds(assoc), assoc) for assoc in live if assoc.is_established]
            idle = [(seconds, assoc) for seconds, assoc in idle if seconds >= limit and not _evicted(assoc)]
            if not idle:
                return
            seconds, victim = max(idle, key=lambda pair: pair[0])
            victim._router_evicted = True
        LOG.warning(
            "all %d association slots taken: aborting the association from %r at %s, idle for %.0f s, "
            "to let in a connection from %s (listener.idle_eviction_seconds)",
            self.limits.max_associations,
            str(victim.requestor.ae_title).strip(),
            victim.requestor.address,
            seconds,
            address,
        )
        victim.abort(block=False)
        victim.join(timeout=wait)

    def should_warn(self, address: str, every: float = 60.0) -> bool:
        """Whether to log a refusal for ``address`` now (once a minute per address, not per connection)."""
        now = time.monotonic()
        with self._lock:
            if now - self._last_warning.get(address, -every) < every:
                return False
            if len(self._last_warning) > 4096:
                self._last_warning.clear()
            self._last_warning[address] = now
        return True


def _idle_seconds(assoc: Any) -> float:
    """Seconds since the association last received a PDU (pynetdicom's idle timer); 0 if unknown."""
    timer = getattr(getattr(assoc, "dul", None), "_idle_timer", None)
    try:
        return max(0.0, float(timer.timeout) - float(timer.remaining))  # type: ignore[union-attr]
    except (AttributeError, TypeError, ValueError):
        return 0.0


def _idle_deadline(assoc: Any, now: float) -> float | None:
    """When the association's idle timer (``network_timeout`` since its last complete PDU) runs
    out, on the ``time.monotonic`` clock; ``None`` without a timeout."""
    timer = getattr(getattr(assoc, "dul", None), "_idle_timer", None)
    if timer is None or timer.timeout is None:
        return None
    return now + max(0.0, float(timer.remaining))


def _evicted(assoc: Any) -> bool:
    """Already chosen for eviction, or storing a data set right now (never evicted mid-store)."""
    return bool(getattr(assoc, "_router_evicted", False) or getattr(assoc, "_router_busy", False))


class GuardedAssociationSocket(AssociationSocket):
    """pynetdicom's association socket with PDU length limits and an association-request deadline.

    pynetdicom reads a PDU as ``recv(6)`` (the header) then ``recv(length)``; this class sees
    the header first, so an over-long PDU is refused before a byte of its body is read.
    """

    _limits: PeerLimits
    _deadline: float | None
    _header_next: bool
    _pdu_type: int
    _closed_here: bool
    #: Set by the DUL thread's wait (router.dicom.reactor) when it found the socket readable.
    readable_seen: bool = False

    @property
    def ready(self) -> bool:
        """pynetdicom's check for data to read (``select`` with no timeout), answered without a
        system call when the DUL thread's wait has just found the socket readable: the bytes
        (or the end of the connection) stay there until that same thread reads them
        (docs/benchmarks.md, lever 53)."""
        if self.readable_seen and self.socket is not None and self._is_connected:
            self.readable_seen = False
            return True
        return bool(super().ready)

    def guard(self, limits: PeerLimits, deadline: float | None) -> None:
        """Start enforcing ``limits``; the A-ASSOCIATE-RQ must be complete by ``deadline`` (monotonic)."""
        self._limits = limits
        self._deadline = deadline
        self._header_next = True
        self._pdu_type = 0
        self._closed_here = False

    def recv(self, nr_bytes: int) -> bytearray:
        """Read ``nr_bytes`` as pynetdicom expects; refuse an over-long PDU from its header.

        Returns fewer bytes than asked (pynetdicom then closes the connection, Evt17) when the
        peer closed, the association-request deadline passed, or a PDU was refused.
        """
        if self._closed_here:  # refused or timed out: bytes still buffered are not read as PDUs
            return bytearray()
        data = self._read(nr_bytes) if self._deadline is not None else self._read_established(nr_bytes)
        if not self._header_next:
            self._header_next = True
            if self._pdu_type == 0x01 and len(data) == nr_bytes:  # a whole A-ASSOCIATE-RQ
                body = bytes(data)
                wrong_id = bad_context_id(body)
                if wrong_id is not None:
                    # pynetdicom's DUL thread died on it (an uncaught ValueError, no answer) and
                    # the connection kept its place for acse_timeout
                    self._abort(
                        A_ABORT_INVALID_PARAMETER,
                        "A-ASSOCIATE-RQ from %s proposes presentation context ID %d (PS3.8 section "
                        "9.3.2.2: odd, 1-255); A-ABORT sent and connection closed",
                        self._peer(),
                        wrong_id,
                    )
                    return bytearray()
                if self._limits.ae_title_subjects:
                    refusal = self._certificate_refusal(body[_CALLING_AE_OFFSET : _CALLING_AE_OFFSET + 16])
                    if refusal is not None:
                        self._reject(refusal)
                        return bytearray()
            if self._deadline is not None and len(data) == nr_bytes:
                self._deadline = None  # the first PDU is in: ordinary per-read timeouts from now
                if self.socket is not None:
                    self.socket.settimeout(self.assoc.network_timeout)
            return data
        if len(data) < 6:
            return data
        pdu_type, _, length = struct.unpack(">BBL", bytes(data[:6]))
        if pdu_type not in PDU_TYPES:
            # pynetdicom answered with an A-ABORT but kept reading the bytes after it as PDUs
            # (an ERROR line each) until the request deadline
            self._abort(
                A_ABORT_UNRECOGNIZED_PDU,
                "bytes from %s are not a DICOM PDU (type 0x%02X, PS3.8 section 9.3.1); A-ABORT sent and connection closed",
                self._peer(),
                pdu_type,
            )
            return bytearray()
        limit, key = self._limits.pdu_limit(pdu_type)
        if limit is not None and length > limit:
            self._refuse(pdu_type, length, limit, key)
            return bytearray()
        self._header_next = False
        self._pdu_type = pdu_type
        return data

    def read_pdu(self) -> bytearray:
        """The next PDU, header and body in one buffer: what ``recv(6)`` then ``recv(length)``
        return, joined (shorter than the header says when a read ended early, empty when the
        connection was closed or the PDU refused at its header).

        For :mod:`router.dicom.pdata`'s reader of pynetdicom's ``_read_pdu_data``, which
        joined the two with a copy of the body: a P-DATA-TF body on an established
        association is read straight into the buffer after its header instead (lever 41,
        docs/benchmarks.md).
        """
        head = self.recv(6)
        if len(head) < 6:
            return head
        length = int.from_bytes(head[2:6], "big")
        if head[0] != P_DATA_TF_TYPE or self._deadline is not None or self._closed_here:
            return head + self.recv(length)
        pdu = self._read_established(length, head)
        self._header_next = True
        return pdu

    def _certificate_refusal(self, field: bytes) -> str | None:
        """Why the calling AE title in ``field`` may not use this connection, or ``None``."""
        calling = field.decode("ascii", "replace").strip()
        expected = dict(self._limits.ae_title_subjects).get(calling)
        if expected is None:
            return None
        if not isinstance(self.socket, ssl.SSLSocket):
            return f"calling AE title {calling!r} is bound to a client certificate and came without TLS"
        names = certificate_names(self.socket.getpeercert() or {})
        if not names:
            return f"calling AE title {calling!r} is bound to a client certificate and came without one"
        if expected.lower() not in {name.lower() for name in names}:
            return (
                f"calling AE title {calling!r} is bound to {expected!r}; the client certificate names {sorted(names)}"
            )
        return None

    def _reject(self, reason: str) -> None:
        LOG.warning(
            "association from %s rejected: %s (listener.tls.ae_title_subjects)",
            self._peer(),
            reason,
        )
        sock = self.socket
        if sock is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(A_ASSOCIATE_RJ_CALLING_AE)
            except OSError:
                pass
        self._close_now()

    def _read_established(self, nr_bytes: int, head: bytes | bytearray = b"") -> bytearray:
        """pynetdicom's ``recv``, in reads of up to 256 KiB instead of its 4 KiB, straight into
        the buffer returned.

        A 512 KB data set took 128 system calls and as many buffer extensions; now it takes as
        many as the socket has data ready, and the bytes are copied once, from the socket (not
        into a new bytes object per read and then onto the end of the buffer: lever 40,
        docs/benchmarks.md). The buffer is allocated 256 KiB at a time: memory grows with what
        arrives, and by at most 256 KiB with what a PDU header claims. ``head`` (bytes read
        before, a PDU's header) starts the buffer.

        A read that fails is reported here in one line and answered like a closed connection (a
        short read: pynetdicom closes, Evt17, and the association is aborted, PS3.8 section
        9.1.5): a peer's reset at INFO (a modality switched off or unplugged), no data for
        ``network_timeout`` seconds in the middle of a PDU at WARNING. pynetdicom logged both as
        two ERROR lines with a traceback, which a peer could repeat at will.

        A PDU must be complete within ``network_timeout`` of the one before it (pynetdicom's idle
        timer, PS3.8 section 9.1.5's ARTIM-like bound on the association): a read the socket does
        not answer at once is given only what is left of it. pynetdicom's own check of that
        timer runs in the association's thread and could not stop this read: a peer trickling a
        byte now and then, never silent for a whole ``network_timeout``, held its association
        (and a drain) for as long as it liked after pynetdicom had decided to abort it. It is
        closed at the timer's expiry with one WARNING line, as a peer that stops sending is.
        """
        sock = self.socket  # pynetdicom sets it to None when it closes the connection itself
        assert sock is not None
        start = got = len(head)
        end = start + nr_bytes
        data = bytearray(min(end, start + _READ_SIZE))
        data[:start] = head
        idle: float | None = None  # the socket's own timeout, restored after a shortened one
        deadline: float | None = None  # set at the first short read (not on the hot path)
        try:
            while got < end:
                if got == len(data):
                    data += bytes(min(_READ_SIZE, end - got))
                with memoryview(data) as view:
                    count = sock.recv_into(view[got:])
                if not count:
                    return self._ended(got - start, nr_bytes, "a PDU", "association aborted")
                got += count
                if got < end:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = _idle_deadline(self.assoc, now)
                        idle = sock.gettimeout()
                    if deadline is not None:
                        if now >= deadline:
                            return self._too_slow(nr_bytes, got - start)
                        if idle is None or deadline - now < idle:
                            sock.settimeout(deadline - now)
        except TimeoutError:
            return self._too_slow(nr_bytes, got - start)
        except OSError as exc:
            return self._peer_ended(
                logging.INFO,
                "connection from %s failed: %s (%s); association aborted",
                self._peer(),
                _reason(exc),
                type(exc).__name__,
            )
        finally:
            if deadline is not None and self.socket is not None:
                with contextlib.suppress(OSError):
                    sock.settimeout(idle)
        return data

    def _too_slow(self, nr_bytes: int, received: int) -> bytearray:
        return self._peer_ended(
            logging.WARNING,
            "association with %s sent %d of %d bytes of a PDU and no more within %.0f s of the PDU before "
            "(listener.network_timeout); closed",
            self._peer(),
            received,
            nr_bytes,
            self.assoc.network_timeout or 0,
        )

    def _read(self, nr_bytes: int) -> bytearray:
        """``recv`` with one deadline for the whole association request (and ``network_timeout``
        for any one read, as after it)."""
        sock = self.socket  # pynetdicom sets it to None when it closes the connection itself
        assert self._deadline is not None and sock is not None
        idle = self.assoc.network_timeout
        data = bytearray()
        try:
            while len(data) < nr_bytes:
                remaining = self._deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                sock.settimeout(remaining if idle is None else min(remaining, idle))
                chunk = sock.recv(min(65_536, nr_bytes - len(data)))
                if not chunk:
                    return self._ended(len(data), nr_bytes, "its A-ASSOCIATE-RQ", "closed")
                data.extend(chunk)
        except TimeoutError:
            if time.monotonic() >= self._deadline:
                LOG.warning(
                    "connection from %s sent no complete A-ASSOCIATE-RQ within %.0f s "
                    "(listener.association_request_timeout); closed",
                    self._peer(),
                    self._limits.association_request_timeout,
                )
            else:
                LOG.info("connection from %s stalled in its A-ASSOCIATE-RQ for %.0f s; closed", self._peer(), idle)
            self._close_now()
            return bytearray()
        except OSError as exc:
            return self._peer_ended(
                logging.INFO,
                "connection from %s failed in its A-ASSOCIATE-RQ: %s (%s); closed",
                self._peer(),
                _reason(exc),
                type(exc).__name__,
            )
        return data

    def _ended(self, received: int, nr_bytes: int, what: str, outcome: str) -> bytearray:
        """The peer closed its side after ``received`` bytes of a read of ``nr_bytes``: at a PDU
        boundary (nothing of the next PDU read) that is pynetdicom's ordinary Evt17 (nothing is
        returned); in the middle of a PDU, one INFO line here instead of pynetdicom's ERROR
        about a PDU shorter than expected, and the connection is closed."""
        if not received and self._header_next:
            return bytearray()
        return self._peer_ended(
            logging.INFO,
            "connection from %s closed in the middle of %s (%d of %d bytes); %s",
            self._peer(),
            what,
            received,
            nr_bytes,
            outcome,
        )

    def _peer_ended(self, level: int, message: str, *args: object) -> bytearray:
        """A read ended early: log ``message`` at ``level`` and close, unless this side had
        already closed the connection while the read waited (pynetdicom's own abort, e.g. after
        ``network_timeout`` with nothing received): that end is not the peer's doing and is not
        reported. Either way pynetdicom's report of the short PDU is dropped. Returns the short
        read (nothing) for pynetdicom."""
        if self.socket is not None and self._is_connected:
            LOG.log(level, message, *args)
            self._close_now()
        else:
            self._mark_closed()
        return bytearray()

    def _refuse(self, pdu_type: int, length: int, limit: int, key: str) -> None:
        self._abort(
            A_ABORT_INVALID_PARAMETER,
            "%s from %s declares %d bytes, more than %d (%s); A-ABORT sent and connection closed",
            PDU_NAMES.get(pdu_type, f"PDU type 0x{pdu_type:02X}"),
            self._peer(),
            length,
            limit,
            key,
        )

    def _abort(self, pdu: bytes, message: str, *args: object) -> None:
        """Log ``message`` at WARNING, send the A-ABORT ``pdu`` and close."""
        LOG.warning(message, *args)
        sock = self.socket
        if sock is not None:
            try:
                sock.settimeout(1.0)
                sock.sendall(pdu)
            except OSError:
                pass
        self._close_now()

    def _close_now(self) -> None:
        """Stop reading and writing at once; pynetdicom closes the socket when it sees the short read."""
        self._mark_closed()
        sock = self.socket
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _mark_closed(self) -> None:
        """No more reads on this connection, and pynetdicom's report of its short PDU dropped."""
        self._closed_here = True
        _DUL_THREAD.closed_here = True  # called from recv: this is the association's DUL thread

    def describe_peer(self) -> str:
        """The peer for a log line: its calling AE title (once known) and address, no other bytes of its."""
        return self._peer()

    def _peer(self) -> str:
        requestor = self.assoc.requestor
        title = str(getattr(requestor, "ae_title", "") or "").strip()
        address = f"{requestor.address}:{requestor.port}"
        return f"{title!r} at {address}" if title else address


def _reason(exc: OSError) -> str:
    """What an error reading a peer's socket means, in words (no bytes of the peer's)."""
    if isinstance(exc, ConnectionResetError):
        return "reset by the peer"
    if isinstance(exc, ConnectionAbortedError):
        return "aborted by the network stack"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error {exc.reason or exc.errno}"
    return os.strerror(exc.errno) if exc.errno else "read error"


class ClosedHereFilter(logging.Filter):
    """Drops pynetdicom's ERROR about a PDU cut short on a connection this module closed itself.

    When the association-request deadline passes in the middle of a PDU, or a PDU is refused,
    the guard logs why in one WARNING line and hands pynetdicom a short read; pynetdicom then
    reported "The received PDU is shorter than expected (6 of 4102 bytes received)" at ERROR,
    blaming the peer for the router's own close. The filter runs in the thread that logs, so it
    drops that report only in the network thread of such a connection; everywhere else (a peer
    that really closes mid-PDU) pynetdicom's report stands.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(_DUL_THREAD, "closed_here", False) or record.levelno < logging.ERROR:
            return True
        return not str(record.msg).startswith(_SHORT_PDU_REPORT)


def install_log_filter() -> None:
    """Add :class:`ClosedHereFilter` to pynetdicom's DUL logger once per process."""
    dul_logger = logging.getLogger("pynetdicom.dul")
    if not any(isinstance(item, ClosedHereFilter) for item in dul_logger.filters):
        dul_logger.addFilter(ClosedHereFilter())


def certificate_names(certificate: dict[str, Any]) -> set[str]:
    """Subject common names and DNS / IP subject alternative names of a peer certificate
    (as :meth:`ssl.SSLSocket.getpeercert` gives it)."""
    names: set[str] = set()
    for rdn in certificate.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                names.add(str(value))
    for kind, value in certificate.get("subjectAltName", ()):
        if kind in ("DNS", "IP Address"):
            names.add(str(value))
    return names


class GuardedRequestHandler(RequestHandler):
    """pynetdicom's request handler whose associations read through :class:`GuardedAssociationSocket`.

    The server passes ``deadline`` (monotonic seconds) by which the A-ASSOCIATE-RQ must be in.
    """

    def __init__(self, request: Any, client_address: Any, server: Any, deadline: float | None = None) -> None:
        self.deadline = deadline
        #: The server's limiter no longer counts this connection as pending (``handle`` did it).
        self.counted = False
        super().__init__(request, client_address, server)

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        sock: Any = assoc.dul.socket
        # pynetdicom builds its AssociationSocket here (queueing the transport-connected event,
        # Evt5, once); that same object becomes the guarded subclass, which adds no state that
        # needs its constructor and changes only ``recv``.
        sock.__class__ = GuardedAssociationSocket
        sock.guard(cast(Any, self.server).peer_limits, self.deadline)
        return assoc

    def handle(self) -> None:
        """pynetdicom's ``handle`` (create the association, trigger ``EVT_CONN_OPEN``, start its
        thread), with the thread started through the server's limiter when it has one
        (:meth:`ConnectionLimiter.start_counted`); :attr:`counted` then says so."""
        limiter = getattr(self.server, "limiter", None)
        if not isinstance(limiter, ConnectionLimiter):
            super().handle()
            return
        assoc = self._create_association()
        evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
        limiter.start_counted(str(self.client_address[0]), assoc.start)
        self.counted = True
