"""Hand-built DICOM bytes for ingest tests: data elements pydicom will not write, and a raw
DICOM Upper Layer client that can stop anywhere (PS3.5 section 7, PS3.8 section 9.3)."""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

from router.part10 import dataset_offset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
UNDEFINED = 0xFFFFFFFF
#: VRs with a 2-byte reserved field and a 4-byte length in explicit VR (PS3.5 Table 7.1-1).
LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)
SEQUENCE_END = struct.pack("<HHI", 0xFFFE, 0xE0DD, 0)


def even(value: bytes, pad: bytes = b" ") -> bytes:
    """``value`` padded to an even length (PS3.5 section 7.1.1)."""
    return value + pad if len(value) % 2 else value


def explicit(tag: int, vr: bytes, value: bytes, *, pad: bytes | None = b" ") -> bytes:
    """One explicit VR little endian element; ``pad=None`` keeps an odd length as it is."""
    if pad is not None:
        value = even(value, pad)
    group, element = tag >> 16, tag & 0xFFFF
    if vr in LONG_VRS:
        return struct.pack("<HH2sHI", group, element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, element, vr, len(value)) + value


def implicit(tag: int, value: bytes) -> bytes:
    """One implicit VR little endian element (the value as given)."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def item(body: bytes, *, undefined: bool = True) -> bytes:
    """A sequence item, of undefined length (with its delimiter) or of defined length."""
    if undefined:
        return struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED) + body + ITEM_END
    return struct.pack("<HHI", 0xFFFE, 0xE000, len(body)) + body


def explicit_undefined(tag: int, vr: bytes, items: bytes) -> bytes:
    """An explicit VR SQ or UN element of undefined length holding ``items``."""
    return struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr, 0, UNDEFINED) + items + SEQUENCE_END


def implicit_undefined(tag: int, items: bytes) -> bytes:
    """An implicit VR element of undefined length holding ``items`` (a sequence, PS3.5 7.5)."""
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, UNDEFINED) + items + SEQUENCE_END


def uid(value: str) -> bytes:
    """A UID value padded with NUL (PS3.5 section 6.2, VR UI)."""
    return even(value.encode("utf-8", "surrogatepass"), b"\x00")


def identifiers(
    sop_instance_uid: str,
    study_uid: str,
    series_uid: str,
    *,
    charset: bytes | None = b"ISO_IR 100",
    sop_class_uid: str = CT_IMAGE_STORAGE,
    middle: bytes = b"",
    accession: bytes = b"ACC-1",
    odd_accession: bool = False,
    pad_uids: bool = True,
    tail: bytes = b"",
) -> bytes:
    """An explicit VR LE data set: (0008,0005), SOP class/instance, accession, ``middle``, then
    Study and Series Instance UIDs (after ``middle``, so reading them proves the walk got past
    it), then ``tail`` (elements in (0020,000F)..(7FDF,FFFF)). ``pad_uids=False`` leaves an
    odd-length SOP Instance UID unpadded.
    """
    out = b"" if charset is None else explicit(0x00080005, b"CS", charset)
    out += explicit(0x00080016, b"UI", uid(sop_class_uid), pad=None)
    out += explicit(0x00080018, b"UI", uid(sop_instance_uid) if pad_uids else sop_instance_uid.encode(), pad=None)
    out += explicit(0x00080050, b"SH", accession, pad=None if odd_accession else b" ")
    out += explicit(0x00080060, b"CS", b"CT")
    out += middle
    out += explicit(0x0020000D, b"UI", uid(study_uid), pad=None)
    out += explicit(0x0020000E, b"UI", uid(series_uid), pad=None)
    return out + tail


def dataset_bytes(path: Path) -> bytes:
    """The data set bytes of a Part 10 file (everything after the File Meta Information)."""
    return path.read_bytes()[dataset_offset(path) :]


# ----------------------------------------------------------------------------- raw DUL client
APPLICATION_CONTEXT = b"1.2.840.10008.3.1.1.1"
A_ABORT = struct.pack(">BBIBBBB", 0x07, 0, 4, 0, 0, 0, 0)
#: A-RELEASE-RQ (PS3.8 section 9.3.6): type 05H, reserved, length 4, four reserved bytes.
A_RELEASE_RQ = struct.pack(">BBI", 0x05, 0, 4) + bytes(4)


def pdu_item(kind: int, payload: bytes) -> bytes:
    """One PDU item or sub-item: type, reserved, 2-byte length, ``payload`` (PS3.8 section 9.3)."""
    return struct.pack(">BBH", kind, 0, len(payload)) + payload


def presentation_context_item(context_id: int, sub_items: bytes) -> bytes:
    """A presentation context item of an A-ASSOCIATE-RQ (type 0x20, PS3.8 section 9.3.2.2):
    its ID, three reserved bytes, then ``sub_items`` (encoded abstract and transfer syntaxes)."""
    return pdu_item(0x20, struct.pack(">BBBB", context_id, 0, 0, 0) + sub_items)


def associate_rq(
    called: str = "ROUTER",
    calling: str = "RAW_SCU",
    sop_class: str = CT_IMAGE_STORAGE,
    transfer_syntax: str = EXPLICIT_LE,
    max_pdu: int = 16384,
    extra_user_items: bytes = b"",
    extra_context_items: bytes = b"",
    extra_items: bytes = b"",
    context_items: bytes | None = None,
    application_context: bytes | None = APPLICATION_CONTEXT,
    contexts: bytes | None = None,
) -> bytes:
    """A-ASSOCIATE-RQ with one presentation context, ID 1 (PS3.8 section 9.3.2);
    ``extra_user_items`` (encoded sub-items) follow the User Information item's own,
    ``extra_context_items`` the presentation context's transfer syntax, and ``extra_items`` the
    User Information item; ``context_items`` replaces the context's two sub-items and
    ``contexts`` (encoded presentation context items, ``b""`` for none) the whole context.
    ``application_context`` None leaves out the Application Context item."""
    if context_items is None:
        context_items = pdu_item(0x30, sop_class.encode()) + pdu_item(0x40, transfer_syntax.encode())
    if contexts is None:
        contexts = presentation_context_item(1, context_items + extra_context_items)
    user = pdu_item(0x51, struct.pack(">I", max_pdu)) + pdu_item(0x52, b"1.2.826.0.1.3680043.9.7433.1")
    user += extra_user_items
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + b"\x00" * 32
    if application_context is not None:
        body += pdu_item(0x10, application_context)
    body += contexts + pdu_item(0x50, user) + extra_items
    return struct.pack(">BBI", 0x01, 0, len(body)) + body


def c_store_command(sop_class: str, sop_instance: str, message_id: int = 1) -> bytes:
    """A C-STORE-RQ command set, implicit VR little endian (PS3.7 section 9.3.1.1)."""
    elements = (
        implicit(0x00000002, uid(sop_class))
        + implicit(0x00000100, struct.pack("<H", 0x0001))
        + implicit(0x00000110, struct.pack("<H", message_id))
        + implicit(0x00000700, struct.pack("<H", 0))
        + implicit(0x00000800, struct.pack("<H", 0x0000))
        + implicit(0x00001000, uid(sop_instance))
    )
    return implicit(0x00000000, struct.pack("<I", len(elements))) + elements


def pdv(data: bytes, *, command: bool, last: bool, context_id: int = 1) -> bytes:
    """One presentation data value item: length, context ID, message control header (PS3.8
    section 9.3.5.1, Annex E.2), then ``data``."""
    control = (0x01 if command else 0x00) | (0x02 if last else 0x00)
    return struct.pack(">IBB", len(data) + 2, context_id, control) + data


def p_data_tf(*items: bytes) -> bytes:
    """One P-DATA-TF PDU holding the encoded PDV ``items`` (PS3.8 section 9.3.5)."""
    body = b"".join(items)
    return struct.pack(">BBI", 0x04, 0, len(body)) + body


def p_data(data: bytes, *, command: bool, last: bool, context_id: int = 1) -> bytes:
    """One P-DATA-TF PDU holding one PDV (PS3.8 section 9.3.5, Annex E.2)."""
    return p_data_tf(pdv(data, command=command, last=last, context_id=context_id))


class RawAssociation:
    """A TCP connection speaking just enough DICOM UL to stop at any byte."""

    def __init__(self, port: int, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_connection((host, port), timeout=10)

    def associate(self, **kwargs: object) -> int:
        """Send A-ASSOCIATE-RQ; returns the answer's PDU type (2 = A-ASSOCIATE-AC)."""
        self.sock.sendall(associate_rq(**kwargs))  # type: ignore[arg-type]
        kind, _ = self.read_pdu()
        return kind

    def read_pdu(self) -> tuple[int, bytes]:
        """One PDU from the peer: (type, body); (0, b"") if the connection closed."""
        head = self._read(6)
        if len(head) < 6:
            return 0, b""
        kind, _, length = struct.unpack(">BBI", head)
        return kind, self._read(length)

    def _read(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                break
            data += chunk
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def start_c_store(self, sop_class: str, sop_instance: str, first_fragment: bytes) -> None:
        """Send a C-STORE-RQ command and the first (not last) data set fragment."""
        self.send(p_data(c_store_command(sop_class, sop_instance), command=True, last=True))
        self.send(p_data(first_fragment, command=False, last=False))

    def seconds_until_closed(self, limit: float) -> float:
        """Read (and drop) whatever the peer sends until it closes; seconds it took."""
        started = time.monotonic()
        self.sock.settimeout(limit)
        try:
            while self.sock.recv(65536):
                pass
        except TimeoutError:
            return float("inf")
        except ConnectionResetError:
            pass
        return time.monotonic() - started

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


def first_answer(port: int, *pdus: bytes) -> tuple[int, bytes, int]:
    """Associate with the SCP at ``port`` (no PDU size limit), send ``pdus``, and return the
    first PDU back, as (type, body), with the local port the connection used."""
    raw = RawAssociation(port)
    local_port = raw.sock.getsockname()[1]
    try:
        assert raw.associate(max_pdu=0) == 0x02
        for pdu in pdus:
            raw.send(pdu)
        kind, body = raw.read_pdu()
    finally:
        raw.close()
    return kind, body, local_port


def data_set_beginning_with_file_meta_elements(sop_instance: str, study: str, series: str) -> bytes:
    """An Explicit VR Little Endian data set that begins with group 0002 elements, as a broken
    or hostile sender may send one: a (0002,0010) naming Implicit VR Little Endian (not how it
    is encoded) and a (0002,0017) "ER_TULSA"; then the SOP Class (CT) and the three UIDs."""
    return (
        explicit(0x00020010, b"UI", b"1.2.840.10008.1.2\x00")
        + explicit(0x00020017, b"AE", b"ER_TULSA")
        + explicit(0x00080016, b"UI", CT_IMAGE_STORAGE.encode() + b"\x00")
        + explicit(0x00080018, b"UI", sop_instance.encode())
        + explicit(0x0020000D, b"UI", study.encode())
        + explicit(0x0020000E, b"UI", series.encode())
    )
