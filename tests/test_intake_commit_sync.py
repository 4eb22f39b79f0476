"""Index commits of received instances without a WAL fsync, and what makes that safe (lever 46).

With ``database.sqlite_intake_synchronous = "normal"`` (the default) the receiving processes'
index transactions run on a connection with SQLite's ``PRAGMA synchronous=NORMAL``: committed
before Success, but not fsynced. The received file and its folder still are, and the file names
its sender (Sending Application Entity Title, 0002,0017, PS3.10 section 7.1), so when a power
loss takes back the last commits, start-up recovery indexes those files as sent by that AE title
and their study is routed as if nothing had happened. These tests check each part: the PRAGMA
on the intake's connection only, the File Meta Information of files received by both decoders
and by DCMTK, and recovery after the rows of acknowledged instances are gone.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydicom import dcmread
from sqlalchemy import delete, select, update

from router.app import RouterApp
from router.config import ConfigError, Settings, load_settings
from router.db.models import Instance, NodeRun, Series, Study, StudySender
from router.dicom import store_codec
from router.dicom.extract import read_header
from router.dicom.status import StoreStatus
from router.domain.enums import StudyStatus
from router.services.recovery import RECOVERY_AE_TITLE
from tests.conftest import DCMTK_STORESCU, make_settings, running_router
from tests.dicom_bytes import (
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    RawAssociation,
    c_store_command,
    data_set_beginning_with_file_meta_elements,
    identifiers,
    p_data,
)
from tests.dicom_helpers import make_dataset, send_datasets, write_part10
from tests.roster_fixtures import NPI_A, NPI_B, OS_USER, roster_with_readers, study_state

#: The intake PRAGMA is SQLite's: these tests run on SQLite only.
SQLITE = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

#: PRAGMA synchronous values (https://www.sqlite.org/pragma.html#pragma_synchronous).
NORMAL, FULL = 1, 2


def _synchronous(connection: Any) -> int:
    """PRAGMA synchronous of a SQLAlchemy connection, read on its DBAPI connection."""
    return int(connection.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0])


def _stored_files(app: RouterApp) -> dict[str, Path]:
    with app.sessions() as session:
        rows = session.execute(select(Instance.sop_instance_uid, Instance.relative_path)).all()
    return {uid: app.archive.root / path for uid, path in rows}


@SQLITE
@pytest.mark.parametrize(("level", "expected"), [("normal", NORMAL), ("full", FULL)])
def test_only_the_intake_connection_takes_the_configured_synchronous(
    tmp_path: Path, database_url: str, level: str, expected: int
) -> None:
    settings = make_settings(tmp_path, database_url).replace("database", sqlite_intake_synchronous=level)
    with running_router(settings) as server:
        (status,) = send_datasets(server.ports[0], [make_dataset()])
        assert status.Status == StoreStatus.SUCCESS
        commits = server.app.intake.commits
        assert commits._connection is not None
        assert _synchronous(commits._connection) == expected
        with server.app.engine.connect() as other:  # routing, HL7, ledgers, the CLI
            assert _synchronous(other) == FULL
        # let go of (as after a failed transaction): discarded, not pooled with its setting
        commits.close()
        for _ in range(3):
            with server.app.engine.connect() as pooled:
                assert _synchronous(pooled) == FULL
        (status,) = send_datasets(server.ports[0], [make_dataset()])
        assert status.Status == StoreStatus.SUCCESS
        assert _synchronous(commits._connection) == expected


def test_an_unknown_synchronous_level_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text('[database]\nsqlite_intake_synchronous = "off"\n')
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    assert str(raised.value) == ("database.sqlite_intake_synchronous: 'off' must be one of 'normal', 'full'")


def test_the_cli_answers_an_unknown_level_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "var"}"\n[database]\nsqlite_intake_synchronous = "OFF"\n')
    result = subprocess.run(
        [sys.executable, "-m", "router", "--config", str(config), "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "database.sqlite_intake_synchronous" in lines[0] and "'OFF'" in lines[0]


@SQLITE
def test_files_received_by_either_decoder_name_their_sender(tmp_path: Path, database_url: str) -> None:
    with running_router(make_settings(tmp_path, database_url)) as server:
        port = server.ports[0]
        fast = make_dataset()
        (status,) = send_datasets(port, [fast], calling_ae="MOD_FAST")
        assert status.Status == StoreStatus.SUCCESS
        # A command set in two fragments goes through pynetdicom's own decoder.
        study, series, sop = make_dataset().StudyInstanceUID, "1.2.826.0.1.3680043.10.9", "1.2.826.0.1.3680043.10.9.1"
        raw = RawAssociation(port)
        try:
            assert raw.associate(calling="MOD_SPLIT") == 0x02
            command = c_store_command(CT_IMAGE_STORAGE, sop)
            raw.send(p_data(command[:20], command=True, last=False))
            raw.send(p_data(command[20:], command=True, last=True))
            raw.send(p_data(identifiers(sop, study, series), command=False, last=True))
            kind, _ = raw.read_pdu()
            assert kind == 0x04  # the C-STORE-RSP
        finally:
            raw.close()
        files = _stored_files(server.app)
    fast_meta = dcmread(files[str(fast.SOPInstanceUID)]).file_meta
    split_meta = dcmread(files[sop]).file_meta
    assert fast_meta.SendingApplicationEntityTitle == "MOD_FAST"
    assert split_meta.SendingApplicationEntityTitle == "MOD_SPLIT"
    # the rest of the File Meta Information is what pynetdicom writes
    assert fast_meta.MediaStorageSOPInstanceUID == fast.SOPInstanceUID
    assert fast_meta.TransferSyntaxUID == "1.2.840.10008.1.2.1"
    assert (
        fast_meta.FileMetaInformationGroupLength
        == len(
            store_codec.encode_file_meta(CT_IMAGE_STORAGE, str(fast.SOPInstanceUID), "1.2.840.10008.1.2.1", "MOD_FAST")
        )
        - 144
    )


@SQLITE
@pytest.mark.skipif(shutil.which("dcmdump") is None or DCMTK_STORESCU is None, reason="DCMTK not installed")
def test_a_file_sent_by_dcmtk_storescu_names_it_and_dcmdump_reads_the_meta(tmp_path: Path, database_url: str) -> None:
    source = write_part10(make_dataset(), tmp_path / "in.dcm")
    with running_router(make_settings(tmp_path, database_url)) as server:
        subprocess.run(
            [DCMTK_STORESCU, "-aet", "CT_DCMTK7", "-aec", "ROUTER", "127.0.0.1", str(server.ports[0]), str(source)],
            check=True,
            capture_output=True,
            timeout=60,
        )
        (stored,) = _stored_files(server.app).values()
    dump = subprocess.run(["dcmdump", "-M", str(stored)], check=True, capture_output=True, text=True).stdout
    (line,) = [line for line in dump.splitlines() if line.startswith("(0002,0017)")]
    assert "AE [CT_DCMTK7]" in line and "SendingApplicationEntityTitle" in line


@pytest.mark.parametrize(
    ("title", "expected"),
    [
        ("CT_NORTH", "CT_NORTH"),
        ("  CT NORTH  ", "CT NORTH"),
        ("ABCDEFGHIJKLMNOP", "ABCDEFGHIJKLMNOP"),
        ("ABCDEFGHIJKLMNOPQ", None),  # 17 characters
        ("CT\\NORTH", None),  # backslash: the value separator
        ("CT\x07", None),
        ("CTÉ", None),
        ("   ", None),
        (None, None),
    ],
)
def test_only_a_valid_ae_value_is_written_as_the_sender(title: str | None, expected: str | None) -> None:
    assoc = SimpleNamespace(requestor=SimpleNamespace(ae_title=title))
    assert store_codec.sending_ae_title(assoc) == expected


def _routed(app: RouterApp, study_uid: str) -> dict[str, Any]:
    """The study's state once the routing timer has taken it out of "receiving" (at most 20 s)."""
    deadline = time.monotonic() + 20
    while study_state(app, study_uid)["status"] == StudyStatus.RECEIVING:
        assert time.monotonic() < deadline, "the recovered study was not routed"
        time.sleep(0.1)
    return study_state(app, study_uid)


def _forget_study(settings: Settings, study_uid: str) -> None:
    """What a power loss does to index commits that were never fsynced: they are gone; and the
    run that was serving never recorded its clean stop (done on the stopped router's database)."""
    app = RouterApp.open(settings)
    try:
        _forget(app, study_uid)
    finally:
        app.close()


def _forget(app: RouterApp, study_uid: str) -> None:
    with app.sessions.begin() as session:
        study_id = session.scalars(select(Study.id).where(Study.study_instance_uid == study_uid)).one()
        session.execute(delete(Instance).where(Instance.study_id == study_id))
        session.execute(delete(Series).where(Series.study_id == study_id))
        session.execute(delete(StudySender).where(StudySender.study_id == study_id))
        session.execute(delete(Study).where(Study.id == study_id))
        latest = session.scalars(select(NodeRun.id).order_by(NodeRun.id.desc()).limit(1)).one()
        session.execute(update(NodeRun).where(NodeRun.id == latest).values(stopped_at=None))


@SQLITE
def test_instances_whose_rows_a_power_loss_took_back_are_recovered_as_sent_and_routed(
    tmp_path: Path, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings: Settings = make_settings(tmp_path, database_url, stable_seconds=60.0)
    study = make_dataset().StudyInstanceUID
    datasets = [make_dataset(StudyInstanceUID=study) for _ in range(3)]
    with running_router(settings) as server:
        roster_with_readers(server.app, (NPI_A, "TX"))
        statuses = send_datasets(server.ports[0], datasets, calling_ae="CT_NORTH")
        assert [status.Status for status in statuses] == [StoreStatus.SUCCESS] * 3
        files = _stored_files(server.app)
        assert study_state(server.app, str(study))["status"] == StudyStatus.RECEIVING
    _forget_study(settings, str(study))
    assert all(path.exists() for path in files.values())
    # restart: recovery runs before the listener accepts; then the study is routed
    with (
        caplog.at_level(logging.INFO, logger="router.services.recovery"),
        running_router(settings.replace("routing", stable_seconds=0.3)) as server,
    ):
        logged = sorted(r.getMessage() for r in caplog.records if r.name == "router.services.recovery")
        report = server.recovery_report
        assert report is not None and not report.clean_previous_shutdown
        assert sorted(report.indexed) == sorted(
            str(path.relative_to(server.app.archive.root)) for path in files.values()
        )
        with server.app.sessions() as session:
            senders = session.execute(select(Instance.sop_instance_uid, Instance.calling_ae_title)).all()
        assert sorted(senders) == sorted((str(ds.SOPInstanceUID), "CT_NORTH") for ds in datasets)
        root = server.app.archive.root
        assert logged == sorted(
            [f"recovery indexed {path.relative_to(root)} as received from 'CT_NORTH'" for path in files.values()]
            + [
                "recovery after an unclean shutdown: 3 file(s) indexed, 0 quarantined, 0 indexed instance(s) without a file"
            ]
        )
        state = _routed(server.app, str(study))
    assert state["status"] == StudyStatus.ASSIGNED
    assert state["current_npi"] == NPI_A


@SQLITE
def test_a_file_that_names_no_sender_is_recovered_as_recovery(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url, stable_seconds=60.0)  # not routed before the loss
    with running_router(settings) as server:
        (status,) = send_datasets(server.ports[0], [make_dataset()], calling_ae="CT_NORTH")
        assert status.Status == StoreStatus.SUCCESS
        ((uid, path),) = _stored_files(server.app).items()
        with server.app.sessions() as session:
            study_uid = session.scalars(select(Study.study_instance_uid)).one()
    _forget_study(settings, study_uid)
    # the same file as an older router wrote it: pynetdicom's File Meta Information, no sender
    ds = dcmread(path)
    del ds.file_meta.SendingApplicationEntityTitle
    ds.save_as(path, enforce_file_format=True)
    with running_router(settings) as server, server.app.sessions() as session:
        (sender,) = session.scalars(select(Instance.calling_ae_title).where(Instance.sop_instance_uid == uid))
    assert sender == RECOVERY_AE_TITLE


@SQLITE
def test_recovery_indexes_in_arrival_order_so_the_study_keeps_its_first_sender(
    tmp_path: Path, database_url: str
) -> None:
    """The study row takes its facility (and so the exam state) from the first instance indexed.
    Found by a trial: recovery indexed in path order, and a Texas study whose later series came
    from an Oklahoma AE title was assigned to a reader licensed in Oklahoma only."""
    settings = make_settings(tmp_path, database_url, stable_seconds=60.0)
    study = make_dataset().StudyInstanceUID
    first = [make_dataset(StudyInstanceUID=study, SeriesInstanceUID="1.2.826.0.1.3680043.10.9.9") for _ in range(3)]
    later = [make_dataset(StudyInstanceUID=study, SeriesInstanceUID="1.2.826.0.1.3680043.10.9.1")]  # sorts first
    with running_router(settings) as server:
        roster_with_readers(server.app, (NPI_A, "TX"), (NPI_B, "OK"))
        server.app.roster.facilities.add("ER_TULSA", "OK", OS_USER)
        assert [status.Status for status in send_datasets(server.ports[0], first, calling_ae="CT_NORTH")] == [0] * 3
        assert [status.Status for status in send_datasets(server.ports[0], later, calling_ae="ER_TULSA")] == [0]
    _forget_study(settings, str(study))
    with running_router(settings.replace("routing", stable_seconds=0.3)) as server:
        report = server.recovery_report
        assert report is not None and len(report.indexed) == 4
        assert [path.split("/")[1] for path in report.indexed] == ["1.2.826.0.1.3680043.10.9.9"] * 3 + [
            "1.2.826.0.1.3680043.10.9.1"
        ]
        state = _routed(server.app, str(study))
        with server.app.sessions() as session:
            first_sender = session.scalars(
                select(Study.first_calling_ae_title).where(Study.study_instance_uid == str(study))
            ).one()
    assert first_sender == "CT_NORTH"
    assert (state["status"], state["current_npi"]) == (StudyStatus.ASSIGNED, NPI_A)


def test_a_group_0002_element_in_the_data_set_is_not_read_as_the_file_meta(tmp_path: Path) -> None:
    """The File Meta Information ends where its group length says (PS3.10 section 7.1). Found by
    a trial: a sender that began its data set with (0002,0017) "ER_TULSA" had recovery index its
    instance as ER_TULSA's; a (0002,0010) there could change how the data set is read."""
    sop, study, series = "1.2.826.0.1.3680043.10.7.1", "1.2.826.0.1.3680043.10.7.2", "1.2.826.0.1.3680043.10.7.3"
    data_set = data_set_beginning_with_file_meta_elements(sop, study, series)
    path = tmp_path / "spoofed.dcm"
    path.write_bytes(store_codec.encode_file_meta(CT_IMAGE_STORAGE, sop, EXPLICIT_LE, "OTHER_AE") + data_set)
    header = read_header(path)
    assert (header.sending_ae_title, header.transfer_syntax_uid) == ("OTHER_AE", EXPLICIT_LE)
    assert (header.sop_instance_uid, header.study_instance_uid, header.series_instance_uid) == (sop, study, series)


@SQLITE
def test_recovery_scans_from_the_unclean_run_s_start_when_the_clock_was_stepped_back(
    tmp_path: Path, database_url: str
) -> None:
    """Recovery looks at files modified since the last clean stop. A clock stepped back after it
    (NTP, a real-time clock behind after a reboot) wrote the next run's files before that
    moment; found by a trial, they were never indexed. The scan now starts at the earlier of the
    last clean stop and the unclean runs' starts."""
    settings = make_settings(tmp_path, database_url, stable_seconds=60.0)
    with running_router(settings):
        pass
    app = RouterApp.open(settings)
    try:  # the clean stop as if recorded 60 s later than the clock now reads
        with app.sessions.begin() as session:
            latest = session.scalars(select(NodeRun).order_by(NodeRun.id.desc()).limit(1)).one()
            assert latest.stopped_at is not None
            latest.stopped_at += dt.timedelta(seconds=60)
    finally:
        app.close()
    datasets = [make_dataset() for _ in range(2)]
    with running_router(settings) as server:
        assert [status.Status for status in send_datasets(server.ports[0], datasets, calling_ae="CT_NORTH")] == [0, 0]
    for ds in datasets:
        _forget_study(settings, str(ds.StudyInstanceUID))
    with running_router(settings) as server:
        report = server.recovery_report
        with server.app.sessions() as session:
            senders = sorted(session.execute(select(Instance.sop_instance_uid, Instance.calling_ae_title)).all())
    assert report is not None and len(report.indexed) == 2
    assert senders == sorted((str(ds.SOPInstanceUID), "CT_NORTH") for ds in datasets)
