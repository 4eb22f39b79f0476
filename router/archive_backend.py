"""The archive interface and the factory that picks a backend from the settings.

Every service reads and writes archive files only through this interface (never by path), so
the folder and S3 backends are interchangeable. A key is the archive-relative path
``<Study>/<Series>/<SOP Instance>.dcm`` (or ``.quarantine/...``) on every backend.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import BinaryIO, Protocol

from router.archive import Archive, StoredFile
from router.config import Settings
from router.domain.enums import ArchiveBackendKind
from router.keyring import KeyRing


class ArchiveBackend(Protocol):
    """What intake, recovery and forwarding need of an archive.

    Temporary files are always local (``incoming``, on the node); :meth:`place` makes one
    durable under a key, after which the backend owns the bytes.
    """

    root: Path
    incoming: Path
    scans_for_orphans: bool
    places_by_rename: bool  # place() renames a temporary file without reading it

    def prepare(self) -> None: ...
    def instance_relpath(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str: ...
    def write_temp(self, data: bytes) -> Path: ...
    def sync_temp(self, temp: Path) -> int: ...
    def prepare_folder(self, relative_path: str) -> None: ...
    def remove_temp(self, temp: Path) -> None: ...
    def place(
        self,
        temp: Path,
        relative_path: str,
        *,
        replace: bool = False,
        synced: bool = False,
        sync_folder: bool = True,
    ) -> StoredFile: ...
    def sync_folder(self, relative_path: str) -> None: ...
    def quarantine(self, temp: Path, sop_instance_uid: str, sha256: str) -> StoredFile: ...
    def exists(self, relative_path: str) -> bool: ...
    def size(self, relative_path: str) -> int: ...
    def open_read(self, relative_path: str) -> BinaryIO: ...
    def local_copy(self, relative_path: str) -> contextlib.AbstractContextManager[Path]: ...
    def move(self, relative_path: str, target_relative_path: str) -> None: ...
    def clean_incoming(self, older_than_seconds: float = 0.0) -> int: ...
    def files_modified_since(self, since_epoch: float) -> list[str]: ...


def open_keyring(settings: Settings) -> KeyRing | None:
    """The key ring ``[encryption]`` describes, or ``None`` when encryption is off.

    Raises
    ------
    KeyRingError
        If a listed key is missing or malformed.
    """
    encryption = settings.encryption
    if not encryption.enabled:
        return None
    assert encryption.active_key is not None  # checked when the settings were loaded
    return KeyRing.load(encryption.keys, encryption.active_key, settings.key_dir)


def open_archive(settings: Settings, keyring: KeyRing | None = None, *, node_id: str | None = None) -> ArchiveBackend:
    """The archive backend ``[archive] backend`` names, rooted at ``paths.archive``, encrypting
    with ``keyring`` when one is given.

    ``node_id`` names this node's incoming folder (``<archive>/.incoming/<node id>/``) for
    temporary files; ``None``: ``<archive>/.incoming/`` itself. With ``s3`` the local folder
    holds only this node's temporary files.
    """
    backend: ArchiveBackend
    if settings.archive.backend == ArchiveBackendKind.S3:
        from router.archive_s3 import S3Archive

        backend = S3Archive(settings.paths.archive, settings.archive, node_id=node_id)
    else:
        backend = Archive(settings.paths.archive, node_id=node_id)
    if keyring is None:
        return backend
    from router.archive_crypto import EncryptedArchive

    return EncryptedArchive(backend, keyring)
