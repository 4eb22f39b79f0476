"""When intake makes a received instance durable, relative to the index commit (issue 14, lever 21).

The file is fsynced before the transaction, renamed into place inside it (after its row is
inserted), and its folder is fsynced after the commit, outside SQLite's write lock, which every
receiving process shares. Success is answered only after all of it; a failed folder fsync is
answered 0xA700 and the identical resend is answered Success only once the fsync succeeds.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from router import archive as archive_module
from router.app import RouterApp
from router.archive import Archive
from router.db.models import Instance
from router.dicom import extract
from router.dicom.extract import ReceivedFileUnreadable, UndecodableDataSet
from router.dicom.scp import StoreHandler
from router.dicom.status import StoreStatus
from router.errors import ArchiveError
from router.services.intake import Sender
from tests.conftest import make_settings
from tests.dicom_helpers import make_dataset, store_event, write_part10


@pytest.fixture
def sqlite_app(tmp_path: Path, sqlite_url: str) -> Iterator[RouterApp]:
    app = RouterApp.open(make_settings(tmp_path, sqlite_url))
    app.archive.prepare()
    try:
        yield app
    finally:
        app.close()


def _receive(app: RouterApp, ds: Any, name: str) -> int:
    temp = write_part10(ds, app.archive.incoming / name)
    response = StoreHandler(app.intake, Sender)(
        store_event(temp, str(ds.SOPInstanceUID), str(ds.SOPClassUID), "DURABLE_SCU")
    )
    return int(response.Status)


def _rows(app: RouterApp, sop_instance_uid: str) -> int:
    with app.sessions() as session:
        return int(session.scalar(select(func.count()).where(Instance.sop_instance_uid == sop_instance_uid)) or 0)


def _write_lock_free(database: str) -> bool:
    """Whether another connection, as another receiving process would have, can take the SQLite
    write lock now."""
    other = sqlite3.connect(database, timeout=0, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        other.close()


def test_the_folder_is_fsynced_after_the_commit_and_outside_the_write_lock(
    sqlite_app: RouterApp, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = sqlite_app.archive
    assert isinstance(archive, Archive)
    database = sqlite_url.removeprefix("sqlite:///")
    ds = make_dataset()
    uid = str(ds.SOPInstanceUID)
    folder = (archive.root / archive.instance_relpath(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), uid)).parent
    seen: list[dict[str, object]] = []
    real_sync_folder = archive.sync_folder

    def observed_sync_folder(relative_path: str) -> None:
        # Another connection, as another receiving process would have: it sees only committed
        # rows, and it takes the write lock only if nobody holds it.
        other = sqlite3.connect(database, timeout=0, isolation_level=None)
        try:
            committed = other.execute("SELECT count(*) FROM instances WHERE sop_instance_uid = ?", (uid,)).fetchone()[0]
        finally:
            other.close()
        lock_free = _write_lock_free(database)
        seen.append(
            {
                "folder": (archive.root / relative_path).parent,
                "file_in_place": (archive.root / relative_path).is_file(),
                "committed_rows": committed,
                "lock_free": lock_free,
            }
        )
        real_sync_folder(relative_path)

    monkeypatch.setattr(archive, "sync_folder", observed_sync_folder)
    assert _receive(sqlite_app, ds, "first.dcm") == StoreStatus.SUCCESS
    assert seen == [{"folder": folder, "file_in_place": True, "committed_rows": 1, "lock_free": True}]


def test_the_study_folder_whose_mtime_recovery_reads_is_fsynced_once_per_process(
    sqlite_app: RouterApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start-up recovery finds files without rows by their study folder's modification time,
    which placing a file bumps; with index commits not fsynced, an acknowledged instance may
    depend on it, so the bump is made durable before Success, like the rename. Once one bump
    of this process is durable the study folder's mtime is later than any earlier run's stop,
    so later instances of the study neither bump nor fsync it again."""
    archive = sqlite_app.archive
    assert isinstance(archive, Archive)
    study, series = generate_uid(), generate_uid()
    synced: list[Path] = []
    real_fsync_dir = archive_module._fsync_dir

    def recording(path: Path) -> None:
        synced.append(Path(path))
        real_fsync_dir(path)

    monkeypatch.setattr(archive_module, "_fsync_dir", recording)

    def receive(name: str, ds: Any = None) -> list[Path]:
        synced.clear()
        ds = ds if ds is not None else make_dataset(StudyInstanceUID=study, SeriesInstanceUID=series)
        assert _receive(sqlite_app, ds, name) == StoreStatus.SUCCESS
        return list(synced)

    root, study_folder = archive.root, archive.root / study
    series_folder = study_folder / series
    # a new study: its folders are made (each parent fsynced), then the series and study folders
    assert receive("a.dcm") == [root, study_folder, series_folder, study_folder]
    bumped = study_folder.stat().st_mtime_ns
    assert receive("b.dcm") == [series_folder]
    assert study_folder.stat().st_mtime_ns == bumped
    archive._durable_studies.clear()  # as a new receiving process after a restart
    assert receive("c.dcm") == [series_folder, study_folder]
    assert study_folder.stat().st_mtime_ns > bumped
    # An identical resend first (answered from the stored copy) bumps it too before marking it
    # durable; it did not, and the next new instance's file was then invisible to recovery
    # (found by a trial).
    again = make_dataset(StudyInstanceUID=study, SeriesInstanceUID=series)
    assert receive("d.dcm", again) == [series_folder]
    archive._durable_studies.clear()
    bumped = study_folder.stat().st_mtime_ns
    assert receive("d-again.dcm", again) == [series_folder, study_folder]
    assert study_folder.stat().st_mtime_ns > bumped


def test_a_new_study_s_folders_are_made_before_the_index_transaction(
    sqlite_app: RouterApp, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their parents' fsyncs are not made while the database write lock, which the receiving
    processes share, is held."""
    archive = sqlite_app.archive
    assert isinstance(archive, Archive)
    database = sqlite_url.removeprefix("sqlite:///")
    ds = make_dataset()
    folder = (
        archive.root
        / archive.instance_relpath(str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID))
    ).parent
    made: list[tuple[Path, bool]] = []  # (folder created, write lock free at that moment)
    real_make_dirs = archive._make_dirs

    def observed_make_dirs(path: Path) -> None:
        if not path.exists():
            made.append((path, _write_lock_free(database)))
        real_make_dirs(path)

    monkeypatch.setattr(archive, "_make_dirs", observed_make_dirs)
    assert not folder.parent.exists()  # a new study: its folder and its series folder are made
    assert _receive(sqlite_app, ds, "first.dcm") == StoreStatus.SUCCESS
    assert made == [(folder, True)]
    assert folder.is_dir() and len(list(folder.iterdir())) == 1


def test_a_failed_folder_fsync_is_answered_a700_and_the_resend_is_answered_once_it_is_durable(
    sqlite_app: RouterApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = sqlite_app.archive
    ds = make_dataset()
    uid = str(ds.SOPInstanceUID)
    calls: list[str] = []
    real_sync_folder = archive.sync_folder

    def failing_once(relative_path: str) -> None:
        calls.append(relative_path)
        if len(calls) == 1:
            raise ArchiveError("cannot store x.dcm: Input/output error")
        real_sync_folder(relative_path)

    monkeypatch.setattr(archive, "sync_folder", failing_once)
    assert _receive(sqlite_app, ds, "first.dcm") == StoreStatus.OUT_OF_RESOURCES_ARCHIVE
    assert _rows(sqlite_app, uid) == 1  # committed before the fsync failed: the resend finds it
    assert _receive(sqlite_app, ds, "again.dcm") == StoreStatus.SUCCESS
    assert len(calls) == 2 and calls[0] == calls[1]  # the resend's Success waited for the fsync
    assert _rows(sqlite_app, uid) == 1
    assert archive.exists(calls[0])
    assert not any(archive.incoming.iterdir())  # both temporary files consumed


def test_a_resend_is_not_answered_while_its_folder_cannot_be_fsynced(
    sqlite_app: RouterApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = sqlite_app.archive
    ds = make_dataset()
    assert _receive(sqlite_app, ds, "first.dcm") == StoreStatus.SUCCESS

    def failing(relative_path: str) -> None:
        raise ArchiveError("cannot store x.dcm: Input/output error")

    monkeypatch.setattr(archive, "sync_folder", failing)
    assert _receive(sqlite_app, ds, "again.dcm") == StoreStatus.OUT_OF_RESOURCES_ARCHIVE


def test_sync_folder_reports_a_missing_folder_as_an_archive_error(sqlite_app: RouterApp) -> None:
    with pytest.raises(ArchiveError, match=r"^cannot store 9\.dcm: No such file or directory$"):
        sqlite_app.archive.sync_folder("no/such/folder/9.dcm")


def test_place_without_sync_folder_still_renames_and_makes_new_folders(sqlite_app: RouterApp) -> None:
    archive = sqlite_app.archive
    temp = archive.write_temp(b"0123456789")
    stored = archive.place(temp, "a/b/c/1.dcm", sync_folder=False)
    archive.sync_folder("a/b/c/1.dcm")
    assert (stored.relative_path, stored.size_bytes) == ("a/b/c/1.dcm", 10)
    assert (archive.root / "a/b/c/1.dcm").read_bytes() == b"0123456789"
    assert not temp.exists()


def test_a_received_file_that_cannot_be_read_back_is_answered_0xA700_not_0xC210(
    sqlite_app: RouterApp, caplog: pytest.LogCaptureFixture
) -> None:
    """Regression (found by a trial: a second router started with the same node id cleaned the
    first one's incoming folder mid-transfer): a received file that is gone when the handler
    reads it was answered 0xC210 "cannot understand", which tells the sender to fix its data,
    instead of 0xA700, which tells it to retry. A system error reading the file back is this
    router's fault; the data set was never looked at."""
    ds = make_dataset()
    temp = write_part10(ds, sqlite_app.archive.incoming / "gone.dcm")
    temp.unlink()
    with caplog.at_level(logging.WARNING):
        response = StoreHandler(sqlite_app.intake, Sender)(
            store_event(temp, str(ds.SOPInstanceUID), str(ds.SOPClassUID), "DURABLE_SCU")
        )
    assert int(response.Status) == StoreStatus.OUT_OF_RESOURCES_ARCHIVE == 0xA700
    assert response.ErrorComment == "received file could not be read back; retry later"
    assert _rows(sqlite_app, str(ds.SOPInstanceUID)) == 0
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == [
        "received file could not be read back: No such file or directory; answering 0xA700 "
        "(further occurrences are not logged until it clears)"
    ]
    # the same data set, received again, is stored
    assert _receive(sqlite_app, ds, "again.dcm") == 0x0000
    assert _rows(sqlite_app, str(ds.SOPInstanceUID)) == 1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (OSError(errno.EIO, "Input/output error"), ReceivedFileUnreadable),
        (OSError(errno.ENOENT, "No such file or directory"), ReceivedFileUnreadable),
        (OSError(errno.EINVAL, "Invalid argument"), UndecodableDataSet),  # a seek a bad length asked for
        (OSError("no errno"), UndecodableDataSet),
    ],
)
def test_read_header_tells_a_system_error_from_a_bad_data_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError, expected: type[Exception]
) -> None:
    path = write_part10(make_dataset(), tmp_path / "x.dcm")

    def failing(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(extract, "_read_file_meta", failing)
    with pytest.raises(expected):
        extract.read_header(path)


def test_recovery_skips_a_folder_it_cannot_read_and_names_it(
    sqlite_app: RouterApp, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A folder the service account may not read (``lost+found`` on a mounted archive, mode
    0700) stopped start-up with "Permission denied" (found by a trial run without root's
    capabilities; a test running as root cannot be refused by the file system, so the refusal
    is raised here). It is skipped with a WARNING and the rest is scanned."""
    archive = sqlite_app.archive
    assert isinstance(archive, Archive)
    readable, refused = make_dataset(), make_dataset()
    for index, ds in enumerate((readable, refused)):
        assert _receive(sqlite_app, ds, f"{index}.dcm") == StoreStatus.SUCCESS
    (archive.root / "lost+found").mkdir()
    refused_series = archive.root / str(refused.StudyInstanceUID) / str(refused.SeriesInstanceUID)
    real_scandir = os.scandir

    def scandir(path: Any) -> Any:
        if Path(path) == refused_series:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    with caplog.at_level(logging.WARNING, logger="router.archive"):
        found = archive.files_modified_since(0.0)
    assert found == [
        archive.instance_relpath(readable.StudyInstanceUID, readable.SeriesInstanceUID, readable.SOPInstanceUID)
    ]
    assert [r.getMessage() for r in caplog.records] == [
        f"recovery cannot read folder {refused_series} (Permission denied); skipped"
    ]
