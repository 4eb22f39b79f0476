"""Hostile peers against the real listener on 127.0.0.1 (issue 12): over-long PDUs are refused
from their header, a trickled association request is cut at its deadline, one address cannot
take every connection; meanwhile a legitimate sender on 127.0.0.1 gets through in seconds and
the process stays within a memory bound.

Attackers connect from 127.0.0.2 (the whole 127.0.0.0/8 is loopback on Linux), so the
per-address limit tells them from the legitimate sender.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import threading
import time
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import psutil
import pytest
from pydicom.uid import generate_uid
from pynetdicom.dsutils import decode
from pynetdicom.pdu import A_ASSOCIATE_RQ

from router.dicom.guard import bad_context_id
from router.dicom.status import StoreStatus
from router.logsafety import install_library_guards
from router.server import RouterServer
from tests.conftest import make_settings, running_router
from tests.dicom_bytes import (
    APPLICATION_CONTEXT,
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    RawAssociation,
    associate_rq,
    c_store_command,
    identifiers,
    implicit,
    p_data,
    pdu_item,
    uid,
)
from tests.dicom_helpers import make_dataset, send_datasets
from tests.test_tls import pki as pki  # the module-scoped throwaway PKI fixture

pytestmark = [pytest.mark.network, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

MIB = 1 << 20
ATTACKER = "127.0.0.2"


@contextlib.contextmanager
def _router(tmp_path: Path, database_url: str, **listener: object) -> Iterator[RouterServer]:
    settings = make_settings(tmp_path, database_url).replace(
        "listener",
        **{"max_connections_per_address": 4, "association_request_timeout": 2.0, "network_timeout": 30.0, **listener},
    )
    with running_router(settings) as server:
        yield server


def _connect(port: int, source: str = ATTACKER) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _legitimate_store_seconds(port: int) -> float:
    """Seconds a pynetdicom SCU on 127.0.0.1 takes to associate and store one instance (Success asserted)."""
    started = time.monotonic()
    (status,) = send_datasets(port, [make_dataset()])
    assert status.Status == StoreStatus.SUCCESS
    return time.monotonic() - started


def _answer(sock: socket.socket, limit: float = 5.0) -> bytes:
    """What the server sends before it closes (b"" if it closes without a word)."""
    sock.settimeout(limit)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One whole PDU: (type, body)."""
    sock.settimeout(sock.gettimeout() or 5)
    head = b""
    while len(head) < 6:
        chunk = sock.recv(6 - len(head))
        if not chunk:
            return 0, b""
        head += chunk
    kind, _, length = struct.unpack(">BBI", head)
    body = b""
    while len(body) < length:
        chunk = sock.recv(length - len(body))
        if not chunk:
            break
        body += chunk
    return kind, body


def _problems(caplog: pytest.LogCaptureFixture) -> list[tuple[str, str, str]]:
    """(logger, level, message) of every record at WARNING or above."""
    return [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]


def _store_one(raw: RawAssociation) -> int:
    """Send one C-STORE of a small data set on an established association; its response status."""
    sop_instance = generate_uid()
    raw.send(p_data(c_store_command(CT_IMAGE_STORAGE, sop_instance), command=True, last=True))
    raw.send(p_data(identifiers(sop_instance, generate_uid(), generate_uid()), command=False, last=True))
    kind, body = raw.read_pdu()
    assert kind == 0x04  # P-DATA-TF: the C-STORE-RSP
    return int(decode(BytesIO(body[6:]), True, True).Status)


def _rss() -> int:
    return psutil.Process().memory_info().rss


def _stream_huge_pdu(sock: socket.socket, pdu_type: int, length: int, seconds: float) -> int:
    """Send a PDU header declaring ``length`` bytes, then its body until refused; bytes sent."""
    sock.sendall(struct.pack(">BBI", pdu_type, 0, length))
    chunk = b"\x00" * MIB
    sent = 0
    deadline = time.monotonic() + seconds
    try:
        while sent < length and time.monotonic() < deadline:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass
    return sent


def test_oversized_association_requests_are_refused_from_their_header(tmp_path: Path, database_url: str) -> None:
    with _router(tmp_path, database_url) as server:
        port = server.ports[0]
        before = _rss()
        results: list[tuple[int, bytes]] = []

        def attack() -> None:
            sock = _connect(port)
            sent = _stream_huge_pdu(sock, 0x01, 256 * MIB, seconds=5)
            results.append((sent, _answer(sock)))
            sock.close()

        threads = [threading.Thread(target=attack) for _ in range(4)]
        for thread in threads:
            thread.start()
        seconds = _legitimate_store_seconds(port)
        for thread in threads:
            thread.join(timeout=15)
        assert len(results) == 4
        for sent, answer in results:
            assert sent < 256 * MIB  # refused long before the declared length
            assert answer[:1] in (b"\x07", b"")  # A-ABORT, or closed
            if answer:
                assert answer == struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 2, 6)
        assert seconds < 5
        assert _rss() - before < 300 * MIB


def test_oversized_p_data_pdu_is_aborted_before_it_is_buffered(tmp_path: Path, database_url: str) -> None:
    with _router(tmp_path, database_url) as server:
        port = server.ports[0]
        before = _rss()
        sock = _connect(port)
        sock.sendall(associate_rq(max_pdu=16384))
        kind = sock.recv(1)
        assert kind == b"\x02"  # A-ASSOCIATE-AC
        sock.recv(65536)
        sent = _stream_huge_pdu(sock, 0x04, 256 * MIB, seconds=5)
        answer = _answer(sock)
        sock.close()
        assert sent < 256 * MIB
        assert struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 2, 6) in answer
        assert _legitimate_store_seconds(port) < 5
        assert _rss() - before < 300 * MIB
        assert list(server.app.archive.incoming.iterdir()) == []


def test_association_request_trickled_byte_by_byte_is_cut_at_its_deadline(tmp_path: Path, database_url: str) -> None:
    request = associate_rq()
    stop = threading.Event()
    closed_after: list[float] = []

    def slow_sender(port: int) -> None:
        try:
            sock = _connect(port)
        except OSError:
            return
        started = time.monotonic()
        try:
            for byte in request:
                if stop.wait(0.25):
                    break
                sock.sendall(bytes([byte]))
        except OSError:
            closed_after.append(time.monotonic() - started)
        finally:
            sock.close()

    with _router(tmp_path, database_url) as server:
        port = server.ports[0]
        threads = [threading.Thread(target=slow_sender, args=(port,)) for _ in range(20)]
        for thread in threads:
            thread.start()
        time.sleep(0.5)  # the attack is under way (20 connections, 4 admitted from one address)
        try:
            seconds = _legitimate_store_seconds(port)
        finally:
            # wait for the admitted trickles to be cut by the 2 s deadline
            deadline = time.monotonic() + 8
            while len(closed_after) < 20 and time.monotonic() < deadline:
                time.sleep(0.1)
            stop.set()
            for thread in threads:
                thread.join(timeout=10)
        assert seconds < 5
        assert len(closed_after) == 20  # none was let trickle on
        assert max(closed_after) < 5  # 2 s deadline, not acse_timeout or network_timeout


def test_idle_associations_from_one_address_cannot_take_every_slot(tmp_path: Path, database_url: str) -> None:
    with _router(tmp_path, database_url, max_associations=16, max_connections=64) as server:
        port = server.ports[0]
        idle: list[socket.socket] = []
        accepted = 0
        try:
            for _ in range(50):
                sock = _connect(port)
                idle.append(sock)
                try:
                    sock.sendall(associate_rq())
                    # refused ones are closed at once; 15 s only bounds an admitted one's answer
                    # on a loaded machine (it comes in milliseconds)
                    sock.settimeout(15)
                    if sock.recv(1) == b"\x02":
                        accepted += 1
                except OSError:
                    pass
            assert accepted == 4  # max_connections_per_address; the others were closed at once
            assert _legitimate_store_seconds(port) < 5
            assert server.listener is not None
        finally:
            for sock in idle:
                sock.close()


def test_connections_closed_before_a_whole_association_request_free_their_places_at_once(
    tmp_path: Path, database_url: str
) -> None:
    """A connection that sends a byte, part of an A-ASSOCIATE-RQ or garbage (answered with an
    A-ABORT) and closes counts no longer (pynetdicom waited acse_timeout, 30 s, for the request:
    16 such connections kept every sender out that long)."""
    with _router(tmp_path, database_url, max_associations=4) as server:  # acse_timeout: the default
        port = server.ports[0]
        assert server.listener is not None
        limiter = server.listener.servers[0].limiter
        half_request = associate_rq()[:40]
        for payload, reset in ((b"\x01", True), (half_request, False), (b"GET / HTTP/1.1\r\n\r\n", False)):
            peers = [_connect(port) for _ in range(4)]
            for sock in peers:
                sock.sendall(payload)
            time.sleep(0.3)  # read by the listener
            for sock in peers:
                if reset:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.close()
            deadline = time.monotonic() + 5
            while limiter.load() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert limiter.load() == 0, payload
            assert _legitimate_store_seconds(port) < 5


def test_an_even_presentation_context_id_is_aborted_at_once(tmp_path: Path, database_url: str) -> None:
    """PS3.8 section 9.3.2.2: context IDs are odd. pynetdicom's network thread died on an even
    one (no answer, the connection counted for acse_timeout, 30 s)."""
    good = associate_rq()
    assert bad_context_id(good[6:]) is None
    at = 6 + 68 + 4 + len(APPLICATION_CONTEXT) + 4  # the first presentation context item's ID
    with _router(tmp_path, database_url) as server:
        port = server.ports[0]
        assert server.listener is not None
        limiter = server.listener.servers[0].limiter
        for context_id in (2, 0):
            request = good[:at] + bytes([context_id]) + good[at + 1 :]
            assert bad_context_id(request[6:]) == context_id
            sock = _connect(port)
            sock.sendall(request)
            assert _read_pdu(sock)[0] == 0x07  # A-ABORT
            assert _answer(sock, limit=2) == b""  # then closed
            sock.close()
        deadline = time.monotonic() + 5
        while limiter.load() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert limiter.load() == 0
        assert _legitimate_store_seconds(port) < 5


def test_a_second_address_is_not_held_back_by_the_first(tmp_path: Path, database_url: str) -> None:
    with _router(tmp_path, database_url) as server:
        port = server.ports[0]
        held = [_connect(port) for _ in range(4)]
        extra = _connect(port)
        assert _answer(extra, limit=1) == b""  # fifth from 127.0.0.2: closed at once
        other = _connect(port, source="127.0.0.3")
        other.sendall(associate_rq())
        other.settimeout(5)
        assert other.recv(1) == b"\x02"
        for sock in [*held, extra, other]:
            sock.close()
        assert generate_uid()


def test_tls_handshake_trickled_byte_by_byte_is_cut_at_its_deadline(
    tmp_path: Path,
    database_url: str,
    pki,  # type: ignore[no-untyped-def]
) -> None:
    import ssl

    from tests.test_tls import _tls_settings, client_context

    settings = _tls_settings(tmp_path, database_url, pki, acse_timeout=30.0)
    settings = settings.replace("listener", association_request_timeout=2.0)
    # a real ClientHello, captured from an in-memory handshake, then sent one byte every 0.2 s
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_context(pki, None).wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        client.do_handshake()
    hello = outgoing.read()
    with running_router(settings) as server:
        tls_port = server.ports[1]
        sock = _connect(tls_port)
        started = time.monotonic()
        try:
            for byte in hello:
                sock.sendall(bytes([byte]))
                time.sleep(0.2)
                if time.monotonic() - started > 10:
                    break
        except OSError:
            pass
        waited = time.monotonic() - started
        sock.close()
        # association_request_timeout (2 s) counted from the connection, not acse_timeout (30 s);
        # CPython gives do_handshake one deadline from the socket's timeout, not one per read
        assert waited < 5


def test_idle_associations_from_many_addresses_make_room_for_a_sender(tmp_path: Path, database_url: str) -> None:
    with _router(tmp_path, database_url, max_associations=8, idle_eviction_seconds=1.0) as server:
        port = server.ports[0]
        idle: list[socket.socket] = []
        try:
            for index in range(8):  # every slot, one per address: the per-address limit does not help
                sock = _connect(port, source=f"127.0.0.{10 + index}")
                sock.sendall(associate_rq())
                assert _read_pdu(sock)[0] == 0x02  # A-ASSOCIATE-AC
                idle.append(sock)
            time.sleep(1.2)
            assert _legitimate_store_seconds(port) < 5
            aborted = 0
            for sock in idle:
                sock.settimeout(0.2)
                try:
                    aborted += _read_pdu(sock)[0] == 0x07  # A-ABORT
                except TimeoutError:
                    pass
            assert aborted == 1  # one idle association made room; the others keep their slots
        finally:
            for sock in idle:
                sock.close()


@pytest.mark.parametrize("verbose", [False, True], ids=["default", "verbose"])
def test_a_malformed_p_data_pdu_is_one_log_line_without_a_traceback(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture, verbose: bool
) -> None:
    """pynetdicom logged its failure to decode a peer's PDU as two ERROR lines, one with a
    traceback; the router's reader of the listener's PDUs makes it one WARNING naming the
    exception (the association is aborted as before), and ``--verbose`` adds the traceback at
    DEBUG."""
    install_library_guards(verbose=verbose)
    try:
        with _router(tmp_path, database_url) as server:
            raw = RawAssociation(server.ports[0])
            try:
                assert raw.associate(max_pdu=0) == 0x02
                caplog.set_level(logging.DEBUG if verbose else logging.WARNING, logger="pynetdicom")
                caplog.set_level(logging.DEBUG if verbose else logging.WARNING, logger="router.dicom.pdata")
                raw.send(b"\x04\x00\x00\x00\x00\x10" + b"\xff" * 16)  # P-DATA-TF whose PDV lengths lie
                assert raw.seconds_until_closed(10) < 10  # aborted
            finally:
                raw.close()
            assert server.listener is not None
            assert [r.Status for r in send_datasets(server.ports[0], [make_dataset()])] == [StoreStatus.SUCCESS]
    finally:
        install_library_guards(verbose=False)
    assert [r for r in caplog.records if r.name.startswith("pynetdicom") and r.levelno >= logging.ERROR] == []
    reports = [r for r in caplog.records if r.name == "router.dicom.pdata"]
    assert [(r.levelname, r.exc_info is None) for r in reports if r.levelno >= logging.WARNING] == [("WARNING", True)]
    assert reports[0].getMessage().endswith("could not be decoded (AssertionError); A-ABORT sent")
    tracebacks = [r for r in reports if r.exc_info]
    assert [r.levelname for r in tracebacks] == (["DEBUG"] if verbose else [])


def test_garbage_instead_of_an_association_request_is_refused_once(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression: after refusing the first 'PDU' of a garbage stream the socket was read again,
    and the next bytes were refused (and logged) as a second PDU of the same connection."""
    caplog.set_level(logging.WARNING, logger="router.dicom.guard")
    with _router(tmp_path, database_url) as server:
        sock = _connect(server.ports[0], source="127.0.0.1")
        try:
            sock.sendall(b"GARBAGE-NOT-DICOM\r\n" * 8)
            sock.settimeout(10)
            while sock.recv(65536):  # the A-ABORT, then the close
                pass
        except ConnectionResetError:
            pass
        finally:
            sock.close()
        time.sleep(0.3)
    refusals = [record for record in caplog.records if "A-ABORT sent" in record.getMessage()]
    assert len(refusals) == 1, [record.getMessage() for record in refusals]


def test_a_pdu_cut_short_at_the_request_deadline_is_one_warning(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A PDU header declaring 4,096 bytes, then silence: the router's one WARNING at the
    association-request deadline, and no ERROR from pynetdicom about the short read the router
    itself caused ("shorter than expected (6 of 4102 bytes)", before the fix)."""
    caplog.set_level(logging.INFO)
    with _router(tmp_path, database_url) as server:
        sock = _connect(server.ports[0])
        started = time.monotonic()
        try:
            sock.sendall(struct.pack(">BBI", 0x01, 0, 4096) + b"\x00\x01")  # A-ASSOCIATE-RQ header, 2 bytes of body
            sock.settimeout(10)
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
        finally:
            sock.close()
        closed_after = time.monotonic() - started
        time.sleep(0.3)  # the network thread finishes logging
    assert closed_after < 5  # the 2 s deadline
    problems = [(name, message) for name, _, message in _problems(caplog)]
    assert len(problems) == 1, problems
    assert problems[0][0] == "router.dicom.guard"
    assert "sent no complete A-ASSOCIATE-RQ within 2 s" in problems[0][1]


@pytest.mark.parametrize("associated", [False, True], ids=["first-pdu", "after-the-association"])
def test_an_unknown_pdu_type_is_aborted_at_once_with_one_warning(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture, associated: bool
) -> None:
    """pynetdicom answered an unknown PDU type with an A-ABORT but kept reading what followed as
    PDUs (an ERROR line each, "Unknown PDU type received") and left the connection open until the
    association-request deadline. Now: A-ABORT (unrecognized-PDU, PS3.8 Table 9-26), the
    connection closed at once, one WARNING."""
    caplog.set_level(logging.INFO)
    with _router(tmp_path, database_url) as server:
        sock = _connect(server.ports[0])
        try:
            if associated:
                sock.sendall(associate_rq())
                assert _read_pdu(sock)[0] == 0x02
            started = time.monotonic()
            sock.sendall(b"\x55\x00\x00\x00\x00\x04\x00\x00\x00\x00" + b"\x00" * 64)
            kind, body = _read_pdu(sock)
            sock.settimeout(5)
            closed = sock.recv(1) == b""
            seconds = time.monotonic() - started
        finally:
            sock.close()
        time.sleep(0.3)
    assert (kind, body[2], body[3]) == (0x07, 0x02, 0x01)  # A-ABORT, service provider, unrecognized-PDU
    assert closed and seconds < 1.5  # not held until the 2 s request deadline
    problems = [(name, message) for name, _, message in _problems(caplog)]
    assert len(problems) == 1, problems
    assert problems[0][0] == "router.dicom.guard" and "are not a DICOM PDU (type 0x55" in problems[0][1]


@pytest.mark.parametrize("kind", [0x5A, 0xFF, 0x10], ids=["undefined-0x5A", "undefined-0xFF", "misplaced-0x10"])
def test_a_user_information_sub_item_of_an_unknown_type_is_ignored(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture, kind: int
) -> None:
    """User information sub-items (PS3.7 Annex D.3.3) are where association negotiation is
    extended; DCMTK and fo-dicom skip those they do not know (a later edition's, a vendor's). pynetdicom's decoder
    raised KeyError on one (or decoded a misplaced known item as that item), so the association
    was aborted with a traceback at ERROR. Now the sub-item is skipped (logged once at DEBUG),
    the association accepted and a C-STORE answered."""
    caplog.set_level(logging.DEBUG, logger="router.dicom.user_items")
    unknown = pdu_item(kind, b"vendor-specific")
    with _router(tmp_path, database_url) as server:
        raw = RawAssociation(server.ports[0])
        try:
            assert raw.associate(extra_user_items=unknown) == 0x02  # A-ASSOCIATE-AC
            assert _store_one(raw) == StoreStatus.SUCCESS
        finally:
            raw.close()
    problems = [(name, message) for name, _, message in _problems(caplog)]
    assert problems == []
    skipped = [r.getMessage() for r in caplog.records if r.name == "router.dicom.user_items"]
    assert skipped == [f"user information sub-item of type 0x{kind:02X} ignored (19 bytes)"]


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST instead of a FIN (SO_LINGER 0), as a switched-off modality's stack may."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@pytest.mark.parametrize("during", ["idle", "data-set"])
def test_a_peer_resetting_its_connection_is_one_info_line(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture, during: str
) -> None:
    """pynetdicom logged every reset as two ERROR lines (one with a traceback): a peer could fill
    the log at ERROR at will, and an administrator alerting on ERROR was paged for a modality
    switched off. Now one INFO line from the guard; the partial data set is still discarded."""
    caplog.set_level(logging.INFO)
    with _router(tmp_path, database_url) as server:
        for _ in range(3):
            raw = RawAssociation(server.ports[0])
            assert raw.associate() == 0x02
            if during == "data-set":
                raw.start_c_store(
                    CT_IMAGE_STORAGE, generate_uid(), identifiers(generate_uid(), generate_uid(), generate_uid())
                )
            time.sleep(0.1)
            _reset(raw.sock)
        assert server.listener is not None
        deadline = time.monotonic() + 5
        while server.listener.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.listener.active_associations() == 0
        assert _legitimate_store_seconds(server.ports[0]) < 5
        assert list((server.app.archive.root / ".incoming").rglob("*.dcm")) == []
    problems = [(name, message) for name, _, message in _problems(caplog)]
    assert problems == []
    resets = [r.getMessage() for r in caplog.records if r.name == "router.dicom.guard"]
    assert len(resets) == 3, resets
    assert all("failed: reset by the peer (ConnectionResetError); association aborted" in line for line in resets)


def test_a_peer_stalling_inside_a_pdu_is_one_warning(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The socket read times out after network_timeout: one WARNING naming the setting, not
    pynetdicom's two ERROR lines with a traceback. pynetdicom's own idle timer (the same
    network_timeout) may abort the association at the same moment, with its WARNING."""
    install_library_guards(verbose=False)  # as `router serve` does
    caplog.set_level(logging.INFO)
    with _router(tmp_path, database_url, network_timeout=1.0) as server:
        raw = RawAssociation(server.ports[0])
        local_port = raw.sock.getsockname()[1]
        try:
            assert raw.associate() == 0x02
            raw.start_c_store(
                CT_IMAGE_STORAGE, generate_uid(), identifiers(generate_uid(), generate_uid(), generate_uid())
            )
            raw.send(p_data(b"\x00" * 8000, command=False, last=False)[:1000])  # 994 of 8006 bytes
            assert raw.seconds_until_closed(10) < 4
        finally:
            raw.close()
        time.sleep(0.3)
    guard = (
        "router.dicom.guard",
        "WARNING",
        f"association with 'RAW_SCU' at 127.0.0.1:{local_port} sent 994 of 8006 bytes of a PDU and no more "
        "within 1 s of the PDU before (listener.network_timeout); closed",
    )
    idle = (
        "pynetdicom.association",
        "WARNING",
        "Network timeout reached: no PDU for network_timeout seconds; association aborted",
    )
    problems = _problems(caplog)
    assert problems in ([guard], [idle], [guard, idle], [idle, guard]), problems
    assert [r for r in caplog.records if r.name == "router.dicom.guard" and r.levelno < logging.WARNING] == []


@pytest.mark.parametrize(
    ("where", "ending", "expected"),
    [
        ("request", "reset", "failed in its A-ASSOCIATE-RQ: reset by the peer (ConnectionResetError); closed"),
        ("request", "close", "closed in the middle of its A-ASSOCIATE-RQ (34 of 197 bytes); closed"),
        ("p-data", "close", "closed in the middle of a PDU (2994 of 8006 bytes); association aborted"),
        ("p-data-header", "close", "closed in the middle of a PDU (3 of 6 bytes); association aborted"),
    ],
)
def test_a_peer_closing_in_the_middle_of_a_pdu_is_one_info_line(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture, where: str, ending: str, expected: str
) -> None:
    """A close (FIN) or reset inside a PDU: pynetdicom's ERROR "The received PDU is shorter than
    expected" (found by a hostile-peer trial) becomes one INFO line from the guard."""
    caplog.set_level(logging.INFO)
    with _router(tmp_path, database_url) as server:
        raw = RawAssociation(server.ports[0])
        if where == "request":
            raw.send(associate_rq()[:40])
        else:
            assert raw.associate() == 0x02
            raw.start_c_store(
                CT_IMAGE_STORAGE, generate_uid(), identifiers(generate_uid(), generate_uid(), generate_uid())
            )
            fragment = p_data(b"\x00" * 8000, command=False, last=False)
            raw.send(fragment[:3000] if where == "p-data" else fragment[:3])
        time.sleep(0.2)
        if ending == "reset":
            _reset(raw.sock)
        else:
            raw.sock.shutdown(socket.SHUT_WR)
            assert raw.seconds_until_closed(5) < 2
            raw.close()
        assert server.listener is not None
        deadline = time.monotonic() + 5
        while server.listener.active_associations() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _legitimate_store_seconds(server.ports[0]) < 5
        assert list((server.app.archive.root / ".incoming").rglob("*.dcm")) == []
    problems = [(name, message) for name, _, message in _problems(caplog)]
    assert problems == []
    lines = [r.getMessage() for r in caplog.records if r.name == "router.dicom.guard"]
    assert len(lines) == 1 and lines[0].endswith(expected), lines


def test_a_peer_idle_for_network_timeout_is_one_warning(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An association with nothing sent for listener.network_timeout is aborted; pynetdicom
    logged that at ERROR (found by a hostile-peer trial), which an idle modality causes."""
    install_library_guards(verbose=False)  # as `router serve` does
    caplog.set_level(logging.INFO)
    with _router(tmp_path, database_url, network_timeout=1.0) as server:
        raw = RawAssociation(server.ports[0])
        try:
            assert raw.associate() == 0x02
            assert raw.read_pdu()[0] == 0x07  # A-ABORT after the idle second
        finally:
            raw.close()
        time.sleep(0.3)
    assert _problems(caplog) == [
        (
            "pynetdicom.association",
            "WARNING",
            "Network timeout reached: no PDU for network_timeout seconds; association aborted",
        )
    ]


def test_a_user_identity_of_an_undefined_type_is_ignored(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a hostile-peer trial: a User Identity sub-item with user identity type 9 (PS3.7
    Table D.3-14 defines 1-5) killed pynetdicom's network thread: no answer, and the connection
    held its place for acse_timeout (30 s); six of them refused every sender. The router
    negotiates no user identity, so the sub-item is ignored and the association accepted."""
    caplog.set_level(logging.INFO)
    identity = pdu_item(0x58, struct.pack(">BBH", 9, 1, 1) + b"x" + struct.pack(">H", 1) + b"y")
    with _router(tmp_path, database_url) as server:
        raw = RawAssociation(server.ports[0])
        try:
            assert raw.associate(extra_user_items=identity) == 0x02
        finally:
            raw.close()
        assert _legitimate_store_seconds(server.ports[0]) < 5
    assert _problems(caplog) == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected fault's
def test_an_exception_in_negotiation_gives_the_connection_back_at_once(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Any exception in a state machine action ends pynetdicom's network thread; the association
    thread then waited acse_timeout (30 s) for a primitive that could not come, holding a place
    among max_associations. A library fault is injected where the trial's was (making the
    A-ASSOCIATE primitive): the connection is closed at once and its place given back."""

    def broken(self: object) -> object:
        raise ValueError("injected fault in A-ASSOCIATE-RQ to_primitive")

    caplog.set_level(logging.CRITICAL)  # the injected fault's tracebacks are expected
    with _router(tmp_path, database_url, acse_timeout=30.0) as server:
        assert server.listener is not None
        limiter = server.listener.servers[0].limiter
        with monkeypatch.context() as patch:
            patch.setattr(A_ASSOCIATE_RQ, "to_primitive", broken)
            sock = _connect(server.ports[0])
            started = time.monotonic()
            sock.sendall(associate_rq())
            assert _answer(sock, limit=10) == b""  # closed, nothing sent
            closed_after = time.monotonic() - started
            sock.close()
        deadline = time.monotonic() + 5
        while limiter.load() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert limiter.load() == 0
        assert server.listener.active_associations() == 0
        assert _legitimate_store_seconds(server.ports[0]) < 5
    assert closed_after < 3  # not acse_timeout


def test_a_connection_that_sends_nothing_is_logged_with_the_time_it_was_given(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a hostile-peer trial: closed after association_request_timeout (2 s here), the
    line said acse_timeout's 30 s."""
    caplog.set_level(logging.INFO, logger="router.dicom.listener")
    with _router(tmp_path, database_url) as server:
        sock = _connect(server.ports[0])
        try:
            assert _answer(sock, limit=10) == b""
        finally:
            sock.close()
        time.sleep(0.2)
    lines = [r.getMessage() for r in caplog.records if "sent nothing or stalled" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].endswith("sent nothing or stalled for 2 s (listener.association_request_timeout); closed")


def test_another_dimse_request_on_a_storage_context_is_aborted_with_one_warning(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by a hostile-peer trial: a C-FIND-RQ on the CT Image Storage context made
    pynetdicom's storage SCP raise (an ERROR traceback) before its A-ABORT."""
    caplog.set_level(logging.INFO)
    elements = (
        implicit(0x00000002, uid(CT_IMAGE_STORAGE))
        + implicit(0x00000100, struct.pack("<H", 0x0020))  # Command Field: C-FIND-RQ
        + implicit(0x00000110, struct.pack("<H", 7))
        + implicit(0x00000700, struct.pack("<H", 0))
        + implicit(0x00000800, struct.pack("<H", 0x0101))  # no data set
    )
    command = implicit(0x00000000, struct.pack("<I", len(elements))) + elements
    with _router(tmp_path, database_url) as server:
        raw = RawAssociation(server.ports[0])
        try:
            assert raw.associate() == 0x02
            raw.send(p_data(command, command=True, last=True))
            assert raw.read_pdu()[0] == 0x07  # A-ABORT
        finally:
            raw.close()
        assert _legitimate_store_seconds(server.ports[0]) < 5
        time.sleep(0.2)
    assert _problems(caplog) == [
        (
            "router.dicom.store_codec",
            "WARNING",
            "C-FIND request from RAW_SCU on storage presentation context 1 (only C-STORE is served there, "
            "PS3.4 Annex B); A-ABORT sent",
        )
    ]


def test_a_peer_trickling_inside_a_pdu_is_closed_at_network_timeout(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A byte every 0.3 s inside a PDU, never silent for network_timeout (1 s): pynetdicom's idle
    timer decided to abort after 1 s, but its association thread could not stop the read, and
    the connection stayed open for as long as the trickle went on (15 s here, found by a
    hostile-peer trial). Now the read ends at the timer's expiry: closed, one WARNING line from
    the guard (beside pynetdicom's own), the partial data set removed, the listener serving."""
    install_library_guards(verbose=False)  # as `router serve` does
    caplog.set_level(logging.INFO)
    with _router(tmp_path, database_url, network_timeout=1.0) as server:
        raw = RawAssociation(server.ports[0])
        local_port = raw.sock.getsockname()[1]
        raw.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        closed_after = float("inf")
        try:
            assert raw.associate() == 0x02
            raw.start_c_store(
                CT_IMAGE_STORAGE, generate_uid(), identifiers(generate_uid(), generate_uid(), generate_uid())
            )
            pdu = p_data(b"\x00" * 3000, command=False, last=False)
            raw.send(pdu[:10])
            started = time.monotonic()
            for byte in pdu[10:60]:
                time.sleep(0.3)
                try:
                    raw.send(bytes([byte]))
                except OSError:
                    closed_after = time.monotonic() - started
                    break
        finally:
            raw.close()
        time.sleep(0.3)
        assert _legitimate_store_seconds(server.ports[0]) < 5
        assert list(server.app.archive.incoming.iterdir()) == []
    assert closed_after < 3  # about network_timeout after the first fragment's PDU
    guard = [message for name, _level, message in _problems(caplog) if name == "router.dicom.guard"]
    assert len(guard) == 1, guard
    assert guard[0].startswith(f"association with 'RAW_SCU' at 127.0.0.1:{local_port} sent ")
    assert guard[0].endswith(
        " of 3006 bytes of a PDU and no more within 1 s of the PDU before (listener.network_timeout); closed"
    )
    others = {(name, message) for name, _level, message in _problems(caplog) if name != "router.dicom.guard"}
    assert others <= {
        ("pynetdicom.association", "Network timeout reached: no PDU for network_timeout seconds; association aborted")
    }


@pytest.mark.parametrize(
    ("where", "kind", "logged"),
    [
        ("items", 0x60, "A-ASSOCIATE-RQ item of type 0x60 ignored (10 bytes)"),
        ("items", 0xFF, "A-ASSOCIATE-RQ item of type 0xFF ignored (10 bytes)"),
        ("items", 0x21, "A-ASSOCIATE-RQ item of type 0x21 ignored (10 bytes)"),  # an AC's context item
        ("items", 0x51, "A-ASSOCIATE-RQ item of type 0x51 ignored (10 bytes)"),  # a user information sub-item
        ("context_items", 0x35, "presentation context (RQ) item of type 0x35 ignored (10 bytes)"),
        ("context_items", 0x50, "presentation context (RQ) item of type 0x50 ignored (10 bytes)"),
    ],
)
def test_an_association_request_item_of_a_type_undefined_there_is_skipped(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture, where: str, kind: int, logged: str
) -> None:
    """PS3.8 section 9.3.1: "Items of unrecognized types shall be ignored and skipped" (DCMTK
    skips them). pynetdicom's decoder raised KeyError on an unknown type and the association was
    aborted with a WARNING; a known item out of place was decoded as that item. Now the item is
    skipped (one DEBUG line), the association accepted and a C-STORE answered."""
    install_library_guards(verbose=False)  # as `router serve` does
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="router.dicom.variable_items")  # last: the handler's level
    item = pdu_item(kind, b"vendor")
    with _router(tmp_path, database_url) as server:
        raw = RawAssociation(server.ports[0])
        try:
            assert raw.associate(**{f"extra_{where}": item}) == 0x02  # A-ASSOCIATE-AC
            assert _store_one(raw) == StoreStatus.SUCCESS
        finally:
            raw.close()
    assert _problems(caplog) == []
    assert [r.getMessage() for r in caplog.records if r.name == "router.dicom.variable_items"] == [logged]


def test_an_association_request_item_running_past_its_pdu_is_one_warning_and_an_a_abort(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """An item whose length runs past the end of the A-ASSOCIATE-RQ cannot be skipped: the
    decoder refuses the PDU (pynetdicom logged it as two ERROR lines; the listener's PDU reader,
    router/dicom/pdata.py, makes it one WARNING) and the association is aborted."""
    body = associate_rq()[6:] + struct.pack(">BBH", 0x60, 0, 50) + b"vendor"
    _assert_request_aborted(
        tmp_path, database_url, caplog, struct.pack(">BBI", 0x01, 0, len(body)) + body, "AssertionError"
    )


def test_an_association_request_ending_in_part_of_an_item_header_names_struct_error(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Three bytes after the User Information item, less than an item's header: pynetdicom's
    decoder raises struct.error, which the WARNING named only "error"."""
    body = associate_rq()[6:] + b"\x60\x00\x00"
    _assert_request_aborted(
        tmp_path, database_url, caplog, struct.pack(">BBI", 0x01, 0, len(body)) + body, "struct.error"
    )


def _assert_request_aborted(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture, request: bytes, error: str
) -> None:
    """Send ``request`` (an A-ASSOCIATE-RQ) to a fresh router: it answers A-ABORT and closes
    the connection, logs one WARNING naming the decoder's ``error``, and still serves a sender."""
    install_library_guards(verbose=False)  # as `router serve` does
    caplog.set_level(logging.INFO)
    with _router(tmp_path, database_url) as server:
        raw = RawAssociation(server.ports[0])
        local_port = raw.sock.getsockname()[1]
        try:
            raw.send(request)
            kind, _ = raw.read_pdu()
            assert raw.read_pdu() == (0, b"")  # then the router closes the connection
        finally:
            raw.close()
        assert _legitimate_store_seconds(server.ports[0]) < 5
        time.sleep(0.3)
    assert kind == 0x07  # A-ABORT
    assert _problems(caplog) == [
        (
            "router.dicom.pdata",
            "WARNING",
            f"A-ASSOCIATE-RQ from 127.0.0.1:{local_port} could not be decoded ({error}); A-ABORT sent",
        )
    ]


_CT = CT_IMAGE_STORAGE.encode()


@pytest.mark.parametrize(
    "context_items",
    [
        pdu_item(0x35, b"vendor") + pdu_item(0x40, EXPLICIT_LE.encode()),  # unknown instead of the abstract syntax
        pdu_item(0x30, _CT) + pdu_item(0x35, b"vendor"),  # unknown instead of the transfer syntax
        pdu_item(0x40, EXPLICIT_LE.encode()),  # no abstract syntax at all
        pdu_item(0x30, _CT),  # no transfer syntax at all
        b"",  # neither
    ],
    ids=["abstract-replaced", "transfer-replaced", "no-abstract", "no-transfer", "empty"],
)
def test_a_presentation_context_without_its_syntaxes_is_one_warning_and_an_a_abort(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture, context_items: bytes
) -> None:
    """PS3.8 Table 9-14: a proposed context holds one Abstract Syntax and at least one Transfer
    Syntax sub-item. Without one, pynetdicom's negotiation raised TypeError (no abstract syntax)
    in the association's thread, which died without an answer and kept the connection open
    outside the per-address limit (a fresh trial held 200 from one address, then refused a
    legitimate sender), or IndexError (no transfer syntax). Now the request cannot be decoded:
    one WARNING, an A-ABORT, the connection closed, and the listener still serves."""
    _assert_request_aborted(tmp_path, database_url, caplog, associate_rq(context_items=context_items), "MissingSubItem")
