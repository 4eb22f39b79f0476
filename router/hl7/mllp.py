"""MLLP framing (HL7 v2.5.1 Appendix C, "Minimal Lower Layer Protocol"), a threaded listener
and a blocking client.

A frame is ``<VT> message <FS><CR>`` (0x0B, 0x1C 0x0D). The listener reads one frame at a
time, hands its payload to a handler that returns the ACK payload, and writes the ACK framed
the same way; it never answers before the handler returns (the handler commits first).
python-hl7's own MLLP server is asyncio-based; our services are synchronous (SQLAlchemy
sessions, one per thread), so the thin framing is done here over :mod:`socketserver`.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.dicom.guard import ConnectionLimiter, PeerLimits

LOG = logging.getLogger(__name__)

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c"
CARRIAGE_RETURN = b"\x0d"

#: A handler receives the payload of one frame (bytes, without framing) and the peer address,
#: and returns the payload of the answer, or ``None`` to close the connection without one.
FrameHandler = Callable[[bytes, str], bytes | None]
#: Called for a frame the listener refuses before it reaches the handler (too big, malformed):
#: ``(raw bytes received so far, peer address, reason)``; returns an answer payload or ``None``.
RefusalHandler = Callable[[bytes, str, str], bytes | None]


class MllpError(Exception):
    """A framing problem: no start block, no end block before the connection closed, too big."""


class FrameTooLarge(MllpError):
    """The frame exceeded ``max_message_bytes``."""


def frame(payload: bytes) -> bytes:
    """``payload`` wrapped in the MLLP start and end blocks."""
    return START_BLOCK + payload + END_BLOCK + CARRIAGE_RETURN


class FrameReader:
    """Reads MLLP frames from a socket, at most ``max_bytes`` of payload each."""

    def __init__(self, sock: socket.socket, max_bytes: int) -> None:
        self._sock = sock
        self._max = max_bytes
        self._buffer = b""

    def read(self) -> bytes | None:
        """The next frame's payload, or ``None`` at a clean end of stream (nothing pending).

        Raises
        ------
        MllpError
            Data before the start block, or the stream ended inside a frame.
        FrameTooLarge
            More than ``max_bytes`` of payload without an end block.
        socket.timeout
            The peer sent nothing for the socket's timeout.
        """
        while True:
            stripped = self._buffer.lstrip(b"\r\n")
            if stripped and not stripped.startswith(START_BLOCK):
                self._buffer = stripped
                raise MllpError("data outside an MLLP frame (no start block 0x0B)")
            end = self._buffer.find(END_BLOCK + CARRIAGE_RETURN)
            if end >= 0:
                start = self._buffer.find(START_BLOCK)
                payload = self._buffer[start + 1 : end]
                self._buffer = self._buffer[end + 2 :]
                if len(payload) > self._max:
                    raise FrameTooLarge(f"message of {len(payload)} bytes exceeds the limit of {self._max} bytes")
                return payload
            if len(self._buffer) > self._max + 3:
                raise FrameTooLarge(f"message exceeds the limit of {self._max} bytes")
            chunk = self._sock.recv(65536)
            if not chunk:
                if self._buffer.strip(b"\r\n"):
                    raise MllpError("connection closed inside a frame (no end block 0x1C 0x0D)")
                return None
            self._buffer += chunk

    @property
    def pending(self) -> bytes:
        """Bytes received and not yet returned (for storing what a refused frame held)."""
        return self._buffer


@dataclass(frozen=True)
class TlsFiles:
    """Server certificate and key (PEM), and a CA file to require client certificates."""

    cert_file: str
    key_file: str
    ca_file: str | None = None


class _Server(socketserver.ThreadingTCPServer):
    """Threaded TCP server that counts open connections, in all and per peer address."""

    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], handler: type[socketserver.BaseRequestHandler], total: int, per_address: int
    ) -> None:
        super().__init__(address, handler)
        limits = PeerLimits(max_connections=total, max_connections_per_address=per_address)
        # no associations here: an admitted connection stays "pending" until its thread ends
        self.limiter = ConnectionLimiter(limits, list, section="hl7")

    def verify_request(self, request: Any, client_address: Any) -> bool:
        """Admit the connection if under ``hl7.max_connections`` and
        ``hl7.max_connections_per_address``; count it until its thread ends."""
        peer = str(client_address[0])
        refused = self.limiter.admit(peer)
        if refused is None:
            return True
        if self.limiter.should_warn(peer):
            LOG.warning("HL7 connection from %s refused: %s (logged once a minute per address)", peer, refused)
        return False

    def finish_request(self, request: Any, client_address: Any) -> None:
        try:
            super().finish_request(request, client_address)
        finally:
            self.limiter.started(str(client_address[0]))  # the connection no longer counts


class MllpListener:
    """A threaded MLLP listener: one thread per connection, frames answered in order.

    A connection beyond ``max_connections`` in all, or ``max_connections_per_address`` from one
    peer, is closed at once (a peer that opens connections and sends nothing cannot keep the
    RIS out); each admitted one is closed after ``timeout`` seconds of silence.
    """

    def __init__(
        self,
        host: str,
        port: int,
        handler: FrameHandler,
        refusal: RefusalHandler,
        max_message_bytes: int,
        timeout: float = 60.0,
        tls: TlsFiles | None = None,
        *,
        max_connections: int = 32,
        max_connections_per_address: int = 8,
    ) -> None:
        context: ssl.SSLContext | None = None
        if tls is not None:
            context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            context.load_cert_chain(tls.cert_file, tls.key_file)
            if tls.ca_file:
                context.load_verify_locations(tls.ca_file)
                context.verify_mode = ssl.CERT_REQUIRED
        outer = self

        class _Connection(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                outer._serve(self.request, self.client_address[0])

        self._handler = handler
        self._refusal = refusal
        self._max = max_message_bytes
        self._timeout = timeout
        self._context = context
        self._server = _Server((host, port), _Connection, max_connections, max_connections_per_address)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        """The bound port (useful when 0 was asked for)."""
        return int(self._server.server_address[1])

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="hl7-mllp", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting; open connections end when their thread finishes its frame."""
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _serve(self, sock: socket.socket, peer: str) -> None:
        sock.settimeout(self._timeout)
        try:
            if self._context is not None:
                sock = self._context.wrap_socket(sock, server_side=True)
            reader = FrameReader(sock, self._max)
            while True:
                try:
                    payload = reader.read()
                except MllpError as exc:
                    LOG.warning("HL7 from %s refused: %s", peer, exc)
                    answer = self._refusal(reader.pending[: self._max], peer, str(exc))
                    if answer is not None:
                        sock.sendall(frame(answer))
                    return
                if payload is None:
                    return
                answer = self._handler(payload, peer)
                if answer is None:
                    return
                sock.sendall(frame(answer))
        except (OSError, ssl.SSLError) as exc:
            LOG.info("HL7 connection from %s ended: %s", peer, exc)


def send_message(
    host: str,
    port: int,
    payload: bytes,
    timeout: float = 30.0,
    tls: ssl.SSLContext | None = None,
    server_name: str | None = None,
) -> bytes:
    """Send one message over MLLP and return the payload of the answer (the ACK).

    Raises
    ------
    OSError
        Connection refused, reset or timed out.
    MllpError
        The peer closed the connection without a framed answer.
    """
    with socket.create_connection((host, port), timeout=timeout) as raw:
        sock: socket.socket = tls.wrap_socket(raw, server_hostname=server_name or host) if tls is not None else raw
        sock.sendall(frame(payload))
        answer = FrameReader(sock, 16 * 1024 * 1024).read()
        if answer is None:
            raise MllpError("the listener closed the connection without an answer")
        return answer
