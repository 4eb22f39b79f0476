"""Encryption at rest: envelope-encrypted archive files (AES-256-GCM, a data key per file), the
patient's location text encrypted in the database, wrong keys and tampering detected, files and
router.db not world-readable, and key rotation while the server runs."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import io
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from router.archive import Archive
from router.archive_crypto import CHUNK, DecryptingReader, EncryptedArchive, encrypt_stream, read_header
from router.cli import cli
from router.config import Settings
from router.db.models import Study
from router.domain.enums import StudyStatus
from router.errors import ArchiveError
from router.keyring import KeyRing, KeyRingError, env_name
from tests.conftest import make_settings, running_router
from tests.dicom_helpers import make_dataset, send_paths, write_part10
from tests.s3_helpers import RecordingScp, dataset_bytes, wait_for

NPI = "1234567893"
NAME = "Quixotebottom^Marguerite"
STREET = "7481 Zanzibar Larkspur Lane"
ADDRESS = f"{STREET}^^Springfield^IL^62704"


def _key() -> bytes:
    return os.urandom(32)


def _archive(tmp_path: Path, keyring: KeyRing) -> EncryptedArchive:
    archive = EncryptedArchive(Archive(tmp_path / "archive"), keyring)
    archive.prepare()
    return archive


def _store(archive: EncryptedArchive, data: bytes, relative: str = "1.2/3.4/5.6.dcm") -> str:
    temp = archive.write_temp(data)
    archive.place(temp, relative, replace=True)
    return relative


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 17])
def test_round_trip_at_chunk_boundaries(tmp_path: Path, size: int) -> None:
    archive = _archive(tmp_path, KeyRing({"k1": _key()}, "k1"))
    data = os.urandom(size)
    relative = _store(archive, data)
    raw = (archive.root / relative).read_bytes()
    assert size < 64 or data[:64] not in raw
    assert len(raw) == len(read_header(io.BytesIO(raw)).encode()) + size + 16 * max(1, -(-size // CHUNK))
    with archive.open_read(relative) as stream:
        assert stream.read() == data
    with archive.local_copy(relative) as path:
        assert path.read_bytes() == data
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not list(archive.incoming.iterdir())


def test_wrong_key_is_a_clear_error(tmp_path: Path) -> None:
    relative = _store(_archive(tmp_path, KeyRing({"k1": _key()}, "k1")), b"secret data" * 100)
    other = _archive(tmp_path, KeyRing({"k1": _key()}, "k1"))  # same id, different key
    with pytest.raises(ArchiveError, match="does not authenticate"):
        other.open_read(relative)
    with pytest.raises(ArchiveError, match="not in the key ring"):
        _archive(tmp_path, KeyRing({"k2": _key()}, "k2")).open_read(relative)


@pytest.mark.parametrize("damage", ["flip-chunk-byte", "flip-header-key", "drop-last-chunk", "append", "truncate"])
def test_tampered_file_is_detected_never_returned(tmp_path: Path, damage: str) -> None:
    archive = _archive(tmp_path, KeyRing({"k1": _key()}, "k1"))
    data = os.urandom(2 * CHUNK + 100)
    relative = _store(archive, data)
    path = archive.root / relative
    raw = bytearray(path.read_bytes())
    header_length = len(read_header(io.BytesIO(bytes(raw))).encode())
    if damage == "flip-chunk-byte":
        raw[header_length + CHUNK + 40] ^= 0x01
    elif damage == "flip-header-key":
        raw[header_length - 20] ^= 0x01  # inside the wrapped data key
    elif damage == "drop-last-chunk":
        del raw[header_length + 2 * (CHUNK + 16) :]
    elif damage == "append":
        raw += b"\x00" * 16
    else:
        del raw[-1]
    path.write_bytes(bytes(raw))
    with (
        pytest.raises((ArchiveError, KeyRingError), match=r"authenticate|truncated"),
        archive.open_read(relative) as stream,
    ):
        while stream.read(CHUNK):
            pass
    with pytest.raises(ArchiveError), archive.local_copy(relative):
        pass
    assert not list(archive.incoming.iterdir())  # no partial plaintext left behind


def test_database_values_are_encrypted_bound_to_their_column_and_key(tmp_path: Path) -> None:
    keyring = KeyRing({"k1": _key()}, "k1")
    stored = keyring.encrypt_value(ADDRESS, "patient_address")
    assert stored is not None and stored.startswith("enc1:k1:") and STREET not in stored
    assert keyring.decrypt_value(stored, "patient_address") == ADDRESS
    with pytest.raises(KeyRingError, match="does not authenticate"):
        keyring.decrypt_value(stored, "region_of_residence")  # moved to another column
    assert keyring.decrypt_value("plain text", "patient_address") == "plain text"


def _encrypted_settings(tmp_path: Path, database_url: str, keys: tuple[str, ...], active: str) -> Settings:
    # Routed by the patient's residence (off by default) so the encrypted location columns are read.
    settings = make_settings(tmp_path, database_url, use_patient_address=True).replace(
        "forwarding", enabled=True, initial_backoff=0.2, max_backoff=0.4, max_attempts=3
    )
    return settings.replace("encryption", enabled=True, keys=keys, active_key=active)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The most permissive umask, so file modes come from the router alone."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.network
def test_phi_is_nowhere_on_disk_and_the_reader_gets_the_original_bytes(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch, umask_zero: None
) -> None:
    monkeypatch.setenv(env_name("site-2026"), base64.b64encode(_key()).decode())
    settings = _encrypted_settings(tmp_path, database_url, ("site-2026",), "site-2026")
    reader = RecordingScp()
    try:
        with running_router(settings) as server:
            roster = server.app.roster
            roster.radiologists.add(NPI, "Doe^Jane", "tester")
            roster.licenses.add(NPI, "IL", "I1", dt.date(2099, 1, 1), "tester", issued=dt.date(2020, 1, 1))
            roster.radiologists.set(NPI, "tester", destination=reader.destination)
            datasets = [
                make_dataset(
                    PatientName=NAME, PatientAddress=ADDRESS, RegionOfResidence="Illinois", StudyInstanceUID="1.2.3.99"
                )
                for _ in range(2)
            ]
            paths = [write_part10(ds, tmp_path / "src" / f"{i}.dcm") for i, ds in enumerate(datasets)]
            assert send_paths(server.ports[0], paths) == [0x0000, 0x0000]
            wait_for(lambda: len(reader.received) == 2)
            # the exam state came from the (encrypted) patient address, decrypted for routing
            with server.app.sessions() as session:
                study = session.scalars(select(Study)).one()
                assert (study.status, study.exam_state) == (StudyStatus.ASSIGNED, "IL")
                assert study.patient_address is not None and study.patient_address.startswith("enc1:site-2026:")
            assert reader.received == {
                str(ds.SOPInstanceUID): dataset_bytes(p) for ds, p in zip(datasets, paths, strict=True)
            }
            # the plaintext copies made for sending are removed once the association ends
            wait_for(lambda: not list(server.app.archive.incoming.iterdir()))
            archive_files = [p for p in server.app.archive.root.rglob("*.dcm") if p.is_file()]
            assert len(archive_files) == 2
            for path in archive_files:
                assert read_header(path.open("rb")).key_id == "site-2026"
                assert stat.S_IMODE(path.stat().st_mode) == 0o640
        data_dir = settings.paths.data_dir
        if database_url.startswith("sqlite"):
            db_file = Path(database_url.removeprefix("sqlite:///"))
            assert stat.S_IMODE(db_file.stat().st_mode) == 0o600
            on_disk = [db_file, *db_file.parent.glob(db_file.name + "-*")]
        else:
            on_disk = []
        on_disk += [p for p in data_dir.rglob("*") if p.is_file()]
        assert archive_files[0] in on_disk
        for path in on_disk:
            raw = path.read_bytes()
            for secret in (NAME, "Quixotebottom", STREET, "Zanzibar"):
                assert secret.encode() not in raw, f"{secret!r} found in {path}"
    finally:
        reader.stop()


@pytest.mark.network
def test_rotation_while_the_server_runs_then_forwarding_reads_rotated_files(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(env_name("k1"), base64.b64encode(_key()).decode())
    settings = _encrypted_settings(tmp_path, sqlite_url, ("k1",), "k1")
    reader = RecordingScp()
    try:
        with running_router(settings) as server:
            ds = make_dataset(PatientAddress=ADDRESS)
            source = write_part10(ds, tmp_path / "src.dcm")
            assert send_paths(server.ports[0], [source]) == [0x0000]
            wait_for(lambda: _status(server) == StudyStatus.HELD)  # nobody licensed in IL yet
            archived = next(server.app.archive.root.rglob("*.dcm"))
            assert read_header(archived.open("rb")).key_id == "k1"

            # a new key, made active in the config; `router keys rotate` while the server runs
            config = tmp_path / "rotate.toml"
            config.write_text(
                f'[paths]\ndata_dir = "{settings.paths.data_dir}"\n[database]\nurl = "{sqlite_url}"\n'
                '[encryption]\nenabled = true\nkeys = ["k1", "k2"]\nactive_key = "k2"\n'
            )
            result = CliRunner().invoke(cli, ["--config", str(config), "keys", "new", "k2"])
            assert result.exit_code == 0, result.output
            assert stat.S_IMODE((settings.key_dir / "k2.key").stat().st_mode) == 0o600
            result = CliRunner().invoke(cli, ["--config", str(config), "keys", "rotate"])
            assert result.exit_code == 0, result.output
            assert "1 file(s) re-wrapped" in result.output and "1 database value(s) re-encrypted" in result.output
            assert read_header(archived.open("rb")).key_id == "k2"
            with server.app.sessions() as session:
                assert session.scalars(select(Study.patient_address)).one().startswith("enc1:k2:")
            again = CliRunner().invoke(cli, ["--config", str(config), "keys", "rotate", "--json"])
            assert again.exit_code == 0 and '"files_current": 1' in again.output

            # the running server (started knowing only k1) routes and forwards the rotated study
            roster = server.app.roster
            roster.radiologists.add(NPI, "Doe^Jane", "tester")
            roster.radiologists.set(NPI, "tester", destination=reader.destination)
            roster.licenses.add(NPI, "IL", "I1", dt.date(2099, 1, 1), "tester", issued=dt.date(2020, 1, 1))
            wait_for(lambda: len(reader.received) == 1)
            assert reader.received == {str(ds.SOPInstanceUID): dataset_bytes(source)}
    finally:
        reader.stop()


def test_rotate_without_encryption_is_one_line_exit_1(tmp_path: Path) -> None:
    config = tmp_path / "plain.toml"
    config.write_text(f'[paths]\ndata_dir = "{tmp_path / "var"}"\n')
    CliRunner().invoke(cli, ["--config", str(config), "db", "upgrade"])
    result = CliRunner().invoke(cli, ["--config", str(config), "keys", "rotate"])
    assert result.exit_code == 1
    assert "encryption is not enabled" in result.output
    assert "Traceback" not in result.output


def test_missing_key_stops_start_up_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "enc.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{tmp_path / "var"}"\n[encryption]\nenabled = true\nkeys = ["gone"]\nactive_key = "gone"\n'
    )
    result = CliRunner().invoke(cli, ["--config", str(config), "keys", "rotate"])
    assert result.exit_code == 1
    assert "key 'gone'" in result.output and "ROUTER_KEK_GONE" in result.output


def _status(server) -> StudyStatus | None:  # type: ignore[no-untyped-def]
    with server.app.sessions() as session:
        return session.scalars(select(Study.status)).first()


class _NoSeek(io.RawIOBase):
    """A stream that cannot seek and returns short reads (like an S3 response body)."""

    def __init__(self, data: bytes) -> None:
        super().__init__()
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, target) -> int:  # type: ignore[no-untyped-def]
        data = self._data.read(min(len(target), 70_000))
        target[: len(data)] = data
        return len(data)


def test_non_seekable_source_of_many_chunks_decrypts(tmp_path: Path) -> None:
    keyring = KeyRing({"k1": _key()}, "k1")
    data = os.urandom(5 * CHUNK + 3)
    sealed = io.BytesIO()
    encrypt_stream(keyring, io.BytesIO(data), sealed)
    with io.BufferedReader(DecryptingReader(keyring, _NoSeek(sealed.getvalue()))) as stream:  # type: ignore[arg-type]
        assert stream.read() == data
    truncated = sealed.getvalue()[: -(CHUNK // 2)]
    with pytest.raises(KeyRingError), io.BufferedReader(DecryptingReader(keyring, _NoSeek(truncated))) as stream:  # type: ignore[arg-type]
        stream.read()


def test_rewrap_encrypts_a_file_stored_before_encryption_was_on(tmp_path: Path) -> None:
    plain = Archive(tmp_path / "archive")
    plain.prepare()
    source = write_part10(make_dataset(PatientName=NAME), tmp_path / "src.dcm")
    plain.place(plain.write_temp(source.read_bytes()), "1.2/3.4/5.6.dcm")
    archive = _archive(tmp_path, KeyRing({"k1": _key()}, "k1"))
    assert archive.rewrap("1.2/3.4/5.6.dcm") is True
    raw = (archive.root / "1.2/3.4/5.6.dcm").read_bytes()
    assert raw.startswith(b"RTRENC") and b"Quixotebottom" not in raw
    with archive.open_read("1.2/3.4/5.6.dcm") as stream:
        assert stream.read() == source.read_bytes()
    assert archive.rewrap("1.2/3.4/5.6.dcm") is False  # current: nothing to do


def test_recovery_adopts_an_encrypted_orphan_and_sets_aside_a_misplaced_one(
    tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from router.app import RouterApp
    from router.db.models import Instance
    from router.dicom.extract import read_header as read_instance_header
    from router.services.recovery import RecoveryService

    monkeypatch.setenv(env_name("k1"), base64.b64encode(_key()).decode())
    settings = _encrypted_settings(tmp_path, sqlite_url, ("k1",), "k1")
    with RouterApp.open(settings, upgrade=True) as app:
        app.archive.prepare()
        recovery = RecoveryService(app.sessions, app.archive, app.intake, read_instance_header, app.clock)
        recovery.start_run()  # never finished: the node crashed
        good, stray = make_dataset(), make_dataset()
        good_path = f"{good.StudyInstanceUID}/{good.SeriesInstanceUID}/{good.SOPInstanceUID}.dcm"
        for ds, relative in ((good, good_path), (stray, f"{stray.StudyInstanceUID}/1.2.3/4.5.6.dcm")):
            source = write_part10(ds, tmp_path / "src" / f"{ds.SOPInstanceUID}.dcm")
            app.archive.place(app.archive.write_temp(source.read_bytes()), relative)
        report = recovery.reconcile()
        assert report.indexed == [good_path]
        assert report.quarantined == [f".quarantine/orphans/{stray.StudyInstanceUID}_1.2.3_4.5.6.dcm"]
        with app.sessions() as session:
            row = session.scalars(select(Instance)).one()
        source = tmp_path / "src" / f"{good.SOPInstanceUID}.dcm"
        source_bytes = source.read_bytes()
        assert row.dataset_sha256 == hashlib.sha256(dataset_bytes(source)).hexdigest()
        with app.archive.open_read(good_path) as stream:
            assert stream.read() == source_bytes


def test_recovery_leaves_a_file_indexed_long_ago_alone(tmp_path: Path, sqlite_url: str) -> None:
    """A file modified since the last clean shutdown whose instance was first received long
    before (a resend rewrote it) is already indexed: not adopted again, not counted as repaired."""
    import os

    from sqlalchemy import update

    from router.app import RouterApp
    from router.db.models import Instance
    from router.dicom.extract import read_header as read_instance_header
    from router.services.recovery import RecoveryService

    settings = make_settings(tmp_path, sqlite_url)
    with RouterApp.open(settings, upgrade=True) as app:
        app.archive.prepare()
        recovery = RecoveryService(app.sessions, app.archive, app.intake, read_instance_header, app.clock)
        recovery.start_run()  # never finished: the node crashed
        ds = make_dataset()
        relative = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        source = write_part10(ds, tmp_path / "src" / "a.dcm")
        app.archive.place(app.archive.write_temp(source.read_bytes()), relative)
        assert recovery.reconcile().indexed == [relative]
        with app.sessions.begin() as session:
            session.execute(update(Instance).values(received_at=app.clock() - dt.timedelta(days=60)))
        recovery.start_run()  # crashed again, after the file was written once more
        os.utime(app.archive.root / relative)
        report = recovery.reconcile()
        assert (report.files_checked, report.indexed, report.quarantined) == (1, [], [])
