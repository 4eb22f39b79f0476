"""Intake: keep one received instance durably, then index it. Called from the C-STORE handler.

Order (DESIGN.md decision 1): the complete data set is in a temporary file on the archive's file
system; it is hashed and fsynced; study, series, instance and sender rows are inserted, the file
is renamed into place and its directory fsynced, and the transaction commits. Only then may the
handler answer Success. Same SOP Instance UID with the same data set bytes is a no-op; with
different bytes the new copy is quarantined and recorded as a conflict, and the stored copy is
never touched, also when several router nodes share the database and the archive.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from router.archive import Archive, dataset_sha256
from router.db.models import Instance, InstanceConflict, Series, Study, StudySender
from router.db.queries import for_update, insert_ignore, upsert
from router.domain.enums import StudyStatus
from router.domain.instance import InstanceHeader
from router.errors import ArchiveError, IndexWriteError
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)

_LOCK_STRIPES = 64


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

    def __init__(self, sessions: sessionmaker[Session], archive: Archive, clock: Clock = utcnow) -> None:
        self._sessions = sessions
        self._archive = archive
        self._clock = clock
        # Two associations sending the same SOP Instance UID at once must not both place a file.
        self._locks = [threading.Lock() for _ in range(_LOCK_STRIPES)]

    @property
    def archive(self) -> Archive:
        """The archive this service writes to."""
        return self._archive

    def store(self, header: InstanceHeader, temp_path: Path, sender: Sender) -> StoreOutcome:
        """Durably keep and index the Part 10 file at ``temp_path`` (consumed).

        ``header`` must carry validated UIDs (the DICOM layer answers 0xC000-range statuses
        otherwise).

        Raises
        ------
        ArchiveError
            The file could not be hashed, written or renamed (answer 0xA700).
        IndexWriteError
            The database could not record it (answer 0xA701).
        """
        assert header.study_instance_uid and header.series_instance_uid and header.sop_instance_uid
        sha256, size = dataset_sha256(temp_path)
        relative_path = self._archive.instance_relpath(
            header.study_instance_uid, header.series_instance_uid, header.sop_instance_uid
        )
        lock = self._locks[zlib.crc32(header.sop_instance_uid.encode()) % _LOCK_STRIPES]
        with lock:
            existing = self._existing(header.sop_instance_uid)
            if existing is not None:
                return self._store_again(header, temp_path, sender, existing, sha256, size)
            # The file is renamed into place inside the index transaction, once our Instance row
            # is inserted: the unique SOP Instance UID then orders router nodes sharing the
            # database and archive (the per-UID lock covers this process only), so a file at the
            # path with no row is debris of an unacknowledged attempt and is replaced, never
            # another node's copy. fsync first, so the transaction is not held for it.
            self._archive.sync_temp(temp_path)
            try:
                self._index(header, sender, relative_path, size, sha256,
                            place=lambda: self._archive.place(temp_path, relative_path, replace=True))
            except IntegrityError as exc:
                # Another node indexed the same SOP Instance UID first: its file stands.
                existing = self._existing(header.sop_instance_uid)
                if existing is None:
                    raise IndexWriteError(_db_reason(exc)) from exc
                return self._store_again(header, temp_path, sender, existing, sha256, size)
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
        sha256, size = dataset_sha256(self._archive.path(relative_path))
        lock = self._locks[zlib.crc32(header.sop_instance_uid.encode()) % _LOCK_STRIPES]
        with lock:
            if self._existing(header.sop_instance_uid) is not None:
                return StoreOutcome.DUPLICATE
            try:
                self._index(header, sender, relative_path, size, sha256)
            except IntegrityError:
                return StoreOutcome.DUPLICATE
        return StoreOutcome.STORED

    # ------------------------------------------------------------------ internals
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
            if not self._archive.path(relative_path).exists():
                # The row outlived its file (restored database, deleted file): the identical
                # copy just received puts it back.
                self._archive.place(temp_path, relative_path, replace=False)
                LOG.warning("SOP Instance %s had a row but no file: restored from %s", header.sop_instance_uid, sender.calling_ae_title)
                return StoreOutcome.DUPLICATE
            self._archive.remove_temp(temp_path)
            LOG.debug("duplicate of SOP Instance %s from %s ignored", header.sop_instance_uid, sender.calling_ae_title)
            return StoreOutcome.DUPLICATE
        kept = self._archive.quarantine(temp_path, header.sop_instance_uid or "", sha256)
        now = self._clock()
        try:
            with self._sessions.begin() as session:
                insert_ignore(
                    session,
                    InstanceConflict.__table__,
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

    def _index(self, header: InstanceHeader, sender: Sender, relative_path: str, size: int, sha256: str,
               place: Callable[[], object] | None = None) -> None:
        """Insert the rows; ``place`` (which may raise ArchiveError) runs before the commit."""
        now = self._clock()
        try:
            with self._sessions.begin() as session:
                study_id = self._upsert_study(session, header, sender, size, now)
                series_id = self._upsert_series(session, header, study_id)
                session.add(
                    Instance(
                        study_id=study_id,
                        series_id=series_id,
                        sop_instance_uid=header.sop_instance_uid,
                        sop_class_uid=header.sop_class_uid,
                        transfer_syntax_uid=header.transfer_syntax_uid,
                        relative_path=relative_path,
                        size_bytes=size,
                        dataset_sha256=sha256,
                        calling_ae_title=sender.calling_ae_title,
                        received_at=now,
                    )
                )
                upsert(
                    session,
                    StudySender.__table__,
                    {
                        "study_id": study_id,
                        "calling_ae_title": sender.calling_ae_title,
                        "peer_address": sender.peer_address,
                        "first_received_at": now,
                        "last_received_at": now,
                        "instance_count": 1,
                    },
                    ["study_id", "calling_ae_title", "peer_address"],
                    {
                        "last_received_at": now,
                        "instance_count": StudySender.__table__.c.instance_count + 1,
                    },
                )
                session.flush()
                if place is not None:
                    place()
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            raise IndexWriteError(_db_reason(exc)) from exc

    def _upsert_study(self, session: Session, header: InstanceHeader, sender: Sender, size: int, now: dt.datetime) -> int:
        insert_ignore(
            session,
            Study.__table__,
            {
                "study_instance_uid": header.study_instance_uid,
                "status": StudyStatus.RECEIVING.value,
                "first_calling_ae_title": sender.calling_ae_title,
                "first_received_at": now,
                "last_received_at": now,
                "instance_count": 0,
                "size_bytes": 0,
                "needs_review": False,
            },
            ["study_instance_uid"],
        )
        study = session.scalars(
            for_update(select(Study).where(Study.study_instance_uid == header.study_instance_uid), session)
        ).one()
        modalities = _merge_modalities(study.modalities, header.modality)
        session.execute(
            update(Study)
            .where(Study.id == study.id)
            .values(
                instance_count=Study.instance_count + 1,
                size_bytes=Study.size_bytes + size,
                last_received_at=now,
                modalities=modalities,
                accession_number=study.accession_number or _cut(header.accession_number, 64),
                study_date=study.study_date or header.study_date,
                study_description=study.study_description or _cut(header.study_description, 128),
                body_part=study.body_part or _cut(header.body_part, 64),
                priority=study.priority or _cut(header.priority, 16),
                procedure_codes=study.procedure_codes
                or (_codes_json(header) or None),
                institution_name=study.institution_name or _cut(header.institution_name, 128),
                institution_address=study.institution_address or header.institution_address,
                patient_address=study.patient_address or header.patient_address,
                region_of_residence=study.region_of_residence or _cut(header.region_of_residence, 128),
                country_of_residence=study.country_of_residence or _cut(header.country_of_residence, 128),
            )
            .execution_options(synchronize_session=False)
        )
        return study.id

    def _upsert_series(self, session: Session, header: InstanceHeader, study_id: int) -> int:
        insert_ignore(
            session,
            Series.__table__,
            {
                "study_id": study_id,
                "series_instance_uid": header.series_instance_uid,
                "modality": _cut(header.modality, 16),
                "body_part": _cut(header.body_part, 64),
                "description": _cut(header.series_description, 128),
            },
            ["series_instance_uid"],
        )
        series_id = session.scalar(select(Series.id).where(Series.series_instance_uid == header.series_instance_uid))
        assert series_id is not None
        return series_id


def _merge_modalities(current: str | None, modality: str | None) -> str | None:
    """Backslash-joined distinct modalities of a study, in order of arrival (at most 64 chars)."""
    known = [item for item in (current or "").split("\\") if item]
    if modality:
        for item in modality.split("\\"):
            item = item.strip().upper()
            if item and item not in known:
                known.append(item)
    joined = "\\".join(known)
    return joined[:64] or None


def _codes_json(header: InstanceHeader) -> list[dict[str, str]]:
    return [
        {"value": code.value, "scheme": code.scheme, "meaning": code.meaning, "source": code.source.value}
        for code in header.procedure_codes
    ]


def _cut(value: str | None, length: int) -> str | None:
    return value[:length] if value else None


def _db_reason(exc: SQLAlchemyError) -> str:
    """A short reason without SQL parameters (which may carry PHI)."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).splitlines()[0]
    return f"index database error: {type(original or exc).__name__}: {text[:200]}"


__all__ = ["ArchiveError", "IndexWriteError", "IntakeService", "Sender", "StoreOutcome"]
