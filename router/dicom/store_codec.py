"""A fixed-layout codec for the C-STORE command sets, on the listener's hot path.

pynetdicom decodes every command set into a pydicom ``Dataset``, copies it into a primitive
through validating setters, writes the File Meta Information of each received data set with
pydicom's writer, and encodes every response the same way: as much CPU per C-STORE as the
router's own work (docs/benchmarks.md, issue 14). A C-STORE-RQ command set is a handful of
group 0000 elements in Implicit VR Little Endian (PS3.7 section 6.3.1, Table 9.3-1) and its
response another handful (Table 9.3-2): this module reads and writes them directly.

It takes only what it fully understands and leaves everything else to pynetdicom unchanged: a
command set with any element not in Table 9.3-1, an element out of order or of an unexpected
length, a UID that is not conformant (PS3.5 section 9.1), a command set split over several
fragments, a response with an Offending Element, or an association with pynetdicom's logging
handlers bound (``--verbose``, which dumps every message). Those go through pynetdicom's own
decoder and encoder, with its own answers (an invalid message aborts the association).

A C-STORE-RQ decoded here is also served in the thread that read it (the association's DUL
thread) instead of being handed to the association thread and its response handed back
(:func:`_receive_primitive`), and that thread sends the response itself (:func:`_sent_directly`).

:func:`install` patches pynetdicom once per process, like :mod:`router.dicom.reactor`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

from pydicom import config as pydicom_config
from pydicom.uid import UID
from pynetdicom import (
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    _config,
    association,
    dimse,
    dimse_messages,
    evt,
    service_class,
)
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.dimse_primitives import C_CANCEL, C_STORE, N_EVENT_REPORT
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.utils import make_target

from router.dicom.pdata import ESTABLISHED, encode_pdata_tf

LOG = logging.getLogger(__name__)

#: Command Field values, PS3.7 Annex E (Table E.1-1).
C_STORE_RQ_FIELD = 0x0001
C_STORE_RSP_FIELD = 0x8001
#: Command Data Set Type: no data set follows (PS3.7 Table E.1-1); any other value means one does.
NO_DATA_SET = 0x0101

_ELEMENT_HEADER = struct.Struct("<HHI")  # Implicit VR LE: group, element, value length (bytes)
_US = struct.Struct("<H")
_UL = struct.Struct("<I")
#: PS3.5 section 9.1: components of digits without leading zeros, separated by periods, <= 64 chars.
_CONFORMANT_UID = re.compile(rb"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))*")

# C-STORE-RQ elements, PS3.7 Table 9.3-1 (group 0000): element number -> expected value length.
_GROUP_LENGTH, _SOP_CLASS, _COMMAND_FIELD, _MESSAGE_ID = 0x0000, 0x0002, 0x0100, 0x0110
_PRIORITY, _DATA_SET_TYPE, _SOP_INSTANCE = 0x0700, 0x0800, 0x1000
_MOVE_ORIGINATOR_AE, _MOVE_ORIGINATOR_ID = 0x1030, 0x1031
_MESSAGE_ID_RESPONDED, _STATUS, _ERROR_COMMENT = 0x0120, 0x0900, 0x0902
_REQUIRED = frozenset(
    {_GROUP_LENGTH, _SOP_CLASS, _COMMAND_FIELD, _MESSAGE_ID, _PRIORITY, _DATA_SET_TYPE, _SOP_INSTANCE}
)
_KNOWN = _REQUIRED | {_MOVE_ORIGINATOR_AE, _MOVE_ORIGINATOR_ID}
_FIXED_LENGTH = {
    _GROUP_LENGTH: 4,
    _COMMAND_FIELD: 2,
    _MESSAGE_ID: 2,
    _PRIORITY: 2,
    _DATA_SET_TYPE: 2,
    _MOVE_ORIGINATOR_ID: 2,
}


@dataclass(frozen=True, slots=True)
class StoreRequest:
    """The command of a C-STORE-RQ (PS3.7 section 9.1.1.1), as decoded here."""

    message_id: int
    sop_class_uid: str
    sop_instance_uid: str
    #: 0 medium, 1 high, 2 low (PS3.7 Table 9.3-1)
    priority: int
    move_originator_ae_title: str | None = None
    move_originator_message_id: int | None = None


def _uid(value: bytes) -> str | None:
    """A UI value without its one trailing NULL pad, if conformant (PS3.5 sections 6.2, 9.1)."""
    if value.endswith(b"\x00"):
        value = value[:-1]
    if len(value) > 64 or _CONFORMANT_UID.fullmatch(value) is None:
        return None
    return value.decode("ascii")


def decode_store_request(command: bytes) -> StoreRequest | None:
    """Decode a C-STORE-RQ command set (Implicit VR Little Endian, PS3.7 section 6.3.1).

    Returns None for anything this codec does not fully understand (see the module docstring):
    the caller then leaves the command set to pynetdicom. Raises nothing.
    """
    values: dict[int, bytes] = {}
    offset, end, previous = 0, len(command), -1
    while offset < end:
        if end - offset < 8:
            return None
        group, element, length = _ELEMENT_HEADER.unpack_from(command, offset)
        offset += 8
        if group != 0 or element <= previous or element not in _KNOWN or length > end - offset:
            return None
        if _FIXED_LENGTH.get(element, length) != length:
            return None
        values[element] = command[offset : offset + length]
        offset += length
        previous = element
    if not values.keys() >= _REQUIRED or _UL.unpack(values[_GROUP_LENGTH])[0] != end - 12:
        return None
    if _US.unpack(values[_COMMAND_FIELD])[0] != C_STORE_RQ_FIELD:
        return None
    if _US.unpack(values[_DATA_SET_TYPE])[0] == NO_DATA_SET:
        return None
    priority = _US.unpack(values[_PRIORITY])[0]
    sop_class, sop_instance = _uid(values[_SOP_CLASS]), _uid(values[_SOP_INSTANCE])
    if priority > 2 or not sop_class or not sop_instance:
        return None
    move_ae = None
    if _MOVE_ORIGINATOR_AE in values:
        try:
            move_ae = values[_MOVE_ORIGINATOR_AE].decode("ascii").strip(" \x00")
        except UnicodeDecodeError:
            return None
        if not move_ae or len(move_ae) > 16 or "\\" in move_ae or not move_ae.isprintable():
            return None
    move_id = _US.unpack(values[_MOVE_ORIGINATOR_ID])[0] if _MOVE_ORIGINATOR_ID in values else None
    return StoreRequest(_US.unpack(values[_MESSAGE_ID])[0], sop_class, sop_instance, priority, move_ae, move_id)


def _element(element: int, value: bytes) -> bytes:
    return _ELEMENT_HEADER.pack(0, element, len(value)) + value


def _padded(value: str, pad: bytes) -> bytes:
    encoded = value.encode("ascii")
    return encoded + pad if len(encoded) % 2 else encoded


def encode_store_response(
    message_id: int, sop_class_uid: str, sop_instance_uid: str, status: int, error_comment: str | None = None
) -> bytes:
    """Encode a C-STORE-RSP command set (PS3.7 Table 9.3-2), Implicit VR Little Endian.

    Elements in tag order, UIs padded with NULL and the Error Comment (LO) with a space to even
    length (PS3.5 section 6.2), the Command Group Length first: the bytes pynetdicom writes for
    the same response (tests/test_store_codec.py compares them).
    """
    body = b"".join(
        (
            _element(_SOP_CLASS, _padded(sop_class_uid, b"\x00")),
            _element(_COMMAND_FIELD, _US.pack(C_STORE_RSP_FIELD)),
            _element(_MESSAGE_ID_RESPONDED, _US.pack(message_id)),
            _element(_DATA_SET_TYPE, _US.pack(NO_DATA_SET)),
            _element(_STATUS, _US.pack(status)),
            _element(_ERROR_COMMENT, _padded(error_comment, b" ")) if error_comment else b"",
            _element(_SOP_INSTANCE, _padded(sop_instance_uid, b"\x00")),
        )
    )
    return _element(_GROUP_LENGTH, _UL.pack(len(body))) + body


def _explicit(tag_element: int, vr: bytes, value: bytes) -> bytes:
    """An Explicit VR Little Endian group 0002 element (PS3.5 section 7.1.2)."""
    if vr == b"OB":
        return struct.pack("<HH2s2xI", 2, tag_element, vr, len(value)) + value
    return struct.pack("<HH2sH", 2, tag_element, vr, len(value)) + value


def encode_file_meta(
    sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, sending_ae_title: str | None = None
) -> bytes:
    """The 128-byte preamble, ``DICM`` and File Meta Information (PS3.10 section 7.1) that
    pynetdicom writes before a received data set (with :func:`install`, it too names the
    sender): the same bytes, built without a Dataset. ``sending_ae_title`` (a value checked by
    :func:`sending_ae_title`) is written as the Sending Application Entity Title (0002,0017):
    start-up recovery re-indexes a file whose index row a power loss took back as received from
    that AE title (router.services.recovery)."""
    body = b"".join(
        (
            _explicit(0x0001, b"OB", b"\x00\x01"),
            _explicit(0x0002, b"UI", _padded(sop_class_uid, b"\x00")),
            _explicit(0x0003, b"UI", _padded(sop_instance_uid, b"\x00")),
            _explicit(0x0010, b"UI", _padded(transfer_syntax, b"\x00")),
            _explicit(0x0012, b"UI", _padded(_IMPLEMENTATION_UID, b"\x00")),
            _explicit(0x0013, b"SH", _padded(_IMPLEMENTATION_VERSION, b" ")),
            _explicit(0x0017, b"AE", _padded(sending_ae_title, b" ")) if sending_ae_title else b"",
        )
    )
    return b"\x00" * 128 + b"DICM" + _explicit(0x0000, b"UL", _UL.pack(len(body))) + body


#: Characters of an AE value (PS3.5 Table 6.2-1: the default repertoire, no backslash or control
#: character), at most 16 of them.
_AE_VALUE = re.compile(r"[ -\[\]-~]{1,16}")


def sending_ae_title(assoc: Any) -> str | None:
    """The calling AE title of ``assoc`` (a pynetdicom Association), as the Sending Application
    Entity Title (0002,0017) of the files received on it; None when it is not a valid AE value
    (PS3.5 Table 6.2-1), which pynetdicom does not refuse."""
    title = str(getattr(getattr(assoc, "requestor", None), "ae_title", "") or "").strip()
    return title if _AE_VALUE.fullmatch(title) else None


def _association_sender(assoc: Any) -> str | None:
    """:func:`sending_ae_title` of ``assoc``, checked once per association (not per fragment)."""
    try:
        return assoc._router_sending_ae_title
    except AttributeError:
        title = assoc._router_sending_ae_title = sending_ae_title(assoc)
        return title


#: The Sending Application Entity Title of the association whose PDUs this thread decodes (its
#: DUL thread), for pynetdicom's own ``create_file_meta`` (:func:`_create_file_meta`).
_DECODING = threading.local()


def _create_file_meta(**kwargs: Any) -> Any:
    """pynetdicom's ``create_file_meta`` for a data set its own decoder receives (``--verbose``,
    a command set in several fragments), with the Sending Application Entity Title added."""
    meta = _ORIGINAL["create_file_meta"](**kwargs)
    title = getattr(_DECODING, "sending_ae_title", None)
    if title:
        meta.SendingApplicationEntityTitle = title
    return meta


# What pynetdicom's create_file_meta() puts in every received file (its defaults).
_IMPLEMENTATION_UID = str(PYNETDICOM_IMPLEMENTATION_UID)
_IMPLEMENTATION_VERSION = str(PYNETDICOM_IMPLEMENTATION_VERSION)

_LOCK = threading.Lock()
_ORIGINAL: dict[str, Any] = {}


def installed() -> bool:
    """True once :func:`install` has patched pynetdicom in this process."""
    return bool(_ORIGINAL)


def _logging_handlers_bound(assoc: Any, event: Any) -> bool:
    return bool(assoc.get_handlers(event))


def _decode_msg(self: DIMSEMessage, primitive: P_DATA, assoc: Any = None) -> bool:
    """DIMSEMessage.decode_msg: a C-STORE-RQ command set in one fragment is decoded here.

    A message pynetdicom's own decoder cannot take (it raises: e.g. a C-STORE-RQ with an empty
    Affected SOP Class UID, whose File Meta Information pydicom refuses to write) aborts the
    association as an invalid PDU does (A-ABORT, service-provider source, PS3.8 section 9.3.8;
    pynetdicom's Evt19), with one WARNING line and its spool file removed: no traceback, no
    half-written file left in the incoming folder, and the sender is told instead of seeing the
    connection closed.
    """
    if getattr(self, "_router_invalid", False):
        return False  # the association is being aborted: later fragments are dropped
    if assoc is not None:
        written = _data_fragments_spooled(self, primitive)
        if written is not None:
            return written
    self._router_assoc = assoc  # type: ignore[attr-defined]  # for _message_to_primitive
    _DECODING.sending_ae_title = _association_sender(assoc) if assoc is not None else None
    items = getattr(primitive, "presentation_data_value_list", None)
    if assoc is not None and items and getattr(self, "_data_set_file", None) is not None and _command_first(items):
        # PS3.8 Annex E.2: a message's fragments are sent in order, its command set then its
        # data set; pynetdicom appended the new command set to the old one and opened a second
        # spool file, leaving the first in the incoming folder until the periodic sweep
        # (found by a hostile-peer trial)
        _abort_invalid(assoc, "a command set before the end of the data set it follows", self)
        return False
    if (
        type(self) is DIMSEMessage
        and assoc is not None
        and items
        and _config.STORE_RECV_CHUNKED_DATASET
        and self.encoded_command_set.tell() == 0
    ):
        context_id, data = items[0]
        if data and data[0] & 0x03 == 0x03 and context_id in assoc._accepted_cx:
            request = decode_store_request(bytes(data[1:]))
            if request is not None and not _logging_handlers_bound(assoc, evt.EVT_DIMSE_RECV):
                _begin_store(
                    self,
                    context_id,
                    request,
                    assoc._accepted_cx[context_id].transfer_syntax[0],
                    _DECODING.sending_ae_title,
                )
                if len(items) == 1:
                    return False
                rest = P_DATA()
                # the PDVs after the command set in the same P-DATA-TF (a data set may follow in
                # it, PS3.8 section 9.3.5); appended, as the values may be views (router.dicom.pdata)
                rest.presentation_data_value_list.extend(items[1:])
                return _pynetdicom_decode(self, rest, assoc)
    return _pynetdicom_decode(self, primitive, assoc)


def _data_fragments_spooled(message: DIMSEMessage, primitive: P_DATA) -> bool | None:
    """Write a P-DATA's data set fragments straight to the spool file of the C-STORE-RQ this
    codec decoded, when every fragment in it is one of that data set (PS3.8 Annex E.2: message
    control header bit 0 clear) on the message's presentation context with its header byte
    present. Returns True when the last fragment (bit 1 set) was written, False when more are to
    come, and None, having written nothing, for anything else: :func:`_decode_msg`'s checks and
    pynetdicom's decoder then take the P-DATA as before (a command set inside the data set, a
    fragment on another context, an empty value: each answered there, with an A-ABORT).

    The data set of a 512 KB instance arrives in 4 to 40 P-DATA-TF PDUs, as the sender's
    maximum PDU length has it; each went through those checks and pynetdicom's loop over its
    fragments, with a flush per fragment, to end in the same ``write`` (docs/benchmarks.md,
    lever 57).
    """
    state = message.__dict__
    spool = state.get("_data_set_file")
    if spool is None or "_router_store_request" not in state:
        return None
    items = primitive.presentation_data_value_list
    context_id = message.context_id
    for item_context_id, value in items:
        if item_context_id != context_id or not len(value) or value[0] & 0x01:
            return None
    write = spool.write
    for _context_id, value in items:
        write(value[1:])
        if value[0] & 0x02:
            return True  # as pynetdicom: the message is complete, fragments after it are dropped
    return False


#: Why a message with a fragment on another presentation context is aborted (its WARNING).
_OTHER_CONTEXT = "a fragment on another presentation context than its message's"


def _on_another_context(message: DIMSEMessage, items: Any) -> bool:
    """Whether a fragment in ``items`` names another presentation context than the message it
    continues (known once its command set is in). Every fragment of a message travels on one
    presentation context, whose transfer syntax encodes its data set (PS3.8 section 9.3.5 and
    Annex E; DCMTK refuses the mix too): pynetdicom wrote a data set whose fragments came on
    contexts of different transfer syntaxes into one file, under the first one's syntax, and it
    was stored with Success (found by a hostile-peer trial)."""
    known = message.context_id
    return known is not None and any(context_id != known for context_id, _value in items)


def _command_first(items: Any) -> bool:
    """Whether a command fragment comes in ``items`` before the last fragment of a data set."""
    for _context_id, value in items:
        if not len(value):
            return False  # no message control header: pynetdicom's decoder refuses it
        if value[0] & 0x01:
            return True
        if value[0] & 0x02:
            return False
    return False


def _pynetdicom_decode(message: DIMSEMessage, primitive: P_DATA, assoc: Any) -> bool:
    """pynetdicom's decode_msg; a message it raises on aborts the association (see above), and
    so does a C-STORE-RQ whose command set lacks a Message ID or has a Priority out of range,
    as soon as its command set is in (before its data set is spooled), and a fragment on another
    presentation context than its message's (:func:`_on_another_context`), before it is written.

    pynetdicom took those in whole and then ignored the request ("Received unexpected C-STORE
    service message"): no answer, and the data set stayed in the incoming folder until the
    periodic sweep, so a peer could fill the disk with data sets that never count. Without a
    Message ID no response can be addressed (PS3.7 section 9.3.1.2)."""
    if assoc is not None and _on_another_context(message, getattr(primitive, "presentation_data_value_list", ())):
        _abort_invalid(assoc, _OTHER_CONTEXT, message)
        return False
    try:
        complete = bool(_ORIGINAL["decode_msg"](message, primitive, assoc))
    except Exception as exc:
        if assoc is None:
            raise
        _abort_invalid(assoc, f"{type(exc).__name__} while decoding it", message)
        return False
    # Checked once, when the command set has just been decoded (the codec's own requests are valid).
    state = vars(message)
    if (
        assoc is not None
        and type(message) is C_STORE_RQ
        and not state.keys() & {"_router_checked", "_router_store_request"}
    ):
        message._router_checked = True  # type: ignore[attr-defined]
        problem = _command_problem(message.command_set)
        if problem is not None:
            _abort_invalid(assoc, problem, message)
            return False
    return complete


def _command_problem(command: Any) -> str | None:
    """What makes a decoded C-STORE-RQ command set unanswerable (PS3.7 Table 9.3-1), or None:
    no Message ID (a response could not name the request), a Priority other than 0, 1 or 2."""
    if not isinstance(command.get("MessageID"), int):
        return "a C-STORE-RQ without MessageID"
    priority = command.get("Priority")
    if priority not in (0, 1, 2):
        return f"a C-STORE-RQ with Priority {priority if isinstance(priority, int) else 'missing'}"
    return None


def _abort_invalid(assoc: Any, reason: str, message: Any) -> None:
    """Abort the association over an invalid DIMSE message: one WARNING line, the message's
    spool file removed, later fragments of it dropped, and the A-ABORT (service provider, PS3.8
    section 9.3.8) sent by pynetdicom's state machine (Evt19, as for an invalid PDU). ``reason``
    names what was wrong, never a value from the message (an exception's text may quote one)."""
    message._router_invalid = True
    # forgotten, so the listener's clean-up at connection close does not report a transfer cut short
    spool, message._data_set_file = getattr(message, "_data_set_file", None), None
    if spool is not None:
        with contextlib.suppress(OSError):
            getattr(spool, "discard", spool.close)()  # router.dicom.spool: staged bytes not written
        with contextlib.suppress(OSError):
            Path(spool.name).unlink()
    LOG.warning(
        "invalid DIMSE message from %r at %s:%s (%s); A-ABORT sent",
        assoc.requestor.ae_title,
        assoc.requestor.address,
        assoc.requestor.port,
        reason,
    )
    assoc.dul.event_queue.put("Evt19")


def _begin_store(
    message: DIMSEMessage, context_id: int, request: StoreRequest, transfer_syntax: str, sender: str | None
) -> None:
    message.context_id = context_id
    message.__class__ = C_STORE_RQ
    message._router_store_request = request  # type: ignore[attr-defined]
    # The same temporary file pynetdicom would open (router.dicom.spool in the router).
    spool: Any = dimse_messages.NamedTemporaryFile(delete=False, mode="wb", suffix=".dcm")
    message._data_set_file = spool
    message._data_set_path = Path(spool.name)
    spool.write(encode_file_meta(request.sop_class_uid, request.sop_instance_uid, str(transfer_syntax), sender))
    begin = getattr(spool, "begin_data_set", None)  # router.dicom.spool: hashed as it arrives
    if begin is not None:
        begin(transfer_syntax=str(transfer_syntax), sending_ae_title=sender)


def _trusted_uid(value: str) -> UID:
    """A UID already checked by :func:`_uid` (pydicom would run its regex again)."""
    return UID(value, validation_mode=pydicom_config.IGNORE)


def _message_to_primitive(self: DIMSEMessage) -> Any:
    """DIMSEMessage.message_to_primitive: a C-STORE primitive straight from the decoded command.

    A message pynetdicom cannot turn into a primitive (it raises: a Priority out of range, a
    data set before any command) aborts the association with one WARNING line, as in
    :func:`_decode_msg`, instead of pynetdicom's two ERROR lines; the primitive returned then
    is marked so that :func:`_serve_request` drops it.
    """
    # The data set is complete: what router.dicom.spool still stages goes to the file now,
    # before the handler reads, fsyncs or renames it.
    finish = getattr(getattr(self, "_data_set_file", None), "finish", None)
    if finish is not None:
        finish()
    request: StoreRequest | None = getattr(self, "_router_store_request", None)
    if request is None:
        try:
            return _ORIGINAL["message_to_primitive"](self)
        except Exception as exc:
            assoc = getattr(self, "_router_assoc", None)
            if assoc is None:
                raise
            _abort_invalid(assoc, f"{type(exc).__name__} while reading it", self)
            dropped = C_STORE()
            dropped._router_dropped = True  # type: ignore[attr-defined]
            return dropped
    primitive = C_STORE()
    primitive.MessageID = request.message_id
    primitive._affected_sop_class_uid = _trusted_uid(request.sop_class_uid)
    primitive._affected_sop_instance_uid = _trusted_uid(request.sop_instance_uid)
    primitive.Priority = request.priority
    if request.move_originator_ae_title is not None:
        primitive.MoveOriginatorApplicationEntityTitle = request.move_originator_ae_title
    if request.move_originator_message_id is not None:
        primitive.MoveOriginatorMessageID = request.move_originator_message_id
    primitive.DataSet = self.data_set
    primitive._context_id = self.context_id
    primitive._dataset_path = self._data_set_path
    primitive._dataset_file = self._data_set_file
    primitive._router_fixed_layout = True  # type: ignore[attr-defined]
    return primitive


def _storage_scp(self: Any, req: Any, context: Any) -> None:
    """StorageServiceClass.SCP for a request decoded here: pynetdicom's steps (PS3.4 B.2.3),
    with the response primitive filled without re-validating UIDs checked on receipt.

    Another DIMSE request on a storage context (a C-FIND-RQ, say) is answered with an A-ABORT
    and one WARNING: pynetdicom's storage SCP raised on it, which logged an ERROR traceback
    before the same A-ABORT."""
    if not isinstance(req, C_STORE):
        title = str(getattr(self.assoc.requestor, "ae_title", "") or "").strip()
        LOG.warning(
            "%s request from %s on storage presentation context %s (only C-STORE is served there, "
            "PS3.4 Annex B); A-ABORT sent",
            type(req).__name__.replace("_", "-"),
            title or "an unnamed peer",
            context.context_id,
        )
        self.assoc.abort()
        return
    try:
        _serve_storage(self, req, context)
    finally:
        # Also when the handler raised: pynetdicom's ``attempt`` answers 0xC211 and skips the
        # rest of its block, where pynetdicom's own storage SCP removes the spool file, which
        # then stayed in the incoming folder until the next sweep (found by the hostile trial of
        # lever 59).
        _discard_spool(req)


def _serve_storage(self: Any, req: C_STORE, context: Any) -> None:
    """:func:`_storage_scp`'s C-STORE: pynetdicom's storage SCP for a request pynetdicom
    decoded; for one this codec decoded, its steps with the response filled directly."""
    if not getattr(req, "_router_fixed_layout", False):
        _ORIGINAL["storage_scp"](self, req, context)
        return
    rsp = C_STORE()
    rsp._message_id = req._message_id
    rsp._message_id_being_responded_to = req._message_id
    rsp._affected_sop_instance_uid = req._affected_sop_instance_uid
    rsp._affected_sop_class_uid = req._affected_sop_class_uid
    cx_id = context.context_id
    with service_class.attempt(rsp, self.dimse, cx_id, self.assoc) as ctx:
        ctx.error_msg = "Exception in handler bound to 'evt.EVT_C_STORE'"
        ctx.error_status = 0xC211
        try:
            rsp_status = evt.trigger(ctx.assoc, evt.EVT_C_STORE, {"request": req, "context": context.as_tuple})
        finally:
            _discard_spool(req)  # before the answer is sent, a failure's 0xC211 too
    if not ctx.success or not self.assoc.is_established:
        return
    rsp = self.validate_status(rsp_status, rsp)
    self.dimse.send_msg(rsp, cx_id)


def _discard_spool(req: Any) -> None:
    """Close the request's spool file and delete it, unless the handler marked it consumed (the
    intake service moved it into the archive: ``router.dicom.spool.SpoolFile.consumed``).

    The unlink of a name already renamed away found nothing, but took the incoming folder's
    lock for writing first, and every receiving process creates its spool files in that folder:
    at four associations it waited for another thread's file creation, 0.05 ms of CPU per
    instance (docs/benchmarks.md, lever 59). Idempotent."""
    spool = getattr(req, "_dataset_file", None)
    if spool:
        req._dataset_file = None  # discarded once: a second call does nothing
        spool.close()
        if not getattr(spool, "consumed", False):
            try:
                os.unlink(spool.name)
            except OSError:
                pass


def _serve_request(self: Any, msg: Any, context_id: int) -> None:
    """Association._serve_request: a primitive :func:`_message_to_primitive` marked is dropped
    (its association is being aborted); everything else is pynetdicom's, with the association
    marked as serving meanwhile (see :func:`_receive_primitive`) and its idle timer stopped.

    The peer waits for our response while a request is served: that is not idleness. pynetdicom
    left the idle timer (``network_timeout``, PS3.8 section 9.1.5) running, and its association
    thread, back from a store slower than ``network_timeout``, found the timer run out and sent
    an A-ABORT right behind the response: the instance was kept, a pynetdicom sender reported
    no status, and every sender lost the rest of its association. The timer restarts once the
    response is queued, as for a request served in the DUL thread (:func:`_serve_store_inline`).
    """
    if getattr(msg, "_router_dropped", False):
        return
    self._router_serving = True  # the DUL thread then queues a fast-path request behind it
    try:
        with _idle_timer_stopped(self):
            _ORIGINAL["serve_request"](self, msg, context_id)
    finally:
        self._router_serving = False


@contextlib.contextmanager
def _idle_timer_stopped(assoc: Any) -> Iterator[None]:
    """The association's idle timer (``network_timeout``, PS3.8 section 9.1.5) stopped while a
    request is served, restarted once its response is queued: the peer waiting for our answer
    is not idle."""
    idle = getattr(assoc.dul, "_idle_timer", None)
    if idle is not None:
        idle.stop()
    try:
        yield
    finally:
        if idle is not None:
            idle.restart()


def _receive_primitive(self: Any, primitive: P_DATA) -> None:
    """DIMSEServiceProvider.receive_primitive: a C-STORE-RQ this codec decoded is served in the
    thread that read its last fragment (the DUL's), not queued for the association thread.

    pynetdicom hands every complete request from its DUL thread to the association's thread
    and the response back, two thread wake-ups and two hand-overs of the interpreter lock per
    C-STORE (docs/benchmarks.md, lever 31). While the handler runs the DUL reads nothing more
    from the socket; without asynchronous operations negotiated (PS3.7 section D.3.3.3) the
    peer sends nothing until it has the response, and an A-ABORT or a closed connection is
    read right after it. Every other message, and a C-STORE-RQ pynetdicom decoded, takes
    pynetdicom's way (its code below, unchanged but for the one branch).
    """
    if self.message is None:
        self.message = DIMSEMessage()
    if not self.message.decode_msg(primitive, self.assoc):
        return
    evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": self.message})
    context_id = self.message.context_id
    try:
        request = self.message.message_to_primitive()
    except Exception as exc:  # noqa: BLE001 - as pynetdicom: any decoding failure aborts (Evt19)
        LOG.error("Received an invalid DIMSE message")
        LOG.debug("decoding it raised %s", type(exc).__name__)
        self.dul.event_queue.put("Evt19")
        return
    # Inline only when the association thread has nothing to serve: a peer that sends the next
    # request before our response (asynchronous operations are not negotiated) behind one
    # pynetdicom decoded would otherwise have both served at once, answered out of order. And
    # only once the association is established: pynetdicom's acceptor thread sends the
    # A-ASSOCIATE-AC before it marks the association established, and a peer's first C-STORE
    # served here in between was stored but never answered (StorageServiceClass answers
    # nothing on an association that is not established); queued, the association thread
    # serves it as soon as it has finished establishing.
    inline = (
        getattr(request, "_router_fixed_layout", False)
        and not getattr(request, "_router_dropped", False)
        and self.assoc.is_established
        and not self.msg_queue.qsize()
        and not getattr(self.assoc, "_router_serving", False)
    )
    if inline:
        pass
    elif isinstance(request, C_CANCEL) and len(self.cancel_req) < 10:
        self.cancel_req[request.MessageIDBeingRespondedTo] = request
    elif isinstance(request, N_EVENT_REPORT) and request.is_valid_request:
        threading.Thread(target=make_target(self.assoc._serve_request), args=(request, context_id)).start()
    else:
        self.msg_queue.put((context_id, request))
    # pynetdicom's reset, ready for the next message (its issue #41)
    self.message.encoded_command_set = BytesIO()
    self.message.data_set = BytesIO()
    self.message._data_set_file = None
    self.message._data_set_path = None
    self.message = None
    if inline:
        _serve_store_inline(self.assoc, request, context_id)


def _serve_store_inline(assoc: Any, request: Any, context_id: int) -> None:
    """Association._serve_request's steps for a C-STORE-RQ decoded here, in the DUL thread.

    The codec took the request only on an accepted presentation context with valid UIDs, and
    every storage SOP class is served by the Storage Service Class (``UNRESTRICTED_STORAGE_SERVICE``),
    so of pynetdicom's checks only the release one applies. The association's idle timer
    (``network_timeout``, PS3.8 section 9.1.5) is stopped while the store runs and restarted
    after the response is queued. An exception outside the handler
    (which :func:`_storage_scp` answers with 0xC211) aborts the association through the state
    machine (Evt19, A-ABORT), as pynetdicom's ``abort()`` would: that call waits for the DUL
    thread to stop, which from the DUL thread itself would never return.
    """
    if assoc._sent_release:
        LOG.warning("C-STORE-RQ received during association release, ignoring")
        _discard_spool(request)  # pynetdicom left it in the incoming folder
        return
    # The peer waits for our response meanwhile: that is not idleness. The association thread,
    # free now, would otherwise abort a store that takes longer than network_timeout after
    # storing it and before answering it (found by the hostile-peer trial of lever 31).
    with _idle_timer_stopped(assoc):
        try:
            context = assoc._accepted_cx[context_id]
            assoc.dimse.cancel_req = {}
            service_class.StorageServiceClass(assoc).SCP(request, context)
            assoc.dimse.cancel_req = {}
        except Exception as exc:  # noqa: BLE001 - the DUL thread must survive to send the A-ABORT
            LOG.error("serving a C-STORE-RQ raised %s; A-ABORT sent", type(exc).__name__)
            _discard_spool(request)  # nothing was kept: the data set is not left in the incoming folder
            assoc.dul.event_queue.put("Evt19")


def _send_msg(self: Any, primitive: Any, context_id: int) -> None:
    """DIMSEServiceProvider.send_msg: a C-STORE-RSP encoded here, in one P-DATA."""
    if (
        type(primitive) is C_STORE
        and primitive.MessageIDBeingRespondedTo is not None
        and primitive.Status is not None
        and primitive.OffendingElement is None
        and primitive.AffectedSOPClassUID
        and primitive.AffectedSOPInstanceUID
        and primitive.AffectedSOPClassUID.isascii()
        and primitive.AffectedSOPInstanceUID.isascii()
        and (primitive.ErrorComment is None or primitive.ErrorComment.isascii())
        and not _logging_handlers_bound(self.assoc, evt.EVT_DIMSE_SENT)
    ):
        command = encode_store_response(
            primitive.MessageIDBeingRespondedTo,
            primitive.AffectedSOPClassUID,
            primitive.AffectedSOPInstanceUID,
            primitive.Status,
            primitive.ErrorComment,
        )
        maximum = self.maximum_pdu_size
        # One PDV: with its item length, context ID and control header (6 bytes) it must fit
        # the peer's maximum PDU length (PS3.8 section 9.3.5.1, Annex D.1); 0 means no limit.
        if not maximum or len(command) + 6 <= maximum:
            if _sent_directly(self.dul, context_id, command):
                return
            pdata = P_DATA()
            pdata.presentation_data_value_list.append((context_id, b"\x03" + command))
            self.dul.send_pdu(pdata)
            return
    _ORIGINAL["send_msg"](self, primitive, context_id)


def _sent_directly(dul: Any, context_id: int, command: bytes) -> bool:
    """Send a C-STORE-RSP command set from the DUL thread itself, as action DT-1 would (PS3.8
    Table 9-10: Sta6 + Evt9, P-DATA-TF sent, Sta6), without the round through its queue.

    A C-STORE-RQ served in the DUL thread (:func:`_serve_store_inline`) had its response put on
    the DUL's queue of primitives to send, which its reactor then took off, turned into an
    event, ran through the state machine and encoded, and the wake-up the queue sends to the
    reactor's wait came back to that same thread as a pipe to read: a write, two reads and a
    wait more per instance (docs/benchmarks.md, lever 49). Only in the DUL thread, in Sta6,
    with nothing queued to send before it and no handler bound to the PDU-sent or
    state-machine events (``--verbose``); the same ``socket.send`` as DT-1 (a failed send is
    the same Evt17). Returns False, having sent nothing, otherwise.
    """
    if (
        threading.get_ident() != dul.ident
        or dul.state_machine.current_state != ESTABLISHED
        or dul.to_provider_queue.qsize()
        or dul.socket is None
        or _logging_handlers_bound(dul.assoc, evt.EVT_PDU_SENT)
        or _logging_handlers_bound(dul.assoc, evt.EVT_FSM_TRANSITION)
    ):
        return False
    dul.socket.send(encode_pdata_tf(context_id, b"\x03" + command))
    return True


def install() -> None:
    """Patch pynetdicom's C-STORE receive and respond path with this codec. Idempotent."""
    with _LOCK:
        if _ORIGINAL:
            return
        _ORIGINAL["decode_msg"] = DIMSEMessage.decode_msg
        _ORIGINAL["message_to_primitive"] = DIMSEMessage.message_to_primitive
        _ORIGINAL["storage_scp"] = service_class.StorageServiceClass.SCP
        _ORIGINAL["send_msg"] = dimse.DIMSEServiceProvider.send_msg
        _ORIGINAL["serve_request"] = association.Association._serve_request
        _ORIGINAL["create_file_meta"] = dimse_messages.create_file_meta
        DIMSEMessage.decode_msg = _decode_msg  # type: ignore[method-assign]
        DIMSEMessage.message_to_primitive = _message_to_primitive  # type: ignore[method-assign]
        service_class.StorageServiceClass.SCP = _storage_scp  # type: ignore[method-assign]
        dimse.DIMSEServiceProvider.send_msg = _send_msg  # type: ignore[method-assign]
        association.Association._serve_request = _serve_request  # type: ignore[method-assign]
        dimse_messages.create_file_meta = _create_file_meta
        dimse.DIMSEServiceProvider.receive_primitive = _receive_primitive  # type: ignore[method-assign]
