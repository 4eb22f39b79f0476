"""A received file read from the bytes already in memory, the file opened only past them.

The C-STORE handler reads the header of every data set it receives
(:func:`router.dicom.extract.read_header`). From the file, that cost an ``open``, ``fstat``
calls and a ``lseek`` for each element pydicom's File Meta walk and the header scan skipped, 23
per instance: the router made 100 system calls per 40 KB instance in all, 68 since it reads
from memory (docs/benchmarks.md, lever 52). The spool file keeps the first bytes it wrote
(:attr:`router.dicom.spool.SpoolFile.head`: the File Meta Information and the start of the data
set, where the wanted elements are), so the walk reads them from memory and opens the file only
for what lies past them: encapsulated Pixel Data's item headers, the elements after Pixel Data,
a deflated data set, or wanted elements after 64 KiB of others.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import BinaryIO


class HeadFirstReader:
    """A read-only binary file of ``size`` bytes whose first ``len(head)`` bytes are ``head``.

    Reads within ``head`` are served from memory; the file at ``path`` is opened (once) for the
    first read that needs bytes past it. ``head`` must be the file's own first bytes, and
    ``size`` its length in bytes: nothing is read past ``size``. Provides what the header walk
    uses of a file: ``read``, ``seek`` (``os.SEEK_SET``, ``SEEK_CUR``, ``SEEK_END``), ``tell``
    and ``close``; a context manager.

    Raises OSError from opening or reading the file (as ``open`` and ``read`` would).
    """

    def __init__(self, path: Path, head: bytes, size: int) -> None:
        self._path = path
        self._head = head
        self._size = size
        self._position = 0
        self._file: BinaryIO | None = None

    @property
    def size(self) -> int:
        """The file's length, in bytes."""
        return self._size

    @property
    def opened(self) -> bool:
        """Whether a read needed the file itself."""
        return self._file is not None

    def read(self, count: int | None = -1) -> bytes:
        """Up to ``count`` bytes from the current position (all to the end if ``count`` is -1 or
        None); fewer only at the end of the file. Raises ValueError for a ``count`` below -1, as
        a file does (a malformed length can ask for one)."""
        if count is not None and count < -1:
            raise ValueError("read length must be non-negative or -1")
        start = self._position
        end = self._size if count is None or count == -1 else min(start + count, self._size)
        if end <= start:
            return b""
        cached = len(self._head)
        if end <= cached:
            data = self._head[start:end]
        else:
            past = max(start, cached)
            handle = self._open()
            handle.seek(past)
            rest = handle.read(end - past)
            data = self._head[start:cached] + rest if start < cached else rest
        self._position = start + len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move to ``offset`` from the start, the current position or the end; returns the new
        position. Raises ValueError for a negative position, as a file does."""
        if whence == os.SEEK_CUR:
            offset += self._position
        elif whence == os.SEEK_END:
            offset += self._size
        elif whence != os.SEEK_SET:
            raise ValueError(f"invalid whence ({whence})")
        if offset < 0:
            raise ValueError(f"negative seek position {offset}")
        self._position = offset
        return offset

    def tell(self) -> int:
        """The current position, in bytes from the start."""
        return self._position

    def close(self) -> None:
        """Close the file if a read opened it (idempotent)."""
        handle, self._file = self._file, None
        if handle is not None:
            handle.close()

    def _open(self) -> BinaryIO:
        if self._file is None:
            self._file = open(self._path, "rb")  # noqa: SIM115 - closed by close()
        return self._file

    def __enter__(self) -> HeadFirstReader:
        return self

    def __exit__(
        self, _type: type[BaseException] | None, _value: BaseException | None, _traceback: TracebackType | None
    ) -> None:
        self.close()
