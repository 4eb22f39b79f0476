"""The S3 archive backend: archive files as objects in an S3-compatible bucket (boto3).

Nodes in different places share the bucket and the index database instead of a POSIX folder.
Keys keep the folder layout: ``<prefix><Study>/<Series>/<SOP Instance>.dcm`` and
``<prefix>.quarantine/<SOP Instance>/<sha256>.dcm``.

Durability (DESIGN.md decision 1, "ack only after durable"): an instance is received into a
temporary file in this node's local ``<archive_dir>/.incoming`` folder and fsynced there; the
upload is one PUT carrying its Content-MD5, which the server checks before it stores anything
(a differing body is refused with ``BadDigest``; Amazon S3 API reference, PutObject), and the
returned ETag, the MD5 of what was stored for a single-part PUT, is compared with it too (some
S3-compatible servers, moto among them, do not check Content-MD5). An S3 PUT is durable once it
returns 200. Only then is the instance's row committed and Success sent.
Any S3 failure raises :class:`~router.errors.ArchiveError` (C-STORE 0xA700: the sender retries).

One PUT holds at most 5 GiB (the S3 single-PUT limit); DICOM instances above that are refused
with 0xA700.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from router.archive import FILE_MODE, Archive, StoredFile, _remove_quietly
from router.config import ArchiveSettings
from router.errors import ArchiveError

LOG = logging.getLogger(__name__)

_CHUNK = 1 << 20  # bytes per read when hashing or copying
_MAX_PUT = 5 * 1024**3  # bytes: the S3 single-PUT limit


class S3Archive(Archive):
    """Archive files in an S3-compatible bucket; temporary files in the local ``root/.incoming``.

    Thread-safe: the boto3 client is shared (botocore clients are thread-safe), nothing else
    is mutable.

    Parameters
    ----------
    root : Path
        Local folder of this node's ``.incoming`` temporary files (``paths.archive_dir``).
    settings : ArchiveSettings
        Endpoint, bucket, prefix, region, credentials and timeouts.
    node_id : str, optional
        This node's id: temporary files go to ``root/.incoming/<node id>/``.
    """

    #: Start-up recovery does not list the bucket (see :meth:`files_modified_since`).
    scans_for_orphans = False
    #: :meth:`place` reads the temporary file (MD5, upload) right after it is received.
    places_by_rename = False

    def __init__(self, root: Path, settings: ArchiveSettings, node_id: str | None = None) -> None:
        super().__init__(root, node_id=node_id)
        import boto3
        from botocore.config import Config

        assert settings.bucket
        self.bucket = settings.bucket
        self.prefix = settings.prefix
        credentials: dict[str, Any] = {}
        if settings.access_key_id is not None:
            credentials = {
                "aws_access_key_id": settings.access_key_id,
                "aws_secret_access_key": settings.secret_access_key,
            }
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint_url,
            region_name=settings.region,
            config=Config(
                connect_timeout=settings.connect_timeout,
                read_timeout=settings.read_timeout,
                retries={"max_attempts": 3, "mode": "standard"},
                # Content-MD5 is our integrity check; newer botocore would add CRC32 trailers
                # that some S3-compatible servers do not accept.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                s3={"addressing_style": "path"},
            ),
            **credentials,
        )

    def describe(self) -> str:
        """``s3://bucket/prefix`` (for logs)."""
        return f"s3://{self.bucket}/{self.prefix}"

    def _key(self, relative_path: str) -> str:
        return f"{self.prefix}{relative_path}"

    # ------------------------------------------------------------------ writes
    def sync_folder(self, relative_path: str) -> None:
        """Nothing to do: an object stored by :meth:`place` is durable once its PUT is answered."""

    def prepare_folder(self, relative_path: str) -> None:
        """Nothing to do: object keys need no folders."""

    def place(
        self,
        temp: Path,
        relative_path: str,
        *,
        replace: bool = False,
        synced: bool = False,
        sync_folder: bool = True,
    ) -> StoredFile:
        """Upload a complete temporary file as ``relative_path`` (one PUT with Content-MD5); the
        temporary file is removed once the object is stored. An object is durable once the PUT
        is answered, so ``sync_folder`` changes nothing here.

        Raises
        ------
        FileExistsError
            If the object exists and ``replace`` is false (the temporary file is kept).
        ArchiveError
            On any S3 or local I/O error; the temporary file is removed.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        name = relative_path.rsplit("/", 1)[-1]
        try:
            size = os.stat(temp).st_size if synced else self.sync_temp(temp)
            if size > _MAX_PUT:
                raise ArchiveError(f"cannot store {name}: {size} bytes is over the 5 GiB single-PUT limit")
            md5 = hashlib.md5(usedforsecurity=False)
            with open(temp, "rb") as handle:
                while chunk := handle.read(_CHUNK):
                    md5.update(chunk)
            if not replace and self.exists(relative_path):
                raise FileExistsError(errno.EEXIST, "exists", relative_path)
            with open(temp, "rb") as body:
                response = self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(relative_path),
                    Body=body,
                    ContentLength=size,
                    ContentMD5=base64.b64encode(md5.digest()).decode("ascii"),
                    ContentType="application/dicom",
                )
            # Servers that do not check Content-MD5 still report the MD5 of what they stored as
            # the ETag of a single-part PUT (not under SSE-KMS, where it is opaque).
            etag = str(response.get("ETag", "")).strip('"')
            if re.fullmatch(r"[0-9a-f]{32}", etag) and etag != md5.hexdigest():
                raise ArchiveError(f"cannot store {name}: the stored object's MD5 differs from the file's")
        except FileExistsError:
            raise
        except ArchiveError:
            _remove_quietly(temp)
            raise
        except (BotoCoreError, ClientError) as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot store {name} in {self.describe()}: {_s3_reason(exc)}") from exc
        except OSError as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot store {name}: {exc.strerror}") from exc
        _remove_quietly(temp)
        return StoredFile(relative_path=relative_path, size_bytes=size)

    # ------------------------------------------------------------------ reads
    def exists(self, relative_path: str) -> bool:
        """Whether the object exists (HEAD).

        Raises
        ------
        ArchiveError
            If the bucket cannot be reached (a missing object is ``False``, not an error).
        """
        return self._head(relative_path) is not None

    def size(self, relative_path: str) -> int:
        """Size in bytes of a stored object.

        Raises
        ------
        ArchiveError
            If it is missing or the bucket cannot be reached.
        """
        head = self._head(relative_path)
        if head is None:
            raise ArchiveError(f"{relative_path.rsplit('/', 1)[-1]} is missing from {self.describe()}")
        return int(head["ContentLength"])

    def open_read(self, relative_path: str) -> BinaryIO:
        """A stream of the object's bytes (GET, read in chunks; the caller closes it).

        Raises
        ------
        ArchiveError
            If it is missing or the bucket cannot be reached.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(relative_path))
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveError(
                f"cannot read {relative_path.rsplit('/', 1)[-1]} from {self.describe()}: {_s3_reason(exc)}"
            ) from exc
        body: BinaryIO = response["Body"]
        return body

    @contextlib.contextmanager
    def local_copy(self, relative_path: str) -> Iterator[Path]:
        """Download the object to a temporary file in ``.incoming`` (streamed, never held in
        memory), removed when the context ends.

        Raises
        ------
        ArchiveError
            If it is missing, the bucket cannot be reached or the local copy cannot be written.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        temp = self.new_temp_path(".dcm")
        try:
            with (
                contextlib.closing(self.open_read(relative_path)) as source,
                open(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE), "wb") as target,
            ):
                shutil.copyfileobj(source, target, _CHUNK)
        except (BotoCoreError, ClientError) as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot read {relative_path.rsplit('/', 1)[-1]}: {_s3_reason(exc)}") from exc
        except OSError as exc:
            _remove_quietly(temp)
            raise ArchiveError(f"cannot copy {relative_path.rsplit('/', 1)[-1]} locally: {exc.strerror}") from exc
        try:
            yield temp
        finally:
            _remove_quietly(temp)

    def move(self, relative_path: str, target_relative_path: str) -> None:
        """Copy the object to another key, then delete the original.

        Raises
        ------
        ArchiveError
            If the bucket cannot be reached.
        """
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self._client.copy_object(
                Bucket=self.bucket,
                Key=self._key(target_relative_path),
                CopySource={"Bucket": self.bucket, "Key": self._key(relative_path)},
            )
            self._client.delete_object(Bucket=self.bucket, Key=self._key(relative_path))
        except (BotoCoreError, ClientError) as exc:
            raise ArchiveError(f"cannot move {relative_path} in {self.describe()}: {_s3_reason(exc)}") from exc

    def files_modified_since(self, since_epoch: float) -> list[str]:
        """Always empty: recovery does not list the bucket.

        A listing is a paged walk of every key (S3 cannot filter by date), too slow to do at
        every start. An object without a row can only come from a PUT whose index transaction
        then failed or crashed; that instance was never acknowledged, so the sender sends it
        again and the resend replaces the object. Such objects cost storage, not correctness.
        """
        return []

    # ------------------------------------------------------------------ internals
    def _head(self, relative_path: str) -> dict[str, Any] | None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            head: dict[str, Any] = self._client.head_object(Bucket=self.bucket, Key=self._key(relative_path))
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code")) in {"404", "NoSuchKey", "NotFound"}:
                return None
            raise ArchiveError(f"cannot reach {self.describe()}: {_s3_reason(exc)}") from exc
        except BotoCoreError as exc:
            raise ArchiveError(f"cannot reach {self.describe()}: {_s3_reason(exc)}") from exc
        return head


def _s3_reason(exc: Exception) -> str:
    """A one-line reason: the S3 error code, or the botocore error class and first line."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error", {})
        return f"{error.get('Code', 'error')}: {str(error.get('Message', ''))[:200]}".rstrip(": ")
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}".rstrip(": ")
