"""Several nodes on one database: claims, leases, heartbeats, node ids, per-node incoming folders,
and roster changes serialised with routing (docs/scale-out.md).

The concurrency tests run real threads against PostgreSQL (skipped without
ROUTER_TEST_DATABASE_URL); the claim and lease tests run on both engines.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.exc import OperationalError

from router.app import RouterApp
from router.config import Settings
from router.db.engine import ServerOptions, make_engine
from router.db.models import (
    Assignment,
    ClusterLease,
    ForwardedInstance,
    InfrastructureEntry,
    Instance,
    Node,
    OutboxJob,
    Radiologist,
    Series,
    Study,
)
from router.dicom.scu import Destination, Forwarder
from router.domain.enums import InfrastructureKind, OutboxStatus, StudyStatus
from router.services.cluster import ClusterService, resolve_node_id
from router.services.forwarding import ForwardingPolicy, ForwardingService
from router.services.forwarding_queue import Requeued, requeue_study
from tests.conftest import PG_URL, FakeClock, _pg_schema_url, make_settings
from tests.roster_fixtures import NPI_A, NPI_B, OS_USER, add_study, roster_with_readers

INSTANCES_PER_STUDY = 3
INSTANCE_BYTES = 1000


def _store_file(app: RouterApp, relative_path: str) -> None:
    """A stand-in archive file (forwarding reads each instance through the archive)."""
    stored = app.archive.root / relative_path
    stored.parent.mkdir(parents=True, exist_ok=True)
    stored.write_bytes(b"\0" * INSTANCE_BYTES)


def _add_instances(app: RouterApp, uid: str, count: int = INSTANCES_PER_STUDY) -> None:
    with app.sessions.begin() as session:
        study = session.scalars(select(Study).where(Study.study_instance_uid == uid)).one()
        series = Series(study_id=study.id, series_instance_uid=f"{uid}.1", modality="CT")
        session.add(series)
        session.flush()
        for index in range(count):
            sop = f"{uid}.1.{index + 1}"
            _store_file(app, f"{uid}/{uid}.1/{sop}.dcm")
            session.add(
                Instance(
                    study_id=study.id,
                    series_id=series.id,
                    sop_instance_uid=sop,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    relative_path=f"{uid}/{uid}.1/{sop}.dcm",
                    size_bytes=INSTANCE_BYTES,
                    dataset_sha256="0" * 64,
                    calling_ae_title="CT_NORTH",
                    received_at=study.last_received_at,
                )
            )
        study.instance_count = count
        study.size_bytes = count * INSTANCE_BYTES


class RecordingSender:
    """Stands in for the C-STORE SCU: records every SOP Instance UID it is asked to send."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._lock = threading.Lock()

    def __call__(self, paths: Sequence[Path], destination: str, calling_ae_title: str) -> list[bool]:
        with self._lock:
            self.sent.extend(path.stem for path in paths)
        return [True] * len(paths)


def _forwarder(app: RouterApp, send: RecordingSender, node_id: str) -> ForwardingService:
    return ForwardingService(app.sessions, app.archive, send, ForwardingPolicy(), app.clock, node_id=node_id)


def _assigned_studies_with_jobs(app: RouterApp, count: int) -> list[str]:
    roster_with_readers(app, (NPI_A, "TX"))
    app.roster.radiologists.set(NPI_A, OS_USER, destination="READER_A@127.0.0.1:11199")
    uids = [f"1.2.826.0.1.3680043.10.1011.{index}" for index in range(1, count + 1)]
    for uid in uids:
        add_study(app, uid)
        _add_instances(app, uid)
    results = app.routing.route_due()
    assert [result.status for result in results] == [StudyStatus.ASSIGNED] * count
    return uids


# ---------------------------------------------------------------------- outbox claims
def test_two_nodes_working_one_outbox_send_every_instance_once_and_ledger_every_byte(
    app: RouterApp, clock: FakeClock
) -> None:
    uids = _assigned_studies_with_jobs(app, 12)
    send = RecordingSender()
    nodes = [_forwarder(app, send, f"node-{index}") for index in range(3)]
    threads = [threading.Thread(target=node.run_due, kwargs={"wait": True}) for node in nodes for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for node in nodes:  # whatever one node passed over while another held it
        node.run_due(wait=True)
    expected = {f"{uid}.1.{index + 1}" for uid in uids for index in range(INSTANCES_PER_STUDY)}
    assert Counter(send.sent) == Counter(expected)  # every instance exactly once
    with app.sessions() as session:
        assert set(session.scalars(select(OutboxJob.status))) == {OutboxStatus.SENT}
        assert session.scalar(select(func.count(OutboxJob.id)).where(OutboxJob.claimed_by.is_not(None))) == 0
        assert session.scalar(select(func.count(ForwardedInstance.id))) == len(expected)
        sent_bytes = session.scalar(
            select(func.sum(InfrastructureEntry.size_bytes)).where(
                InfrastructureEntry.kind == InfrastructureKind.TRANSMISSION
            )
        )
    assert sent_bytes == len(expected) * INSTANCE_BYTES


def test_a_resend_asked_for_while_a_send_is_in_flight_still_sends_every_instance(
    app: RouterApp, clock: FakeClock
) -> None:
    (uid,) = _assigned_studies_with_jobs(app, 1)
    send = RecordingSender()
    asked: list[Requeued] = []

    def resend_asked_meanwhile(paths: Sequence[Path], destination: str, calling_ae_title: str) -> list[bool]:
        if not asked:  # `router studies forward UID --all` while the first send is on the wire
            with app.sessions.begin() as session:
                asked.append(requeue_study(session, uid, clock(), resend_all=True))
        return send(paths, destination, calling_ae_title)

    ForwardingService(
        app.sessions, app.archive, resend_asked_meanwhile, ForwardingPolicy(), app.clock, node_id="n"
    ).run_due(wait=True)
    assert asked == [Requeued("READER_A@127.0.0.1:11199", to_send=INSTANCES_PER_STUDY, instances=INSTANCES_PER_STUDY)]
    # the first send counts for the round it was sent in; the new round sends all of it again
    assert Counter(send.sent) == {f"{uid}.1.{index + 1}": 2 for index in range(INSTANCES_PER_STUDY)}
    with app.sessions() as session:
        job = session.scalars(select(OutboxJob)).one()
        assert (job.status, job.send_round, job.sent_instance_count) == (OutboxStatus.SENT, 1, INSTANCES_PER_STUDY)
        rounds = session.execute(
            select(ForwardedInstance.send_round, func.count())
            .group_by(ForwardedInstance.send_round)
            .order_by(ForwardedInstance.send_round)
        ).all()
        assert [tuple(row) for row in rounds] == [(0, INSTANCES_PER_STUDY), (1, INSTANCES_PER_STUDY)]


def test_a_failure_of_the_round_in_flight_does_not_count_against_the_new_round(
    app: RouterApp, clock: FakeClock
) -> None:
    (uid,) = _assigned_studies_with_jobs(app, 1)
    calls: list[int] = []

    def first_send_refuses_one(paths: Sequence[Path], destination: str, calling_ae_title: str) -> list[bool]:
        calls.append(len(paths))
        if len(calls) == 1:  # `studies forward --all` while the first send is on the wire, which fails
            with app.sessions.begin() as session:
                requeue_study(session, uid, clock(), resend_all=True)
            return [True, False, True]
        return [True] * len(paths)

    forwarder = ForwardingService(
        app.sessions, app.archive, first_send_refuses_one, ForwardingPolicy(max_attempts=1), app.clock, node_id="n"
    )
    forwarder.run_due(wait=True)
    forwarder.run_due(wait=True)  # the next tick: the new round is due at once
    assert calls == [INSTANCES_PER_STUDY, INSTANCES_PER_STUDY]
    with app.sessions() as session:
        job = session.scalars(select(OutboxJob)).one()
        # with max_attempts = 1 the old round's failure would have failed the new round's job
        assert (job.status, job.attempts, job.last_error, job.send_round) == (OutboxStatus.SENT, 0, None, 1)
        rounds = session.execute(
            select(ForwardedInstance.send_round, func.count())
            .group_by(ForwardedInstance.send_round)
            .order_by(ForwardedInstance.send_round)
        ).all()
        assert [tuple(row) for row in rounds] == [(0, 2), (1, INSTANCES_PER_STUDY)]


def test_a_reader_back_at_an_earlier_destination_gets_the_study_again_in_full(app: RouterApp, clock: FakeClock) -> None:
    (uid,) = _assigned_studies_with_jobs(app, 1)
    send = RecordingSender()
    first, second = "READER_A@127.0.0.1:11199", "READER_A@127.0.0.1:11200"
    destinations: list[str] = []

    def recording(paths: Sequence[Path], destination: str, calling_ae_title: str) -> list[bool]:
        destinations.extend(destination for _ in paths)
        return send(paths, destination, calling_ae_title)

    forwarder = ForwardingService(app.sessions, app.archive, recording, ForwardingPolicy(), app.clock, node_id="n")
    forwarder.run_due(wait=True)
    app.roster.radiologists.set(NPI_A, OS_USER, destination=second)
    forwarder.run_due(wait=True)
    app.roster.radiologists.set(NPI_A, OS_USER, destination=first)  # back to the first workstation
    forwarder.run_due(wait=True)
    assert Counter(destinations) == {first: 2 * INSTANCES_PER_STUDY, second: INSTANCES_PER_STUDY}
    assert Counter(send.sent) == {f"{uid}.1.{index + 1}": 3 for index in range(INSTANCES_PER_STUDY)}


def test_an_ipv6_destination_is_written_with_its_host_in_brackets(app: RouterApp, clock: FakeClock) -> None:
    _assigned_studies_with_jobs(app, 1)
    app.roster.radiologists.set(NPI_A, OS_USER, destination="READER_A@[::1]:11104")
    with app.sessions() as session:
        assert session.scalars(select(OutboxJob.destination).where(OutboxJob.status == OutboxStatus.PENDING)).all() == [
            "READER_A@[::1]:11104"  # was READER_A@::1:11104
        ]
    assert Forwarder().destination("READER_A@[::1]:11104") == Destination("READER_A", "::1", 11104)


def test_a_live_nodes_claim_is_respected_and_a_dead_nodes_claim_is_taken_over(app: RouterApp, clock: FakeClock) -> None:
    uids = _assigned_studies_with_jobs(app, 2)
    with app.sessions.begin() as session:
        jobs = {
            uid: job
            for uid, job in session.execute(
                select(Study.study_instance_uid, OutboxJob).join(Study, Study.id == OutboxJob.study_id)
            ).all()
        }
        jobs[uids[0]].claimed_by, jobs[uids[0]].claimed_until = "alive", clock() + dt.timedelta(seconds=30)
        jobs[uids[1]].claimed_by, jobs[uids[1]].claimed_until = "dead", clock() - dt.timedelta(seconds=1)
    send = RecordingSender()
    _forwarder(app, send, "survivor").run_due(wait=True)
    assert sorted(send.sent) == [f"{uids[1]}.1.{index + 1}" for index in range(INSTANCES_PER_STUDY)]
    clock.advance(31)  # the "alive" node stopped renewing: its claim expires
    _forwarder(app, send, "survivor").run_due(wait=True)
    assert len(send.sent) == 2 * INSTANCES_PER_STUDY == len(set(send.sent))


def test_heartbeat_renews_only_this_nodes_claims_and_stop_gives_them_back(app: RouterApp, clock: FakeClock) -> None:
    _assigned_studies_with_jobs(app, 2)
    mine = ClusterService(app.sessions, "mine", lease_seconds=30, clock=clock)
    mine.register()
    with app.sessions.begin() as session:
        first, second = session.scalars(select(OutboxJob).order_by(OutboxJob.id)).all()
        first.claimed_by, first.claimed_until = "mine", clock()
        second.claimed_by, second.claimed_until = "other", clock()
    clock.advance(10)
    assert mine.heartbeat() == 1
    with app.sessions() as session:
        until = dict(session.execute(select(OutboxJob.claimed_by, OutboxJob.claimed_until)).all())
    assert until == {"mine": clock() + dt.timedelta(seconds=30), "other": clock() - dt.timedelta(seconds=10)}
    assert [(node.node_id, node.alive) for node in mine.nodes()] == [("mine", True)]
    mine.stop()
    with app.sessions() as session:
        assert set(session.scalars(select(OutboxJob.claimed_by))) == {None, "other"}
    assert [(node.node_id, node.alive) for node in mine.nodes()] == [("mine", False)]


def test_a_late_instance_arriving_while_a_job_is_sent_is_sent_next(app: RouterApp, clock: FakeClock) -> None:
    uids = _assigned_studies_with_jobs(app, 1)
    sent: list[str] = []

    def send_and_receive_one_more(paths: Sequence[Path], destination: str, calling_ae_title: str) -> list[bool]:
        if not sent:  # while the first batch is on the wire, one more instance is stored
            _store_file(app, f"{uids[0]}/{uids[0]}.1/{uids[0]}.1.99.dcm")
            with app.sessions.begin() as session:
                study = session.scalars(select(Study)).one()
                series = session.scalars(select(Series)).one()
                session.add(
                    Instance(
                        study_id=study.id,
                        series_id=series.id,
                        sop_instance_uid=f"{uids[0]}.1.99",
                        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                        transfer_syntax_uid="1.2.840.10008.1.2.1",
                        relative_path=f"{uids[0]}/{uids[0]}.1/{uids[0]}.1.99.dcm",
                        size_bytes=INSTANCE_BYTES,
                        dataset_sha256="0" * 64,
                        calling_ae_title="CT_NORTH",
                        received_at=clock(),
                    )
                )
        sent.extend(path.stem for path in paths)
        return [True] * len(paths)

    forwarder = ForwardingService(app.sessions, app.archive, send_and_receive_one_more, ForwardingPolicy(), clock)
    forwarder.run_due(wait=True)
    forwarder.run_due(wait=True)
    assert sorted(sent) == sorted([f"{uids[0]}.1.{index}" for index in (1, 2, 3, 99)])
    with app.sessions() as session:
        assert session.scalars(select(OutboxJob.status)).one() == OutboxStatus.SENT


# ---------------------------------------------------------------------- cluster lease
def test_the_periodic_recheck_runs_once_per_interval_for_the_cluster(app: RouterApp, clock: FakeClock) -> None:
    runs: list[str] = []
    nodes = [ClusterService(app.sessions, name, lease_seconds=30, clock=clock) for name in ("a", "b", "c")]
    for _ in range(3):
        for node in nodes:
            node.run_once_per_interval("recheck", 300, lambda node=node: runs.append(node.node_id))
    assert runs == ["a"]
    clock.advance(301)
    for node in reversed(nodes):
        node.run_once_per_interval("recheck", 300, lambda node=node: runs.append(node.node_id))
    assert runs == ["a", "c"]


def test_a_recheck_lease_held_by_a_dead_node_is_taken_over_after_it_expires(app: RouterApp, clock: FakeClock) -> None:
    with app.sessions.begin() as session:
        session.add(ClusterLease(name="recheck", holder="dead", expires_at=clock() + dt.timedelta(seconds=30)))
    runs: list[str] = []
    survivor = ClusterService(app.sessions, "survivor", lease_seconds=30, clock=clock)
    assert not survivor.run_once_per_interval("recheck", 300, lambda: runs.append("survivor"))
    clock.advance(31)
    assert survivor.run_once_per_interval("recheck", 300, lambda: runs.append("survivor"))
    assert runs == ["survivor"]


def test_a_failed_recheck_is_not_counted_as_run(app: RouterApp, clock: FakeClock) -> None:
    node = ClusterService(app.sessions, "a", lease_seconds=30, clock=clock)

    def fail() -> None:
        raise RuntimeError("database busy")

    with pytest.raises(RuntimeError):
        node.run_once_per_interval("recheck", 300, fail)
    assert node.run_once_per_interval("recheck", 300, lambda: None)


# ---------------------------------------------------------------------- node id, incoming folder
def test_node_id_is_generated_once_kept_in_the_data_dir_and_names_the_incoming_folder(
    tmp_path: Path, sqlite_url: str
) -> None:
    settings = make_settings(tmp_path, sqlite_url)
    assert resolve_node_id(settings, create=False) is None
    with RouterApp.open(settings, upgrade=True) as first:
        node_id = first.node_id
    assert node_id is not None and (tmp_path / "var" / "node_id").read_text().strip() == node_id
    with RouterApp.open(settings) as again:
        assert again.node_id == node_id
        assert again.archive.incoming == again.archive.root / ".incoming" / node_id
    configured = settings.replace("node", id="router-b")
    with RouterApp.open(configured) as other:
        assert other.node_id == "router-b"
        assert other.archive.incoming.name == "router-b"


def test_start_up_cleaning_leaves_other_nodes_transfers_in_progress(tmp_path: Path, sqlite_url: str) -> None:
    settings = make_settings(tmp_path, sqlite_url).replace("paths", archive_dir=tmp_path / "shared")
    node_a, node_b = settings.replace("node", id="a"), settings.replace("node", id="b")
    with RouterApp.open(node_a, upgrade=True) as app_a, RouterApp.open(node_b) as app_b:
        app_a.archive.prepare()
        app_b.archive.prepare()
        in_progress = app_b.archive.write_temp(b"half a data set")
        debris = app_a.archive.write_temp(b"left by a crash")
        assert app_a.archive.clean_incoming(0) == 1
    assert in_progress.exists() and not debris.exists()


def test_a_dead_nodes_stale_temporary_files_are_swept_once_its_lease_expired(
    tmp_path: Path, sqlite_url: str, clock: FakeClock
) -> None:
    import os

    from router.server import RouterServer

    settings = make_settings(tmp_path, sqlite_url).replace("paths", archive_dir=tmp_path / "shared")
    node_a, node_b = settings.replace("node", id="a"), settings.replace("node", id="b")
    with RouterApp.open(node_a, upgrade=True, clock=clock) as app_a, RouterApp.open(node_b, clock=clock) as app_b:
        app_a.archive.prepare()
        app_b.archive.prepare()
        ClusterService(app_b.sessions, "b", 30.0, clock).register()
        ClusterService(app_a.sessions, "a", 30.0, clock).register()
        old = time.time() - 3600
        debris_b = app_b.archive.write_temp(b"left by b's crash")
        fresh_b = app_b.archive.write_temp(b"b is still writing this")
        own_a = app_a.archive.write_temp(b"a's own, old")
        for path in (debris_b, own_a):
            os.utime(path, (old, old))
        server_a = RouterServer(app_a)
        assert server_a.sweep_dead_nodes_incoming() == 0  # b's heartbeat is within its lease
        clock.advance(31)  # b stops renewing: dead
        ClusterService(app_a.sessions, "a", 30.0, clock).heartbeat()
        assert server_a.sweep_dead_nodes_incoming() == 1
    assert not debris_b.exists() and fresh_b.exists() and own_a.exists()
    assert debris_b.parent.is_dir()  # b finds its folder when it comes back


# ---------------------------------------------------------------------- PostgreSQL: stalls and races
@pytest.fixture
def pg_settings(tmp_path: Path) -> Iterator[Settings]:
    if not PG_URL:
        pytest.skip("ROUTER_TEST_DATABASE_URL not set")
    for url in _pg_schema_url():
        yield make_settings(tmp_path, url)


def test_a_node_stalled_inside_a_routing_transaction_costs_the_others_nothing(pg_settings: Settings) -> None:
    uids = [f"1.2.826.0.1.3680043.10.1012.{index}" for index in range(1, 6)]
    # set up without the short timeout: on a loaded machine a set-up transaction could sit idle
    # for a second and be ended by it (seen once in CI)
    with RouterApp.open(pg_settings, upgrade=True) as setup:
        roster_with_readers(setup, (NPI_A, "TX"))
        for uid in uids:
            add_study(setup, uid)
    settings = pg_settings.replace("database", idle_in_transaction_timeout=1.0)
    with RouterApp.open(settings) as app:
        # "node 1" claims the first study and stalls (as under SIGSTOP) inside its transaction
        stalled = app.engine.connect()
        transaction = stalled.begin()
        stalled.execute(
            text("SELECT id FROM studies WHERE study_instance_uid = :uid FOR UPDATE"), {"uid": uids[0]}
        ).one()
        stalled.execute(text("SELECT version FROM roster_version FOR SHARE")).one()
        # another node routes everything else at once, without waiting for the stalled lock
        routed = app.routing.route_due()
        assert sorted(result.study_instance_uid for result in routed) == sorted(uids[1:])
        # the server ends the stalled transaction after idle_in_transaction_timeout; its study goes next
        deadline = threading.Event()
        for _ in range(100):
            if app.routing.route_due():
                break
            deadline.wait(0.1)
        with app.sessions() as session:
            assert set(session.scalars(select(Study.status))) == {StudyStatus.ASSIGNED}
        with pytest.raises(Exception, match=r"idle-in-transaction|terminat|closed"):
            stalled.execute(text("SELECT 1"))
        transaction.close()
        stalled.close()


def test_three_nodes_upgrading_an_empty_database_at_once_all_succeed(pg_settings: Settings) -> None:
    from router.db import migrate

    engines = [make_engine(pg_settings.database_url) for _ in range(3)]
    errors: list[BaseException] = []

    def upgrade(engine) -> None:  # type: ignore[no-untyped-def]
        try:
            migrate.upgrade(engine)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=upgrade, args=(engine,)) for engine in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert all(migrate.is_current(engine) for engine in engines)
    finally:
        for engine in engines:
            engine.dispose()


def test_server_options_reach_the_postgresql_session(pg_settings: Settings) -> None:
    options = ServerOptions(
        statement_timeout=7, idle_in_transaction_timeout=9, application_name="router:n1", pool_size=2, max_overflow=1
    )
    engine = make_engine(pg_settings.database_url, server=options)
    try:
        with engine.connect() as connection:
            values = [
                connection.execute(text(f"SHOW {name}")).scalar()
                for name in ("statement_timeout", "idle_in_transaction_session_timeout", "application_name")
            ]
        assert values == ["7s", "9s", "router:n1"]
        assert engine.pool.size() == 2  # type: ignore[attr-defined]
    finally:
        engine.dispose()


_COMMIT_ORDER = """
CREATE SEQUENCE commit_order;
CREATE TABLE commit_log (seq bigint, kind text, license_id bigint, radiologist_id bigint, status text);
CREATE FUNCTION log_assignment() RETURNS trigger AS $$ BEGIN
    INSERT INTO commit_log VALUES (nextval('commit_order'), 'assignment', NEW.license_id, NEW.radiologist_id, NULL);
    RETURN NULL; END $$ LANGUAGE plpgsql;
CREATE FUNCTION log_license() RETURNS trigger AS $$ BEGIN
    INSERT INTO commit_log VALUES (nextval('commit_order'), 'license', NEW.id, NEW.radiologist_id, NEW.status::text);
    RETURN NULL; END $$ LANGUAGE plpgsql;
CREATE CONSTRAINT TRIGGER assignment_committed AFTER INSERT ON assignments
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION log_assignment();
CREATE CONSTRAINT TRIGGER license_committed AFTER UPDATE ON licenses
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION log_license();
"""


def install_commit_order_log(app: RouterApp) -> None:
    """Number assignment and license commits in commit order (test instrumentation).

    Deferred constraint triggers run at COMMIT, after every row lock of the transaction is
    held, so among transactions that conflict on a lock the numbers follow the commit order.
    """
    with app.engine.begin() as connection:
        connection.execute(text(_COMMIT_ORDER))


def suspended_assignments(app: RouterApp) -> list[tuple[int, int]]:
    """(assignment seq, license seq) of every assignment committed while its license was not active."""
    with app.engine.connect() as connection:
        log = connection.execute(text("SELECT seq, kind, license_id, status FROM commit_log ORDER BY seq")).all()
    status: dict[int, tuple[int, str]] = {}
    bad = []
    for seq, kind, license_id, value in log:
        if kind == "license":
            status[license_id] = (seq, value)
        elif license_id in status and status[license_id][1] != "active":
            bad.append((seq, status[license_id][0]))
    return bad


def test_no_assignment_commits_after_its_readers_license_was_suspended(pg_settings: Settings) -> None:
    """Suspend-vs-route, many times over, with real threads: two routing timers, a periodic
    recheck and the CLI's suspension with its own re-evaluation, all at once.

    Without the roster lock (routing reads an active license, the suspension commits, routing
    commits its assignment after it) this found assignments committed after the suspension.
    """
    cycles, per_cycle = 20, 4
    with RouterApp.open(pg_settings, upgrade=True) as app:
        roster_with_readers(app, (NPI_A, "TX"), (NPI_B, "TX"))
        install_commit_order_log(app)
        with app.sessions() as session:
            a_id = session.scalar(select(Radiologist.id).where(Radiologist.npi == NPI_A))
        errors: list[BaseException] = []

        def keep(target, stop: threading.Event) -> None:  # type: ignore[no-untyped-def]
            try:
                while not stop.is_set():
                    target()
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        for cycle in range(cycles):
            for index in range(per_cycle):
                add_study(app, f"1.2.826.0.1.3680043.10.1013.{cycle}.{index}")
            stop = threading.Event()
            workers = [
                threading.Thread(target=keep, args=(app.routing.route_due, stop)),
                threading.Thread(target=keep, args=(app.routing.route_due, stop)),
                threading.Thread(
                    target=keep, args=(lambda: app.routing.reevaluate("periodic recheck", skip_locked=True), stop)
                ),
            ]
            for worker in workers:
                worker.start()
            threading.Event().wait(0.002 * (cycle % 8))  # suspend at a different moment each cycle
            change = app.roster.licenses.set_status(NPI_A, "TX", "suspended", OS_USER)
            assert change.reevaluation_error is None
            for _ in range(200):
                with app.sessions() as session:
                    if not session.scalar(select(func.count(Study.id)).where(Study.status == StudyStatus.RECEIVING)):
                        break
                threading.Event().wait(0.02)
            stop.set()
            for worker in workers:
                worker.join()
            assert errors == []
            with app.sessions() as session:
                open_to_a = session.scalar(
                    select(func.count(Assignment.id)).where(
                        Assignment.radiologist_id == a_id, Assignment.superseded_at.is_(None)
                    )
                )
                assert open_to_a == 0, f"cycle {cycle}: a suspended reader still holds a study"
            app.roster.licenses.set_status(NPI_A, "TX", "active", OS_USER)
        assert suspended_assignments(app) == []
        with app.sessions() as session:
            assert set(session.scalars(select(Study.status))) == {StudyStatus.ASSIGNED}
            # reader A did get studies between suspensions: the race was really run
            assert session.scalar(select(func.count(Assignment.id)).where(Assignment.radiologist_id == a_id)) > 0


def test_concurrent_reevaluations_never_collide_on_the_current_assignment(pg_settings: Settings) -> None:
    with RouterApp.open(pg_settings, upgrade=True) as app:
        roster_with_readers(app, (NPI_A, "TX"), (NPI_B, "TX"))
        for index in range(8):
            add_study(app, f"1.2.826.0.1.3680043.10.1014.{index}")
        app.routing.route_due()
        with app.engine.begin() as connection:  # suspend A behind the router's back: nobody re-evaluated yet
            connection.execute(update(Radiologist).where(Radiologist.npi == NPI_A).values(active=False))
        errors: list[BaseException] = []
        results: list[int] = []

        def reevaluate() -> None:
            try:
                results.extend(1 for r in app.routing.reevaluate("recheck") if r.withdrawn_npi is not None)
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        threads = [threading.Thread(target=reevaluate) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        with app.sessions() as session:
            withdrawn_from_a = session.scalar(
                select(func.count(Assignment.id))
                .join(Radiologist, Radiologist.id == Assignment.radiologist_id)
                .where(Radiologist.npi == NPI_A, Assignment.superseded_at.is_not(None))
            )
            current_b = session.scalar(
                select(func.count(Assignment.id))
                .join(Radiologist, Radiologist.id == Assignment.radiologist_id)
                .where(Radiologist.npi == NPI_B, Assignment.superseded_at.is_(None))
            )
        assert withdrawn_from_a == len(results) and current_b == 8  # each withdrawal done exactly once


def test_nodes_list_shows_each_node_alive_or_stopped(tmp_path: Path) -> None:
    import json

    from click.testing import CliRunner

    from router.cli import cli

    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'var' / 'router.db'}")
    with RouterApp.open(settings, upgrade=True) as app:
        ClusterService(app.sessions, "router-a", lease_seconds=30).register()
        stopped = ClusterService(app.sessions, "router-b", lease_seconds=30)
        stopped.register()
        stopped.stop()
    result = CliRunner().invoke(cli, ["--data-dir", str(tmp_path / "var"), "nodes", "list", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(row["node_id"], row["alive"], row["stopped_at"] is not None) for row in rows] == [
        ("router-a", True, False),
        ("router-b", False, True),
    ]


def test_a_study_row_held_by_a_node_does_not_block_rows_that_reference_it(pg_settings: Settings) -> None:
    """A node holding a study row (routing, late instances) never blocks another node's insert of
    a row that references the study (a ledger record, a series, an outbox job): the foreign key
    check takes FOR KEY SHARE, which FOR NO KEY UPDATE lets through and FOR UPDATE did not, and
    that wait closed a deadlock cycle (seen in the scale-out test)."""
    from router.db.models import Series
    from router.db.queries import for_update

    with RouterApp.open(pg_settings, upgrade=True) as app:
        add_study(app, "1.2.3.77")
        with app.sessions() as holder, app.sessions() as other, holder.begin():
            study = holder.scalars(
                for_update(select(Study).where(Study.study_instance_uid == "1.2.3.77"), holder)
            ).one()
            with other.begin():
                other.execute(text("SET LOCAL lock_timeout = '2s'"))
                other.add(Series(study_id=study.id, series_instance_uid="1.2.3.77.1", modality="CT"))
                other.flush()  # would wait for the holder (and time out) under FOR UPDATE
            # another writer of the study row itself still waits for the holder
            with other.begin():
                other.execute(text("SET LOCAL lock_timeout = '200ms'"))
                with pytest.raises(OperationalError, match="lock timeout"):
                    other.execute(update(Study).where(Study.id == study.id).values(needs_review=True))


def test_a_deadlock_or_serialization_failure_while_recording_a_send_is_retried() -> None:
    import psycopg.errors
    from sqlalchemy.exc import OperationalError as SqlOperationalError

    from router.services.forwarding import _worth_recording_again

    for error in (psycopg.errors.DeadlockDetected(), psycopg.errors.SerializationFailure()):
        assert _worth_recording_again(SqlOperationalError("INSERT ...", {}, error))
    assert not _worth_recording_again(SqlOperationalError("INSERT ...", {}, psycopg.errors.UniqueViolation()))
    assert not _worth_recording_again(ValueError("not a database error"))


def _heartbeat_of(app: RouterApp, node_id: str, pid: int, hostname: str) -> None:
    """A node row whose heartbeat is current, as a process that was killed leaves it."""
    with app.sessions.begin() as session:
        session.execute(update(Node).where(Node.node_id == node_id).values(pid=pid, hostname=hostname))


@pytest.mark.parametrize(
    ("previous", "same_host", "warned"),
    [
        ("ended", True, False),
        ("zombie", True, False),
        ("running", True, True),
        ("ended", False, True),
        ("this process", True, False),
    ],
)
def test_a_restart_after_a_kill_is_not_taken_for_the_same_node_id_configured_twice(
    app: RouterApp, clock: FakeClock, caplog: pytest.LogCaptureFixture, previous: str, same_host: bool, warned: bool
) -> None:
    """Regression: after ``kill -9`` the restarted router warned that its node id "already has a
    live heartbeat" from the dead pid. A pid of this host that no longer runs (or is this very
    process: a container's first process restarts under the same pid) is the node's own
    predecessor: INFO, not WARNING; so is a zombie (a killed router not reaped yet by its parent
    when its successor starts, found by a trial). A running pid, or one on another host, still
    warns."""
    import socket
    import subprocess
    import sys

    import psutil

    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    zombie = os.posix_spawn(sys.executable, [sys.executable, "-c", "pass"], os.environ)  # never waited for yet
    deadline = time.monotonic() + 10
    while psutil.Process(zombie).status() != psutil.STATUS_ZOMBIE and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        pid = {"ended": ended.pid, "zombie": zombie, "running": sleeper.pid, "this process": os.getpid()}[previous]
        ClusterService(app.sessions, "router-a", lease_seconds=30, clock=clock).register()
        hostname = socket.gethostname()[:255] if same_host else "another-host"
        _heartbeat_of(app, "router-a", pid, hostname)
        clock.advance(5)  # within the 30 s lease
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="router"):
            ClusterService(app.sessions, "router-a", lease_seconds=30, clock=clock).register()
    finally:
        sleeper.kill()
        sleeper.wait()
        os.waitpid(zombie, 0)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    expected = f"node id router-a already has a live heartbeat (pid {pid} on {hostname}): is the same [node] id configured twice?"
    assert warnings == ([expected] if warned else [])
    taken_over = f"node id router-a: its previous process (pid {pid}) ended without a clean stop; taking over"
    assert (taken_over in infos) is (not warned)
    with app.sessions() as session:
        assert session.execute(select(Node.pid, Node.hostname)).one() == (os.getpid(), socket.gethostname()[:255])


def test_a_second_process_with_the_same_node_id_is_reported_by_the_first_while_both_run(
    app: RouterApp, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by trials: with one [node] id in two routers, only the second one's start warned;
    when it stopped cleanly the row said "stopped" (then, with the first fix, named the stopped
    pid) while the first still ran, and the second's next start logged "taking over" instead of
    warning. The first now reports the other process at its heartbeat (once per process) and
    writes the row back to itself: running, its pid, host and start."""
    import socket

    first = ClusterService(app.sessions, "router-a", lease_seconds=30, clock=clock)
    first.register()
    started = clock()
    clock.advance(5)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="router"):
        first.heartbeat()
        assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
        # the second router registers under the same id (another pid and host), then stops cleanly
        _heartbeat_of(app, "router-a", 424242, "other-host")
        with app.sessions.begin() as session:
            session.execute(update(Node).values(stopped_at=clock(), started_at=clock()))
        assert [(node.node_id, node.alive) for node in first.nodes()] == [("router-a", False)]
        clock.advance(5)
        first.heartbeat()
        _heartbeat_of(app, "router-a", 424242, "other-host")  # it is still running, say
        first.heartbeat()  # reported once per process, not at every heartbeat
    host = socket.gethostname()[:255]
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"node id router-a is also used by pid 424242 on other-host (this process: pid {os.getpid()} on {host}): "
        "is the same [node] id configured twice?"
    ]
    assert [(node.node_id, node.alive) for node in first.nodes()] == [("router-a", True)]
    with app.sessions() as session:
        row = session.execute(select(Node.pid, Node.hostname, Node.started_at, Node.stopped_at)).one()
    assert row == (os.getpid(), host, started, None)
