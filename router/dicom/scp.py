"""The C-STORE SCP: accepts associations, answers C-ECHO and C-STORE.

The intake service is injected (:class:`InstanceStore`); this module never touches the database.
Process-wide pynetdicom settings are applied once by :func:`configure_pynetdicom` at start-up:
data sets are streamed to a temporary file on the archive's file system while they arrive
(``STORE_RECV_CHUNKED_DATASET``), so a large instance never sits in memory, and every storage
SOP class is accepted, private ones included (``UNRESTRICTED_STORAGE_SERVICE``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from pydicom import config as pydicom_config
from pydicom.dataset import Dataset
from pydicom.uid import UID, AllTransferSyntaxes
from pynetdicom import _config, dimse_messages

from router.dicom import (
    application_context,
    negotiation,
    pdata,
    proposals,
    reactor,
    store_codec,
    user_items,
    variable_items,
)
from router.dicom.extract import DEFAULT_MAX_INFLATED_BYTES, ReceivedFileUnreadable, UndecodableDataSet, read_header
from router.dicom.spool import SpoolFile, spool_factory
from router.dicom.status import ERROR_COMMENT_MAX, StoreStatus
from router.dicom.structure import InflationLimitExceeded
from router.domain.instance import InstanceHeader, uid_problem
from router.errors import ArchiveError, IndexWriteError
from router.logsafety import uid_for_log

LOG = logging.getLogger(__name__)


class InstanceStore(Protocol):
    """What the handler needs from the intake service."""

    def store(self, header: InstanceHeader, temp_path: Path, sender: Any, digest: tuple[str, int] | None = None) -> Any:
        """Keep the instance; raise ArchiveError or IndexWriteError on failure. ``digest``: the
        data set's SHA-256 and the file's size, when already known. A normal return means the
        file at ``temp_path`` was taken (moved into the archive, or removed as a copy already
        kept): nothing is left at that path to delete."""


SenderFactory = Callable[[str, str], Any]


def received_spool(event: Any) -> SpoolFile | None:
    """The spool file the C-STORE ``event``'s data set was received into (chunked reception
    into a :class:`~router.dicom.spool.SpoolFile`), or None."""
    spool = getattr(getattr(event, "request", None), "_dataset_file", None)
    return spool if isinstance(spool, SpoolFile) else None


def configure_pynetdicom(incoming_dir: Path, *, direct_io: bool = False) -> None:
    """Apply the process-wide pynetdicom settings the router relies on. Call once at start-up.

    - ``STORE_RECV_CHUNKED_DATASET``: each C-STORE data set is written to a temporary file as
      its P-DATA fragments arrive, instead of being held in memory;
    - the temporary files go to ``incoming_dir`` (on the archive's file system), so a received
      file is renamed into place without a copy and a crash leaves debris only where start-up
      cleans it; they are :class:`~router.dicom.spool.SpoolFile` objects, so a full disk or an
      unwritable folder is answered 0xA700 instead of aborting the association; with
      ``direct_io`` (the archive only renames received files into place), large uncompressed
      data sets are written around the page cache (``O_DIRECT``, router.dicom.spool);
    - ``UNRESTRICTED_STORAGE_SERVICE``: any storage SOP class, private ones included, is accepted,
      under a valid UID and with a transfer syntax pydicom knows (:mod:`router.dicom.negotiation`).
    """
    incoming_dir.mkdir(parents=True, exist_ok=True)
    # pynetdicom calls it as tempfile.NamedTemporaryFile (keyword arguments only), so its overloads do not apply.
    dimse_messages.NamedTemporaryFile = spool_factory(incoming_dir, direct_io=direct_io)  # type: ignore[assignment]
    _config.STORE_RECV_CHUNKED_DATASET = True
    _config.UNRESTRICTED_STORAGE_SERVICE = True
    # Forwarding sends archived files byte for byte, streamed from disk.
    _config.STORE_SEND_CHUNKED_DATASET = True
    # pynetdicom logs every identifier at DEBUG only when asked; keep it off (PHI).
    _config.LOG_REQUEST_IDENTIFIERS = False
    _config.LOG_RESPONSE_IDENTIFIERS = False
    # pynetdicom's standard handlers format a dump of every PDU and DIMSE message and log it
    # at INFO and DEBUG (nothing above): several string builds and UID name look-ups per
    # C-STORE, all discarded unless its logger shows INFO (``--verbose``). Bound only then.
    verbose = logging.getLogger("pynetdicom").isEnabledFor(logging.INFO)
    _config.LOG_HANDLER_LEVEL = "standard" if verbose else "none"
    # pydicom checks every value it reads against its VR (a regular expression per UID: pynetdicom
    # makes several UIDs of each of the ~400 transfer syntaxes a sender proposes) only to warn,
    # and router.logsafety drops those warnings (they may quote PHI). The router judges the
    # values it uses itself (router.domain.instance.uid_problem, router.dicom.extract).
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    # Event-driven waits instead of pynetdicom's 1 ms polling sleeps (docs/benchmarks.md).
    reactor.install()
    # C-STORE command sets read and written directly instead of through pydicom Datasets.
    store_codec.install()
    # P-DATA-TF PDUs read into one buffer and handed on as views of it, not copied four times.
    pdata.install()
    # No context with a malformed abstract syntax or a transfer syntax pydicom cannot read.
    negotiation.install(frozenset(STORAGE_TRANSFER_SYNTAXES))
    # A request seen before is not decoded and negotiated again (its answer is the same).
    proposals.install()
    # User information sub-items of an unknown type are skipped (PS3.7 D.3.3), not fatal.
    user_items.install()
    # So are other association items of a type not defined at their place (PS3.8 9.3.1).
    variable_items.install()
    # A request for an application context other than DICOM's is rejected (PS3.7 A.2.1).
    application_context.install()


#: Transfer syntaxes accepted for storage: every one pydicom knows (implicit/explicit little
#: endian, deflated, big endian, the JPEG family, JPEG-LS, JPEG 2000, HTJ2K, RLE, MPEG/HEVC).
#: The router stores the bytes as received and reads only the header, so it needs no codec.
STORAGE_TRANSFER_SYNTAXES: tuple[str, ...] = tuple(str(uid) for uid in AllTransferSyntaxes)

#: Verification SOP Class (C-ECHO), PS3.4 Annex A.4 (pynetdicom makes its constant at run time).
VERIFICATION_SOP_CLASS = UID("1.2.840.10008.1.1")


class ConditionLog:
    """Logs a failure condition once when it starts and once when it clears, not per instance."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger
        self._active: dict[str, float] = {}
        self._lock = threading.Lock()

    def failed(self, condition: str, message: str) -> None:
        """Record a failure; logs at ERROR only if ``condition`` was not already active."""
        with self._lock:
            if condition in self._active:
                return
            self._active[condition] = time.monotonic()
        self._logger.error("%s (further occurrences are not logged until it clears)", message)

    def succeeded(self, condition: str) -> None:
        """Record a success; logs the recovery if ``condition`` was active."""
        with self._lock:
            started = self._active.pop(condition, None)
        if started is not None:
            self._logger.warning("%s cleared after %.0f s", condition, time.monotonic() - started)


def _status(code: StoreStatus, comment: str | None = None) -> Dataset:
    if code == StoreStatus.SUCCESS and not comment:
        return _SUCCESS
    response = Dataset()
    response.Status = int(code)
    if comment:
        response.ErrorComment = comment[:ERROR_COMMENT_MAX]
    return response


#: The response of every stored instance: one data set, only ever read (pynetdicom copies its
#: elements into the C-STORE-RSP), built once instead of per instance (docs/benchmarks.md, lever 51).
_SUCCESS = Dataset()
_SUCCESS.Status = int(StoreStatus.SUCCESS)


@dataclass
class StoreHandler:
    """The EVT_C_STORE handler, bound with the intake service and a sender factory.

    :meth:`connection_opened` and :meth:`connection_closed` are bound to EVT_CONN_OPEN and
    EVT_CONN_CLOSE: a sender stalling mid-PDU is dropped after ``network_timeout``, and the
    partial data set of an association that ends mid-transfer is deleted at once.
    """

    store: InstanceStore
    make_sender: SenderFactory
    conditions: ConditionLog = field(default_factory=lambda: ConditionLog(LOG))
    #: Largest inflated size of a deflated data set, in bytes (``listener.max_inflated_bytes``).
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES

    def __call__(self, event: Any) -> Dataset:
        """Handle one C-STORE request.

        Returns
        -------
        pydicom.dataset.Dataset
            ``Status`` (:class:`StoreStatus`) and, on failure, ``ErrorComment``:
            0x0000 stored (or an identical copy was already stored, or a differing copy was
            quarantined); 0xC210 undecodable data set; 0xC001-0xC004 missing/invalid Study,
            Series, SOP Instance or SOP Class UID; 0xA900 data set UIDs differ from the
            request; 0xA700 archive write failed, or the received file could not be read back
            (gone, I/O error); 0xA701 index write failed.
        """
        # never evicted as idle while a data set is being stored (router.dicom.guard.make_room)
        event.assoc._router_busy = True
        try:
            return self._handle(event)
        finally:
            event.assoc._router_busy = False

    def _handle(self, event: Any) -> Dataset:
        request = event.request
        requestor = event.assoc.requestor
        sender = self.make_sender(str(requestor.ae_title).strip(), str(requestor.address))
        spool = received_spool(event)
        temp_path = self._received_file(event, spool)
        if temp_path is None:
            return _status(StoreStatus.OUT_OF_RESOURCES_ARCHIVE, "archive write failed")
        try:
            header = read_header(
                temp_path,
                self.max_inflated_bytes,
                spool.head if spool is not None else None,
                spool.file_meta if spool is not None else None,
            )
        except InflationLimitExceeded as exc:
            LOG.warning(
                "C-STORE of %s from %s refused with 0xA700: %s (listener.max_inflated_bytes)",
                uid_for_log(request.AffectedSOPInstanceUID),
                sender.calling_ae_title,
                exc,
            )
            return _status(StoreStatus.OUT_OF_RESOURCES_ARCHIVE, "inflated data set over the size limit")
        except ReceivedFileUnreadable as exc:
            self.conditions.failed("archive", f"received file could not be read back: {exc}; answering 0xA700")
            return _status(StoreStatus.OUT_OF_RESOURCES_ARCHIVE, "received file could not be read back; retry later")
        except UndecodableDataSet as exc:
            LOG.warning(
                "C-STORE of %s from %s: data set could not be decoded (%s)",
                uid_for_log(request.AffectedSOPInstanceUID),
                sender.calling_ae_title,
                exc,
            )
            return _status(StoreStatus.CANNOT_DECODE, "data set could not be decoded")
        problem = self._check(header, request)
        if problem is not None:
            code, comment = problem
            LOG.warning(
                "C-STORE of %s from %s refused with 0x%04X: %s",
                uid_for_log(request.AffectedSOPInstanceUID),
                sender.calling_ae_title,
                int(code),
                comment,
            )
            return _status(code, comment)
        try:
            outcome = self.store.store(header, temp_path, sender, spool.data_set_digest if spool is not None else None)
        except ArchiveError as exc:
            self.conditions.failed("archive", f"archive write failed: {exc}; answering 0xA700")
            return _status(StoreStatus.OUT_OF_RESOURCES_ARCHIVE, "archive write failed; retry later")
        except IndexWriteError as exc:
            self.conditions.failed("index", f"index write failed: {exc}; answering 0xA701")
            return _status(StoreStatus.OUT_OF_RESOURCES_INDEX, "index write failed; retry later")
        if spool is not None:
            spool.consumed = True  # the intake service took the file: no unlink of its old name
        self.conditions.succeeded("archive")
        self.conditions.succeeded("index")
        LOG.debug("stored %s from %s: %s", header.sop_instance_uid, sender.calling_ae_title, outcome)
        return _status(StoreStatus.SUCCESS)

    def _received_file(self, event: Any, spool: SpoolFile | None) -> Path | None:
        """Path of the Part 10 temporary file holding the received data set (None: write failed);
        ``spool``: the file it was received into, if :func:`received_spool` found one."""
        if spool is not None and spool.failed:
            self.conditions.failed("archive", f"archive write failed while receiving: {spool.error}; answering 0xA700")
            return None
        try:
            return Path(event.dataset_path)
        except AttributeError:
            pass
        # Not in chunked mode (a test or an embedding application): write the bytes out.
        archive = getattr(self.store, "archive", None)
        if archive is None:
            raise RuntimeError("chunked C-STORE reception is off and the store has no archive")
        try:
            return archive.write_temp(event.encoded_dataset(include_meta=True))
        except ArchiveError as exc:
            self.conditions.failed("archive", f"archive write failed: {exc}; answering 0xA700")
            return None

    def connection_opened(self, event: Any) -> None:
        """EVT_CONN_OPEN: bound every socket read and write by ``network_timeout``.

        pynetdicom checks its idle timer (``network_timeout``) only between PDUs and reads a
        PDU's body with a blocking ``recv``: a sender stalling in the middle of a PDU (a
        C-STORE data set fragment) would hold its thread, its place among
        ``max_associations`` and a drain forever. With a socket timeout the read fails, the
        connection is closed (PS3.8 section 9.1.5, A-P-ABORT) and :meth:`connection_closed`
        removes the partial data set.
        """
        timeout = getattr(event.assoc, "network_timeout", None)
        sock = getattr(getattr(event.assoc.dul, "socket", None), "socket", None)
        if timeout is not None and sock is not None:
            sock.settimeout(timeout)

    def connection_closed(self, event: Any) -> None:
        """EVT_CONN_CLOSE: delete the temporary file of a data set that was still arriving.

        With ``STORE_RECV_CHUNKED_DATASET`` pynetdicom writes a C-STORE data set to a file in
        the incoming folder as it arrives and deletes it only after the handler ran; when the
        association is aborted, times out or loses its connection mid-transfer, the partial
        file would stay until the next start. Nothing in it was acknowledged. Runs in the
        association's DUL thread, the one that writes the file, so no write can follow.
        """
        message = getattr(event.assoc.dimse, "message", None)
        partial = getattr(message, "_data_set_file", None)
        if partial is None:
            return
        try:
            getattr(partial, "discard", partial.close)()  # router.dicom.spool: staged bytes not written
        except (OSError, ValueError):
            pass
        path = Path(partial.name)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            LOG.warning("could not remove the partial data set %s: %s", path.name, exc.strerror)
            return
        LOG.info(
            "connection from %s closed during a C-STORE data set; the partial data set was discarded",
            str(event.assoc.requestor.ae_title).strip() or event.assoc.requestor.address,
        )

    @staticmethod
    def _check(header: InstanceHeader, request: Any) -> tuple[StoreStatus, str] | None:
        """Validate the UIDs (PS3.5 section 9.1) and their agreement with the request (PS3.4 B.2.3)."""
        for attribute, value, code in (
            ("StudyInstanceUID", header.study_instance_uid, StoreStatus.INVALID_STUDY_UID),
            ("SeriesInstanceUID", header.series_instance_uid, StoreStatus.INVALID_SERIES_UID),
            ("SOPInstanceUID", header.sop_instance_uid, StoreStatus.INVALID_SOP_INSTANCE_UID),
            ("SOPClassUID", header.sop_class_uid, StoreStatus.INVALID_SOP_CLASS_UID),
        ):
            problem = uid_problem(value)
            if problem is not None:
                return code, f"{attribute} {problem}"
        requested_instance = str(request.AffectedSOPInstanceUID or "").rstrip("\x00 ")
        requested_class = str(request.AffectedSOPClassUID or "").rstrip("\x00 ")
        if header.sop_instance_uid != requested_instance:
            return StoreStatus.DATA_SET_MISMATCH, "SOPInstanceUID differs from the request"
        if header.sop_class_uid != requested_class:
            return StoreStatus.DATA_SET_MISMATCH, "SOPClassUID differs from the request"
        return None
