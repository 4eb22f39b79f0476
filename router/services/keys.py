"""Key rotation for encryption at rest: every archive file's data key re-wrapped with the active
key-encryption key, and the patient's location text in the index re-encrypted with it.

Runs while servers keep serving (no downtime): each file is replaced by a complete, synced file
with a new header (the encrypted chunks are copied as they are), so a reader sees the old or the
new file, and both keys stay in the key ring until the rotation reports nothing left on the old
one. Database values are updated only where they still hold what was read (compare-and-set), so
a concurrent write is never overwritten. Files and values stored in plain text before encryption
was turned on are encrypted by the same pass.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from router.archive_crypto import EncryptedArchive
from router.db.models import Instance, InstanceConflict, Study
from router.errors import ArchiveError
from router.keyring import KeyRing

LOG = logging.getLogger(__name__)

#: Study columns holding the patient's location text (PHI), encrypted when encryption is on.
ENCRYPTED_COLUMNS = ("patient_address", "region_of_residence", "country_of_residence")
_BATCH = 500


@dataclass
class RotationReport:
    """What a rotation did; ``failed`` lists archive paths that could not be re-wrapped."""

    active_key_id: str
    files_rewrapped: int = 0
    files_current: int = 0
    files_missing: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    values_reencrypted: int = 0

    @property
    def complete(self) -> bool:
        """Whether nothing is left on another key (the old keys may then be retired)."""
        return not self.failed


class KeyRotation:
    """Re-wraps the archive and re-encrypts the index to the key ring's active key."""

    def __init__(self, sessions: sessionmaker[Session], archive: EncryptedArchive, keyring: KeyRing) -> None:
        self._sessions = sessions
        self._archive = archive
        self._keyring = keyring

    def rotate(self) -> RotationReport:
        """Rotate everything indexed (instances and quarantined copies) and every study's
        location values; returns the counts. Safe to run again: what is current is skipped."""
        report = RotationReport(active_key_id=self._keyring.active_key_id)
        for relative in self._archive_paths():
            try:
                if not self._archive.exists(relative):
                    report.files_missing.append(relative)
                elif self._archive.rewrap(relative):
                    report.files_rewrapped += 1
                else:
                    report.files_current += 1
            except ArchiveError as exc:
                LOG.error("key rotation: %s", exc)
                report.failed.append(relative)
        report.values_reencrypted = self._reencrypt_values()
        return report

    def _archive_paths(self) -> list[str]:
        with self._sessions() as session:
            paths = list(session.scalars(select(Instance.relative_path).order_by(Instance.id)))
            paths += list(session.scalars(select(InstanceConflict.relative_path).order_by(InstanceConflict.id)))
        return paths

    def _reencrypt_values(self) -> int:
        active = self._keyring.active_key_id
        columns = [getattr(Study, name) for name in ENCRYPTED_COLUMNS]
        changed = 0
        last_id = 0
        while True:
            with self._sessions() as session:
                rows = session.execute(
                    select(Study.id, *columns).where(Study.id > last_id).order_by(Study.id).limit(_BATCH)
                ).all()
            if not rows:
                return changed
            last_id = rows[-1][0]
            with self._sessions.begin() as session:
                for study_id, *values in rows:
                    for name, column, stored in zip(ENCRYPTED_COLUMNS, columns, values, strict=True):
                        if stored is None or self._keyring.value_key_id(stored) == active:
                            continue
                        fresh = self._keyring.encrypt_value(self._keyring.decrypt_value(stored, name), name)
                        result = session.execute(
                            update(Study).where(Study.id == study_id, column == stored).values({name: fresh})
                        )
                        changed += int(getattr(result, "rowcount", 0) or 0)
