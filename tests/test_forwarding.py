"""Forwarding to the reader's workstation over real C-STORE: the study arrives, its transmission
is billed to infrastructure, a destination change follows open studies, and a study whose
retries ran out can be queued again."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from pynetdicom import AE, AllStoragePresentationContexts, evt
from sqlalchemy import create_engine, func, select, text

from router.cli import cli
from router.db.models import ForwardedInstance, InfrastructureEntry, Instance, OutboxJob
from router.domain.enums import InfrastructureKind, OutboxStatus
from router.server import RouterServer
from router.services.forwarding_queue import Requeued, requeue_study
from router.services.studies import StudyViews
from tests.conftest import make_settings, running_router
from tests.dicom_helpers import make_dataset, send_paths, write_part10

pytestmark = pytest.mark.network

NPI = "1234567893"


class Workstation:
    """A reader's C-STORE SCP (pynetdicom) that records the SOP Instance UIDs it receives."""

    def __init__(self, ae_title: str, port: int = 0) -> None:
        self.received: list[str] = []
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self.server.server_address[1])
        self.ae_title = ae_title

    def _store(self, event: evt.Event) -> int:
        with self._lock:
            self.received.append(str(event.request.AffectedSOPInstanceUID))
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


@pytest.fixture
def forwarding_server(tmp_path: Path, sqlite_url: str) -> Iterator[RouterServer]:
    settings = make_settings(tmp_path, sqlite_url).replace(
        "forwarding", enabled=True, initial_backoff=0.2, max_backoff=0.4, max_attempts=2
    )
    with running_router(settings) as server:
        yield server


@pytest.fixture
def whole_study_forwarding_server(tmp_path: Path, sqlite_url: str) -> Iterator[RouterServer]:
    """As ``forwarding_server``, with a study stable only after 2 s without a new instance: a
    test that counts the transmissions of one round needs all its instances in that round (with
    0.3 s, a loaded CI machine once forwarded 2 of 3 instances, then the third)."""
    settings = make_settings(tmp_path, sqlite_url, stable_seconds=2.0).replace(
        "forwarding", enabled=True, initial_backoff=0.2, max_backoff=0.4, max_attempts=2
    )
    with running_router(settings) as server:
        yield server


def _wait(predicate, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def _reader_licensed_in_tx(server: RouterServer) -> None:
    """Facility CT_NORTH in Texas and reader NPI licensed there (no destination yet)."""
    roster = server.app.roster
    roster.facilities.add("CT_NORTH", "TX", "tester")
    roster.radiologists.add(NPI, "Doe^Jane", "tester")
    roster.licenses.add(NPI, "TX", "T1", dt.date(2099, 1, 1), "tester", issued=dt.date(2020, 1, 1))


def _jobs(server: RouterServer) -> list[tuple[str, OutboxStatus]]:
    with server.app.sessions() as session:
        return [(job.destination, job.status) for job in session.scalars(select(OutboxJob).order_by(OutboxJob.id))]


def test_study_is_forwarded_follows_a_destination_change_and_can_be_queued_again(
    forwarding_server: RouterServer, tmp_path: Path
) -> None:
    server = forwarding_server
    first, second = Workstation("READER_A"), Workstation("READER_B")
    try:
        roster = server.app.roster
        _reader_licensed_in_tx(server)
        roster.radiologists.set(NPI, "tester", destination=f"READER_A@127.0.0.1:{first.port}")
        study_uid = "1.2.826.0.1.3680043.9.7433.77.1"
        datasets = [make_dataset(StudyInstanceUID=study_uid) for _ in range(3)]
        paths = [write_part10(ds, tmp_path / "src" / f"{i}.dcm") for i, ds in enumerate(datasets)]
        assert send_paths(server.ports[0], paths, calling_ae="CT_NORTH") == [0x0000] * 3
        sops = sorted(str(ds.SOPInstanceUID) for ds in datasets)
        _wait(lambda: sorted(first.received) == sops)
        _wait(lambda: _jobs(server) == [(f"READER_A@127.0.0.1:{first.port}", OutboxStatus.SENT)])
        with server.app.sessions() as session:
            kinds = [
                (row.kind, row.destination, row.client_ae_title, row.quantity, row.rate_microcents)
                for row in session.scalars(select(InfrastructureEntry).order_by(InfrastructureEntry.id))
            ]
            sent_bytes = session.scalar(select(func.sum(Instance.size_bytes)))
        # the bytes sent, per GiB at [billing] transmission_cents_per_gib (5), charged to the sender
        assert kinds == [
            (InfrastructureKind.TRANSMISSION, f"READER_A@127.0.0.1:{first.port}", "CT_NORTH", sent_bytes, 5_000_000)
        ]

        # the reader moves to another workstation: the open study follows, all of it
        change = roster.radiologists.set(NPI, "tester", destination=f"READER_B@127.0.0.1:{second.port}")
        assert change.forwarding_requeued == 1
        _wait(lambda: sorted(second.received) == sops)

        # a workstation that is down: the retries run out (the job is failed, the study stays
        # assigned); back at the same address, `studies forward` queues the study again
        second.stop()
        dead = Workstation("READER_C")
        port = dead.port
        dead.stop()
        roster.radiologists.set(NPI, "tester", destination=f"READER_C@127.0.0.1:{port}")
        _wait(lambda: _jobs(server)[-1] == (f"READER_C@127.0.0.1:{port}", OutboxStatus.FAILED))
        back = Workstation("READER_C", port)
        time.sleep(1.0)
        assert back.received == []  # nothing re-sends a failed job by itself
        with server.app.sessions.begin() as session:
            assert requeue_study(session, study_uid, server.app.clock()) == Requeued(
                f"READER_C@127.0.0.1:{port}", to_send=3, instances=3
            )
        _wait(lambda: sorted(back.received) == sops)
        _wait(lambda: _jobs(server)[-1] == (f"READER_C@127.0.0.1:{port}", OutboxStatus.SENT))
        back.stop()
    finally:
        first.stop()


def test_a_database_error_while_forwarding_is_one_warning_and_the_job_goes_out_on_a_later_pass(
    forwarding_server: RouterServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the three-node test beside two CPU hogs: the server ended a node's PostgreSQL
    connection while its forwarding worker claimed a job, and the worker logged an ERROR with a
    traceback ("stopped on an unexpected error"). A database failure is an operating condition:
    one WARNING line without SQL or traceback, and the job goes out once the database answers.
    Here a trigger makes every update of the outbox fail (an integer overflow in SQLite)."""
    caplog.set_level(logging.INFO)
    server = forwarding_server
    reader = Workstation("READER_A")
    engine = create_engine(server.app.settings.database_url)
    try:
        roster = server.app.roster
        _reader_licensed_in_tx(server)
        destination = f"READER_A@127.0.0.1:{reader.port}"
        roster.radiologists.set(NPI, "tester", destination=destination)
        with engine.begin() as connection:
            connection.execute(
                text("CREATE TRIGGER poison BEFORE UPDATE ON outbox BEGIN SELECT abs(-9223372036854775808); END")
            )
        dataset = make_dataset()
        assert send_paths(server.ports[0], [write_part10(dataset, tmp_path / "in.dcm")], calling_ae="CT_NORTH") == [0]
        paused = f"forwarding to {destination} paused: index database error OperationalError: integer overflow; retried on the next pass"
        _wait(lambda: paused in [r.getMessage() for r in caplog.records])
        assert reader.received == []
        with engine.begin() as connection:
            connection.execute(text("DROP TRIGGER poison"))
        _wait(lambda: reader.received == [str(dataset.SOPInstanceUID)])
        _wait(lambda: _jobs(server) == [(destination, OutboxStatus.SENT)])
    finally:
        reader.stop()
        engine.dispose()
    records = [r for r in caplog.records if r.name == "router.services.forwarding" and r.levelno >= logging.WARNING]
    assert {r.getMessage() for r in records} == {paused}
    assert all(r.levelno == logging.WARNING and r.exc_info is None for r in records)


def test_studies_forward_all_sends_a_study_again_to_a_workstation_that_lost_it(
    whole_study_forwarding_server: RouterServer, tmp_path: Path
) -> None:
    server = whole_study_forwarding_server
    workstation = Workstation("READER_A")
    port = workstation.port
    destination = f"READER_A@127.0.0.1:{port}"
    try:
        roster = server.app.roster
        _reader_licensed_in_tx(server)
        roster.radiologists.set(NPI, "tester", destination=destination)
        study_uid = "1.2.826.0.1.3680043.9.7433.77.2"
        datasets = [make_dataset(StudyInstanceUID=study_uid) for _ in range(3)]
        paths = [write_part10(ds, tmp_path / "src" / f"{i}.dcm") for i, ds in enumerate(datasets)]
        assert send_paths(server.ports[0], paths, calling_ae="CT_NORTH") == [0x0000] * 3
        sops = sorted(str(ds.SOPInstanceUID) for ds in datasets)
        _wait(lambda: _jobs(server) == [(destination, OutboxStatus.SENT)])
        assert sorted(workstation.received) == sops

        # the workstation loses the study (a new disk, a purge): it is still assigned
        workstation.stop()
        workstation = Workstation("READER_A", port)
        config = tmp_path / "cli.toml"
        config.write_text(
            f'[paths]\ndata_dir = "{server.app.settings.paths.data_dir}"\n'
            f'[database]\nurl = "{server.app.settings.database_url}"\n'
        )
        result = CliRunner().invoke(cli, ["--config", str(config), "studies", "forward", study_uid])
        assert (result.exit_code, result.stdout) == (
            0,
            f"study {study_uid}: nothing to send: {destination} has accepted all 3 instance(s); "
            f"`router studies forward {study_uid} --all` sends them again\n",
        )
        time.sleep(1.0)
        assert workstation.received == []

        # a UID pasted with the spaces around it is the same UID
        result = CliRunner().invoke(cli, ["--config", str(config), "studies", "forward", f"  {study_uid} ", "--all"])
        assert (result.exit_code, result.stdout) == (
            0,
            f"study {study_uid}: 3 of 3 instance(s) queued for {destination}\n",
        )
        _wait(lambda: sorted(workstation.received) == sops)
        _wait(lambda: _jobs(server) == [(destination, OutboxStatus.SENT)])
        with server.app.sessions() as session:
            rounds = sorted(
                session.execute(
                    select(ForwardedInstance.send_round, func.count()).group_by(ForwardedInstance.send_round)
                ).all()
            )
            job = session.scalars(select(OutboxJob)).one()
            transmissions = list(
                session.scalars(
                    select(InfrastructureEntry.quantity).where(
                        InfrastructureEntry.kind == InfrastructureKind.TRANSMISSION
                    )
                )
            )
            study_bytes = session.scalar(select(func.sum(Instance.size_bytes)))
        # both rounds are on record, and the resend is billed as transmission again
        assert [tuple(row) for row in rounds] == [(0, 3), (1, 3)]
        assert (job.send_round, job.sent_instance_count) == (1, 3)
        shown = CliRunner().invoke(cli, ["--config", str(config), "studies", "show", study_uid])
        assert shown.exit_code == 0
        table = shown.stdout[shown.stdout.index("Forwarding to the reader's destination") :]
        row = next(line for line in table.splitlines() if destination in line)
        assert row.split() == [destination, "sent", "1", "3", "0", "-"]  # round 1, 3 accepted in it
        (forwarding,) = StudyViews(server.app.sessions, server.app.routing).show(study_uid)["forwarding"]
        assert forwarding == {
            "destination": destination,
            "status": "sent",
            "attempts": 0,
            "send_round": 1,
            "sent_instance_count": 3,
            "last_error": None,
        }
        assert transmissions == [study_bytes, study_bytes]

        # the admin is told what a destination change did to the reader's open studies
        for options, said in (
            (["--destination", "READER_B@127.0.0.1:11104"], "re-queued for the new destination"),
            (["--no-destination"], "stopped"),
        ):
            result = CliRunner().invoke(cli, ["--config", str(config), "radiologists", "set", NPI, *options])
            assert (result.exit_code, result.stdout.splitlines()[0]) == (
                0,
                f"updated radiologist {NPI}; forwarding of 1 open stud(ies) {said}",
            )
    finally:
        workstation.stop()
