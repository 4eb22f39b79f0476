"""A-ASSOCIATE-RQs decoded and negotiated once per distinct request (issue 14, lever 36).

A modality or PACS sends the same A-ASSOCIATE-RQ on every association: the same AE titles, the
same proposed presentation contexts (DCMTK ``storescu`` proposes 128), the same user
information. pynetdicom decodes it into PDU items (about 0.7 ms for ``storescu``'s), makes its
A-ASSOCIATE primitive with a ``PresentationContext`` per item (0.8 ms) and negotiates every
context (0.9 ms), on every association, holding the interpreter lock the process's storing
threads wait for.

:func:`install` remembers, for each distinct request (its exact bytes, PS3.8 section 9.3.2; at
most :data:`MAX_REQUESTS` of them, each at most :data:`MAX_REQUEST_BYTES` and
:data:`MAX_SYNTAXES` UIDs):

- the decoded PDU's attributes: a request seen before is not decoded again (its items are only
  read after decoding, never changed);
- the proposed presentation contexts of its primitive: each association gets its own copies;
- the result of the negotiation (:func:`router.dicom.negotiation.strict_unrestricted`, wrapped
  in :func:`remembered_negotiation` by :func:`router.dicom.negotiation.install`), for the same
  accepting contexts and when no SCP/SCU role selection is proposed: each association gets its
  own copies of the accepted and refused contexts.

Only a request whose every presentation context has one valid abstract syntax and valid transfer
syntaxes (PS3.5 section 9.1) is remembered: anything else is decoded and negotiated by
pynetdicom each time, so its warnings are logged each time, as before. The A-ASSOCIATE-AC is
the same byte for byte either way (``tests/test_proposals.py``).

The first time a request is seen, its presentation context items are read by
:func:`router.dicom.request_items.split_request` when they are plain (lever 48), and pynetdicom
decodes only the rest (AE titles, application context, user information); the contexts of its
primitive are then made from what was read. A request that is not plain is decoded by pynetdicom
whole, as before.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_items import (
    AbstractSyntaxSubItem,
    PresentationContextItemRQ,
    TransferSyntaxSubItem,
    UserInformationItem,
)
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import PresentationContext

from router.dicom.request_items import split_request
from router.domain.instance import uid_problem

#: Most distinct requests remembered (least recently used forgotten first).
MAX_REQUESTS = 16
#: Largest request remembered, in bytes (``storescu``'s 128 contexts: 9,615).
MAX_REQUEST_BYTES = 32_768
#: Most UIDs (abstract and transfer syntaxes, all contexts together) of a request remembered.
#: What is kept grows with them (``tracemalloc``: 128 contexts with 1, 2 or 3 transfer syntaxes
#: each, 144, 170 and 199 KiB; at most 256 contexts fit), so at most about 6 MiB per receiving
#: process. A hostile-peer trial had 40 requests of 4,400 UIDs each take 66 MiB without it.
MAX_SYNTAXES = 512

_LOCK = threading.Lock()
_INSTALLED = False


class Proposal:
    """What is remembered of one distinct A-ASSOCIATE-RQ."""

    def __init__(self, attributes: dict[str, Any]) -> None:
        self.attributes = attributes  # the decoded PDU's, shared read-only
        self.contexts: list[PresentationContext] | None = None  # the primitive's, as made once
        #: (accepting contexts, accepted and refused contexts, role selection replies)
        self.negotiated: tuple[Any, list[PresentationContext], list[Any]] | None = None


class ProposedContexts(list[PresentationContext]):
    """The primitive's proposed contexts, tagged with the request they came from."""

    proposal: Proposal


class Proposals:
    """The remembered requests (thread-safe; a bounded least-recently-used map)."""

    def __init__(self, limit: int = MAX_REQUESTS) -> None:
        self._limit = limit
        self._known: OrderedDict[bytes, Proposal] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, request: bytes) -> Proposal | None:
        """The proposal remembered for these exact bytes, if any."""
        with self._lock:
            proposal = self._known.get(request)
            if proposal is not None:
                self._known.move_to_end(request)
            return proposal

    def remember(self, request: bytes, proposal: Proposal) -> None:
        """Keep ``proposal`` for ``request`` (forgetting the least recently used beyond the limit)."""
        with self._lock:
            self._known[request] = proposal
            self._known.move_to_end(request)
            while len(self._known) > self._limit:
                self._known.popitem(last=False)

    def __len__(self) -> int:
        return len(self._known)


#: The process's remembered requests.
KNOWN = Proposals()


def copy_context(context: PresentationContext) -> PresentationContext:
    """A new ``PresentationContext`` equal to ``context`` (its own transfer syntax list; the UIDs,
    immutable strings, are shared)."""
    copied = PresentationContext.__new__(PresentationContext)
    copied.__dict__.update(context.__dict__)
    copied._transfer_syntax = list(context._transfer_syntax)
    return copied


def _rememberable(pdu: A_ASSOCIATE_RQ) -> bool:
    """Whether every proposed context has exactly one abstract syntax sub-item and at least one
    transfer syntax sub-item (PS3.8 section 9.3.2.2), every UID valid, and the request at most
    :data:`MAX_SYNTAXES` UIDs in all."""
    count = 0
    for item in pdu.variable_items:
        if not isinstance(item, PresentationContextItemRQ):
            continue
        abstract = transfer = 0
        for sub_item in item.abstract_transfer_syntax_sub_items:
            if isinstance(sub_item, AbstractSyntaxSubItem):
                abstract += 1
                name = sub_item.abstract_syntax_name
            elif isinstance(sub_item, TransferSyntaxSubItem):
                transfer += 1
                name = sub_item.transfer_syntax_name
            else:
                return False
            if uid_problem(str(name or "")) is not None:
                return False
        count += abstract + transfer
        if abstract != 1 or not transfer or count > MAX_SYNTAXES:
            return False
    return True


def _remember(pdu: A_ASSOCIATE_RQ, request: bytes, contexts: list[PresentationContext] | None) -> None:
    proposal = Proposal(dict(vars(pdu)))
    proposal.contexts = contexts
    KNOWN.remember(request, proposal)
    pdu._router_proposal = proposal  # type: ignore[attr-defined]


def _decode(original: Callable[[Any, bytes], None]) -> Callable[[Any, bytes], None]:
    def decode(self: A_ASSOCIATE_RQ, bytestream: bytes) -> None:
        request = bytes(bytestream)
        rememberable_size = len(request) <= MAX_REQUEST_BYTES
        proposal = KNOWN.get(request) if rememberable_size else None
        if proposal is not None:
            self.__dict__.update(proposal.attributes)
            self.variable_items = list(proposal.attributes["variable_items"])
            self._router_proposal = proposal  # type: ignore[attr-defined]
            return
        split = split_request(request) if rememberable_size else None
        if split is None or split.syntax_count > MAX_SYNTAXES:
            original(self, bytestream)
            if rememberable_size and _rememberable(self):
                _remember(self, request, None)
            return
        # the presentation contexts read here, the rest (AE titles, user information) by pynetdicom
        original(self, split.rest)
        if len(self.variable_items) != split.other_count:  # not expected: decode it all as before
            original(self, bytestream)
            return
        self.variable_items = split.variable_items(self.variable_items)
        _remember(self, request, [context.primitive() for context in split.contexts])

    decode.__doc__ = original.__doc__
    return decode


def _to_primitive(original: Callable[[Any], A_ASSOCIATE]) -> Callable[[Any], A_ASSOCIATE]:
    def to_primitive(self: A_ASSOCIATE_RQ) -> A_ASSOCIATE:
        proposal: Proposal | None = getattr(self, "_router_proposal", None)
        if proposal is None:
            return original(self)
        if proposal.contexts is None:
            primitive = original(self)
            proposal.contexts = [copy_context(context) for context in primitive.presentation_context_definition_list]
        else:
            # pynetdicom's to_primitive, with the contexts copied instead of made from the items
            primitive = A_ASSOCIATE()
            primitive.calling_ae_title = self.calling_ae_title
            primitive.called_ae_title = self.called_ae_title
            primitive.application_context_name = self.application_context_name
            for item in self.variable_items:
                if isinstance(item, UserInformationItem):
                    primitive.user_information = item.to_primitive()
        contexts = ProposedContexts(copy_context(context) for context in proposal.contexts)
        contexts.proposal = proposal
        primitive._presentation_context_definition_list = contexts
        return primitive

    to_primitive.__doc__ = original.__doc__
    return to_primitive


def remembered_negotiation(negotiate: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap ``negotiate(rq_contexts, ac_contexts, roles)`` (same signature and return value) so
    that a request remembered by :func:`install` is negotiated once per accepting contexts."""

    def negotiate_once(
        rq_contexts: list[PresentationContext], ac_contexts: list[PresentationContext], roles: Any = None
    ) -> Any:
        proposal: Proposal | None = getattr(rq_contexts, "proposal", None)
        if proposal is None or roles:
            return negotiate(rq_contexts, ac_contexts, roles)
        known = proposal.negotiated
        if known is not None and known[0] is ac_contexts:
            return [copy_context(context) for context in known[1]], list(known[2])
        result, reply_roles = negotiate(rq_contexts, ac_contexts, roles)
        proposal.negotiated = (ac_contexts, [copy_context(context) for context in result], list(reply_roles))
        return result, reply_roles

    negotiate_once.__doc__ = negotiate.__doc__
    return negotiate_once


def install() -> None:
    """Remember decoded requests and their primitives' contexts from now on (idempotent).

    The negotiation's result is remembered by :func:`remembered_negotiation`, which
    :func:`router.dicom.negotiation.install` puts around the router's negotiation.
    """
    global _INSTALLED
    with _LOCK:
        if not _INSTALLED:
            A_ASSOCIATE_RQ.decode = _decode(A_ASSOCIATE_RQ.decode)  # type: ignore[method-assign, assignment]
            A_ASSOCIATE_RQ.to_primitive = _to_primitive(A_ASSOCIATE_RQ.to_primitive)  # type: ignore[method-assign, assignment]
            _INSTALLED = True
