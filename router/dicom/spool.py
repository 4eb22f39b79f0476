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
"""

from __future__ import annotations

import errno
import hashlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from router.dicom.prescan import SCAN_BYTES


class SpoolFile:
    """A write-only temporary file in ``directory`` whose write errors are recorded, not raised.

    Provides what pynetdicom uses of a ``NamedTemporaryFile``: ``name``, ``write``,
    ``file.flush()`` and ``close``.
    """

    def __init__(self, directory: Path, suffix: str = ".dcm") -> None:
        self.error: OSError | None = None
        self.file = self  # pynetdicom calls ``.file.flush()``
        self._descriptor: int | None = None
        self._written = 0  # bytes
        self._digest: Any = None  # hashlib.sha256 of what was written since begin_data_set()
        # The first HEAD_BYTES written, in one buffer: a list of the writes cost 40 times their
        # bytes for a peer sending 1-byte fragments (found by a hostile-peer trial).
        self._head = bytearray()
        try:
            self._descriptor, self.name = _create(str(directory), suffix)
        except OSError as exc:
            self.error = exc
            self.name = str(Path(directory) / f"unwritable-{uuid.uuid4().hex}{suffix}")

    @property
    def failed(self) -> bool:
        """Whether any write, flush or the creation failed."""
        return self.error is not None

    def begin_data_set(self) -> None:
        """Mark the end of the File Meta Information: what is written from now on is the data
        set, hashed as it is written (see :attr:`data_set_digest`)."""
        self._digest = hashlib.sha256()

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
                _write_all(self._descriptor, data)
            except OSError as exc:
                self._fail(exc)
            else:
                if self._written < HEAD_BYTES:
                    self._head += data[: HEAD_BYTES - self._written]
                self._written += len(data)
                if self._digest is not None:
                    self._digest.update(data)
        return len(data)

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

    def flush(self) -> None:
        """Nothing to do: every write goes straight to the kernel (a full disk shows there)."""

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._descriptor is not None:
            descriptor, self._descriptor = self._descriptor, None
            try:
                os.close(descriptor)
            except OSError as exc:
                self._fail(exc)

    def _fail(self, exc: OSError) -> None:
        self.error = exc
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


def _write_all(descriptor: int, data: bytes | memoryview) -> None:
    """``os.write`` until all of ``data`` is written (a regular file may take it in parts)."""
    written = os.write(descriptor, data)
    if written < len(data):
        view = memoryview(data)
        while written < len(view):
            written += os.write(descriptor, view[written:])


def spool_factory(directory: Path) -> Callable[..., SpoolFile]:
    """A drop-in for ``tempfile.NamedTemporaryFile`` as pynetdicom calls it (keyword arguments)."""

    def make(*_args: Any, suffix: str = ".dcm", **_kwargs: Any) -> SpoolFile:
        return SpoolFile(directory, suffix=suffix)

    return make
