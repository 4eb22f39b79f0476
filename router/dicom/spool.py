"""Spool files for C-STORE data sets that are still arriving, which never fail the association.

With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes each P-DATA fragment to a temporary file
as it arrives. Its own temporary file raises on a full disk or an unwritable folder, in the
thread reading the socket, which aborts the association: the sender gets no status and the
other instances of the association are lost with it. :class:`SpoolFile` remembers the error
instead, deletes what was written (nothing partial stays), and discards the rest of the data
set, so the message completes and the handler can answer 0xA700 (Refused: Out of Resources,
PS3.4 B.2.3); the association and the listener carry on.

Once told where the data set starts (:meth:`SpoolFile.begin_data_set`, called by the C-STORE
codec after the File Meta Information), a spool file also keeps the SHA-256 of the data set
bytes as they arrive, in the network thread that writes them: the handler then need not read
the file again to hash it, and for a large data set the hashing overlaps the transfer.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any


class SpoolFile:
    """A write-only temporary file in ``directory`` whose write errors are recorded, not raised.

    Provides what pynetdicom uses of a ``NamedTemporaryFile``: ``name``, ``write``,
    ``file.flush()`` and ``close``.
    """

    def __init__(self, directory: Path, suffix: str = ".dcm") -> None:
        self.error: OSError | None = None
        self.file = self  # pynetdicom calls ``.file.flush()``
        self._handle: Any = None
        self._digest: Any = None  # hashlib SHA-256 of what was written since begin_data_set()
        self._size = 0  # bytes written, in bytes
        try:
            descriptor, name = tempfile.mkstemp(suffix=suffix, dir=directory)
            self._handle = os.fdopen(descriptor, "wb")
            self.name = name
        except OSError as exc:
            self.error = exc
            self.name = str(Path(directory) / f"unwritable-{uuid.uuid4().hex}{suffix}")

    @property
    def failed(self) -> bool:
        """Whether any write, flush or the creation failed."""
        return self.error is not None

    def begin_data_set(self) -> None:
        """What is written from now on is the data set: keep its SHA-256 (see the module)."""
        self._digest = hashlib.sha256()

    @property
    def data_set_sha256(self) -> tuple[str, int] | None:
        """SHA-256 (hex) of the data set written since :meth:`begin_data_set` and the file's
        size in bytes: what :func:`router.archive.dataset_sha256` computes from the file.
        ``None`` if it was not called or a write failed."""
        if self._digest is None or self.failed:
            return None
        return self._digest.hexdigest(), self._size

    def write(self, data: bytes) -> int:
        """Write ``data``; after a failure, discard it. Returns ``len(data)``."""
        if self._handle is not None:
            try:
                self._handle.write(data)
            except OSError as exc:
                self._fail(exc)
            else:
                self._size += len(data)
                if self._digest is not None:
                    self._digest.update(data)
        return len(data)

    def flush(self) -> None:
        """Flush to the kernel (a full disk shows here with buffered writes)."""
        if self._handle is not None:
            try:
                self._handle.flush()
            except OSError as exc:
                self._fail(exc)

    def close(self) -> None:
        """Close the file (idempotent)."""
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError as exc:
                self._fail(exc)
            self._handle = None

    def _fail(self, exc: OSError) -> None:
        self.error = exc
        handle, self._handle = self._handle, None
        try:
            handle.close()
        except OSError:
            pass
        try:
            os.unlink(self.name)  # nothing partial stays
        except OSError:
            pass


def spool_factory(directory: Path) -> Callable[..., SpoolFile]:
    """A drop-in for ``tempfile.NamedTemporaryFile`` as pynetdicom calls it (keyword arguments)."""

    def make(*_args: Any, suffix: str = ".dcm", **_kwargs: Any) -> SpoolFile:
        return SpoolFile(directory, suffix=suffix)

    return make
