"""The presentation context items of an A-ASSOCIATE-RQ read straight from its bytes (issue 14, lever 48).

pynetdicom decodes each Presentation Context Item (PS3.8 section 9.3.2.2) through its generic
item machinery: an object per sub-item, each UID decoded, made a pydicom ``UID`` and validated
in a property setter, then, to make the A-ASSOCIATE primitive, a ``PresentationContext`` built
through more validating setters. For DCMTK ``storescu``'s 128 contexts (about 450 sub-items)
that was most of the 10 ms of CPU a request not seen before costs a receiving process, paid by
every receiving process for every new sender (:mod:`router.dicom.proposals` remembers a request
only once it has been seen).

:func:`split_request` reads the items in one pass and hands back the same objects pynetdicom's
decoder and ``to_primitive`` make (``tests/test_request_items.py`` compares them attribute by
attribute), for a request whose every presentation context is plain: an odd context ID used
once, one Abstract Syntax Sub-Item followed by one or more Transfer Syntax Sub-Items, every UID
conformant (PS3.5 section 9.1, as pydicom's ``UID.is_valid`` judges it) and every transfer syntax
one pydicom knows or a private one. For anything else it returns ``None`` and pynetdicom decodes
the request as before, with its warnings.
"""

from __future__ import annotations

import re
import struct
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.uid import RE_VALID_UID, UID
from pynetdicom.pdu_items import AbstractSyntaxSubItem, PresentationContextItemRQ, TransferSyntaxSubItem
from pynetdicom.presentation import PresentationContext

#: Offset of the first variable item of an A-ASSOCIATE-RQ (PS3.8 Table 9-11).
VARIABLE_ITEMS_OFFSET = 74
APPLICATION_CONTEXT_ITEM = 0x10
PRESENTATION_CONTEXT_ITEM = 0x20
ABSTRACT_SYNTAX_SUB_ITEM = 0x30
TRANSFER_SYNTAX_SUB_ITEM = 0x40
USER_INFORMATION_ITEM = 0x50
#: Most distinct UID values :func:`_uid` keeps (each a few hundred bytes at most).
UID_CACHE_SIZE = 4096

_ITEM_HEADER = struct.Struct(">BxH")
_UID_CHARACTERS = frozenset(b"0123456789.")
_UIDS: dict[tuple[bytes, bool], UID] = {}
_UIDS_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class ProposedContext:
    """One Presentation Context Item of a request: its ID, abstract syntax and transfer syntaxes
    (as proposed: in the sender's order of preference, a repeated one repeated)."""

    context_id: int
    abstract_syntax: UID
    transfer_syntaxes: tuple[UID, ...]

    def item(self) -> PresentationContextItemRQ:
        """The ``PresentationContextItemRQ`` pynetdicom's decoder makes of the item's bytes."""
        item = PresentationContextItemRQ.__new__(PresentationContextItemRQ)
        abstract = AbstractSyntaxSubItem.__new__(AbstractSyntaxSubItem)
        abstract._abstract_syntax_name = self.abstract_syntax
        sub_items: list[AbstractSyntaxSubItem | TransferSyntaxSubItem] = [abstract]
        for syntax in self.transfer_syntaxes:
            transfer = TransferSyntaxSubItem.__new__(TransferSyntaxSubItem)
            transfer._skip_validation = False
            transfer._transfer_syntax_name = syntax
            sub_items.append(transfer)
        item.presentation_context_id = self.context_id
        item.abstract_transfer_syntax_sub_items = sub_items
        return item

    def primitive(self) -> PresentationContext:
        """The ``PresentationContext`` pynetdicom's ``PresentationContextItemRQ.to_primitive`` makes."""
        # each transfer syntax once, as pynetdicom keeps them
        return presentation_context(self.context_id, self.abstract_syntax, list(dict.fromkeys(self.transfer_syntaxes)))


def presentation_context(
    context_id: int | None,
    abstract_syntax: UID | None,
    transfer_syntaxes: list[UID],
    result: int | None = None,
    usable: bool | None = None,
) -> PresentationContext:
    """A pynetdicom ``PresentationContext`` without SCP/SCU role selection, its fields set
    directly instead of through its validating setters (the values were checked already):
    ``result`` as in PS3.8 Table 9-18 (``None`` for a proposed context), ``usable`` its
    ``as_scp`` and ``as_scu`` (``None`` until negotiated)."""
    context = PresentationContext.__new__(PresentationContext)
    context.__dict__.update(
        _context_id=context_id,
        _abstract_syntax=abstract_syntax,
        _transfer_syntax=transfer_syntaxes,
        result=result,
        _scu_role=None,
        _scp_role=None,
        _as_scp=usable,
        _as_scu=usable,
    )
    return context


@dataclass(frozen=True, slots=True)
class SplitRequest:
    """An A-ASSOCIATE-RQ with its presentation context items read, the rest left to pynetdicom."""

    #: The request without its presentation context items (the PDU length field is not updated:
    #: pynetdicom's decoder does not read it).
    rest: bytes
    contexts: tuple[ProposedContext, ...]
    #: Where each context's item stands among the request's variable items (0-based).
    positions: tuple[int, ...]
    #: How many variable items :attr:`rest` holds (application context, user information).
    other_count: int

    @property
    def syntax_count(self) -> int:
        """Abstract and transfer syntax UIDs of all contexts together."""
        return sum(1 + len(context.transfer_syntaxes) for context in self.contexts)

    def variable_items(self, others: Sequence[Any]) -> list[Any]:
        """The request's variable items in their order: the context items made here, ``others``
        (what pynetdicom decoded of :attr:`rest`) in between."""
        items: list[Any] = []
        remaining = iter(others)
        slots = dict(zip(self.positions, self.contexts, strict=True))
        for index in range(len(others) + len(self.contexts)):
            context = slots.get(index)
            items.append(context.item() if context is not None else next(remaining))
        return items


def _uid(raw: bytes, transfer_syntax: bool) -> UID | None:
    """``raw`` as a conformant UID (and, for a transfer syntax, one pydicom knows or a private
    one), or ``None``. Answers are kept for at most :data:`UID_CACHE_SIZE` values."""
    key = (raw, transfer_syntax)
    known = _UIDS.get(key)
    if known is not None:
        return known
    if not raw or len(raw) > 64 or not _UID_CHARACTERS.issuperset(raw):
        return None
    text = raw.decode("ascii")
    if not re.match(RE_VALID_UID, text):  # checked before pydicom makes a UID of it (it would warn)
        return None
    uid = UID(text)
    if transfer_syntax and not (uid.is_private or uid.is_transfer_syntax):
        return None
    with _UIDS_LOCK:
        if len(_UIDS) < UID_CACHE_SIZE:
            _UIDS[key] = uid
    return uid


def _items(request: bytes, start: int, end: int) -> list[tuple[int, int, int]] | None:
    """(type, first byte, end) of each item or sub-item from ``start`` to ``end`` (a 4-byte
    header: type, reserved, 16-bit length; PS3.8 section 9.3.2), or ``None`` if one runs past
    ``end``."""
    items = []
    offset = start
    while offset < end:
        if offset + 4 > end:
            return None
        item_type, length = _ITEM_HEADER.unpack_from(request, offset)
        item_end = offset + 4 + length
        if item_end > end:
            return None
        items.append((item_type, offset, item_end))
        offset = item_end
    return items


def _read_context(request: bytes, start: int, end: int) -> ProposedContext | None:
    if end - start < 4 or request[start] % 2 == 0:  # context ID and three reserved bytes
        return None
    sub_items = _items(request, start + 4, end)
    if not sub_items or sub_items[0][0] != ABSTRACT_SYNTAX_SUB_ITEM or len(sub_items) < 2:
        return None
    abstract_syntax = _uid(request[sub_items[0][1] + 4 : sub_items[0][2]], transfer_syntax=False)
    transfer_syntaxes = []
    for sub_item_type, item_start, item_end in sub_items[1:]:
        syntax = _uid(request[item_start + 4 : item_end], transfer_syntax=True)
        if sub_item_type != TRANSFER_SYNTAX_SUB_ITEM or syntax is None:
            return None
        transfer_syntaxes.append(syntax)
    if abstract_syntax is None:
        return None
    return ProposedContext(request[start], abstract_syntax, tuple(transfer_syntaxes))


def split_request(request: bytes) -> SplitRequest | None:
    """Read the presentation context items of the A-ASSOCIATE-RQ ``request`` (the whole PDU).

    Returns ``None`` unless every variable item is an Application Context, Presentation Context
    or User Information item within the PDU (PS3.8 section 9.3.2), every presentation context
    is plain (module docstring) and no context ID is used twice.
    """
    items = _items(request, VARIABLE_ITEMS_OFFSET, len(request)) if len(request) >= VARIABLE_ITEMS_OFFSET else None
    if items is None:
        return None
    rest = [request[:VARIABLE_ITEMS_OFFSET]]
    contexts: list[ProposedContext] = []
    positions: list[int] = []
    context_ids: set[int] = set()
    for index, (item_type, item_start, item_end) in enumerate(items):
        if item_type == PRESENTATION_CONTEXT_ITEM:
            context = _read_context(request, item_start + 4, item_end)
            if context is None or context.context_id in context_ids:
                return None
            context_ids.add(context.context_id)
            contexts.append(context)
            positions.append(index)
        elif item_type in (APPLICATION_CONTEXT_ITEM, USER_INFORMATION_ITEM):
            rest.append(request[item_start:item_end])
        else:
            return None
    return SplitRequest(b"".join(rest), tuple(contexts), tuple(positions), len(rest) - 1)
