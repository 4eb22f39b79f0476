"""Spool files for C-STORE data sets that are still arriving, which never fail the association.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each P-DATA fragment to a temporary file
as it arrives. Its own temporary file raises on a full disk or an unwritable folder, in the
thread reading the socket, which aborts the association: the sender gets no status and the
other instances of the association are lost with it. :class:`SpoolFile` remembers the error
instead, deletes what was written (nothing partial stays), and discards the rest of the data
set, so the message completes and the handler can answer 0xA700 (Refused: Out of Resources,
PS3.4 B.2.3); the association and the listener carry on.

Once told where the data set starts (:meth:`SpoolFile.begin_data_set`, after the File Meta
Information), it also computes the data set's SHA-256 as the fragments are written, while they
are still in the processor's cache: the intake service then does not read the file back to
hash it (docs/benchmarks.md, lever 42).

Fragments are gathered in a staging buffer of :data:`STAGE_BYTES` (page-aligned, reused from
one data set to the next) and written a whole buffer at a time, the rest when the data set is
complete (:meth:`SpoolFile.finish`). A data set that fills the buffer, in an uncompressed
transfer syntax, with an archive that only renames the file into place, is written with
``O_DIRECT``: straight from the buffer to the disk, not through the page cache, whose fresh
pages, copy and write-back at fsync cost more processor time than anything else on the way of
a 512 KB instance (docs/benchmarks.md, lever 54). The last part that does not fill a 4 KiB
block is written through the page cache. A file system that refuses ``O_DIRECT`` gets every
write through the page cache, as before.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import mmap
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from router.dicom.prescan import SCAN_BYTES
from router.part10 import WrittenFileMeta


class SpoolFile:
    """A write-only temporary file in ``directory`` whose write errors are recorded, not raised.

    Provides what pynetdicom uses of a ``NamedTemporaryFile``: ``name``, ``write``,
    ``file.flush()`` and ``close``.
    """

    def __init__(self, directory: Path, suffix: str = ".dcm", *, direct_io: bool = False) -> None:
        """``direct_io``: a data set whose transfer syntax :meth:`begin_data_set` names as an
        uncompressed one may be written with ``O_DIRECT`` (see the module docstring); without
        that call (pynetdicom's own decoder wrote the File Meta Information, and the file is
        read back to hash it), never."""
        self.error: OSError | None = None
        self.file = self  # pynetdicom calls ``.file.flush()``
        self._descriptor: int | None = None
        self._written = 0  # bytes
        self._directory = str(directory)
        self._may_direct_io = direct_io
        self._direct_io = False  # until begin_data_set() names an uncompressed transfer syntax
        self._direct = False  # the descriptor is in O_DIRECT mode now
        self.direct_bytes = 0  # bytes written with O_DIRECT (none when the file system refuses it)
        #: Set by the handler once the intake service has taken the file (moved into the archive,
        #: or removed as a copy already kept): nothing is left at :attr:`name`, so it is not
        #: unlinked (router.dicom.store_codec._discard_spool).
        self.consumed = False
        self._stage: mmap.mmap | None = None
        self._staged = 0  # bytes in the stage
        self._digest: Any = None  # hashlib.sha256 of what was written since begin_data_set()
        self._file_meta: WrittenFileMeta | None = None
        # The first HEAD_BYTES written, in one buffer: a list of the writes cost 40 times their
        # bytes for a peer sending 1-byte fragments (found by a hostile-peer trial).
        self._head = bytearray()
        try:
            self._descriptor, self.name = _create(self._directory, suffix)
        except OSError as exc:
            self.error = exc
            self.name = str(Path(directory) / f"unwritable-{uuid.uuid4().hex}{suffix}")
        else:
            self._stage = _take_stage()

    @property
    def failed(self) -> bool:
        """Whether any write, flush or the creation failed."""
        return self.error is not None

    def begin_data_set(self, *, transfer_syntax: str | None = None, sending_ae_title: str | None = None) -> None:
        """Mark the end of the File Meta Information: what is written from now on is the data
        set, hashed as it is written (see :attr:`data_set_digest`). ``transfer_syntax`` and
        ``sending_ae_title``: what the File Meta Information just written says, kept for the
        header read (:attr:`file_meta`). Only a data set in one of
        :data:`UNCOMPRESSED_TRANSFER_SYNTAXES` may be written with ``O_DIRECT``; any other (or
        an unnamed one) goes through the page cache, for the header read's reads of
        encapsulated or deflated data."""
        self._digest = hashlib.sha256()
        if transfer_syntax is not None:
            self._file_meta = WrittenFileMeta(transfer_syntax, sending_ae_title, self._written)
        self._direct_io = (
            self._may_direct_io
            and transfer_syntax in UNCOMPRESSED_TRANSFER_SYNTAXES
            and self._directory not in _REFUSE_DIRECT_IO
        )

    @property
    def data_set_digest(self) -> tuple[str, int] | None:
        """``(SHA-256 hex of the data set, file size in bytes)``, as
        :func:`router.archive.dataset_sha256` reads them from the file; ``None`` without
        :meth:`begin_data_set` or after a failure."""
        if self._digest is None or self.failed:
            return None
        return self._digest.hexdigest(), self._written

    def write(self, data: bytes | memoryview) -> int:
        """Write ``data``; after a failure, discard it. Returns ``len(data)``."""
        if self._descriptor is not None:
            try:
                self._stage_write(data)
            except OSError as exc:
                self._fail(exc)
            else:
                if self._written < HEAD_BYTES:
                    self._head += data[: HEAD_BYTES - self._written]
                self._written += len(data)
                if self._digest is not None:
                    self._digest.update(data)
        return len(data)

    def _stage_write(self, data: bytes | memoryview) -> None:
        stage = self._stage
        if stage is None:  # no stage: straight to the kernel
            assert self._descriptor is not None
            _write_all(self._descriptor, data)
            return
        with memoryview(data) as view:
            count = len(view)
            taken = 0
            while taken < count:
                part = min(count - taken, STAGE_BYTES - self._staged)
                stage[self._staged : self._staged + part] = view[taken : taken + part]
                self._staged += part
                taken += part
                if self._staged == STAGE_BYTES:
                    self._write_stage(STAGE_BYTES)

    def _write_stage(self, count: int) -> None:
        """Write the stage's first ``count`` bytes (a multiple of 4 KiB, at a file offset that
        is one too) and empty it: with ``O_DIRECT`` when allowed and taken."""
        assert self._descriptor is not None and self._stage is not None
        with memoryview(self._stage) as view:
            if self._direct_io and not self._direct:
                self._direct = _set_direct(self._descriptor, True)
                if not self._direct:
                    self._direct_io = False
                    _REFUSE_DIRECT_IO.add(self._directory)
            try:
                _write_all(self._descriptor, view[:count])
            except OSError as exc:
                if not self._direct or exc.errno != errno.EINVAL:
                    raise
                # The file system took the flag but not the write: through the page cache.
                self._direct = self._direct_io = _set_direct(self._descriptor, False)
                _REFUSE_DIRECT_IO.add(self._directory)
                _write_all(self._descriptor, view[:count])
            else:
                if self._direct:
                    self.direct_bytes += count
            self._staged = 0

    def finish(self) -> None:
        """Write what the stage still holds: the data set is complete (or being discarded).
        Idempotent; a failure is recorded (:attr:`failed`), as for :meth:`write`."""
        stage, staged = self._stage, self._staged
        if stage is None or self._descriptor is None:
            return
        try:
            start = 0
            if self._direct:
                start = staged - staged % _BLOCK
                if start:
                    self._write_stage(start)
                # The last part, shorter than a block, through the page cache.
                self._direct = _set_direct(self._descriptor, False)
            if staged > start:
                with memoryview(stage) as view:
                    _write_all(self._descriptor, view[start:staged])
        except OSError as exc:
            self._fail(exc)  # gives the stage back
        finally:
            if self._stage is stage:
                self._stage, self._staged = None, 0
                _give_back_stage(stage)

    def discard(self) -> None:
        """Close the file without writing what is staged: the data set is not kept (the caller
        removes the file). Idempotent."""
        stage, self._stage, self._staged = self._stage, None, 0
        if stage is not None:
            _give_back_stage(stage)
        self.close()

    @property
    def size(self) -> int:
        """Bytes written so far: the file's size once the data set is complete."""
        return self._written

    @property
    def head(self) -> tuple[bytes, int] | None:
        """``(the file's first bytes, its size in bytes)``: up to :data:`HEAD_BYTES` as written,
        kept in memory so that the header read need not read them back from the file
        (:func:`router.dicom.extract.read_header`); ``None`` after a failure."""
        if self.failed:
            return None
        return bytes(self._head), self._written

    @property
    def file_meta(self) -> WrittenFileMeta | None:
        """The File Meta Information this file starts with, as :meth:`begin_data_set` was told
        it: the header read need not parse it (:func:`router.dicom.extract.read_header`);
        ``None`` when not told, or after a failure."""
        return None if self.failed else self._file_meta

    def flush(self) -> None:
        """Nothing to do: every write goes straight to the kernel (a full disk shows there)."""

    def close(self) -> None:
        """Write what is staged (:meth:`finish`) and close the file (idempotent)."""
        self.finish()
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            try:
                os.close(descriptor)
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        stage, self._stage, self._staged = self._stage, None, 0
        if stage is not None:
            _give_back_stage(stage)
        descriptor, self._descriptor = self._descriptor, None
        if descriptor is not None:
            try:
                os.close(descriptor)
            except OSError:
                pass
        try:
            os.unlink(self.name)  # nothing partial stays
        except OSError:
            pass


#: Bytes of a spool file kept in memory as they are written (:attr:`SpoolFile.head`): the File
#: Meta Information and as much of the data set as the header read's scan takes at once
#: (router.dicom.prescan.SCAN_BYTES), with room for a File Meta Information of up to 4 KiB.
HEAD_BYTES = SCAN_BYTES + 4096
#: Transfer syntaxes whose data set is neither encapsulated nor deflated (PS3.5 sections
#: 10.1-10.3; pydicom's ``UncompressedTransferSyntaxes`` includes Deflated): the header read
#: seldom needs such a file past its first bytes (only for wanted elements after 64 KiB of
#: others), so it may be written around the page cache.
UNCOMPRESSED_TRANSFER_SYNTAXES = frozenset({ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian})
#: Bytes of a spool file's staging buffer: a data set of up to this much (File Meta Information
#: included) is written in one ``write`` once complete; a larger one a buffer at a time.
STAGE_BYTES = 262_144
#: Alignment of ``O_DIRECT`` writes (buffer address, length and file offset): 4 KiB, the
#: largest logical block size of common disks (Linux open(2), "O_DIRECT").
_BLOCK = 4096
#: Staging buffers not in use, for the next spool file: each is touched once and then reused
#: (a fresh one costs a page fault per 4 KiB). At most :data:`_SPARE_STAGES` are kept.
_SPARE: list[mmap.mmap] = []
_SPARE_STAGES = 16
#: Folders whose file system refused ``O_DIRECT``: not asked again.
_REFUSE_DIRECT_IO: set[str] = set()
_O_DIRECT = getattr(os, "O_DIRECT", 0)
#: As ``tempfile.mkstemp`` opens: O_EXCL, so an existing file or link is never reused.
_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | getattr(os, "O_NOFOLLOW", 0)
_ATTEMPTS = 100


def _random_name_part() -> str:
    """64 random bits in hex: a spool file's name cannot be guessed from the ones before it, so
    files planted in the incoming folder cannot take the next names (found by the hostile
    trial of lever 51, when the names came from a counter)."""
    return os.urandom(8).hex()


def _create(directory: str, suffix: str) -> tuple[int, str]:
    """A new file in ``directory``, mode 0600, opened for writing: ``(descriptor, path)``.

    ``tempfile.mkstemp``'s guarantees with a name from one ``os.urandom`` call instead of eight
    ``random.choice`` calls, and a file descriptor instead of a buffered file object, for every
    received data set (docs/benchmarks.md, lever 51). Raises OSError (``FileExistsError`` if
    no name was free in 100 tries).
    """
    for _attempt in range(_ATTEMPTS):
        name = f"{directory}/rx-{_random_name_part()}{suffix}"
        try:
            return os.open(name, _FLAGS, 0o600), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free spool file name", directory)


def _take_stage() -> mmap.mmap | None:
    """A staging buffer: a spare one, or a new anonymous mapping (page-aligned); ``None`` if
    none can be mapped (the spool file then writes each fragment as it comes)."""
    try:
        return _SPARE.pop()
    except IndexError:
        pass
    try:
        return mmap.mmap(-1, STAGE_BYTES)
    except OSError:
        return None


def _give_back_stage(stage: mmap.mmap) -> None:
    if len(_SPARE) < _SPARE_STAGES:
        _SPARE.append(stage)
    else:
        stage.close()


def _set_direct(descriptor: int, direct: bool) -> bool:
    """Turn ``O_DIRECT`` on or off for an open file; returns whether it is on now (a file
    system that refuses it raises EINVAL here: it stays off)."""
    if not _O_DIRECT:
        return False
    try:
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
        fcntl.fcntl(descriptor, fcntl.F_SETFL, (flags | _O_DIRECT) if direct else (flags & ~_O_DIRECT))
    except OSError:
        if direct:
            return False
        raise
    return direct


def _write_all(descriptor: int, data: bytes | memoryview) -> None:
    """``os.write`` until all of ``data`` is written (a regular file may take it in parts)."""
    written = os.write(descriptor, data)
    if written < len(data):
        view = memoryview(data)
        while written < len(view):
            written += os.write(descriptor, view[written:])


def spool_factory(directory: Path, *, direct_io: bool = False) -> Callable[..., SpoolFile]:
    """A drop-in for ``tempfile.NamedTemporaryFile`` as pynetdicom calls it (keyword arguments).
    ``direct_io``: large uncompressed data sets may bypass the page cache (only where nothing
    reads the file soon after: the archive renames it into place)."""

    def make(*_args: Any, suffix: str = ".dcm", **_kwargs: Any) -> SpoolFile:
        return SpoolFile(directory, suffix=suffix, direct_io=direct_io)

    return make
