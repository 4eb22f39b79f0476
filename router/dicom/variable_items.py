"""Association items of a type not defined at their place are skipped, not fatal.

PS3.8 section 9.3.1: "Items of unrecognized types shall be ignored and skipped." DCMTK does so
in an A-ASSOCIATE-RQ or -AC and in a presentation context item. pynetdicom 3.0 looks each item
type up in its one table of all PDU items. An unknown type (a later edition's, a vendor's)
raised ``KeyError`` while the PDU was decoded, and the association was aborted. A known item out
of place (a Presentation Context AC item in a request) was decoded as that item.

:func:`install` makes these four decode only the items PS3.8 defines at their place and skip
the others by their length, logging each at DEBUG (its type and length, never its bytes):

- A-ASSOCIATE-RQ (Table 9-11): Application Context 10H, Presentation Context 20H, User
  Information 50H;
- A-ASSOCIATE-AC (Table 9-17): 10H, Presentation Context 21H, 50H;
- Presentation Context item of a request (Table 9-14): Abstract Syntax 30H, Transfer Syntax 40H;
- Presentation Context item of an answer (Table 9-18): Transfer Syntax 40H.

User Information sub-items are :mod:`router.dicom.user_items`'s. An item whose length runs past
its PDU or item is still an error, as before: pynetdicom's decoder refuses it and the
association is aborted. So is a presentation context item left without the sub-items it must
hold (one Abstract Syntax and at least one Transfer Syntax in a request, Table 9-14; a Transfer
Syntax in an accepted context of an answer, Table 9-18), whether they were replaced by unknown
items or never sent: pynetdicom's negotiation raised ``TypeError`` on a context without an
abstract syntax in the association's thread, which died without an answer and left the
connection open outside the listener's limits, and ``IndexError`` on one without a transfer
syntax. :class:`MissingSubItem` now makes the decoder refuse the PDU (one WARNING and an
A-ABORT from :mod:`router.dicom.pdata`).
"""

from __future__ import annotations

import logging
import struct
import threading
from collections.abc import Callable
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_items import PDUItem, PresentationContextItemAC, PresentationContextItemRQ

LOG = logging.getLogger(__name__)

#: Item types each PDU or item may hold (PS3.8 Tables 9-11, 9-14, 9-17, 9-18), and its name in
#: the DEBUG line.
DEFINED_ITEM_TYPES: dict[type, tuple[frozenset[int], str]] = {
    A_ASSOCIATE_RQ: (frozenset({0x10, 0x20, 0x50}), "A-ASSOCIATE-RQ"),
    A_ASSOCIATE_AC: (frozenset({0x10, 0x21, 0x50}), "A-ASSOCIATE-AC"),
    PresentationContextItemRQ: (frozenset({0x30, 0x40}), "presentation context (RQ)"),
    PresentationContextItemAC: (frozenset({0x40}), "presentation context (AC)"),
}

#: An item's length field (PS3.8 section 9.3: 2 bytes, big endian, after its type and a reserved byte).
_ITEM_LENGTH = struct.Struct(">H")

_LOCK = threading.Lock()
_INSTALLED = False


class MissingSubItem(ValueError):
    """A presentation context item without a sub-item PS3.8 requires in it."""


def defined_items(bytestream: bytes, defined: frozenset[int], holder: str) -> bytes:
    """``bytestream`` (the encoded items of a PDU's or item's variable field) without the items
    whose type is not in ``defined``; each one left out is logged at DEBUG.

    ``bytestream`` itself when every item is defined there (the common case, checked without
    copying), or when an item's header or length runs past its end: pynetdicom's decoder then
    refuses it, as before.
    """
    types = _item_types(bytestream)
    return bytestream if types is None else _kept(bytestream, types, defined, holder)


def _kept(bytestream: bytes, types: list[int], defined: frozenset[int], holder: str) -> bytes:
    """:func:`defined_items` for a ``bytestream`` whose item ``types`` are known (and whole)."""
    if all(item_type in defined for item_type in types):
        return bytestream
    kept: list[bytes] = []
    for item_type, item_bytes in PDUItem._generate_items(bytestream):
        if item_type in defined:
            kept.append(item_bytes)
        else:
            LOG.debug("%s item of type 0x%02X ignored (%d bytes)", holder, item_type, len(item_bytes))
    return b"".join(kept)


def _item_types(bytestream: bytes) -> list[int] | None:
    """The item types of ``bytestream``, in order; ``None`` if an item's header or length runs
    past its end."""
    types: list[int] = []
    offset, end = 0, len(bytestream)
    while offset < end:
        if offset + 4 > end:
            return None
        (length,) = _ITEM_LENGTH.unpack_from(bytestream, offset + 2)
        if offset + 4 + length > end:
            return None
        types.append(bytestream[offset])
        offset += 4 + length
    return types


def _required(item: Any) -> dict[int, str]:
    """The sub-items ``item`` must hold (type: name), PS3.8 Tables 9-14 and 9-18."""
    if isinstance(item, PresentationContextItemRQ):
        return {0x30: "Abstract Syntax", 0x40: "Transfer Syntax"}
    if isinstance(item, PresentationContextItemAC) and item.result_reason == 0:
        return {0x40: "Transfer Syntax"}
    return {}


def _skipping(original: Callable[[Any, bytes], list[Any]], defined: frozenset[int], holder: str) -> Any:
    def _wrap_generate_items(self: Any, bytestream: bytes) -> list[Any]:
        bytestream = bytes(bytestream)
        types = _item_types(bytestream)
        if types is None:  # an item runs past the end: pynetdicom's decoder refuses it
            return original(self, bytestream)
        for item_type, name in _required(self).items():
            if item_type not in types:  # each required type is defined there, so it is kept
                raise MissingSubItem(
                    f"{holder} {self.presentation_context_id} has no {name} sub-item (PS3.8 section 9.3)"
                )
        return original(self, _kept(bytestream, types, defined, holder))

    _wrap_generate_items.__doc__ = original.__doc__
    return _wrap_generate_items


def install() -> None:
    """Decode the four with :func:`defined_items` from now on (idempotent)."""
    global _INSTALLED
    with _LOCK:
        if not _INSTALLED:
            for cls, (defined, holder) in DEFINED_ITEM_TYPES.items():
                target: Any = cls
                target._wrap_generate_items = _skipping(target._wrap_generate_items, defined, holder)
            _INSTALLED = True
