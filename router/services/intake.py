"""Intake: keep one received instance durably, then index it. Called from the C-STORE handler.

Order (DESIGN.md decision 1): the complete data set is in a temporary file on the archive's file
system; it is hashed and fsynced; study, series, instance and sender rows are inserted, the file
is renamed into place and its directory fsynced, and the transaction commits. Only then may the
handler answer Success. The transaction may be shared with instances of other associations
waiting at the same moment (:mod:`router.db.group_commit`: one commit, one WAL flush); each is
still answered only after that commit, and a failed transaction fails every one of them. Same SOP Instance UID with the same data set bytes is a no-op; with
different bytes the new copy is quarantined and recorded as a conflict, and the stored copy is
never touched, also when several router nodes share the database and the archive.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import cast

from sqlalchemy import Connection, Engine, Table, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from router.archive import dataset_sha256
from router.archive_backend import ArchiveBackend
from router.db.engine import is_sqlite, sqlite_synchronous
from router.db.group_commit import GroupCommit
from router.db.instance_index import IndexRow, InstanceIndex
from router.db.models import Instance, InstanceConflict
from router.db.queries import insert_ignore
from router.domain.instance import InstanceHeader
from router.errors import ArchiveError, IndexWriteError, database_error
from router.keyring import KeyRing
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)

_LOCK_STRIPES = 64


def lock_stripe(sop_instance_uid: str) -> int:
    """Which of the per-UID locks guards ``sop_instance_uid`` (0 to 63)."""
    return zlib.crc32(sop_instance_uid.encode()) % _LOCK_STRIPES


@dataclass(frozen=True)
class Sender:
    """Who sent an instance: the association's calling AE title and the peer's IP address."""

    calling_ae_title: str
    peer_address: str


class StoreOutcome(Enum):
    """What intake did with an instance; every outcome is answered Success."""

    STORED = "stored"
    DUPLICATE = "duplicate"  # same SOP Instance UID, same bytes: nothing to do
    QUARANTINED = "quarantined"  # same SOP Instance UID, different bytes: kept aside


class IntakeService:
    """Stores received instances. Thread-safe: one session per call, striped per-UID locks."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        archive: ArchiveBackend,
        clock: Clock = utcnow,
        keyring: KeyRing | None = None,
        sqlite_synchronous_level: str | None = None,
    ) -> None:
        """``sqlite_synchronous_level`` ("normal" or "full", on SQLite only): the ``PRAGMA
        synchronous`` of the connection the index transactions run on
        (:func:`router.db.engine.sqlite_synchronous`); None leaves the engine's (FULL)."""
        self._sessions = sessions
        self._engine: Engine = sessions.kw["bind"]
        self._indexer = InstanceIndex(self._engine.dialect)
        prepare = (
            sqlite_synchronous(sqlite_synchronous_level)
            if sqlite_synchronous_level is not None and is_sqlite(self._engine)
            else None
        )
        #: Index transactions shared by concurrent associations (one commit, one WAL flush).
        self.commits = GroupCommit(self._engine, prepare=prepare)
        self._archive = archive
        self._clock = clock
        self._keyring = keyring  # encrypts the patient's location text in the index
        # Two associations sending the same SOP Instance UID at once must not both place a file.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]
        #: Set by the composition root: takes a report SR on a routed study (True) so it is kept
        #: as a report, not indexed as a late image (router.services.sr_reports).
        self.report_hook: Callable[[InstanceHeader, Path], bool] | None = None

    @property
    def archive(self) -> ArchiveBackend:
        """The archive this service writes to."""
        return self._archive

    def store(
        self, header: InstanceHeader, temp_path: Path, sender: Sender, digest: tuple[str, int] | None = None
    ) -> StoreOutcome:
        """Durably keep and index the Part 10 file at ``temp_path`` (consumed).

        ``header`` must carry validated UIDs (the DICOM layer answers 0xC000-range statuses
        otherwise). ``digest`` is ``(SHA-256 hex of the data set, file size in bytes)`` when the
        receiver computed it while writing the file (:class:`router.dicom.spool.SpoolFile`);
        otherwise the file is read back to compute it.

        Raises
        ------
        ArchiveError
            The file could not be hashed, written, renamed or made durable (answer 0xA700; if
            only its folder's fsync failed the row is committed, and a resend of the same data
            set is answered from it once that fsync succeeds).
        IndexWriteError
            The database could not record it (answer 0xA701).
        """
        assert header.study_instance_uid and header.series_instance_uid and header.sop_instance_uid
        if self.report_hook is not None and self.report_hook(header, temp_path):
            return StoreOutcome.STORED
        sha256, size = digest if digest is not None else dataset_sha256(temp_path)
        relative_path = self._archive.instance_relpath(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        lock = self._locks[lock_stripe(header.sop_instance_uid)]
        with lock:
            # No look-up first: the unique SOP Instance UID of the instance row tells a new
            # instance from a copy (IntegrityError), in the same round trip as the insert.
            # The file is renamed into place inside the index transaction, once our Instance row
            # is inserted: the unique SOP Instance UID then orders router nodes sharing the
            # database and archive (the per-UID lock covers this process only), so a file at the
            # path with no row is debris of an unacknowledged attempt and is replaced, never
            # another node's copy. fsync first, and make the instance's folders (fsyncing each
            # new one's parent), so the transaction is not held for them (and ``place`` does
            # not fsync the file again). The folder's fsync, which makes the
            # rename durable, comes after the commit for the same reason: inside, it was about
            # half of the time SQLite's write lock was held, which the receiving processes share
            # (docs/benchmarks.md, lever 21). Success is still answered only after both. A
            # power loss between the commit and the folder's fsync can leave a row without its
            # file, reported at start-up; the sender got no answer and sends again, and the
            # identical copy puts the file back (``_store_again``).
            self._archive.sync_temp(temp_path)
            self._archive.prepare_folder(relative_path)
            try:
                self._index(
                    header,
                    sender,
                    relative_path,
                    size,
                    sha256,
                    place=lambda: self._archive.place(
                        temp_path, relative_path, replace=True, synced=True, sync_folder=False
                    ),
                )
            except IntegrityError as exc:
                # Already indexed (a resend, or another node first): the stored file stands.
                existing = self._existing(header.sop_instance_uid)
                if existing is None:
                    raise IndexWriteError(_db_reason(exc)) from exc
                return self._store_again(header, temp_path, sender, existing, sha256, size)
            self._archive.sync_folder(relative_path)
            return StoreOutcome.STORED

    def adopt(self, header: InstanceHeader, relative_path: str, sender: Sender) -> StoreOutcome:
        """Index a file already in place in the archive (start-up recovery of an unindexed file).

        Raises
        ------
        ArchiveError
            The file cannot be read.
        IndexWriteError
            The database could not record it.
        """
        assert header.sop_instance_uid
        with self._archive.local_copy(relative_path) as path:
            sha256, size = dataset_sha256(path)
        lock = self._locks[lock_stripe(header.sop_instance_uid)]
        with lock:
            if self._existing(header.sop_instance_uid) is not None:
                return StoreOutcome.DUPLICATE
            try:
                self._index(header, sender, relative_path, size, sha256)
            except IntegrityError:
                return StoreOutcome.DUPLICATE
        return StoreOutcome.STORED

    # ------------------------------------------------------------------ internals
    def _patient_location(self, header: InstanceHeader) -> dict[str, str | None]:
        """The patient's address and residence tags, encrypted when encryption is on (PHI)."""
        plain = _patient_location_plain(header)
        if self._keyring is None:
            return plain
        return {column: self._keyring.encrypt_value(value, column) for column, value in plain.items()}

    def _existing(self, sop_instance_uid: str) -> tuple[int, str, str] | None:
        """``(study id, data set SHA-256, relative path)`` of a stored SOP instance, or ``None``."""
        try:
            with self._sessions() as session:
                row = session.execute(
                    select(Instance.study_id, Instance.dataset_sha256, Instance.relative_path).where(
                        Instance.sop_instance_uid == sop_instance_uid
                    )
                ).first()
        except SQLAlchemyError as exc:
            raise IndexWriteError(_db_reason(exc)) from exc
        return None if row is None else (row[0], row[1], row[2])

    def _store_again(
        self,
        header: InstanceHeader,
        temp_path: Path,
        sender: Sender,
        existing: tuple[int, str, str],
        sha256: str,
        size: int,
    ) -> StoreOutcome:
        study_id, stored_sha, relative_path = existing
        if stored_sha == sha256:
            if not self._archive.exists(relative_path):
                # The row outlived its file (restored database, deleted file): the identical
                # copy just received puts it back.
                self._archive.place(temp_path, relative_path, replace=False)
                LOG.warning(
                    "SOP Instance %s had a row but no file: restored from %s",
                    header.sop_instance_uid,
                    sender.calling_ae_title,
                )
                return StoreOutcome.DUPLICATE
            self._archive.remove_temp(temp_path)
            # The first copy's answer may have been a failure of this very fsync (after its
            # commit): the identical resend is answered Success only once the file is durable.
            self._archive.sync_folder(relative_path)
            LOG.debug("duplicate of SOP Instance %s from %s ignored", header.sop_instance_uid, sender.calling_ae_title)
            return StoreOutcome.DUPLICATE
        kept = self._archive.quarantine(temp_path, header.sop_instance_uid or "", sha256)
        now = self._clock()
        try:
            with self._sessions.begin() as session:
                insert_ignore(
                    session,
                    cast(Table, InstanceConflict.__table__),  # a declarative class's table
                    {
                        "study_id": study_id,
                        "sop_instance_uid": header.sop_instance_uid,
                        "relative_path": kept.relative_path,
                        "size_bytes": size,
                        "dataset_sha256": sha256,
                        "calling_ae_title": sender.calling_ae_title,
                        "peer_address": sender.peer_address,
                        "reason": "same SOP Instance UID, different data set; first copy kept",
                        "received_at": now,
                    },
                    ["sop_instance_uid", "dataset_sha256"],
                )
        except SQLAlchemyError as exc:
            raise IndexWriteError(_db_reason(exc)) from exc
        LOG.warning(
            "SOP Instance %s from %s differs from the stored copy: quarantined as %s",
            header.sop_instance_uid,
            sender.calling_ae_title,
            kept.relative_path,
        )
        return StoreOutcome.QUARANTINED

    def _index(
        self,
        header: InstanceHeader,
        sender: Sender,
        relative_path: str,
        size: int,
        sha256: str,
        place: Callable[[], object] | None = None,
    ) -> None:
        """Insert the rows; ``place`` (which may raise ArchiveError) runs before the commit.

        Raises
        ------
        IntegrityError
            The SOP Instance UID is already indexed (nothing was written).
        IndexWriteError
            Any other database failure, also of the transaction shared with other instances.
        """
        assert (
            header.study_instance_uid
            and header.series_instance_uid
            and header.sop_instance_uid
            and header.sop_class_uid
        )
        row = IndexRow(
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            relative_path=relative_path,
            size_bytes=size,
            dataset_sha256=sha256,
            calling_ae_title=sender.calling_ae_title,
            peer_address=sender.peer_address,
            received_at=self._clock(),
            modality=_cut(header.modality, 16),
            series_body_part=_cut(header.body_part, 64),
            series_description=_cut(header.series_description, 128),
            evidence={
                "modalities": _cut((header.modality or "").strip().upper() or None, 64),
                "accession_number": _cut(header.accession_number, 64),
                "study_date": header.study_date,
                "study_description": _cut(header.study_description, 128),
                "body_part": _cut(header.body_part, 64),
                "priority": _cut(header.priority, 16),
                "procedure_codes": _codes_json(header) or None,
                "institution_name": _cut(header.institution_name, 128),
                "institution_address": header.institution_address,
                **self._patient_location(header),
            },
        )

        def write(connection: Connection) -> None:
            self._indexer.record(connection, row)
            if place is not None:
                place()

        # Answered only after the commit of the transaction it shares with the instances of
        # other associations waiting at the same moment (router.db.group_commit).
        self.commits.run(write, key=row.study_instance_uid)


def _patient_location_plain(header: InstanceHeader) -> dict[str, str | None]:
    return {
        "patient_address": header.patient_address,
        "region_of_residence": _cut(header.region_of_residence, 128),
        "country_of_residence": _cut(header.country_of_residence, 128),
    }


def _codes_json(header: InstanceHeader) -> list[dict[str, str]]:
    return [
        {"value": code.value, "scheme": code.scheme, "meaning": code.meaning, "source": code.source.value}
        for code in header.procedure_codes
    ]


def _cut(value: str | None, length: int) -> str | None:
    return value[:length] if value else None


def _db_reason(exc: SQLAlchemyError) -> str:
    """A short reason without SQL parameters (which may carry PHI)."""
    return f"index database error: {database_error(exc)}"


__all__ = ["ArchiveError", "IndexWriteError", "IntakeService", "Sender", "StoreOutcome"]
