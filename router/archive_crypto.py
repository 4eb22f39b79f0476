"""Envelope encryption of archive files (AES-256-GCM), on any archive backend.

Each file gets a random 256-bit data key (DEK), wrapped (AES-256-GCM) by the active
key-encryption key (:mod:`router.keyring`). The file is::

    header: b"RTRENC" | version 1 (1 byte) | key id length (1) | key id (ASCII)
            | wrap nonce (12) | wrapped DEK (32 + 16 tag) | chunk size (4, big-endian) | nonce prefix (7)
    chunks: AES-256-GCM(DEK, nonce = prefix | chunk counter (4, big-endian) | last flag (1),
                        chunk of plaintext, aad = the fixed header fields) -> ciphertext + 16-byte tag

Chunks of 1 MiB are sealed one at a time (a 500 MB instance is never held in memory), each
authenticated; the counter and the flag on the last chunk make reordering, dropping or
truncating chunks fail authentication (the STREAM construction, Hoang, Reyhanitabar, Rogaway and
Vizár, CRYPTO 2015). The key id and the wrapped DEK are not part of the chunks' associated data, so
``router keys rotate`` re-wraps the DEK and rewrites only the header, never re-encrypting.
A wrong key or any changed byte raises :class:`~router.keyring.KeyRingError`; no plaintext of an
unauthenticated chunk is ever returned.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from router.archive import FILE_MODE, StoredFile, _remove_quietly
from router.archive_backend import ArchiveBackend
from router.errors import ArchiveError
from router.keyring import KEY_BYTES, NONCE_BYTES, KeyRing, KeyRingError

MAGIC = b"RTRENC"
VERSION = 1
CHUNK = 1 << 20  # bytes of plaintext per chunk
TAG = 16
_PREFIX = 7
_WRAPPED = KEY_BYTES + TAG


@dataclass(frozen=True)
class Header:
    """The header of an encrypted archive file."""

    key_id: str
    wrap_nonce: bytes
    wrapped_key: bytes
    chunk_size: int
    nonce_prefix: bytes

    def encode(self) -> bytes:
        """The header bytes."""
        kid = self.key_id.encode("ascii")
        return (
            MAGIC
            + bytes([VERSION, len(kid)])
            + kid
            + self.wrap_nonce
            + self.wrapped_key
            + struct.pack(">I", self.chunk_size)
            + self.nonce_prefix
        )

    @property
    def aad(self) -> bytes:
        """Associated data of every chunk: the fields a re-wrap never changes."""
        return MAGIC + bytes([VERSION]) + struct.pack(">I", self.chunk_size) + self.nonce_prefix


def read_header(stream: BinaryIO) -> Header:
    """Read and parse the header at the start of ``stream``.

    Raises
    ------
    KeyRingError
        If the stream does not start with a valid header (not an encrypted archive file).
    """
    start = _read_exact(stream, len(MAGIC) + 2)
    if len(start) < len(MAGIC) + 2 or start[: len(MAGIC)] != MAGIC or start[len(MAGIC)] != VERSION:
        raise KeyRingError("not an encrypted archive file (bad header)")
    kid_length = start[len(MAGIC) + 1]
    rest = _read_exact(stream, kid_length + NONCE_BYTES + _WRAPPED + 4 + _PREFIX)
    if len(rest) < kid_length + NONCE_BYTES + _WRAPPED + 4 + _PREFIX:
        raise KeyRingError("not an encrypted archive file (short header)")
    kid = rest[:kid_length].decode("ascii", errors="replace")
    at = kid_length
    wrap_nonce = rest[at : at + NONCE_BYTES]
    at += NONCE_BYTES
    wrapped = rest[at : at + _WRAPPED]
    at += _WRAPPED
    (chunk_size,) = struct.unpack(">I", rest[at : at + 4])
    if not 1 <= chunk_size <= 64 * CHUNK:
        raise KeyRingError("not an encrypted archive file (bad chunk size)")
    return Header(kid, wrap_nonce, wrapped, chunk_size, rest[at + 4 : at + 4 + _PREFIX])


def _wrap(keyring: KeyRing, key_id: str, data_key: bytes) -> tuple[bytes, bytes]:
    nonce = os.urandom(NONCE_BYTES)
    return nonce, AESGCM(keyring.key(key_id)).encrypt(nonce, data_key, b"router-dek:" + key_id.encode())


def _unwrap(keyring: KeyRing, header: Header) -> bytes:
    try:
        return AESGCM(keyring.key(header.key_id)).decrypt(
            header.wrap_nonce, header.wrapped_key, b"router-dek:" + header.key_id.encode()
        )
    except InvalidTag as exc:
        raise KeyRingError(
            f"the data key does not authenticate with key {header.key_id!r} (wrong key or tampered)"
        ) from exc


def _nonce(prefix: bytes, counter: int, last: bool) -> bytes:
    return prefix + struct.pack(">I", counter) + (b"\x01" if last else b"\x00")


def encrypt_stream(keyring: KeyRing, source: BinaryIO, target: BinaryIO) -> None:
    """Encrypt ``source`` into ``target`` with a new data key wrapped by the active KEK."""
    data_key = AESGCM.generate_key(bit_length=256)
    wrap_nonce, wrapped = _wrap(keyring, keyring.active_key_id, data_key)
    header = Header(keyring.active_key_id, wrap_nonce, wrapped, CHUNK, os.urandom(_PREFIX))
    target.write(header.encode())
    cipher, aad = AESGCM(data_key), header.aad
    counter = 0
    chunk = _read_exact(source, CHUNK)
    while True:
        following = _read_exact(source, CHUNK) if len(chunk) == CHUNK else b""
        last = not following
        target.write(cipher.encrypt(_nonce(header.nonce_prefix, counter, last), chunk, aad))
        if last:
            return
        chunk, counter = following, counter + 1


class DecryptingReader(io.RawIOBase):
    """A read-only stream of the plaintext of an encrypted archive file, chunk by chunk.

    Raises :class:`~router.keyring.KeyRingError` from ``read`` when a chunk does not
    authenticate, is missing, or data follows the last chunk.
    """

    def __init__(self, keyring: KeyRing, source: BinaryIO) -> None:
        super().__init__()
        self._source = source
        self._header = read_header(source)
        self._cipher = AESGCM(_unwrap(keyring, self._header))
        self._counter = 0
        self._buffer = b""
        self._pushback = b""  # bytes read ahead of the next chunk
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer and not self._done:
            self._next_chunk()
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count

    def _next_chunk(self) -> None:
        sealed = self._read(self._header.chunk_size + TAG)
        if len(sealed) < TAG:
            raise KeyRingError("encrypted archive file is truncated")
        last = len(sealed) < self._header.chunk_size + TAG or not self._more()
        try:
            self._buffer = self._cipher.decrypt(
                _nonce(self._header.nonce_prefix, self._counter, last), sealed, self._header.aad
            )
        except InvalidTag as exc:
            raise KeyRingError(f"chunk {self._counter} does not authenticate (tampered or truncated file)") from exc
        self._counter += 1
        self._done = last

    def _read(self, size: int) -> bytes:
        head, self._pushback = self._pushback[:size], self._pushback[size:]
        return head + _read_exact(self._source, size - len(head))

    def _more(self) -> bool:
        """Whether more bytes follow (a full-size chunk may or may not be the last); a byte
        read to find out is kept for the next chunk (S3 response bodies cannot seek)."""
        if not self._pushback:
            self._pushback = self._source.read(1)
        return bool(self._pushback)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._source.close()
        super().close()


class _Prepended(io.RawIOBase):
    """A stream with some bytes put back in front (for non-seekable sources)."""

    def __init__(self, head: bytes, rest: BinaryIO) -> None:
        super().__init__()
        self._head, self._rest = head, rest

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        if self._head:
            count = min(len(target), len(self._head))
            target[:count], self._head = self._head[:count], self._head[count:]
            return count
        data = self._rest.read(len(target))
        target[: len(data)] = data
        return len(data)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._rest.close()
        super().close()


def _read_exact(stream: BinaryIO, size: int) -> bytes:
    parts, remaining = [], size
    while remaining > 0:
        data = stream.read(remaining)
        if not data:
            break
        parts.append(data)
        remaining -= len(data)
    return b"".join(parts)


class EncryptedArchive:
    """An archive backend whose files are encrypted at rest (see the module docstring).

    Wraps another backend: temporary files (local, in ``.incoming``) stay plain while being
    received and are encrypted into a second temporary file just before :meth:`place`; reads
    (:meth:`open_read`, :meth:`local_copy`) decrypt. Keys and paths are those of the inner
    backend. Thread-safe if the inner backend is.
    """

    def __init__(self, inner: ArchiveBackend, keyring: KeyRing) -> None:
        self.inner = inner
        self.keyring = keyring
        self.root = inner.root
        self.incoming = inner.incoming
        self.scans_for_orphans = inner.scans_for_orphans
        self.places_by_rename = False  # each temporary file is read to be encrypted before place()

    # ------------------------------------------------------------------ delegated as is
    def prepare(self) -> None:
        """Create the inner backend's folders."""
        self.inner.prepare()

    def instance_relpath(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> str:
        """See :meth:`router.archive.Archive.instance_relpath`."""
        return self.inner.instance_relpath(study_uid, series_uid, sop_instance_uid)

    def write_temp(self, data: bytes) -> Path:
        """See :meth:`router.archive.Archive.write_temp` (plain, local)."""
        return self.inner.write_temp(data)

    def sync_temp(self, temp: Path) -> int:
        """See :meth:`router.archive.Archive.sync_temp`."""
        return self.inner.sync_temp(temp)

    def prepare_folder(self, relative_path: str) -> None:
        """See :meth:`router.archive.Archive.prepare_folder`."""
        self.inner.prepare_folder(relative_path)

    def remove_temp(self, temp: Path) -> None:
        """Delete a temporary file if it still exists."""
        self.inner.remove_temp(temp)

    def exists(self, relative_path: str) -> bool:
        """Whether a file is stored under ``relative_path``."""
        return self.inner.exists(relative_path)

    def size(self, relative_path: str) -> int:
        """Stored (encrypted) size in bytes."""
        return self.inner.size(relative_path)

    def move(self, relative_path: str, target_relative_path: str) -> None:
        """Move a stored file (still encrypted) to another key."""
        self.inner.move(relative_path, target_relative_path)

    def clean_incoming(self, older_than_seconds: float = 0.0) -> int:
        """See :meth:`router.archive.Archive.clean_incoming`."""
        return self.inner.clean_incoming(older_than_seconds)

    def files_modified_since(self, since_epoch: float) -> list[str]:
        """See :meth:`router.archive.Archive.files_modified_since`."""
        return self.inner.files_modified_since(since_epoch)

    # ------------------------------------------------------------------ encrypting writes
    def place(
        self,
        temp: Path,
        relative_path: str,
        *,
        replace: bool = False,
        synced: bool = False,
        sync_folder: bool = True,
    ) -> StoredFile:
        """Encrypt the plain temporary file ``temp`` (consumed) and store it durably (with
        ``sync_folder`` false, once :meth:`sync_folder` has been called too).

        Raises
        ------
        FileExistsError
            If the target exists and ``replace`` is false (``temp`` is kept).
        ArchiveError
            On I/O errors; nothing partial is stored and ``temp`` is removed.
        """
        sealed = self._seal(temp)
        try:
            stored = self.inner.place(sealed, relative_path, replace=replace, synced=True, sync_folder=sync_folder)
        except FileExistsError:
            _remove_quietly(sealed)
            raise
        _remove_quietly(temp)
        return stored

    def sync_folder(self, relative_path: str) -> None:
        """See :meth:`router.archive.Archive.sync_folder` (the inner backend's)."""
        self.inner.sync_folder(relative_path)

    def quarantine(self, temp: Path, sop_instance_uid: str, sha256: str) -> StoredFile:
        """Encrypt and keep a differing copy under ``.quarantine/`` (see the inner backend)."""
        sealed = self._seal(temp)
        _remove_quietly(temp)
        return self.inner.quarantine(sealed, sop_instance_uid, sha256)

    def _seal(self, temp: Path) -> Path:
        sealed = Path(f"{temp}.enc")
        try:
            with (
                open(temp, "rb") as source,
                open(os.open(sealed, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as target,
            ):
                encrypt_stream(self.keyring, source, target)
            self.inner.sync_temp(sealed)
        except OSError as exc:
            _remove_quietly(sealed)
            _remove_quietly(temp)
            raise ArchiveError(f"cannot encrypt {temp.name}: {exc.strerror}") from exc
        return sealed

    # ------------------------------------------------------------------ decrypting reads
    def open_read(self, relative_path: str) -> BinaryIO:
        """A stream of the plaintext (authenticated chunk by chunk; the caller closes it).

        Raises
        ------
        ArchiveError
            If the file is missing, unreadable, or does not authenticate (wrong key, tampered).
        """
        source = self.inner.open_read(relative_path)
        try:
            return io.BufferedReader(DecryptingReader(self.keyring, source), CHUNK)
        except KeyRingError as exc:
            source.close()
            raise ArchiveError(f"cannot decrypt {relative_path.rsplit('/', 1)[-1]}: {exc}") from exc

    @contextlib.contextmanager
    def local_copy(self, relative_path: str) -> Iterator[Path]:
        """The plaintext in a temporary file (mode 0600) in ``.incoming``, removed afterwards.

        Raises
        ------
        ArchiveError
            As :meth:`open_read`, or if the copy cannot be written.
        """
        temp = self.incoming / f"{os.getpid()}-{os.urandom(8).hex()}.dcm"
        try:
            with (
                contextlib.closing(self.open_read(relative_path)) as source,
                open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as target,
            ):
                shutil.copyfileobj(source, target, CHUNK)
        except KeyRingError as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot decrypt {relative_path.rsplit('/', 1)[-1]}: {exc}") from exc
        except OSError as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot copy {relative_path.rsplit('/', 1)[-1]}: {exc.strerror}") from exc
        except BaseException:
            _remove_quietly(temp)
            raise
        try:
            yield temp
        finally:
            _remove_quietly(temp)

    # ------------------------------------------------------------------ rotation
    def key_id_of(self, relative_path: str) -> str:
        """Id of the KEK that wraps a stored file's data key.

        Raises
        ------
        ArchiveError
            If it cannot be read or is not an encrypted archive file.
        """
        with contextlib.closing(self.inner.open_read(relative_path)) as source:
            try:
                return read_header(source).key_id
            except KeyRingError as exc:
                raise ArchiveError(f"{relative_path.rsplit('/', 1)[-1]}: {exc}") from exc

    def rewrap(self, relative_path: str) -> bool:
        """Re-wrap a file's data key with the active KEK (header rewritten, chunks copied as
        they are; the data is never re-encrypted). Returns False when it already was.

        The new file is complete and synced before it replaces the old one, so a reader sees
        either; both KEKs must be in the key ring until rotation ends.

        Raises
        ------
        ArchiveError
            On I/O errors, or if the data key does not authenticate with its KEK.
        """
        active = self.keyring.active_key_id
        temp = self.incoming / f"{os.getpid()}-{os.urandom(8).hex()}.rewrap"
        try:
            with contextlib.closing(self.inner.open_read(relative_path)) as source:
                start = _read_exact(source, len(MAGIC))
            if start != MAGIC:
                self._seal_plain(relative_path, temp)
                return True
            with contextlib.closing(self.inner.open_read(relative_path)) as source:
                header = read_header(source)
                if header.key_id == active:
                    return False
                wrap_nonce, wrapped = _wrap(self.keyring, active, _unwrap(self.keyring, header))
                new = Header(active, wrap_nonce, wrapped, header.chunk_size, header.nonce_prefix)
                with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb") as target:
                    target.write(new.encode())
                    shutil.copyfileobj(source, target, CHUNK)
            self.inner.place(temp, relative_path, replace=True)
        except KeyRingError as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot re-wrap {relative_path.rsplit('/', 1)[-1]}: {exc}") from exc
        except OSError as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot re-wrap {relative_path.rsplit('/', 1)[-1]}: {exc.strerror}") from exc
        return True

    def _seal_plain(self, relative_path: str, temp: Path) -> None:
        """Encrypt a file stored in plain text before encryption was turned on.

        Raises
        ------
        KeyRingError
            If it is not a Part 10 file either (never encrypt unknown bytes as if they were).
        """
        with contextlib.closing(self.inner.open_read(relative_path)) as source:
            preamble = _read_exact(source, 132)
            if preamble[128:132] != b"DICM":
                raise KeyRingError("neither an encrypted archive file nor a Part 10 file")
            with open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb") as target:
                encrypt_stream(self.keyring, cast(BinaryIO, _Prepended(preamble, source)), target)
        self.inner.place(temp, relative_path, replace=True)
