"""P-DATA-TF PDUs decoded into views of the bytes received, not copies of them.

pynetdicom copies every P-DATA-TF PDU four times on its way to the DIMSE layer: its body onto
the end of its header (``DULServiceProvider._read_pdu_data``), the whole PDU into a new
``bytes`` (``_decode_pdu``), each presentation data value out of it
(``P_DATA_TF._generate_items``), and each value again without its message control header when
it is written to the data set's spool file (``DIMSEMessage.decode_msg``). For a 512 KB data set
that is 2 MB of copying, on the listener's hot path (docs/benchmarks.md, levers 40 and 41).

A socket with a ``read_pdu()`` method (the listener's guarded socket,
:meth:`router.dicom.guard.GuardedAssociationSocket.read_pdu`) gives the whole PDU in one
buffer, which :func:`_read_pdu_data` hands on as it is; pynetdicom's reader is used for any
other socket (the router's own associations as an SCU).

:func:`decode_pdata` reads the PDV items (PS3.8 section 9.3.5.1: item length, presentation
context ID, value) as ``memoryview`` slices of the PDU; the P-DATA primitive carries those
views, and the DIMSE layer's slices of them are views too. It takes only a well-formed PDU,
with every item at least 2 bytes long (context ID and message control header, PS3.8 Annex E.2)
and the items filling the PDU exactly, at most :data:`MAX_VIEWED_ITEMS` of them; anything else,
and any association with handlers bound to the raw-data or PDU events (``--verbose``), goes
through pynetdicom's decoder unchanged, with its own answers (an A-ABORT for a malformed PDU).

:func:`install` patches pynetdicom once per process, like :mod:`router.dicom.reactor`.
"""

from __future__ import annotations

import logging
import struct
import threading
from typing import Any

from pynetdicom import evt
from pynetdicom.dul import DULServiceProvider
from pynetdicom.pdu_primitives import P_DATA

from router.dicom.reactor import quick_ack

#: PDU type of a P-DATA-TF (PS3.8 section 9.3.1) and the state machine event of its receipt
#: (PS3.8 Table 9-10, Evt10).
P_DATA_TF_TYPE = 0x04
P_DATA_TF_RECEIVED = "Evt10"
#: Sta6: association established, ready for data transfer (PS3.8 Table 9-10).
ESTABLISHED = "Sta6"
_HEADER = 6  # PDU type, reserved, PDU length
_ITEM_HEADER = struct.Struct(">LB")  # item length (context ID and value), presentation context ID
_PDU_HEADER = struct.Struct(">BBL")  # PDU type, reserved, PDU length
#: Most PDV items read as views from one PDU. A sender puts one (or a command set and its data
#: set's first fragment) in a PDU; a PDU of thousands of tiny items costs a view object each
#: (about 240 bytes per item, 40 times the PDU's size with listener.max_pdu_length = 0: found
#: by a hostile-peer trial) and goes to pynetdicom's decoder, as before.
MAX_VIEWED_ITEMS = 64

#: PDU types PS3.8 section 9.3.1 defines (A-ASSOCIATE-RQ to A-ABORT).
PDU_TYPES = frozenset(range(0x01, 0x08))
#: pynetdicom's DUL logger: its reports keep their logger, so the filters on it still apply.
DUL_LOG = logging.getLogger("pynetdicom.dul")
LOG = logging.getLogger(__name__)
#: PDU names by type (PS3.8 section 9.3.1).
PDU_NAMES = {
    0x01: "A-ASSOCIATE-RQ",
    0x02: "A-ASSOCIATE-AC",
    0x03: "A-ASSOCIATE-RJ",
    0x04: "P-DATA-TF",
    0x05: "A-RELEASE-RQ",
    0x06: "A-RELEASE-RP",
    0x07: "A-ABORT",
}

_LOCK = threading.Lock()
_ORIGINAL: dict[str, Any] = {}


class ReceivedPData:
    """A P-DATA-TF PDU as :func:`decode_pdata` read it: ``items`` are ``(context ID, value)``
    with each value a ``memoryview`` of the received bytes (message control header first)."""

    __slots__ = ("items",)

    def __init__(self, items: list[tuple[int, memoryview]]) -> None:
        self.items = items

    def to_primitive(self) -> P_DATA:
        """The P-DATA primitive the state machine hands to the DIMSE layer (action DT-2)."""
        primitive = P_DATA()
        # appended, as pynetdicom's P_DATA_TF.to_primitive does: the setter accepts bytes only
        primitive.presentation_data_value_list.extend(self.items)  # type: ignore[arg-type]
        return primitive


def decode_pdata(pdu: bytearray | bytes) -> ReceivedPData | None:
    """The PDV items of the P-DATA-TF PDU ``pdu`` (its 6-byte header included), or ``None`` if
    it is not a P-DATA-TF or not one this reader takes (see the module docstring).

    Values are views of ``pdu``, which must not change while they are in use.
    """
    if len(pdu) < _HEADER + _ITEM_HEADER.size + 1 or pdu[0] != P_DATA_TF_TYPE:
        return None
    end = len(pdu)
    if int.from_bytes(pdu[2:6], "big") != end - _HEADER:
        return None
    view = memoryview(pdu)
    items: list[tuple[int, memoryview]] = []
    offset = _HEADER
    while offset < end:
        if end - offset < _ITEM_HEADER.size + 1:
            return None
        length, context_id = _ITEM_HEADER.unpack_from(pdu, offset)
        value_end = offset + 4 + length
        if length < 2 or value_end > end:
            return None
        if len(items) == MAX_VIEWED_ITEMS:
            return None
        items.append((context_id, view[offset + _ITEM_HEADER.size : value_end]))
        offset = value_end
    return ReceivedPData(items)


def encode_pdata_tf(context_id: int, value: bytes) -> bytes:
    """A P-DATA-TF PDU of one PDV item (PS3.8 section 9.3.5): ``value`` is the presentation data
    value with its message control header first (PS3.8 Annex E.2). The bytes pynetdicom's
    ``P_DATA_TF.encode`` gives for the same item (tests/test_pdata.py compares them)."""
    item_length = len(value) + 1  # the presentation context ID and the value
    return b"".join(
        (
            _PDU_HEADER.pack(P_DATA_TF_TYPE, 0, 4 + item_length),  # PDU length: the item with its length field
            _ITEM_HEADER.pack(item_length, context_id),
            value,
        )
    )


def _decode_pdu(self: DULServiceProvider, bytestream: bytearray) -> tuple[Any, str]:
    """DULServiceProvider._decode_pdu: a P-DATA-TF read by :func:`decode_pdata` when no handler
    wants the raw bytes or the PDU; everything else by pynetdicom."""
    if bytestream[:1] == b"\x04" and not (
        self.assoc.get_handlers(evt.EVT_DATA_RECV) or self.assoc.get_handlers(evt.EVT_PDU_RECV)
    ):
        pdata = decode_pdata(bytestream)
        if pdata is not None:
            return pdata, P_DATA_TF_RECEIVED
    return _ORIGINAL["decode_pdu"](self, bytestream)


def _read_pdu_data(self: DULServiceProvider) -> None:
    """DULServiceProvider._read_pdu_data: the PDU from the socket's ``read_pdu()`` in one buffer,
    then pynetdicom's steps (its events, and its reports in its logger's words), except that a
    PDU that cannot be decoded is one WARNING line of this module's (the A-ABORT is the same);
    then, while a DIMSE message is part way in and its next PDU is already waiting, that PDU
    too (:func:`_reads_on`)."""
    socket: Any = self.socket
    if not hasattr(socket, "read_pdu"):
        _ORIGINAL["read_pdu_data"](self)
        return
    # The guarded socket reports a failed read itself and answers it, and a PDU of a type PS3.8
    # does not define, with a short read: pynetdicom's branches for those never run here.
    while _read_one_pdu(self, socket) and _reads_on(self, socket):
        # the reactor's bookkeeping of a PDU read (its idle timer, PS3.8 section 9.1.5), and its
        # wait's TCP_QUICKACK for the bytes found waiting
        self._idle_timer.restart()
        if socket.socket is not None:
            quick_ack(socket.socket)


def _read_one_pdu(self: DULServiceProvider, socket: Any) -> bool:
    """Read one PDU from the guarded ``socket`` and take it as :func:`_read_pdu_data` says;
    True when it was a P-DATA-TF handed to the DIMSE layer at once (action DT-2), False when it
    went to the event queue or ended the connection."""
    pdu = socket.read_pdu()
    if len(pdu) < _HEADER:
        self.event_queue.put("Evt17")  # transport connection closed
        return False
    pdu_type, length = pdu[0], int.from_bytes(pdu[2:6], "big")
    if len(pdu) != _HEADER + length:
        DUL_LOG.error(f"The received PDU is shorter than expected ({len(pdu)} of {_HEADER + length} bytes received)")
        self.event_queue.put("Evt17")
        return False
    try:
        decoded, event = self._decode_pdu(pdu)
    except Exception as exc:  # as pynetdicom: any decoding failure is Evt19 (an A-ABORT)
        # one WARNING naming the PDU and the exception's type (never its text, which may quote
        # the peer's bytes), instead of pynetdicom's two ERROR lines a peer could repeat at will
        LOG.warning(
            "%s from %s could not be decoded (%s); A-ABORT sent",
            PDU_NAMES.get(pdu_type, f"PDU of type 0x{pdu_type:02X}"),
            socket.describe_peer(),
            _exception_name(exc),
        )
        LOG.debug("decoding it raised", exc_info=exc)
        self.event_queue.put("Evt19")
        return False
    if type(decoded) is ReceivedPData and _delivers_at_once(self):
        # DT-2 (PS3.8 Table 9-10: Sta6 + Evt10, P-DATA indication, next state Sta6), taken here
        # instead of through the event queue and the state machine
        self.assoc.dimse.receive_primitive(decoded.to_primitive())
        return True
    self.event_queue.put(event)
    self._recv_pdu.put(decoded)
    return False


def _reads_on(dul: DULServiceProvider, socket: Any) -> bool:
    """Whether the DUL thread reads the next PDU at once, as its reactor's next pass would,
    instead of going round that pass: a DIMSE message is part way in (its next fragment is
    due, PS3.8 Annex E), its bytes are already waiting on the socket, and nothing else waits
    for the reactor (a stop, a primitive of ours to send, an event or PDU queued, a state other
    than Sta6: :func:`_delivers_at_once`).

    The reactor's pass between two PDUs of one data set looked at its timers, its queues (two
    exceptions raised and caught) and the socket again, and waited in ``select``: about 20 calls
    a PDU, 33 times for a 512 KB data set in 16 KiB PDUs (docs/benchmarks.md, lever 58). Only
    bytes already there are read: a peer that pauses between PDUs is waited for by the reactor
    as before, where a stop or an abort of ours is seen.
    """
    return (
        dul.assoc.dimse.message is not None
        and not dul._kill_thread
        and not dul.to_provider_queue.qsize()
        and _delivers_at_once(dul)
        and socket.ready
    )


def _delivers_at_once(dul: DULServiceProvider) -> bool:
    """Whether a P-DATA-TF just read can go to the DIMSE layer at once (action DT-2) instead of
    being queued as Evt10 for the reactor's next pass through the state machine.

    pynetdicom queued every PDU as an event, and the PDU itself on a second queue, and ran them
    through the state machine on the same thread right after: two queue hand-overs, a
    transition-table look-up and a transition per PDU (docs/benchmarks.md, lever 53). Only in
    Sta6, where Evt10 has exactly one action (DT-2) and leaves the state as it is, with no
    event or PDU waiting before it (their order is kept) and no handler bound to the state
    machine's transitions (``--verbose``), which would not see it. An exception from the DIMSE
    layer then reaches pynetdicom's reactor, which sends an A-ABORT, instead of its state
    machine, which ended the DUL thread without one; the router's DIMSE layer catches what a
    peer can cause itself (router.dicom.store_codec).
    """
    return (
        dul.state_machine.current_state == ESTABLISHED
        and not dul.event_queue.qsize()
        and not dul._recv_pdu.qsize()
        and not dul.assoc.get_handlers(evt.EVT_FSM_TRANSITION)
    )


def installed() -> bool:
    """True once :func:`install` has patched pynetdicom in this process."""
    return bool(_ORIGINAL)


def install() -> None:
    """Read PDUs with :func:`_read_pdu_data` and decode P-DATA-TF PDUs with :func:`decode_pdata`
    from now on (idempotent)."""
    with _LOCK:
        if not _ORIGINAL:
            _ORIGINAL["decode_pdu"] = DULServiceProvider._decode_pdu
            _ORIGINAL["read_pdu_data"] = DULServiceProvider._read_pdu_data
            DULServiceProvider._decode_pdu = _decode_pdu  # type: ignore[method-assign]
            DULServiceProvider._read_pdu_data = _read_pdu_data  # type: ignore[method-assign]


def _exception_name(exc: BaseException) -> str:
    """The exception's class name, with its module where the name alone says little (a lower-case
    class such as ``struct.error``)."""
    cls = type(exc)
    return cls.__name__ if cls.__name__[:1].isupper() else f"{cls.__module__}.{cls.__name__}"
