"""Several receiving processes sharing the port (`[listener] workers`)."""

from __future__ import annotations

import gc
import os
import threading
import time
from pathlib import Path

import pytest
from pynetdicom import evt
from sqlalchemy import func, select

from router.app import RouterApp
from router.db.models import Instance, Study
from router.dicom.balance import NOT_ACCEPTING, AcceptBalance
from router.dicom.guard import ConnectionLimiter, PeerLimits
from router.domain.enums import StudyStatus
from router.server import RouterServer
from router.workers import freeze_startup_heap
from tests.conftest import make_settings, running_router
from tests.dicom_bytes import RawAssociation
from tests.dicom_helpers import make_dataset, send_paths, write_part10

pytestmark = [pytest.mark.network, pytest.mark.slow]


def test_two_workers_share_the_port_and_store_everything(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'router.db'}").replace("listener", workers=2)
    app = RouterApp.open(settings, upgrade=True)
    server = RouterServer(app)
    server.start()
    try:
        assert server.listener is None and server.workers is not None
        pids = [worker.process.pid for worker in server.workers._workers]
        assert len(set(pids)) == 2 and os.getpid() not in pids
        batches = [
            [
                write_part10(
                    make_dataset(StudyInstanceUID=f"1.2.826.0.1.3680043.10.888.{b}"), tmp_path / f"{b}-{i}.dcm"
                )
                for i in range(15)
            ]
            for b in range(4)
        ]
        results: dict[int, list[int | None]] = {}
        threads = [
            threading.Thread(
                target=lambda b=b: results.__setitem__(b, send_paths(server.ports[0], batches[b], calling_ae=f"MOD{b}"))
            )
            for b in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert results == {b: [0] * 15 for b in range(4)}
        with app.sessions() as session:
            assert session.scalar(select(func.count(Instance.id))) == 60
        # the parent's timer routes what the workers received
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with app.sessions() as session:
                statuses = list(session.scalars(select(Study.status)))
            if len(statuses) == 4 and StudyStatus.RECEIVING not in statuses:
                break
            time.sleep(0.1)
        assert sorted(statuses) == [StudyStatus.HELD] * 4  # no facility, no address: no_exam_state
        # a worker that dies is started again
        server.workers._workers[0].process.kill()
        server.workers._workers[0].process.join(5)
        server.tick()
        assert server.workers._workers[0].process.is_alive()
        assert send_paths(server.ports[0], [write_part10(make_dataset(), tmp_path / "after.dcm")]) == [0]
    finally:
        assert server.stop(drain_timeout=5) is True
        app.close()


def test_a_port_in_use_fails_start_up_with_one_line(tmp_path: Path) -> None:
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'router.db'}").replace("listener", workers=2, port=port)
    app = RouterApp.open(settings, upgrade=True)
    server = RouterServer(app)
    try:
        from router.node import ListenerError

        with pytest.raises(ListenerError, match=f"port {port}"):
            server.start()
    finally:
        busy.close()
        server.stop(drain_timeout=1)
        app.close()


def test_the_least_busy_worker_accepts_the_next_association(tmp_path: Path) -> None:
    """Four associations opened one after the other are shared two and two (SO_REUSEPORT's hash
    put three or four on one worker about two times in three)."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'router.db'}").replace("listener", workers=2)
    app = RouterApp.open(settings, upgrade=True)
    server = RouterServer(app)
    server.start()
    associations: list[RawAssociation] = []
    try:
        assert server.workers is not None
        for _ in range(4):
            association = RawAssociation(server.ports[0])
            assert association.associate(max_pdu=0) == 0x02  # A-ASSOCIATE-AC
            associations.append(association)
        time.sleep(0.6)  # each worker republishes its load every 0.2 s
        assert sorted(server.workers._loads) == [2, 2]
        for association in associations:
            association.close()
        deadline = time.monotonic() + 10
        while list(server.workers._loads) != [0, 0] and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(server.workers._loads) == [0, 0]
    finally:
        for association in associations:
            association.close()
        assert server.stop(drain_timeout=5) is True
        app.close()


def test_accept_balance_defers_to_a_less_busy_process_for_a_moment_only() -> None:
    loads = [0, 0, 0]
    first, second = AcceptBalance(loads, 0, patience=0.2), AcceptBalance(loads, 1, patience=0.2)
    assert first.defer(0) is False  # all equal: take it
    second.publish(1)
    assert second.defer(1) is True  # another is less busy (0): leave the connection to it
    assert loads[1] == 1
    time.sleep(0.25)
    assert second.defer(1) is False  # nobody took it within the patience: take it here
    AcceptBalance(loads, 2).stop()
    first.stop()
    assert loads == [NOT_ACCEPTING, 1, NOT_ACCEPTING]
    assert second.defer(5) is False  # the others accept nothing: never defer to them


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_freeze_startup_heap_takes_what_is_alive_out_of_the_collectors_walk() -> None:
    alive = _Cycle()  # made during "start-up": must survive and no longer be walked
    garbage = _Cycle()
    del garbage  # cyclic garbage made before the freeze: collected first, not frozen forever
    collected_before = gc.get_stats()[2]["collected"]
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() > 0
        assert gc.get_stats()[2]["collected"] > collected_before  # the full collection ran first
        assert not any(obj is alive for obj in gc.get_objects())  # out of every generation
        assert not any(isinstance(obj, _Cycle) for obj in gc.get_objects())
        made_later = _Cycle()
        assert any(obj is made_later for obj in gc.get_objects())  # new objects are walked as before
        assert alive.me is alive
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
    assert any(obj is alive for obj in gc.get_objects())


def test_a_connection_counts_once_from_its_accept_to_the_end_of_its_association() -> None:
    live: list[threading.Thread] = []
    limiter = ConnectionLimiter(PeerLimits(), lambda: [thread for thread in live if thread.is_alive()])
    release = threading.Event()
    association = threading.Thread(target=release.wait, args=(10,))
    association.is_acceptor = True  # type: ignore[attr-defined]
    live.append(association)
    assert limiter.admit("127.0.0.1") is None
    assert limiter.load() == 1  # accepted, its thread not started yet: pending
    limiter.start_counted("127.0.0.1", association.start)
    assert association.is_alive()
    assert limiter.load() == 1  # live now, and no longer pending: not 2
    release.set()
    association.join(5)
    assert limiter.load() == 0


def test_the_load_seen_while_an_association_is_negotiated_counts_it_once(tmp_path: Path) -> None:
    """The A-ASSOCIATE-RQ is handled in the association's own threads; the process's load must
    already count that connection once (it counted twice while the new thread held the
    interpreter lock, and the least-busy accept put 3 of 4 associations on one process)."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'router.db'}").replace("listener", workers=1)
    seen: list[int] = []
    with running_router(settings) as server:
        assert server.listener is not None
        listening = server.listener.servers[0]
        listening.bind(evt.EVT_REQUESTED, lambda event: seen.append(listening.limiter.load()))
        for _ in range(20):
            association = RawAssociation(server.ports[0])
            assert association.associate(max_pdu=0) == 0x02  # A-ASSOCIATE-AC
            association.close()
            deadline = time.monotonic() + 5
            while listening.limiter.load() and time.monotonic() < deadline:
                time.sleep(0.01)
    assert seen == [1] * 20  # before: 2 in about one run in three of 5


def test_a_connection_whose_thread_cannot_start_stays_pending_until_it_is_closed() -> None:
    limiter = ConnectionLimiter(PeerLimits(), list)
    assert limiter.admit("127.0.0.1") is None and limiter.admit("127.0.0.1") is None

    def no_thread() -> None:
        raise RuntimeError("can't start new thread")

    with pytest.raises(RuntimeError):
        limiter.start_counted("127.0.0.1", no_thread)
    assert limiter.load() == 2  # both still pending: the caller gives the failed one back, once
    limiter.started("127.0.0.1")  # the caller closes the connection
    assert limiter.load() == 1


def test_a_connection_whose_own_thread_cannot_start_counts_no_longer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """socketserver starts a thread per connection after it was counted; when that fails (no
    threads left) the count is given back (it was kept until the process restarted)."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'router.db'}").replace("listener", workers=1)
    real_start = threading.Thread.start
    failures: list[str] = []

    def start_failing_once(thread: threading.Thread) -> None:
        target = getattr(thread, "_target", None)
        if not failures and getattr(target, "__name__", "") == "process_request_thread":
            failures.append(thread.name)
            raise RuntimeError("can't start new thread")
        real_start(thread)

    with running_router(settings) as server:
        assert server.listener is not None
        listening = server.listener.servers[0]
        monkeypatch.setattr(threading.Thread, "start", start_failing_once)
        refused = RawAssociation(server.ports[0])
        assert refused.read_pdu() == (0, b"")  # closed by socketserver
        refused.close()
        assert failures and listening.limiter.load() == 0
        association = RawAssociation(server.ports[0])
        assert association.associate(max_pdu=0) == 0x02
        association.close()
