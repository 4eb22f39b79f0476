"""The event-driven waits that replace pynetdicom's 1 ms polling (router/dicom/reactor.py)."""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.association import Association
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router.dicom import reactor
from router.server import RouterServer
from tests.dicom_bytes import A_ABORT, A_RELEASE_RQ, RawAssociation, p_data
from tests.dicom_helpers import make_dataset, write_part10

pytestmark = pytest.mark.network


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_installed_by_the_listener(server: RouterServer) -> None:
    assert reactor.installed()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_wake_up_is_lost_when_an_scu_in_the_same_process_waits_for_responses(
    server: RouterServer, tmp_path: Path
) -> None:
    """Regression: an SCU's send_c_store waits in Queue.get while its paused reactor also waited
    on the same queue; a response woke the reactor instead and the sender sat out its whole
    DIMSE timeout (then found the response and reported Success). So the check is that no
    round trip runs into the 3 s timeout: a normal one takes milliseconds."""
    paths = [write_part10(make_dataset(), tmp_path / f"{i}.dcm") for i in range(120)]
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="FAST_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 3
    meta = dcmread(paths[0], stop_before_pixels=True).file_meta
    ae.requested_contexts = [build_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])]
    statuses = []
    slowest = 0.0
    for batch in (paths[:40], paths[40:80], paths[80:]):
        assoc = ae.associate("127.0.0.1", server.ports[0], ae_title="ROUTER")
        assert assoc.is_established
        for path in batch:
            started = time.monotonic()
            status = assoc.send_c_store(path)
            slowest = max(slowest, time.monotonic() - started)
            statuses.append(int(status.Status) if "Status" in status else None)
        assoc.release()
    assert statuses == [0x0000] * 120
    assert slowest < 2.5, f"a C-STORE round trip waited {slowest:.1f} s: a wake-up was lost"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_peers_release_request_wakes_the_association_thread(
    server: RouterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: the association thread waited on its DIMSE message queue only, so a peer's
    A-RELEASE-RQ (a primitive on the DUL's other queue) was seen when that wait ran out: 5 ms
    per association, which every DCMTK storescu waited for before it exited. With the wait
    made 8 s long, a release that takes seconds means the wake-up is missing."""
    monkeypatch.setattr(reactor, "ASSOCIATION_WAIT", 8.0)
    slowest = 0.0
    for _ in range(3):
        peer = RawAssociation(server.ports[0])
        try:
            assert peer.associate() == 0x02
            started = time.monotonic()
            peer.sock.sendall(A_RELEASE_RQ)
            kind, _ = peer.read_pdu()
            slowest = max(slowest, time.monotonic() - started)
            assert kind == 0x06  # A-RELEASE-RP
        finally:
            peer.sock.close()
    assert slowest < 4.0, f"an A-RELEASE-RP took {slowest:.1f} s: the A-RELEASE-RQ was not noticed"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_peers_abort_ends_the_association_without_waiting_out_the_poll(
    server: RouterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An A-ABORT from the peer ends the router's association (it leaves pynetdicom's active
    associations) long before the 8 s wait: pynetdicom's abort actions put ``(None, None)`` on
    the DIMSE message queue, which the wait must keep treating as work (the wake-up the DUL's
    own queue now also gives)."""
    monkeypatch.setattr(reactor, "ASSOCIATION_WAIT", 8.0)
    listener = server.listener
    assert listener is not None
    peer = RawAssociation(server.ports[0])
    try:
        assert peer.associate() == 0x02
        time.sleep(0.2)  # the association thread is in its (8 s) wait
        assert listener.active_associations() == 1
        peer.sock.sendall(A_ABORT)
        deadline = time.monotonic() + 4.0
        while listener.active_associations() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert listener.active_associations() == 0
    finally:
        peer.sock.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_local_scu_request_does_not_wait_out_its_reactors_poll(
    server: RouterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pynetdicom's send_* (as the router's forwarding calls send_c_store) pauses its
    association's reactor first and spins until it has paused; the reactor paused only when its
    wait ran out, up to 5 ms per request. With the wait made 8 s long, a C-ECHO round trip that
    takes seconds means the pause request did not wake the reactor."""
    ae = AE(ae_title="PAUSE_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.ports[0], ae_title="ROUTER")
    assert assoc.is_established
    monkeypatch.setattr(reactor, "ASSOCIATION_WAIT", 8.0)
    time.sleep(0.2)  # both association threads are now in their (8 s) waits
    slowest = 0.0
    try:
        for _ in range(3):
            started = time.monotonic()
            assert int(assoc.send_c_echo().Status) == 0x0000
            slowest = max(slowest, time.monotonic() - started)
    finally:
        assoc.release()
    assert slowest < 4.0, f"a C-ECHO round trip took {slowest:.1f} s: the reactor was not woken to pause"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("second", ["release", "p-data"])
def test_a_pdu_right_after_a_release_request_is_aborted_without_an_error(
    server: RouterServer, caplog: pytest.LogCaptureFixture, second: str
) -> None:
    """Regression (found trying lever 24): a peer that sends a second A-RELEASE-RQ, or a
    P-DATA, right after its A-RELEASE-RQ gets an A-ABORT from the DUL (PS3.8 Table 9-10, AA-8);
    the association thread, now woken at once, then queued its A-RELEASE-RP into the aborting
    state machine, which raised InvalidEventError in the DUL thread: an ERROR and a traceback
    per association (87 of 100 tries). The late primitive is dropped instead."""
    follow_up = A_RELEASE_RQ if second == "release" else p_data(b"\x00" * 8, command=True, last=True)
    answers = []
    with caplog.at_level(logging.DEBUG):
        for _ in range(20):
            peer = RawAssociation(server.ports[0])
            try:
                assert peer.associate() == 0x02
                peer.sock.sendall(A_RELEASE_RQ + follow_up)
                kinds = []
                while True:
                    kind, _ = peer.read_pdu()
                    if kind == 0:
                        break  # the router closed the connection
                    kinds.append(kind)
                answers.append(tuple(kinds))
            finally:
                peer.sock.close()
        listener = server.listener
        assert listener is not None
        deadline = time.monotonic() + 5
        while listener.active_associations() and time.monotonic() < deadline:
            time.sleep(0.01)
    assert listener.active_associations() == 0
    # every peer got its A-ABORT (0x07), some the A-RELEASE-RP (0x06) before it
    assert all(kinds and kinds[-1] == 0x07 and set(kinds) <= {0x06, 0x07} for kinds in answers), answers
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
    assert any("dropped: the association is already aborting" in r.getMessage() for r in caplog.records)


def test_a_stopping_association_thread_looks_at_its_dul_every_half_millisecond(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by a trial: pynetdicom's ``Association.kill`` sleeps 10 ms between looks at its DUL,
    so every association thread lived up to 10 ms after its association ended, still counted
    against ``max_connections_per_address``: rapid reconnects from one address were refused
    below the configured limit. In a stopping association thread (``_kill`` set) the shim sleeps
    at most ``KILL_POLL``; that thread's sleeps before, and other threads', are unchanged."""
    reactor.install()
    slept: list[float] = []
    monkeypatch.setattr(reactor._time, "sleep", slept.append)
    assoc = Association(AE(), "acceptor")

    def body() -> None:
        reactor._sleep(0.01)  # before kill(): as asked
        assoc._kill = True
        reactor._sleep(0.01)  # kill()'s poll

    assoc.run = body  # type: ignore[method-assign]
    assoc.start()
    assoc.join(5)
    reactor._sleep(0.01)  # not an association thread
    assert slept == [0.01, reactor.KILL_POLL, 0.01]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_an_scu_request_is_sent_only_once_its_reactor_has_really_paused(
    server: RouterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression (a CI failure: "Received unexpected C-STORE service message", then a DIMSE
    timeout): pynetdicom's ``send_*`` unpause the reactor (``_reactor_checkpoint.set()``) after
    a response, and the next ``send_*`` clears it and goes on as soon as ``_is_paused`` is true,
    which it still was while the just-unpaused reactor thread had not run yet (a loaded
    machine); that thread then woke and could take the new response off the queue as a
    request. The router forwards with these calls. Here the SCU's reactor is slow to resume
    (20 ms after it is unpaused); every request must go out while the reactor is really
    paused, and every C-ECHO get its response."""
    ae = AE(ae_title="SLOW_REACTOR")
    ae.acse_timeout = ae.network_timeout = 10
    ae.dimse_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.ports[0], ae_title="ROUTER")
    assert assoc.is_established
    checkpoint = assoc._reactor_checkpoint
    real_wait, real_send = checkpoint.wait, assoc.dimse.send_msg
    paused = threading.Event()  # the reactor thread is inside checkpoint.wait()
    sent_while_running = []

    def slow_to_resume(timeout: float | None = None) -> bool:
        if threading.current_thread() is not assoc:
            return real_wait(timeout)
        paused.set()
        try:
            result = real_wait(timeout)
        finally:
            paused.clear()
        time.sleep(0.02)  # unpaused, the reactor thread is not scheduled for a while
        return result

    def observed_send(primitive: Any, context_id: int) -> None:
        if threading.current_thread() is not assoc and not paused.is_set():
            sent_while_running.append(type(primitive).__name__)
        real_send(primitive, context_id)

    monkeypatch.setattr(checkpoint, "wait", slow_to_resume)
    monkeypatch.setattr(assoc.dimse, "send_msg", observed_send)
    statuses = []
    try:
        for _ in range(10):
            status = assoc.send_c_echo()
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        if assoc.is_established:
            assoc.release()
    assert sent_while_running == []
    assert statuses == [0x0000] * 10
