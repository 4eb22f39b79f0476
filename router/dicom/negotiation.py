"""Presentation context negotiation for the unrestricted storage SCP, made strict where it must be.

With ``UNRESTRICTED_STORAGE_SERVICE`` pynetdicom 3 accepts every proposed abstract syntax it
does not know as "storage", with the first transfer syntax proposed, whatever they are. Two
consequences a real sender can trigger (seen with files whose File Meta Information has an
empty Media Storage SOP Class UID):

- an empty or malformed abstract syntax is accepted; the sender's C-STORE-RQ then carries no
  usable Affected SOP Class UID and pynetdicom's DIMSE decoder raises in the association's
  network thread, which dies without an A-ABORT (the sender sees a closed connection);
- an unknown transfer syntax is accepted, so the data set cannot be read and every instance is
  answered 0xC210, where the sender could have used another syntax it proposed.

:func:`install` wraps the negotiation pynetdicom's ACSE calls so that, before it runs, a
context whose abstract syntax is not a valid UID (PS3.5 section 9.1: digits and dots, at most
64 characters) is answered "abstract-syntax-not-supported" (result 0x03), and a storage context
gets the first proposed transfer syntax pydicom knows, or "transfer-syntaxes-not-supported"
(0x04) when it knows none (PS3.8 section 9.3.3.2, Table 9-18). A SOP class pynetdicom knows
under a non-storage service class (Query/Retrieve, Basic Worklist Management, Storage
Commitment, ...) and the router does not support is answered 0x03 too: pynetdicom took Modality
Worklist FIND for storage. Other contexts are negotiated by pynetdicom as before.

It also answers pydicom's ``UID.is_valid`` and pynetdicom's ``set_uid`` from bounded caches
(the same answers, computed once per distinct UID), and encodes the A-ASSOCIATE-AC's
presentation context items directly: with a sender proposing every storage SOP class they were
most of what is left of an association's set-up CPU.
"""

from __future__ import annotations

import functools
import struct
import threading
from typing import Any

from pydicom.uid import UID
from pynetdicom import acse as _acse_module
from pynetdicom import sop_class as _pynetdicom_sop_class
from pynetdicom.presentation import PresentationContext
from pynetdicom.service_class import (
    NonPatientObjectStorageServiceClass,
    ServiceClass,
    StorageServiceClass,
    VerificationServiceClass,
)
from pynetdicom.sop_class import uid_to_service_class

from router.dicom.proposals import remembered_negotiation
from router.dicom.request_items import presentation_context
from router.domain.instance import uid_problem

ABSTRACT_SYNTAX_NOT_SUPPORTED = 0x03
TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04
#: The DICOM default transfer syntax (PS3.5 section 10.1).
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"

_LOCK = threading.Lock()
#: The storage SOP classes pynetdicom knows (what ``negotiate_unrestricted`` tests against; a
#: private name of its ``sop_class`` module: without it every context is negotiated by pynetdicom).
_PYNETDICOM_STORAGE_UIDS: frozenset[str] | None = (
    frozenset(vars(_pynetdicom_sop_class)["_STORAGE_CLASSES"].values())
    if isinstance(vars(_pynetdicom_sop_class).get("_STORAGE_CLASSES"), dict)
    else None
)
_INSTALLED = False
#: Service classes whose SOP classes the unrestricted storage SCP may accept (``ServiceClass``:
#: a UID pynetdicom does not know).
_STORAGE_LIKE_SERVICES = (
    ServiceClass,
    StorageServiceClass,
    NonPatientObjectStorageServiceClass,
    VerificationServiceClass,
)


def _refused(proposed: PresentationContext, result: int) -> PresentationContext:
    context = PresentationContext()
    context.context_id = proposed.context_id
    context.abstract_syntax = proposed.abstract_syntax
    # PS3.8 Table 9-18: a refused context's transfer syntax is not significant, but the sub-item
    # must be there; a context proposed with none (an empty sub-item) gets the default one
    context.transfer_syntax = [proposed.transfer_syntax[0] if proposed.transfer_syntax else IMPLICIT_VR_LITTLE_ENDIAN]
    context.result = result
    return context


@functools.lru_cache(maxsize=4096)
def _storage_like(abstract_syntax: str) -> bool:
    """False for a SOP class pynetdicom knows under a service class other than storage (or
    verification): Query/Retrieve, Basic Worklist Management, Storage Commitment and the like
    (PS3.4). pynetdicom's unrestricted negotiation takes an abstract syntax whose pydicom
    keyword it has no class of the same name for as storage, which accepted Modality Worklist
    Information Model - FIND (1.2.840.10008.5.1.4.31) as a storage context (a hostile-peer
    trial); the router serves only C-STORE and C-ECHO. Unknown and private UIDs stay storage."""
    return uid_to_service_class(abstract_syntax) in _STORAGE_LIKE_SERVICES


@functools.lru_cache(maxsize=4096)
def taken_as_storage(abstract_syntax: str) -> bool:
    """Whether pynetdicom's ``negotiate_unrestricted`` accepts ``abstract_syntax`` as storage
    (its own test: a private UID, a storage SOP class, or a UID its ``sop_class`` module has no
    class for); the rest it negotiates against the accepting contexts."""
    uid = UID(abstract_syntax)
    storage = _PYNETDICOM_STORAGE_UIDS or frozenset()
    return uid.is_private or uid in storage or not hasattr(_pynetdicom_sop_class, uid.keyword)


def _accepted_directly(abstract_syntax: str) -> bool:
    return taken_as_storage(abstract_syntax) and _is_valid_uid(abstract_syntax)


def accepted_as_storage(proposed: PresentationContext) -> PresentationContext:
    """The accepted context pynetdicom's ``negotiate_unrestricted`` makes of a storage context
    proposed without SCP/SCU role selection: the first proposed transfer syntax, result 0
    (acceptance, PS3.8 Table 9-18), usable as SCU and as SCP. Made directly instead of through
    its validating setters (lever 48); ``tests/test_request_items.py`` compares the two."""
    return presentation_context(
        proposed.context_id, proposed.abstract_syntax, [UID(proposed.transfer_syntax[0])], result=0x00, usable=True
    )


def strict_unrestricted(original: Any, known_transfer_syntaxes: frozenset[str], *, direct: bool = True) -> Any:
    """Wrap pynetdicom's ``negotiate_unrestricted(rq_contexts, ac_contexts, roles)``.

    Returns a function with the same signature and return value (accepted and refused
    contexts sorted by context ID, role selection items). With ``direct`` (the default), a
    context pynetdicom would accept as storage, proposed without role selection, is accepted by
    :func:`accepted_as_storage` instead of by ``original``; ``direct=False`` is for the tests
    that compare the two.
    """

    def negotiate(
        rq_contexts: list[PresentationContext], ac_contexts: list[PresentationContext], roles: Any = None
    ) -> Any:
        refused: list[PresentationContext] = []
        passed: list[PresentationContext] = []
        supported = {str(context.abstract_syntax) for context in ac_contexts}
        for proposed in rq_contexts:
            abstract_syntax = str(proposed.abstract_syntax or "")
            if uid_problem(abstract_syntax) is not None or (
                abstract_syntax not in supported and not _storage_like(abstract_syntax)
            ):
                refused.append(_refused(proposed, ABSTRACT_SYNTAX_NOT_SUPPORTED))
                continue
            known: list[str | bytes | UID] = [
                syntax for syntax in proposed.transfer_syntax if str(syntax) in known_transfer_syntaxes
            ]
            if not known:
                refused.append(_refused(proposed, TRANSFER_SYNTAXES_NOT_SUPPORTED))
                continue
            if known != list(proposed.transfer_syntax):
                narrowed = PresentationContext()
                narrowed.context_id = proposed.context_id
                narrowed.abstract_syntax = proposed.abstract_syntax
                narrowed.transfer_syntax = known  # keeps the sender's order of preference
                proposed = narrowed
            passed.append(proposed)
        if roles or not direct or _PYNETDICOM_STORAGE_UIDS is None:
            accepted, reply_roles = original(passed, ac_contexts, roles)
        else:
            # a non-conformant abstract syntax is left to pynetdicom, which warns about it
            storage: list[PresentationContext] = []
            others: list[PresentationContext] = []
            for context in passed:
                (storage if _accepted_directly(str(context.abstract_syntax)) else others).append(context)
            accepted, reply_roles = original(others, ac_contexts, roles) if others else ([], [])
            accepted = [*accepted, *(accepted_as_storage(context) for context in storage)]
        return sorted([*accepted, *refused], key=lambda context: int(context.context_id)), reply_roles

    negotiate.__doc__ = original.__doc__
    return negotiate


def install(known_transfer_syntaxes: frozenset[str]) -> bool:
    """Put :func:`strict_unrestricted` in front of pynetdicom's negotiation (idempotent).

    Returns True if installed (False if pynetdicom's ACSE module no longer looks as expected;
    negotiation then stays pynetdicom's own).
    """
    global _INSTALLED
    with _LOCK:
        if _INSTALLED:
            return True
        original = getattr(_acse_module, "negotiate_unrestricted", None)
        if original is None:
            return False
        # a request remembered by router.dicom.proposals is negotiated once per accepting contexts
        _acse_module.negotiate_unrestricted = remembered_negotiation(
            strict_unrestricted(original, known_transfer_syntaxes)
        )
        _remember_uid_validity()
        _remember_set_uid()
        _encode_accepted_contexts_directly()
        _INSTALLED = True
        return True


@functools.lru_cache(maxsize=4096)
def _is_valid_uid(value: str) -> bool:
    return _UID_IS_VALID(UID(value))


#: pydicom's own check (a regular expression and the 64-character limit, PS3.5 section 9.1).
_UID_IS_VALID: Any = vars(UID)["is_valid"].fget


def _remember_uid_validity() -> None:
    """``pydicom.uid.UID.is_valid`` answered from a bounded cache (same answer: it depends on the
    string only). pynetdicom asks it for every abstract and transfer syntax UID of every
    presentation context, several times each (decoding the A-ASSOCIATE-RQ, negotiating, encoding
    the A-ASSOCIATE-AC): a sender proposing ~130 storage contexts with 3 transfer syntaxes made
    about 2,000 regular expression matches per association, two thirds of its set-up CPU."""
    UID.is_valid = property(lambda self: _is_valid_uid(str(self)))  # type: ignore[assignment, method-assign]


#: Most UIDs :func:`_remember_set_uid` keeps (distinct values and field names; about 1 MiB).
SET_UID_CACHE_SIZE = 4096


def _remember_set_uid() -> None:
    """pynetdicom's ``set_uid`` answered from a bounded cache for conformant UIDs, in the modules
    that decode and build association PDUs and presentation contexts (``pdu_items``,
    ``pdu_primitives``, ``presentation``).

    ``set_uid`` decodes, builds a pydicom ``UID`` and validates it for every abstract and transfer
    syntax of every proposed context, several times per association (decoding the
    A-ASSOCIATE-RQ, making its primitive, negotiating, building the A-ASSOCIATE-AC): with DCMTK
    ``storescu``'s 128 contexts, a fifth of an association's CPU once the deep copy of the
    contexts was gone (docs/benchmarks.md, lever 15). A ``UID`` is an immutable ``str``, so the
    same object can be handed out again. Only values that are valid UIDs (or empty) are kept:
    a non-conformant one still goes through pynetdicom each time (its warning is logged as
    before) and one that raises is never cached.
    """
    import pynetdicom.pdu_items as items
    import pynetdicom.pdu_primitives as primitives
    import pynetdicom.presentation as presentation

    original = items.set_uid
    cache: dict[tuple[Any, ...], Any] = {}

    # pynetdicom's parameter order: (value, name, allow_empty, allow_none, validate)
    def set_uid(value: Any, name: str, allow_empty: bool = True, allow_none: bool = True, validate: bool = True) -> Any:
        if not isinstance(value, (bytes, str)):
            return original(value, name, allow_empty, allow_none, validate)
        key = (value, name, allow_empty, allow_none, validate)
        known = cache.get(key)
        if known is not None:
            return known
        result = original(value, name, allow_empty, allow_none, validate)
        if isinstance(result, UID) and (not result or _is_valid_uid(str(result))) and len(cache) < SET_UID_CACHE_SIZE:
            cache[key] = result
        return result

    set_uid.__doc__ = original.__doc__
    for module in (items, primitives, presentation):
        if getattr(module, "set_uid", None) is original:
            module.set_uid = set_uid  # type: ignore[attr-defined]


_CONTEXT_AC_HEADER = struct.Struct(">BBHBBBB")
_SUB_ITEM_HEADER = struct.Struct(">BBH")
#: pynetdicom's own ``PresentationContextItemAC.encode``, once replaced (for the tests).
_PYNETDICOM_CONTEXT_AC_ENCODE: Any = None


def encode_presentation_context_ac(context_id: int, result: int, transfer_syntax: str) -> bytes:
    """A Presentation Context Item of an A-ASSOCIATE-AC with its Transfer Syntax Sub-Item
    (PS3.8 section 9.3.3.2, Tables 9-18 and 9-19): the UID in ASCII without padding.

    The bytes pynetdicom's generic item encoder writes for the same item (tests compare them).
    """
    name = transfer_syntax.encode("ascii")
    sub_item = _SUB_ITEM_HEADER.pack(0x40, 0, len(name)) + name
    return _CONTEXT_AC_HEADER.pack(0x21, 0, 4 + len(sub_item), context_id, 0, result, 0) + sub_item


def _encode_accepted_contexts_directly() -> None:
    """pynetdicom's ``PresentationContextItemAC.encode`` through :func:`encode_presentation_context_ac`.

    pynetdicom encodes each item field by field through generic wrappers and recomputes item
    lengths as it goes: for storescu's 128 contexts, 262 item encodings and a sixth of an
    association's set-up CPU. An item with anything but one ASCII transfer syntax and byte-sized
    fields is left to pynetdicom's own encoder.
    """
    from pynetdicom.pdu_items import PresentationContextItemAC

    global _PYNETDICOM_CONTEXT_AC_ENCODE
    original = _PYNETDICOM_CONTEXT_AC_ENCODE = PresentationContextItemAC.encode

    def encode(self: Any) -> bytes:
        items = self.transfer_syntax_sub_item
        context_id, result = self.presentation_context_id, self.result_reason
        if len(items) == 1 and isinstance(context_id, int) and isinstance(result, int):
            name = items[0].transfer_syntax_name
            if name and name.isascii() and 0 <= context_id <= 255 and 0 <= result <= 255:
                return encode_presentation_context_ac(context_id, result, str(name))
        return bytes(original(self))

    PresentationContextItemAC.encode = encode  # type: ignore[method-assign]
