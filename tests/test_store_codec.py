"""The fixed-layout C-STORE command codec (router/dicom/store_codec.py), against pynetdicom's own
encoder and decoder, and over real associations (the fast path and each way out of it)."""

from __future__ import annotations

import itertools
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
from pydicom import config as pydicom_config
from pydicom import dcmread
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom import AE, _config, dimse_messages, service_class
from pynetdicom.acse import ACSE
from pynetdicom.association import Association
from pynetdicom.dimse_messages import C_STORE_RQ, C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import create_file_meta, decode, encode
from pynetdicom.dul import DULServiceProvider
from pynetdicom.presentation import build_context
from sqlalchemy import func, select

from router.db.models import Instance
from router.dicom import negotiation, scp, store_codec
from router.dicom.scp import STORAGE_TRANSFER_SYNTAXES, StoreHandler, configure_pynetdicom
from router.dicom.status import StoreStatus
from router.part10 import dataset_offset
from router.server import RouterServer
from tests.conftest import make_settings, running_router
from tests.dicom_bytes import (
    A_RELEASE_RQ,
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    RawAssociation,
    c_store_command,
    explicit,
    first_answer,
    identifiers,
    implicit,
    p_data,
    p_data_tf,
    pdu_item,
    pdv,
    presentation_context_item,
    uid,
)
from tests.dicom_helpers import archived_file, make_dataset, write_part10, write_raw_part10

CT = "1.2.840.10008.5.1.4.1.1.2"
LONGEST_UID = "1.2." + "3" * 60  # 64 characters
REQUESTS = [
    pytest.param(1, CT, "1.2.3.4", 0, None, None, id="even-uids"),
    pytest.param(65535, CT, "1.2.3.45", 2, None, None, id="odd-uid-max-message-id"),
    pytest.param(0, "1.2.840.10008.5.1.4.1.1.4", LONGEST_UID, 1, None, None, id="64-char-uid"),
    pytest.param(7, CT, "2.25.1", 0, "MOVE_SCU", 42, id="move-originator"),
    pytest.param(9, CT, "2.25.10", 2, "ODDMOVE", 0, id="odd-move-originator"),
]


def _pynetdicom_request(message_id, sop_class, sop_instance, priority, move_ae, move_id) -> bytes:  # type: ignore[no-untyped-def]
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = sop_class
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Priority = priority
    primitive.MoveOriginatorApplicationEntityTitle = move_ae
    primitive.MoveOriginatorMessageID = move_id
    primitive.DataSet = BytesIO(b"\x08\x00\x16\x00")
    message = C_STORE_RQ()
    message.primitive_to_message(primitive)
    return bytes(encode(message.command_set, True, True))


@pytest.mark.parametrize(("message_id", "sop_class", "sop_instance", "priority", "move_ae", "move_id"), REQUESTS)
def test_a_request_decodes_to_what_pynetdicom_decodes(
    message_id: int, sop_class: str, sop_instance: str, priority: int, move_ae: str | None, move_id: int | None
) -> None:
    command = _pynetdicom_request(message_id, sop_class, sop_instance, priority, move_ae, move_id)
    reference = decode(BytesIO(command), True, True)
    request = store_codec.decode_store_request(command)
    assert request == store_codec.StoreRequest(message_id, sop_class, sop_instance, priority, move_ae, move_id)
    assert (request.message_id, request.sop_class_uid, request.sop_instance_uid, request.priority) == (
        reference.MessageID,
        str(reference.AffectedSOPClassUID),
        str(reference.AffectedSOPInstanceUID),
        reference.Priority,
    )


def _with(command: bytes, element: int, value: bytes) -> bytes:
    """``command`` with one element's value replaced (and the group length fixed)."""
    out, offset = [], 12
    while offset < len(command):
        _, number, length = struct.unpack_from("<HHI", command, offset)
        body = command[offset + 8 : offset + 8 + length]
        out.append(implicit(number, value if number == element else body))
        offset += 8 + length
    body = b"".join(out)
    return implicit(0x00000000, struct.pack("<I", len(body))) + body


def _reordered(command: bytes) -> bytes:
    """The elements of ``command`` after the group length, the last one moved first."""
    elements, offset = [], 12
    while offset < len(command):
        length = struct.unpack_from("<I", command, offset + 4)[0]
        elements.append(command[offset : offset + 8 + length])
        offset += 8 + length
    return b"".join([elements[-1], *elements[:-1]])


BASE = c_store_command(CT, "1.2.3.4")
NOT_UNDERSTOOD = [
    pytest.param(BASE + implicit(0x00001031, struct.pack("<H", 1)), id="group-length-short"),
    pytest.param(BASE[:-3], id="truncated"),
    pytest.param(_with(BASE, 0x1000, uid("1.2.03.4")), id="uid-leading-zero"),
    pytest.param(_with(BASE, 0x1000, uid("1.2." + "3" * 61)), id="uid-65-chars"),
    pytest.param(_with(BASE, 0x1000, b"1.2.3.4 "), id="uid-space-padded"),
    pytest.param(_with(BASE, 0x1000, b""), id="uid-empty"),
    pytest.param(_with(BASE, 0x0002, uid("1.2.840.abc")), id="class-uid-letters"),
    pytest.param(_with(BASE, 0x0800, struct.pack("<H", 0x0101)), id="no-data-set"),
    pytest.param(_with(BASE, 0x0100, struct.pack("<H", 0x0020)), id="c-find-rq"),
    pytest.param(_with(BASE, 0x0700, struct.pack("<H", 3)), id="priority-3"),
    pytest.param(_with(BASE, 0x0110, struct.pack("<I", 1)), id="message-id-4-bytes"),
    pytest.param(_with(BASE + implicit(0x00001030, b"BAD\\AE  "), 0x1030, b"BAD\\AE  "), id="move-ae-backslash"),
    pytest.param(BASE[:12] + _reordered(BASE), id="out-of-order"),
    pytest.param(
        implicit(0x00000000, struct.pack("<I", len(BASE) - 12 + 10)) + BASE[12:] + implicit(0x00000600, b"DEST  "),
        id="unknown-element",
    ),
    pytest.param(b"\x08\x00" + BASE[2:], id="not-group-0000"),
]


@pytest.mark.parametrize("command", NOT_UNDERSTOOD)
def test_anything_not_fully_understood_is_left_to_pynetdicom(command: bytes) -> None:
    assert store_codec.decode_store_request(command) is None


def test_the_hand_built_base_command_is_understood() -> None:
    # the cases above are mutations of it: it must decode, or they prove nothing
    assert store_codec.decode_store_request(BASE) == store_codec.StoreRequest(1, CT, "1.2.3.4", 0)


@pytest.mark.parametrize(
    ("status", "comment", "sop_instance"),
    [
        (0x0000, None, "1.2.3.4"),
        (0x0000, None, "1.2.3.45"),
        (int(StoreStatus.OUT_OF_RESOURCES_ARCHIVE), "archive write failed; retry later", "1.2.3.4"),
        (int(StoreStatus.CANNOT_DECODE), "data set could not be decoded", LONGEST_UID),
        (int(StoreStatus.DATA_SET_MISMATCH), "odd", "2.25.1"),
    ],
)
def test_a_response_encodes_to_pynetdicoms_bytes(status: int, comment: str | None, sop_instance: str) -> None:
    primitive = C_STORE()
    primitive.MessageIDBeingRespondedTo = 513
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = sop_instance
    primitive.Status = status
    primitive.ErrorComment = comment
    message = C_STORE_RSP()
    message.primitive_to_message(primitive)
    expected = bytes(encode(message.command_set, True, True))
    assert store_codec.encode_store_response(513, CT, sop_instance, status, comment) == expected


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, JPEG2000Lossless]
)
@pytest.mark.parametrize("sop_instance", ["1.2.3.4", "1.2.3.45", LONGEST_UID])
def test_the_file_meta_is_the_one_pynetdicom_writes(syntax: str, sop_instance: str) -> None:
    expected = BytesIO()
    expected.write(b"\x00" * 128 + b"DICM")
    meta = create_file_meta(sop_class_uid=CT, sop_instance_uid=sop_instance, transfer_syntax=syntax)
    write_file_meta_info(expected, meta)  # type: ignore[arg-type]
    assert store_codec.encode_file_meta(CT, sop_instance, syntax) == expected.getvalue()


def test_pynetdicoms_logging_handlers_are_bound_only_when_its_logger_shows_info(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_config, "LOG_HANDLER_LEVEL", _config.LOG_HANDLER_LEVEL)
    monkeypatch.setattr(pydicom_config.settings, "reading_validation_mode", pydicom_config.WARN)
    monkeypatch.setattr(dimse_messages, "NamedTemporaryFile", dimse_messages.NamedTemporaryFile)
    logger = logging.getLogger("pynetdicom")
    # through setLevel, which clears logging's isEnabledFor cache (setting the attribute did not:
    # a level cached by an earlier test in the same process answered instead)
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        configure_pynetdicom(tmp_path / "incoming")
        assert _config.LOG_HANDLER_LEVEL == "none"
        # and pydicom's per-value VR checks, which only warn (warnings router.logsafety drops), are off
        assert pydicom_config.settings.reading_validation_mode == pydicom_config.IGNORE
        logger.setLevel(logging.DEBUG)  # --verbose
        configure_pynetdicom(tmp_path / "incoming")
        assert _config.LOG_HANDLER_LEVEL == "standard"
    finally:
        logger.setLevel(before)


@pytest.mark.parametrize(
    "value",
    ["1.2.3", "1.02.3", "0.1", "00.1", "1.2.", ".1.2", "1..2", "1.2.a", "", LONGEST_UID, LONGEST_UID + "4", "1.2 "],
)
def test_the_remembered_uid_validity_is_pydicoms_answer(value: str) -> None:
    # installed once per process, with the transfer syntaxes the listener knows: an empty set
    # here made every later association in the same pytest worker refuse every context
    negotiation.install(frozenset(STORAGE_TRANSFER_SYNTAXES))
    assert UID(value).is_valid is negotiation._UID_IS_VALID(UID(value))
    assert UID(value).is_valid is negotiation._UID_IS_VALID(UID(value))  # from the cache now


# ----------------------------------------------------------------------------- over the network
@pytest.fixture
def decoded(monkeypatch: pytest.MonkeyPatch) -> list[store_codec.StoreRequest | None]:
    """What the codec returned for each C-STORE-RQ it was asked to decode (a spy, not a stub)."""
    seen: list[store_codec.StoreRequest | None] = []
    real = store_codec.decode_store_request

    def spy(command: bytes) -> store_codec.StoreRequest | None:
        seen.append(real(command))
        return seen[-1]

    monkeypatch.setattr(store_codec, "decode_store_request", spy)
    return seen


def _store(
    port: int, path: Path, *, max_pdu: int = 16382, established: RouterServer | None = None, **kwargs: object
) -> int:
    """Send ``path`` over a new pynetdicom association; ``established``: as in :func:`_exchange`."""
    ae = AE(ae_title="CODEC_SCU")
    ae.maximum_pdu_size = max_pdu
    meta = dcmread(path, stop_before_pixels=True).file_meta
    ae.requested_contexts = [build_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])]
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert assoc.is_established
    if established is not None:
        _wait_established(established)
    try:
        status = assoc.send_c_store(path, **kwargs)
    finally:
        assoc.release()
    return int(status.Status)


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_c_store_from_a_c_move_takes_the_fast_path_and_is_archived_as_sent(
    server: RouterServer, tmp_path: Path, decoded: list[store_codec.StoreRequest | None]
) -> None:
    assert store_codec.installed()
    dataset = make_dataset()
    source = write_part10(dataset, tmp_path / "in.dcm")
    status = _store(server.ports[0], source, originator_aet="MOVE_SCP", originator_id=17)
    assert status == StoreStatus.SUCCESS
    assert [(r.sop_instance_uid, r.move_originator_ae_title, r.move_originator_message_id) for r in decoded if r] == [
        (dataset.SOPInstanceUID, "MOVE_SCP", 17)
    ]
    stored = archived_file(server, dataset.SOPInstanceUID)
    data = stored.read_bytes()
    assert data[dataset_offset(stored) :] == source.read_bytes()[dataset_offset(source) :]
    meta = dcmread(stored, stop_before_pixels=True).file_meta
    assert (meta.MediaStorageSOPInstanceUID, meta.TransferSyntaxUID) == (
        dataset.SOPInstanceUID,
        dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID,
    )


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_command_set_the_codec_does_not_take_is_stored_by_pynetdicoms_path(
    server: RouterServer, decoded: list[store_codec.StoreRequest | None]
) -> None:
    """An extra element, and a command set split over two fragments: both are answered Success."""
    raw = RawAssociation(server.ports[0])
    try:
        assert raw.associate(max_pdu=0) == 0x02
        answers = []
        for index, split in enumerate((False, True)):
            sop = f"1.2.826.0.1.3680043.9.7433.3.{index + 1}"
            body = identifiers(sop, f"1.2.826.0.1.3680043.9.7433.1.{index}", f"1.2.826.0.1.3680043.9.7433.2.{index}")
            command = c_store_command(CT_IMAGE_STORAGE, sop, message_id=index + 1)
            if split:
                raw.send(p_data(command[:20], command=True, last=False))
                raw.send(p_data(command[20:], command=True, last=True))
            else:
                extra = implicit(0x00000600, b"DEST  ")  # Move Destination: not a C-STORE-RQ element
                elements = command[12:] + extra
                raw.send(p_data(implicit(0, struct.pack("<I", len(elements))) + elements, command=True, last=True))
            raw.send(p_data(body, command=False, last=True))
            kind, pdu = raw.read_pdu()
            assert kind == 0x04
            answers.append(decode(BytesIO(pdu[6:]), True, True).Status)
    finally:
        raw.close()
    assert answers == [StoreStatus.SUCCESS, StoreStatus.SUCCESS]
    assert decoded == [None]  # the extra element was refused by the codec; the split one never reached it
    archived_file(server, "1.2.826.0.1.3680043.9.7433.3.1")
    archived_file(server, "1.2.826.0.1.3680043.9.7433.3.2")


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_response_larger_than_the_senders_maximum_pdu_is_fragmented_by_pynetdicom(
    server: RouterServer, tmp_path: Path
) -> None:
    dataset = make_dataset(SOPInstanceUID=LONGEST_UID)
    source = write_part10(dataset, tmp_path / "in.dcm")
    # a 64-character UID twice makes the response command set 190 bytes: over 128 - 6
    assert len(store_codec.encode_store_response(1, str(dataset.SOPClassUID), LONGEST_UID, 0)) > 122
    assert _store(server.ports[0], source, max_pdu=128) == StoreStatus.SUCCESS
    archived_file(server, LONGEST_UID)


def _send_one(server: RouterServer, command: bytes, sop: str) -> tuple[int, bytes]:
    """One C-STORE with ``command`` as its command set over a raw association: the first PDU back."""
    return _exchange(server.ports[0], command, sop)[0]


def _wait_established(server: RouterServer) -> None:
    """Wait until ``server``'s acceptor threads have marked every open association established."""
    listener = server.listener
    assert listener is not None
    deadline = time.monotonic() + 10
    associations = listener.ae.active_associations
    while not (associations and all(assoc.is_established for assoc in associations)):
        assert time.monotonic() < deadline, "the association was never marked established"
        time.sleep(0.005)
        associations = listener.ae.active_associations


def _exchange(
    port: int, command: bytes, sop: str, *then: bytes, established: RouterServer | None = None
) -> list[tuple[int, bytes]]:
    """As :func:`_send_one`, then each PDU of ``then`` sent at once after the answer: the PDU
    back after the C-STORE, then after each of them. ``established``: first wait until that
    server's acceptor thread has marked the association established (a C-STORE that comes
    before is queued for the association thread, by design: on a loaded host it otherwise
    takes that path)."""
    number = sop.rsplit(".", 1)[1]
    body = identifiers(sop, f"1.2.826.0.1.3680043.9.7433.1.{number}", f"1.2.826.0.1.3680043.9.7433.2.{number}")
    raw = RawAssociation(port)
    try:
        assert raw.associate(max_pdu=0) == 0x02
        if established is not None:
            _wait_established(established)
        raw.send(p_data(command, command=True, last=True))
        raw.send(p_data(body, command=False, last=True))
        answers = [raw.read_pdu()]
        for pdu in then:
            raw.send(pdu)
            answers.append(raw.read_pdu())
        return answers
    finally:
        raw.close()


def _stall_after_accept(monkeypatch: pytest.MonkeyPatch, seconds: float) -> None:
    """pynetdicom's acceptor thread pauses after it has sent the A-ASSOCIATE-AC and before it
    marks the association established, as on a loaded host."""
    real = ACSE.send_accept

    def accept_then_stall(self: ACSE) -> None:
        real(self)
        time.sleep(seconds)

    monkeypatch.setattr(ACSE, "send_accept", accept_then_stall)


def _move_destination_command(sop: str) -> bytes:
    """A C-STORE-RQ command set with Move Destination (not a C-STORE-RQ element): pynetdicom
    decodes it, and its association thread serves it."""
    command = c_store_command(CT_IMAGE_STORAGE, sop, message_id=3)
    elements = command[12:] + implicit(0x00000600, b"DEST  ")
    return implicit(0, struct.pack("<I", len(elements))) + elements


INVALID_COMMANDS = [
    pytest.param(lambda sop: c_store_command("", sop), id="empty-affected-sop-class-uid"),
    pytest.param(lambda sop: c_store_command(CT_IMAGE_STORAGE, ""), id="empty-affected-sop-instance-uid"),
    pytest.param(
        lambda sop: implicit(0, struct.pack("<I", 10)) + implicit(0x00000100, struct.pack("<H", 0x0FFF)),
        id="unknown-command-field",
    ),
    # pynetdicom decoded these; then its data set stayed in the incoming folder unanswered
    # (empty Message ID: "Received unexpected C-STORE service message"), or it logged two ERROR
    # lines (Priority 7: "Received an invalid DIMSE message", "ValueError")
    pytest.param(lambda sop: _with(c_store_command(CT_IMAGE_STORAGE, sop), 0x0110, b""), id="empty-message-id"),
    pytest.param(
        lambda sop: _with(c_store_command(CT_IMAGE_STORAGE, sop), 0x0700, struct.pack("<H", 7)), id="priority-7"
    ),
]


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("make_command", INVALID_COMMANDS)
def test_a_command_set_pynetdicom_cannot_decode_aborts_the_association_with_one_line(
    server: RouterServer, make_command: Callable[[str], bytes], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """pynetdicom's decoder raised in the network thread: two ERROR tracebacks, no answer, the
    connection dropped. Now: an A-ABORT (service provider, PS3.8 section 9.3.8), one WARNING
    line, no spool file left, and the listener serves the next sender."""
    caplog.set_level(logging.INFO)
    sop = "1.2.826.0.1.3680043.9.7433.3.40"
    kind, pdu = _send_one(server, make_command(sop), sop)
    assert (kind, pdu[2]) == (0x07, 0x02)  # A-ABORT, source: DICOM UL service-provider
    # pynetdicom's own WARNING stays where it explains the cause ("Attempted to set Priority
    # parameter to an invalid value"); no ERROR, no traceback
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("router")]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("invalid DIMSE message from 'RAW_SCU' at 127.0.0.1:")
    assert warnings[0].endswith("); A-ABORT sent")
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert list(server.app.archive.incoming.iterdir()) == []
    source = write_part10(make_dataset(SOPInstanceUID=sop), tmp_path / "next.dcm")
    assert _store(server.ports[0], source) == StoreStatus.SUCCESS
    archived_file(server, sop)


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_non_ascii_affected_sop_instance_uid_gets_a_failure_status_without_a_traceback(
    server: RouterServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The response is encoded by pynetdicom (the codec encodes ASCII UIDs only): it raised
    UnicodeEncodeError with a traceback before, and the sender got an abort instead of 0xA900."""
    caplog.set_level(logging.INFO)
    sop = "1.2.826.0.1.3680043.9.7433.3.41"
    command = c_store_command(CT_IMAGE_STORAGE, sop)
    command = command[:-2] + b"\xff\xff"  # the last two characters of the UID: not ASCII
    kind, pdu = _send_one(server, command, sop)
    assert kind == 0x04
    assert decode(BytesIO(pdu[6:]), True, True).Status == StoreStatus.DATA_SET_MISMATCH
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("element", "value", "reason"),
    [
        (0x0110, b"", "a C-STORE-RQ without MessageID"),
        (0x0700, struct.pack("<H", 7), "a C-STORE-RQ with Priority 7"),
    ],
    ids=["empty-message-id", "priority-7"],
)
def test_an_unanswerable_command_is_aborted_before_its_data_set_is_spooled(
    server: RouterServer, caplog: pytest.LogCaptureFixture, element: int, value: bytes, reason: str
) -> None:
    """Found by the hostile-peer trial: these were aborted only once the whole data set had been
    written to the incoming folder (a sender stalling after its first fragment held the file for
    network_timeout, 120 s). Now the A-ABORT comes as soon as the command set is in."""
    caplog.set_level(logging.INFO)
    sop = "1.2.826.0.1.3680043.9.7433.3.42"
    body = identifiers(sop, "1.2.826.0.1.3680043.9.7433.1.42", "1.2.826.0.1.3680043.9.7433.2.42")
    raw = RawAssociation(server.ports[0])
    try:
        assert raw.associate(max_pdu=0) == 0x02
        raw.send(p_data(_with(c_store_command(CT_IMAGE_STORAGE, sop), element, value), command=True, last=True))
        raw.send(p_data(body[:40], command=False, last=False))  # the data set has only begun
        kind, pdu = raw.read_pdu()
    finally:
        raw.close()
    assert (kind, pdu[2]) == (0x07, 0x02)
    assert list(server.app.archive.incoming.iterdir()) == []
    warnings = [r.getMessage() for r in caplog.records if r.name == "router.dicom.store_codec"]
    assert len(warnings) == 1 and warnings[0].endswith(f"({reason}); A-ABORT sent"), warnings


# ------------------------------------------------------------- where a C-STORE is served (lever 31)
@pytest.fixture
def fast_path() -> Iterator[None]:
    """A ``pynetdicom`` logger at WARNING while the listener starts, whatever an earlier test in
    this process left it at: at INFO the listener binds pynetdicom's logging handlers
    (``--verbose``) and the codec leaves every message to pynetdicom. Ask for it before
    ``server``: the tests below are about the codec's path."""
    logger = logging.getLogger("pynetdicom")
    before = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(before)


@pytest.fixture
def handler_threads(monkeypatch: pytest.MonkeyPatch) -> list[type]:
    """The class of the thread each C-STORE handler call ran in (a spy around the real handler)."""
    seen: list[type] = []
    real = StoreHandler.__call__

    def spy(self: StoreHandler, event: object) -> object:
        seen.append(type(threading.current_thread()))
        return real(self, event)

    monkeypatch.setattr(StoreHandler, "__call__", spy)
    return seen


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_c_store_the_codec_decoded_is_served_in_the_thread_that_read_it(
    fast_path: None, server: RouterServer, tmp_path: Path, handler_threads: list[type]
) -> None:
    """The codec's C-STORE is handled in the association's DUL thread (no hand-over to the
    association thread and back); one pynetdicom decoded (an extra command element) still in
    the association thread. Both are stored and answered Success."""
    dataset = make_dataset()
    assert (
        _store(server.ports[0], write_part10(dataset, tmp_path / "in.dcm"), established=server) == StoreStatus.SUCCESS
    )
    sop = "1.2.826.0.1.3680043.9.7433.3.50"
    kind, pdu = _send_one(server, _move_destination_command(sop), sop)
    assert kind == 0x04
    assert decode(BytesIO(pdu[6:]), True, True).Status == StoreStatus.SUCCESS
    assert handler_threads == [DULServiceProvider, Association]
    archived_file(server, dataset.SOPInstanceUID)
    archived_file(server, sop)


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_every_success_is_answered_from_one_data_set_that_stays_as_it_was(
    fast_path: None, server: RouterServer, tmp_path: Path
) -> None:
    """Lever 51: the handler answers every stored instance with one shared Success data set
    (pynetdicom only reads it); a failure still gets its own, with its Error Comment."""
    for number in (1, 2):
        dataset = make_dataset(SOPInstanceUID=f"1.2.826.0.1.3680043.9.7433.3.8{number}")
        assert _store(server.ports[0], write_part10(dataset, tmp_path / f"{number}.dcm")) == StoreStatus.SUCCESS
    assert scp._status(StoreStatus.SUCCESS) is scp._status(StoreStatus.SUCCESS)
    assert [(element.keyword, element.value) for element in scp._SUCCESS] == [("Status", 0)]
    first, second = (scp._status(StoreStatus.CANNOT_DECODE, "data set could not be decoded") for _ in "ab")
    assert first is not second
    assert (first.Status, first.ErrorComment) == (StoreStatus.CANNOT_DECODE, "data set could not be decoded")


@pytest.fixture
def queued_for_sending(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(thread class, primitive class) of every primitive put on a DUL's queue of primitives to
    send (a spy around ``send_pdu``)."""
    seen: list[tuple[str, str]] = []
    real = DULServiceProvider.send_pdu

    def spy(self: DULServiceProvider, primitive: object) -> None:
        seen.append((type(threading.current_thread()).__name__, type(primitive).__name__))
        real(self, primitive)

    monkeypatch.setattr(DULServiceProvider, "send_pdu", spy)
    return seen


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_the_response_to_a_c_store_served_in_the_dul_thread_is_sent_by_it_directly(
    fast_path: None,
    server: RouterServer,
    handler_threads: list[type],
    queued_for_sending: list[tuple[str, str]],
) -> None:
    """Lever 49: the C-STORE-RSP of a request served in the DUL thread is sent by that thread
    (PS3.8 DT-1) without going through its queue; one served in the association thread (a
    command set pynetdicom decoded) still goes through the queue. Both answers are the same
    C-STORE-RSP, and the association is released normally afterwards."""
    fast_sop, slow_sop = "1.2.826.0.1.3680043.9.7433.3.70", "1.2.826.0.1.3680043.9.7433.3.71"
    (kind, pdu), (after, _) = _exchange(
        server.ports[0], c_store_command(CT_IMAGE_STORAGE, fast_sop), fast_sop, A_RELEASE_RQ, established=server
    )
    assert (kind, after) == (0x04, 0x06)  # the C-STORE-RSP, then the A-RELEASE-RP
    answer = decode(BytesIO(pdu[6:]), True, True)
    assert (answer.Status, answer.AffectedSOPInstanceUID, answer.MessageIDBeingRespondedTo) == (0, fast_sop, 1)
    # one PDV item filling the PDU: its length, presentation context 1, a last command fragment
    assert (int.from_bytes(pdu[:4], "big"), pdu[4], pdu[5]) == (len(pdu) - 4, 1, 0x03)
    assert handler_threads == [DULServiceProvider]
    assert ("DULServiceProvider", "P_DATA") not in queued_for_sending
    assert ("Association", "A_RELEASE") in queued_for_sending  # the release response still queued

    queued_for_sending.clear()
    kind, pdu = _send_one(server, _move_destination_command(slow_sop), slow_sop)
    assert kind == 0x04
    assert decode(BytesIO(pdu[6:]), True, True).Status == StoreStatus.SUCCESS
    assert handler_threads == [DULServiceProvider, Association]
    assert ("Association", "P_DATA") in queued_for_sending
    archived_file(server, fast_sop)
    archived_file(server, slow_sop)


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_fault_serving_a_c_store_in_the_dul_thread_aborts_that_association_only(
    fast_path: None,
    server: RouterServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An exception outside the handler (which would be answered 0xC211) must not call
    pynetdicom's ``abort()`` from the DUL thread: that waits for the DUL thread itself to stop,
    and never returns. The state machine sends the A-ABORT; the next association is served."""
    caplog.set_level(logging.INFO)
    real = service_class.StorageServiceClass.SCP

    def broken(self: object, request: object, context: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(service_class.StorageServiceClass, "SCP", broken)
    sop = "1.2.826.0.1.3680043.9.7433.3.51"
    started = time.monotonic()
    kind, pdu = _send_one(server, c_store_command(CT_IMAGE_STORAGE, sop), sop)
    assert time.monotonic() - started < 5  # at once, not after a timeout
    assert (kind, pdu[2]) == (0x07, 0x02)  # A-ABORT, source: DICOM UL service-provider
    errors = [r.getMessage() for r in caplog.records if r.name == "router.dicom.store_codec"]
    assert errors == ["serving a C-STORE-RQ raised RuntimeError; A-ABORT sent"]
    assert list(server.app.archive.incoming.iterdir()) == []  # the data set is not left behind
    monkeypatch.setattr(service_class.StorageServiceClass, "SCP", real)
    dataset = make_dataset()
    assert _store(server.ports[0], write_part10(dataset, tmp_path / "in.dcm")) == StoreStatus.SUCCESS
    archived_file(server, dataset.SOPInstanceUID)


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_store_that_takes_longer_than_network_timeout_is_answered(
    fast_path: None, tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the hostile-peer trial of lever 31: with the handler in the DUL thread, the free
    association thread saw the idle timer run out while the peer waited for our answer, and
    aborted the association after the instance was stored, before its Success was sent (the
    sender then retried an instance already kept)."""
    real = StoreHandler.__call__

    def slow(self: StoreHandler, event: object) -> object:
        time.sleep(2.5)  # a slow archive or a database lock held by another node
        return real(self, event)

    monkeypatch.setattr(StoreHandler, "__call__", slow)
    settings = make_settings(tmp_path, database_url).replace("listener", network_timeout=1.0)
    dataset = make_dataset()
    with running_router(settings) as server:
        assert _store(server.ports[0], write_part10(dataset, tmp_path / "in.dcm")) == StoreStatus.SUCCESS
        archived_file(server, str(dataset.SOPInstanceUID))


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("way", ["decoded-by-pynetdicom", "sent-before-established"])
def test_a_store_slower_than_network_timeout_in_the_association_thread_is_answered(
    fast_path: None,
    tmp_path: Path,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    handler_threads: list[type],
    way: str,
) -> None:
    """Found by a run of the test suite beside two CPU hogs: the idle timer kept running while
    the association thread served a store, so a store slower than ``network_timeout`` was kept
    and then the association aborted before its response was sent (the test above covers the
    DUL thread's way)."""
    real = StoreHandler.__call__

    def slow(self: StoreHandler, event: object) -> object:
        time.sleep(2.5)
        return real(self, event)

    monkeypatch.setattr(StoreHandler, "__call__", slow)
    sop = "1.2.826.0.1.3680043.9.7433.3.53"
    if way == "decoded-by-pynetdicom":
        command = _move_destination_command(sop)
    else:
        command = c_store_command(CT_IMAGE_STORAGE, sop)
        _stall_after_accept(monkeypatch, 0.5)
    settings = make_settings(tmp_path, database_url).replace("listener", network_timeout=1.0)
    with running_router(settings) as server:
        # the A-RELEASE-RQ at once: well within network_timeout of the response
        (kind, pdu), (after, _) = _exchange(server.ports[0], command, sop, A_RELEASE_RQ)
        assert kind == 0x04  # P-DATA-TF: the C-STORE-RSP
        assert decode(BytesIO(pdu[6:]), True, True).Status == StoreStatus.SUCCESS
        assert after == 0x06  # A-RELEASE-RP: the association was not aborted after the response
        assert handler_threads == [Association]
        archived_file(server, sop)


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_c_store_sent_before_the_association_is_marked_established_is_answered(
    fast_path: None, server: RouterServer, monkeypatch: pytest.MonkeyPatch, handler_threads: list[type]
) -> None:
    """Found by a CI failure (a test waiting for a response the router had logged): pynetdicom's
    acceptor thread sends the A-ASSOCIATE-AC and only then marks the association established. A
    peer's first C-STORE that the DUL thread served in between was stored, or refused, and never
    answered (1 in 20-50 associations under CPU load). Here the acceptor's thread pauses after
    the AC, as on a loaded host; the request waits for it and is served in its thread."""
    _stall_after_accept(monkeypatch, 1.0)
    sop = "1.2.826.0.1.3680043.9.7433.3.52"
    kind, pdu = _send_one(server, c_store_command(CT_IMAGE_STORAGE, sop), sop)
    assert kind == 0x04  # P-DATA-TF: the C-STORE-RSP, not a timeout
    assert decode(BytesIO(pdu[6:]), True, True).Status == StoreStatus.SUCCESS
    assert handler_threads == [Association]
    archived_file(server, sop)


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_command_set_and_its_data_set_in_one_p_data_tf_arearchived_file(
    fast_path: None, server: RouterServer, caplog: pytest.LogCaptureFixture
) -> None:
    """PS3.8 section 9.3.5 lets one P-DATA-TF carry several PDVs: the command set and the whole
    data set of a small C-STORE can come in one PDU. Found by the hostile-peer trial: the codec
    handed the data set's PDVs to pynetdicom as tuples, its setter raised TypeError in the DUL
    thread, the connection closed without an answer and an empty spool file stayed."""
    caplog.set_level(logging.INFO)
    sop = "1.2.826.0.1.3680043.9.7433.3.60"
    body = identifiers(sop, "1.2.826.0.1.3680043.9.7433.1.60", "1.2.826.0.1.3680043.9.7433.2.60")
    one_pdu = p_data_tf(
        pdv(c_store_command(CT_IMAGE_STORAGE, sop), command=True, last=True), pdv(body, command=False, last=True)
    )
    kind, pdu, _ = first_answer(server.ports[0], one_pdu)
    assert kind == 0x04
    assert decode(BytesIO(pdu[6:]), True, True).Status == StoreStatus.SUCCESS
    archived_file(server, sop)
    assert list(server.app.archive.incoming.iterdir()) == []
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_request_sent_before_the_previous_answer_is_served_after_it(
    fast_path: None, server: RouterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A peer that does not wait for our answer (no asynchronous operations negotiated, PS3.7
    section D.3.3.3) sends a C-STORE pynetdicom decodes (its command set in two fragments), then
    one the codec decodes. Found by the hostile-peer trial: the second was served in the DUL
    thread while the first was still being served, and answered first."""
    real = StoreHandler.__call__

    def first_is_slow(self: StoreHandler, event: Any) -> object:
        if event.request.MessageID == 1:
            time.sleep(0.5)
        return real(self, event)

    monkeypatch.setattr(StoreHandler, "__call__", first_is_slow)
    raw = RawAssociation(server.ports[0])
    try:
        assert raw.associate(max_pdu=0) == 0x02
        for number in (1, 2):
            sop = f"1.2.826.0.1.3680043.9.7433.3.7{number}"
            body = identifiers(
                sop, f"1.2.826.0.1.3680043.9.7433.1.7{number}", f"1.2.826.0.1.3680043.9.7433.2.7{number}"
            )
            command = c_store_command(CT_IMAGE_STORAGE, sop, message_id=number)
            if number == 1:
                raw.send(p_data(command[:20], command=True, last=False))
                raw.send(p_data(command[20:], command=True, last=True))
            else:
                raw.send(p_data(command, command=True, last=True))
            raw.send(p_data(body, command=False, last=True))
        answers = []
        for _ in (1, 2):
            kind, pdu = raw.read_pdu()
            assert kind == 0x04
            response = decode(BytesIO(pdu[6:]), True, True)
            answers.append((response.MessageIDBeingRespondedTo, response.Status))
    finally:
        raw.close()
    assert answers == [(1, StoreStatus.SUCCESS), (2, StoreStatus.SUCCESS)]


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("fragment", [True, False], ids=["after-a-data-set-fragment", "before-any-data-set-fragment"])
def test_a_command_set_inside_a_data_set_aborts_and_leaves_no_spool_file(
    server: RouterServer, caplog: pytest.LogCaptureFixture, fragment: bool
) -> None:
    """PS3.8 Annex E.2: a message is its command set, then its data set. A second C-STORE-RQ
    before the first one's data set ended was answered (Success or 0xC210) from a mix of the
    two, and the first spool file stayed in the incoming folder until the periodic sweep
    (found by a hostile-peer trial). Now: an A-ABORT, one WARNING, nothing left behind."""
    caplog.set_level(logging.INFO)
    first, second = "1.2.826.0.1.3680043.9.7433.3.91", "1.2.826.0.1.3680043.9.7433.3.92"
    body = identifiers(second, "1.2.826.0.1.3680043.9.7433.1.92", "1.2.826.0.1.3680043.9.7433.2.92")
    raw = RawAssociation(server.ports[0])
    try:
        assert raw.associate(max_pdu=0) == 0x02
        raw.send(p_data(c_store_command(CT_IMAGE_STORAGE, first, message_id=1), command=True, last=True))
        if fragment:
            raw.send(p_data(body[:20], command=False, last=False))
        raw.send(p_data(c_store_command(CT_IMAGE_STORAGE, second, message_id=2), command=True, last=True))
        raw.send(p_data(body, command=False, last=True))
        kind, _ = raw.read_pdu()
    finally:
        raw.close()
    _assert_aborted_leaving_nothing(server, caplog, kind, "a command set before the end of the data set it follows")


def _assert_aborted_leaving_nothing(
    server: RouterServer, caplog: pytest.LogCaptureFixture, kind: int, reason: str
) -> None:
    """The peer got an A-ABORT (PDU type 0x07) and the log one WARNING naming ``reason``; no
    spool file is left in the incoming folder and no instance is indexed."""
    assert kind == 0x07  # A-ABORT
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and warnings[0].endswith(f"({reason}); A-ABORT sent"), warnings
    deadline = time.monotonic() + 5
    while any(server.app.archive.incoming.rglob("*.dcm")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(server.app.archive.incoming.rglob("*.dcm")) == []
    with server.app.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Instance)) == 0


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("same_pdu", [False, True], ids=["in-a-later-pdu", "in-the-command-pdu"])
def test_a_data_set_fragment_on_another_presentation_context_aborts(
    server: RouterServer, caplog: pytest.LogCaptureFixture, same_pdu: bool
) -> None:
    """PS3.8 section 9.3.5 and Annex E: a message's fragments travel on its one presentation
    context. A fragment on another accepted context (here Implicit VR inside an Explicit VR
    message) was written into the same file and the instance stored with Success (found by a
    hostile-peer trial). Now: an A-ABORT, one WARNING, nothing stored or left behind."""
    caplog.set_level(logging.INFO)
    sop = "1.2.826.0.1.3680043.9.7433.3.93"
    body = identifiers(sop, "1.2.826.0.1.3680043.9.7433.1.93", "1.2.826.0.1.3680043.9.7433.2.93")
    contexts = b"".join(
        presentation_context_item(
            context_id, pdu_item(0x30, CT_IMAGE_STORAGE.encode()) + pdu_item(0x40, syntax.encode())
        )
        for context_id, syntax in ((1, EXPLICIT_LE), (3, IMPLICIT_LE))
    )
    command = pdv(c_store_command(CT_IMAGE_STORAGE, sop), command=True, last=True)
    first = pdv(body[:20], command=False, last=False)
    other = pdv(body[20:], command=False, last=True, context_id=3)
    raw = RawAssociation(server.ports[0])
    try:
        assert raw.associate(max_pdu=0, contexts=contexts) == 0x02
        if same_pdu:
            raw.send(p_data_tf(command, first, other))
        else:
            raw.send(p_data_tf(command, first))
            raw.send(p_data_tf(other))
        kind, _ = raw.read_pdu()
    finally:
        raw.close()
    _assert_aborted_leaving_nothing(
        server, caplog, kind, "a fragment on another presentation context than its message's"
    )


# ------------------------------------------------- data set fragments to the spool file (lever 57)
@pytest.fixture
def spooled(monkeypatch: pytest.MonkeyPatch) -> list[bool | None]:
    """What :func:`store_codec._data_fragments_spooled` answered for each P-DATA (a spy around
    the real function: None means it left the P-DATA to the checks and pynetdicom's decoder)."""
    seen: list[bool | None] = []
    real = store_codec._data_fragments_spooled

    def spy(message: Any, primitive: Any) -> bool | None:
        seen.append(real(message, primitive))
        return seen[-1]

    monkeypatch.setattr(store_codec, "_data_fragments_spooled", spy)
    return seen


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("trailing", [False, True], ids=["ends-with-its-pdu", "fragments-after-the-last"])
def test_data_set_fragments_are_written_straight_to_the_spool_file(
    fast_path: None, server: RouterServer, spooled: list[bool | None], trailing: bool
) -> None:
    """A data set in seven P-DATA-TF PDUs, one of them carrying three fragments, is written by
    the codec fragment by fragment and archived byte for byte; a fragment after the last one in
    the same PDU is dropped, as pynetdicom's decoder drops it (PS3.8 Annex E.2: nothing of the
    message follows its last fragment)."""
    sop = "1.2.826.0.1.3680043.9.7433.3.57"
    body = identifiers(
        sop,
        "1.2.826.0.1.3680043.9.7433.1.57",
        "1.2.826.0.1.3680043.9.7433.2.57",
        tail=explicit(0x7FE00010, b"OW", bytes(range(256)) * 40),
    )
    cuts = [0, 30, 900, 2500, 2600, 2700, 5000, 7000, 9000, len(body)]
    pieces = [body[start:end] for start, end in itertools.pairwise(cuts)]
    pdus = [p_data(c_store_command(CT_IMAGE_STORAGE, sop), command=True, last=True)]
    pdus += [p_data(piece, command=False, last=False) for piece in pieces[:3]]
    pdus.append(p_data_tf(*(pdv(piece, command=False, last=False) for piece in pieces[3:6])))
    pdus += [p_data(piece, command=False, last=False) for piece in pieces[6:8]]
    last = [pdv(pieces[8], command=False, last=True)]
    if trailing:
        last.append(pdv(b"\x00" * 64, command=False, last=False))
    pdus.append(p_data_tf(*last))
    kind, pdu, _ = first_answer(server.ports[0], *pdus)
    assert kind == 0x04
    assert decode(BytesIO(pdu[6:]), True, True).Status == StoreStatus.SUCCESS
    stored = archived_file(server, sop)
    assert stored.read_bytes()[dataset_offset(stored) :] == body
    # the command PDU goes the codec's way (no data set file yet), then one answer per PDU
    assert spooled == [None, False, False, False, False, False, False, True]


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_stored_instance_s_spool_name_is_not_unlinked_again_a_refused_one_s_is(
    server: RouterServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lever 59: the spool file of a stored instance was unlinked after the intake service had
    renamed it into the archive, which found nothing but took the incoming folder's lock. Now only
    a spool file the handler did not hand on (a refused data set) is unlinked, and nothing is
    left in the incoming folder either way."""
    incoming = server.app.archive.incoming
    unlinked: list[str] = []
    real_unlink = os.unlink

    def spy(path: Any, *args: Any, **kwargs: Any) -> None:
        if Path(path).parent == incoming:
            unlinked.append(Path(path).name)
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "unlink", spy)
    stored = write_part10(make_dataset(SOPInstanceUID="1.2.826.0.1.3680043.9.7433.3.59"), tmp_path / "ok.dcm")
    garbage = write_raw_part10(
        tmp_path / "garbage.dcm", CT_IMAGE_STORAGE, "1.2.826.0.1.3680043.9.7433.3.60", b"\x08\x00\x18\x00UI\xff\xff"
    )
    assert _store(server.ports[0], stored) == StoreStatus.SUCCESS
    assert unlinked == []
    archived_file(server, "1.2.826.0.1.3680043.9.7433.3.59")
    assert _store(server.ports[0], garbage) == StoreStatus.CANNOT_DECODE
    assert len(unlinked) == 1 and unlinked[0].startswith("rx-"), unlinked
    assert list(incoming.iterdir()) == []


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("decoded_by", ["codec", "pynetdicom"])
def test_a_handler_that_raises_is_answered_c211_and_leaves_no_spool_file(
    server: RouterServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, decoded_by: str
) -> None:
    """Found by the hostile trial of lever 59: an unexpected exception in the handler was
    answered 0xC211 by pynetdicom's ``attempt``, which skipped the rest of its block, and the
    data set stayed in the incoming folder until the next sweep. Both for a command set this
    codec decoded and for one pynetdicom decoded (a Move Destination element, not one of a C-STORE-RQ)."""

    def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError("injected fault")

    monkeypatch.setattr(type(server.app.intake), "store", broken)
    sop = "1.2.826.0.1.3680043.9.7433.3.61" if decoded_by == "codec" else "1.2.826.0.1.3680043.9.7433.3.62"
    command = c_store_command(CT_IMAGE_STORAGE, sop) if decoded_by == "codec" else _move_destination_command(sop)
    caplog.set_level(logging.CRITICAL)  # pynetdicom logs the handler's traceback at ERROR
    kind, pdu = _send_one(server, command, sop)
    assert kind == 0x04
    assert decode(BytesIO(pdu[6:]), True, True).Status == 0xC211
    # pynetdicom's association thread sends the answer before its spool file is removed
    deadline = time.monotonic() + 5
    while list(server.app.archive.incoming.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert list(server.app.archive.incoming.iterdir()) == []
