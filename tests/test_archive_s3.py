"""The S3 archive backend against a real S3-compatible server on 127.0.0.1 (moto's standalone
server): a study received over real C-STORE is stored as objects, byte for byte, indexed, and
forwarded to a real receiving SCP from the S3 copy; the same instance again is a no-op, a
differing copy is quarantined; S3 down answers 0xA700 and the sender's retry succeeds."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from router.config import Settings
from router.db.models import Instance, InstanceConflict
from router.keyring import env_name
from router.server import RouterServer
from router.services.recovery import RecoveryService
from tests.conftest import make_settings, running_router
from tests.dicom_helpers import make_dataset, send_paths, write_part10
from tests.s3_helpers import ACCESS_KEY, SECRET_KEY, RecordingScp, S3Server, dataset_bytes, wait_for

pytestmark = pytest.mark.network

NPI = "1234567893"
PREFIX = "site-a/"


@pytest.fixture
def s3() -> Iterator[S3Server]:
    server = S3Server()
    server.start()
    server.client().create_bucket(Bucket=server.bucket)
    try:
        yield server
    finally:
        server.stop()


def s3_settings(tmp_path: Path, database_url: str, s3: S3Server) -> Settings:
    settings = make_settings(tmp_path, database_url).replace(
        "archive",
        backend="s3",
        endpoint_url=s3.endpoint,
        bucket=s3.bucket,
        prefix=PREFIX,
        region="us-east-1",
        access_key_id=ACCESS_KEY,
        secret_access_key=SECRET_KEY,
        connect_timeout=1.0,
        read_timeout=5.0,
    )
    return settings.replace("forwarding", enabled=True, initial_backoff=0.2, max_backoff=0.4, max_attempts=3)


def _add_reader(server: RouterServer, destination: str) -> None:
    roster = server.app.roster
    roster.facilities.add("CT_NORTH", "TX", "tester")
    roster.radiologists.add(NPI, "Doe^Jane", "tester")
    roster.licenses.add(NPI, "TX", "T1", dt.date(2099, 1, 1), "tester", issued=dt.date(2020, 1, 1))
    roster.radiologists.set(NPI, "tester", destination=destination)


def test_study_is_stored_in_s3_and_forwarded_from_the_s3_copy(tmp_path: Path, database_url: str, s3: S3Server) -> None:
    reader = RecordingScp()
    try:
        with running_router(s3_settings(tmp_path, database_url, s3)) as server:
            _add_reader(server, reader.destination)
            study_uid = "1.2.826.0.1.3680043.9.7433.88.1"
            datasets = [make_dataset(StudyInstanceUID=study_uid) for _ in range(3)]
            paths = [write_part10(ds, tmp_path / "src" / f"{i}.dcm") for i, ds in enumerate(datasets)]
            assert send_paths(server.ports[0], paths, calling_ae="CT_NORTH") == [0x0000] * 3

            sent = {str(ds.SOPInstanceUID): dataset_bytes(path) for ds, path in zip(datasets, paths, strict=True)}
            objects = s3.objects()
            expected_keys = {f"{PREFIX}{study_uid}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm" for ds in datasets}
            assert set(objects) == expected_keys
            for ds in datasets:
                key = f"{PREFIX}{study_uid}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
                stored = objects[key]
                assert stored.endswith(sent[str(ds.SOPInstanceUID)])  # data set as received
                assert stored[128:132] == b"DICM"
            # nothing kept on the node's local disk outside its incoming folder (forwarding may
            # already hold a temporary local copy there: the study is stable after 0.3 s; the
            # folder is checked empty once forwarding is done, below)
            incoming = Path(server.app.archive.incoming)
            local = [p for p in Path(server.app.archive.root).rglob("*") if p.is_file() and incoming not in p.parents]
            assert local == []
            with server.app.sessions() as session:
                rows = session.execute(select(Instance.relative_path, Instance.dataset_sha256)).all()
            assert {path for path, _ in rows} == {key.removeprefix(PREFIX) for key in expected_keys}
            assert {sha for _, sha in rows} == {hashlib.sha256(data).hexdigest() for data in sent.values()}

            # forwarded to the reader from the S3 copy, byte for byte
            wait_for(lambda: len(reader.received) == 3)
            assert reader.received == sent
            wait_for(lambda: not list(server.app.archive.incoming.iterdir()))  # local copies removed
    finally:
        reader.stop()


def test_same_instance_again_is_a_no_op_and_a_differing_copy_is_quarantined_in_s3(
    tmp_path: Path, sqlite_url: str, s3: S3Server
) -> None:
    with running_router(s3_settings(tmp_path, sqlite_url, s3).replace("forwarding", enabled=False)) as server:
        ds = make_dataset()
        first = write_part10(ds, tmp_path / "first.dcm")
        assert send_paths(server.ports[0], [first]) == [0x0000]
        assert send_paths(server.ports[0], [first]) == [0x0000]
        assert len(s3.objects()) == 1
        ds.StudyDescription = "CT chest without contrast"
        second = write_part10(ds, tmp_path / "second.dcm")
        assert send_paths(server.ports[0], [second]) == [0x0000]
        objects = s3.objects()
        key = f"{PREFIX}{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert objects[key].endswith(dataset_bytes(first))  # the first copy stands
        sha = hashlib.sha256(dataset_bytes(second)).hexdigest()
        quarantine_key = f"{PREFIX}.quarantine/{ds.SOPInstanceUID}/{sha}.dcm"
        assert set(objects) == {key, quarantine_key}
        assert objects[quarantine_key].endswith(dataset_bytes(second))
        with server.app.sessions() as session:
            conflict = session.scalars(select(InstanceConflict)).one()
        assert conflict.relative_path == f".quarantine/{ds.SOPInstanceUID}/{sha}.dcm"


def test_s3_down_answers_a700_and_the_senders_retry_succeeds(tmp_path: Path, sqlite_url: str, s3: S3Server) -> None:
    with running_router(s3_settings(tmp_path, sqlite_url, s3).replace("forwarding", enabled=False)) as server:
        ds = make_dataset()
        path = write_part10(ds, tmp_path / "one.dcm")
        s3.stop()
        assert send_paths(server.ports[0], [path]) == [0xA700]
        with server.app.sessions() as session:
            assert session.scalars(select(Instance)).all() == []  # nothing indexed
        assert list(server.app.archive.incoming.iterdir()) == []  # nothing left behind
        s3.start()  # back
        assert send_paths(server.ports[0], [path]) == [0x0000]
        (stored,) = s3.objects().values()
        assert stored.endswith(dataset_bytes(path))


def test_missing_bucket_answers_a700(tmp_path: Path, sqlite_url: str, s3: S3Server) -> None:
    settings = s3_settings(tmp_path, sqlite_url, s3).replace("archive", bucket="no-such-bucket")
    with running_router(settings.replace("forwarding", enabled=False)) as server:
        path = write_part10(make_dataset(), tmp_path / "one.dcm")
        assert send_paths(server.ports[0], [path]) == [0xA700]


def test_recovery_on_s3_reports_rows_without_objects_and_lists_no_bucket(
    tmp_path: Path, sqlite_url: str, s3: S3Server
) -> None:
    settings = s3_settings(tmp_path, sqlite_url, s3).replace("forwarding", enabled=False)
    with running_router(settings) as server:
        ds = make_dataset()
        assert send_paths(server.ports[0], [write_part10(ds, tmp_path / "one.dcm")]) == [0x0000]
        run_id = server.recovery.start_run()  # a run that never stops cleanly: a crash
        # an object without a row (a PUT whose transaction failed): left alone, never listed
        s3.client().put_object(Bucket=s3.bucket, Key=f"{PREFIX}1.2.3/4.5.6/7.8.9.dcm", Body=b"debris")
        key = f"{PREFIX}{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        s3.client().delete_object(Bucket=s3.bucket, Key=key)
        recovery = RecoveryService(
            server.app.sessions,
            server.app.archive,
            server.app.intake,
            lambda path: pytest.fail(),
            server.app.clock,
            node_id=server.node_id,  # recovery is per node
        )
        report = recovery.reconcile()
        assert report.clean_previous_shutdown is False
        assert report.files_checked == 0
        assert report.missing_files == [str(ds.SOPInstanceUID)]
        s3.stop()  # object storage down at start-up: the node still starts (intake answers 0xA700)
        assert recovery.reconcile().missing_files == []
        recovery.finish_run(run_id)


def test_encrypted_objects_in_s3_are_forwarded_as_the_original_bytes(
    tmp_path: Path, sqlite_url: str, s3: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env_name("k1"), base64.b64encode(os.urandom(32)).decode())
    settings = s3_settings(tmp_path, sqlite_url, s3).replace("encryption", enabled=True, keys=("k1",), active_key="k1")
    reader = RecordingScp()
    try:
        with running_router(settings) as server:
            _add_reader(server, reader.destination)
            ds = make_dataset(PatientName="Quixotebottom^Marguerite")
            path = write_part10(ds, tmp_path / "one.dcm")
            assert send_paths(server.ports[0], [path], calling_ae="CT_NORTH") == [0x0000]
            (stored,) = s3.objects().values()
            assert stored.startswith(b"RTRENC") and b"Quixotebottom" not in stored
            wait_for(lambda: len(reader.received) == 1)
            assert reader.received == {str(ds.SOPInstanceUID): dataset_bytes(path)}
    finally:
        reader.stop()


def test_bytes_changed_on_the_way_to_s3_answer_a700(tmp_path: Path, sqlite_url: str, s3: S3Server) -> None:
    """The stored object's MD5 (its ETag) must match the file's: moto, like some S3-compatible
    servers, does not check Content-MD5 itself. The body is altered after signing, in botocore's
    own send hook."""
    with running_router(s3_settings(tmp_path, sqlite_url, s3).replace("forwarding", enabled=False)) as server:
        archive = server.app.archive

        def corrupt(request, **_kwargs):  # type: ignore[no-untyped-def]
            if request.method == "PUT" and request.body is not None:
                data = request.body.read() if hasattr(request.body, "read") else bytes(request.body)
                request.body = bytes([data[0] ^ 0xFF]) + data[1:]

        archive._client.meta.events.register("before-send.s3.PutObject", corrupt)
        path = write_part10(make_dataset(), tmp_path / "one.dcm")
        assert send_paths(server.ports[0], [path]) == [0xA700]
        with server.app.sessions() as session:
            assert session.scalars(select(Instance)).all() == []
        archive._client.meta.events.unregister("before-send.s3.PutObject", corrupt)
        assert send_paths(server.ports[0], [path]) == [0x0000]  # the sender's retry
        (stored,) = s3.objects().values()
        assert stored.endswith(dataset_bytes(path))


def test_intake_commits_stay_fsynced_with_the_s3_archive(tmp_path: Path, sqlite_url: str, s3: S3Server) -> None:
    """Recovery does not list the bucket, so it could not index an object whose row a power
    loss took back: with S3 the intake's index commits keep SQLite's synchronous=FULL, whatever
    ``database.sqlite_intake_synchronous`` says (tests/test_intake_commit_sync.py)."""
    settings = s3_settings(tmp_path, sqlite_url, s3)
    assert settings.database.sqlite_intake_synchronous == "normal"
    with running_router(settings) as server:
        (status,) = send_paths(server.ports[0], [write_part10(make_dataset(), tmp_path / "one.dcm")])
        assert status == 0x0000
        connection = server.app.intake.commits._connection
        assert connection is not None
        assert connection.connection.dbapi_connection.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
