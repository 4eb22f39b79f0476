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
        self._written = 0  # bytes
        self._digest: Any = None  # hashlib.sha256 of what was written since begin_data_set()
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
        if self._handle is not None:
            try:
                self._handle.write(data)
            except OSError as exc:
                self._fail(exc)
            else:
                self._written += len(data)
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
