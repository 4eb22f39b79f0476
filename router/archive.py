"""The archive: durable Part 10 files under ``<root>/<Study>/<Series>/<SOP Instance>.dcm``.

A file is first complete in a temporary file on the archive's own file system, then fsynced,
renamed into place (atomic on POSIX) and its directory fsynced, so after a crash a path either
holds the whole file or nothing. Folders:

``<root>/.incoming/<node id>/``
    temporary files being received (pynetdicom writes C-STORE data sets here), one folder per
    node of a cluster; a node empties only its own at start-up (``<root>/.incoming/`` itself
    when no node id is given).
``<root>/.quarantine/<SOP Instance UID>/<sha256>.dcm``
    differing second copies of a SOP Instance UID, and orphan files found at start-up.

UIDs are validated (:func:`router.domain.instance.uid_problem`) before they become paths.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from router.domain.instance import uid_problem
from router.errors import ArchiveError
from router.part10 import dataset_offset

LOG = logging.getLogger(__name__)

INCOMING = ".incoming"
QUARANTINE = ".quarantine"
_HASH_CHUNK = 1 << 20  # bytes read at a time when hashing
#: Archive files and temporary files: owner read/write, group read, never world-readable
#: (whatever the process umask).
FILE_MODE = 0o640


@dataclass(frozen=True)
class StoredFile:
    """A file placed in the archive."""

    relative_path: str  # POSIX path under the archive root
    size_bytes: int


def dataset_sha256(path: Path, offset: int | None = None) -> tuple[str, int]:
    """SHA-256 (hex) of the data set bytes of a Part 10 file, and the file's size in bytes."""
    try:
        start = dataset_offset(path) if offset is None else offset
    except (ValueError, OSError) as exc:
        raise ArchiveError(f"cannot read {path.name}: {exc}") from exc
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            handle.seek(start)
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
            size = handle.tell()
    except OSError as exc:
        raise ArchiveError(f"cannot read {path.name}: {exc.strerror}") from exc
    return digest.hexdigest(), size


#: The name of a study folder: a Study Instance UID (digits and dots; router.domain.instance).
_STUDY_FOLDER = re.compile(r"[0-9.]+")
#: Most study folders one process remembers as made durable (a set of UIDs, about 10 MiB).
_DURABLE_STUDIES_MAX = 65_536


class Archive:
    """The folder backend: file operations on one archive root. Thread-safe: its one mutable
    state, the set of study folders made durable, is only added to and cleared.

    This class is also the archive interface every backend keeps (see
    :mod:`router.archive_backend`): the node-local ``.incoming`` folder and temporary files,
    :meth:`place` / :meth:`quarantine` of a synced temporary file under a key (the relative
    path), :meth:`exists`, :meth:`open_read` (a stream), :meth:`local_copy` (a readable file
    for the forwarding SCU), and :meth:`files_modified_since` for start-up recovery.
    """

    #: Whether start-up recovery may look for files without a row (cheap here: folder mtimes).
    scans_for_orphans = True
    #: Whether :meth:`place` only renames a temporary file, never reading it: its bytes need not
    #: stay in the page cache after they are written (router.dicom.spool's direct I/O).
    places_by_rename = True

    def __init__(self, root: Path, node_id: str | None = None) -> None:
        self.root = Path(root).resolve()
        # Per node: nodes sharing the archive never remove each other's transfers in progress.
        self.incoming = self.root / INCOMING / node_id if node_id else self.root / INCOMING
        self.quarantine_root = self.root / QUARANTINE
        # Study folders whose bumped modification time this process has made durable (fsynced):
        # their mtime is then later than any earlier run's stop, which is all start-up recovery
        # asks of it (files_modified_since), so they are not bumped and fsynced again. Cleared
        # when full (each is then bumped once more).
        self._durable_studies: set[str] = set()

    # ------------------------------------------------------------------ layout
    def prepare(self) -> None:
        """Create the root, incoming and quarantine folders.

        Raises
        ------
        ArchiveError
            If they cannot be created.
        """
        try:
            for folder in (self.root, self.incoming, self.quarantine_root):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArchiveError(f"cannot create archive folders under {self.root}: {exc.strerror}") from exc

    def instance_relpath(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        """``<Study>/<Series>/<SOP>.dcm`` for validated UIDs.

        Raises
        ------
        ArchiveError
            If a UID is not a valid UID (this is a programming error: callers validate first).
        """
        for uid in (study_uid, series_uid, sop_instance_uid):
            problem = uid_problem(uid)
            if problem:
                raise ArchiveError(f"refusing to build an archive path from an invalid UID ({problem})")
        return f"{study_uid}/{series_uid}/{sop_instance_uid}.dcm"

    def path(self, relative_path: str) -> Path:
        """Absolute path of an archive-relative path."""
        return self.root / relative_path

    def new_temp_path(self, suffix: str = ".part") -> Path:
        """A fresh path in the incoming folder (not created)."""
        return self.incoming / f"{os.getpid()}-{time.monotonic_ns()}-{os.urandom(4).hex()}{suffix}"

    # ------------------------------------------------------------------ durable writes
    def write_temp(self, data: bytes) -> Path:
        """Write ``data`` to a new temporary file in the incoming folder (not yet fsynced).

        Raises
        ------
        ArchiveError
            On any write error (disk full, read-only file system...); nothing is left behind.
        """
        temp = self.new_temp_path()
        try:
            with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
                handle.write(data)
        except OSError as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot write to the archive: {exc.strerror}") from exc
        return temp

    def sync_temp(self, temp: Path) -> int:
        """fsync a complete temporary file before it is placed; returns its size in bytes.

        Raises
        ------
        ArchiveError
            On any I/O error; the temporary file is removed.
        """
        try:
            return _fsync_file(temp)
        except OSError as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot store {temp.name}: {exc.strerror}") from exc

    def prepare_folder(self, relative_path: str) -> None:
        """Create the missing folders of ``relative_path``, each made durable (its parent
        fsynced), so that :meth:`place` finds them: intake calls this before its index
        transaction, which then does not hold the database write lock for those fsyncs (two
        for the first instance of a study; docs/benchmarks.md, lever 34).

        Raises
        ------
        ArchiveError
            On any I/O error.
        """
        try:
            self._make_dirs((self.root / relative_path).parent)
        except OSError as exc:
            raise ArchiveError(f"cannot store {relative_path.rsplit('/', 1)[-1]}: {exc.strerror}") from exc

    def place(
        self,
        temp: Path,
        relative_path: str,
        *,
        replace: bool = False,
        synced: bool = False,
        sync_folder: bool = True,
    ) -> StoredFile:
        """Durably move a complete temporary file to ``relative_path``.

        fsync the file (unless ``synced``: the caller's :meth:`sync_temp` just did), create
        missing folders (fsyncing each parent), rename, fsync the folder. Without ``replace``
        an existing file is never overwritten. With ``sync_folder`` false the last step is the
        caller's: the rename is durable only once it has called :meth:`sync_folder`, which it
        must do before acknowledging anything (intake does it after its index commit, so the
        database write lock is not held for it).

        Raises
        ------
        FileExistsError
            If the target exists and ``replace`` is false (the temporary file is kept).
        ArchiveError
            On any I/O error; the temporary file is removed and no partial target exists.
        """
        target = self.root / relative_path
        try:
            size = os.stat(temp).st_size if synced else _fsync_file(temp)
            os.chmod(temp, FILE_MODE)
            self._make_dirs(target.parent)
            if not replace and target.exists():
                raise FileExistsError(errno.EEXIST, "exists", str(target))
            os.replace(temp, target)
            if sync_folder:
                self._sync_instance_folders(target.parent, relative_path)
        except FileExistsError:
            raise
        except OSError as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot store {relative_path.rsplit('/', 1)[-1]}: {exc.strerror}") from exc
        return StoredFile(relative_path=relative_path, size_bytes=size)

    def _study_to_bump(self, relative_path: str) -> str | None:
        """The study folder (relative) whose mtime placing ``relative_path`` must bump and make
        durable; None for a path under a dot folder or a study already made durable here."""
        if relative_path.startswith("."):
            return None
        study = relative_path.split("/", 1)[0]
        return None if study in self._durable_studies else study

    def _sync_instance_folders(self, folder: Path, relative_path: str) -> None:
        """fsync ``folder`` and, the first time in this process, bump the modification time of
        the study folder above it and fsync that: start-up recovery finds new files by looking
        at study folders only (see :meth:`files_modified_since`). Bumped here, for every way a
        file reaches its folder (a resend answered from the stored copy included), so a study
        is never marked durable with an older mtime (found by a trial)."""
        _fsync_dir(folder)
        study = self._study_to_bump(relative_path)
        if study is not None:
            os.utime(folder.parent)
            _fsync_dir(folder.parent)
            if len(self._durable_studies) >= _DURABLE_STUDIES_MAX:
                self._durable_studies.clear()
            self._durable_studies.add(study)

    def sync_folder(self, relative_path: str) -> None:
        """fsync the folder holding ``relative_path``: a rename into it (:meth:`place` with
        ``sync_folder=False``) is then durable (POSIX makes a new directory entry durable only
        with an fsync of its directory). For an instance's path, the first time in this process,
        its study folder's modification time is bumped and fsynced too: that is how start-up
        recovery finds the file (:meth:`files_modified_since`), and with the index commit not
        fsynced (``database.sqlite_intake_synchronous``) recovery may be what indexes it again.

        Raises
        ------
        ArchiveError
            On any I/O error (the file may not survive a power loss: do not acknowledge it).
        """
        folder = (self.root / relative_path).parent
        try:
            self._sync_instance_folders(folder, relative_path)
        except OSError as exc:
            raise ArchiveError(f"cannot store {relative_path.rsplit('/', 1)[-1]}: {exc.strerror}") from exc

    def quarantine(self, temp: Path, sop_instance_uid: str, sha256: str) -> StoredFile:
        """Keep a differing copy under ``.quarantine/<SOP>/<sha256>.dcm`` (never overwriting).

        Raises
        ------
        ArchiveError
            On I/O errors.
        """
        problem = uid_problem(sop_instance_uid)
        folder = sop_instance_uid if problem is None else "invalid-uid"
        relative = f"{QUARANTINE}/{folder}/{sha256}.dcm"
        try:
            return self.place(temp, relative)
        except FileExistsError:
            # The very same bytes are already quarantined: nothing more to keep.
            _remove_quietly(temp)
            return StoredFile(relative_path=relative, size_bytes=self.size(relative))

    # ------------------------------------------------------------------ reads
    def exists(self, relative_path: str) -> bool:
        """Whether an archive file exists at ``relative_path``."""
        return (self.root / relative_path).is_file()

    def size(self, relative_path: str) -> int:
        """Size in bytes of a stored file.

        Raises
        ------
        ArchiveError
            If it cannot be read.
        """
        try:
            return (self.root / relative_path).stat().st_size
        except OSError as exc:
            raise ArchiveError(f"cannot read {relative_path.rsplit('/', 1)[-1]}: {exc.strerror}") from exc

    def open_read(self, relative_path: str) -> BinaryIO:
        """A binary stream of a stored file, as received (the caller closes it).

        Raises
        ------
        ArchiveError
            If it cannot be opened.
        """
        try:
            return open(self.root / relative_path, "rb")
        except OSError as exc:
            raise ArchiveError(f"cannot read {relative_path.rsplit('/', 1)[-1]}: {exc.strerror}") from exc

    @contextlib.contextmanager
    def local_copy(self, relative_path: str) -> Iterator[Path]:
        """A local Part 10 file with the stored bytes, for as long as the context lasts.

        The folder backend gives the archive file itself (no copy).

        Raises
        ------
        ArchiveError
            If the file is missing or unreadable.
        """
        path = self.root / relative_path
        if not path.is_file():
            raise ArchiveError(f"{relative_path.rsplit('/', 1)[-1]} is missing from the archive")
        yield path

    def move(self, relative_path: str, target_relative_path: str) -> None:
        """Move a stored file to another key (recovery sets orphans aside with it).

        Raises
        ------
        ArchiveError
            On I/O errors.
        """
        target = self.root / target_relative_path
        try:
            self._make_dirs(target.parent)
            os.replace(self.root / relative_path, target)
            _fsync_dir(target.parent)
        except OSError as exc:
            raise ArchiveError(f"cannot move {relative_path}: {exc.strerror}") from exc

    def remove_temp(self, temp: Path) -> None:
        """Delete a temporary file if it still exists."""
        _remove_quietly(temp)

    def _make_dirs(self, folder: Path) -> None:
        """mkdir -p, fsyncing the parent of every folder created so the new entry is durable."""
        missing: list[Path] = []
        current = folder
        while not current.exists():
            missing.append(current)
            current = current.parent
        for path in reversed(missing):
            try:
                path.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(path.parent)

    # ------------------------------------------------------------------ maintenance
    def clean_incoming(self, older_than_seconds: float = 0.0) -> int:
        """Delete temporary files in the incoming folder older than the given age; returns the count.

        At start-up (age 0) everything there is debris of a crash or an aborted association:
        nothing in it was ever acknowledged.
        """
        return _clean_folder(self.incoming, older_than_seconds)

    def files_modified_since(self, since_epoch: float) -> list[str]:
        """Relative paths of instance files (``*/*/*.dcm``) modified at or after ``since_epoch``,
        oldest first: the order they were received in (a received file is written once, then
        renamed), so recovery indexes a study's instances in that order and its first one
        (whose sender and evidence the study row keeps) is the first received.

        Looks inside only the study folders whose modification time is recent enough (the
        first placement into a study in each process bumps its mtime and fsyncs it, so it is
        later than the stop of any earlier run), so it reads one directory entry per study and
        the files of recent studies only, never the whole archive.
        """
        found: list[tuple[int, str]] = []
        try:
            studies = list(os.scandir(self.root))
        except FileNotFoundError:
            return []
        for study in studies:
            # study folders are named by UIDs (digits and dots): not lost+found, not dot folders
            if not _STUDY_FOLDER.fullmatch(study.name) or not study.is_dir(follow_symlinks=False):
                continue
            if study.stat().st_mtime < since_epoch:
                continue
            for series in _scandir_recent(study.path, since_epoch):
                for item in _scandir_files(series.path):
                    modified = item.stat()
                    if item.name.endswith(".dcm") and modified.st_mtime >= since_epoch:
                        found.append((modified.st_mtime_ns, f"{study.name}/{series.name}/{item.name}"))
        found.sort()  # by modification time (nanoseconds), then path
        return [path for _, path in found]


def _scandir_recent(path: str, since_epoch: float) -> list[os.DirEntry[str]]:
    # A folder's mtime changes when an entry is added to it, so older folders hold no new files.
    return _scandir(path, lambda e: e.is_dir(follow_symlinks=False) and e.stat().st_mtime >= since_epoch)


def _scandir_files(path: str) -> list[os.DirEntry[str]]:
    return _scandir(path, lambda e: e.is_file(follow_symlinks=False))


def _scandir(path: str, keep: Callable[[os.DirEntry[str]], bool]) -> list[os.DirEntry[str]]:
    """The entries of the folder ``path`` that ``keep`` keeps; none if it is gone, or if this
    process may not read it (logged: recovery goes on without it)."""
    try:
        return [entry for entry in os.scandir(path) if keep(entry)]
    except FileNotFoundError:
        return []
    except OSError as exc:
        LOG.warning("recovery cannot read folder %s (%s); skipped", path, exc.strerror or type(exc).__name__)
        return []


def _fsync_file(path: Path) -> int:
    """fsync a file; returns its size in bytes."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:  # pragma: no cover - depends on the file system
        LOG.warning("could not remove temporary file %s: %s", path.name, exc.strerror)


def clean_incoming_of(root: Path, node_ids: Iterable[str], older_than_seconds: float) -> int:
    """Delete temporary files older than ``older_than_seconds`` in the incoming folders of
    other nodes (``<root>/.incoming/<node id>/``; dead ones: the caller checks heartbeats);
    returns the count. Nothing in them was ever acknowledged. The folders stay, so a node that
    comes back finds its own.
    """
    removed = 0
    for node_id in node_ids:
        if node_id and "/" not in node_id and not node_id.startswith("."):  # never leave .incoming
            removed += _clean_folder(root / INCOMING / node_id, older_than_seconds)
    return removed


def _clean_folder(folder: Path, older_than_seconds: float) -> int:
    removed = 0
    cutoff = time.time() - older_than_seconds
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat().st_mtime <= cutoff:
                os.unlink(entry.path)
                removed += 1
        except FileNotFoundError:
            continue
    return removed
