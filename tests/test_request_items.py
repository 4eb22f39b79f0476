"""Presentation context items read straight from an A-ASSOCIATE-RQ's bytes, and storage contexts
accepted directly (router/dicom/request_items.py, router/dicom/negotiation.py; issue 14, lever
48): the same objects pynetdicom's decoder, ``to_primitive`` and ``negotiate_unrestricted`` make,
attribute by attribute, and the same A-ASSOCIATE-AC on the wire."""

from __future__ import annotations

import logging
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.uid import UID
from pynetdicom import acse
from pynetdicom import presentation as pynetdicom_presentation
from pynetdicom.pdu import A_ASSOCIATE_RQ, PDU
from pynetdicom.pdu_items import PresentationContextItemRQ
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts

from router.dicom import proposals
from router.dicom.negotiation import strict_unrestricted
from router.dicom.proposals import Proposals
from router.dicom.request_items import split_request
from router.dicom.scp import STORAGE_TRANSFER_SYNTAXES
from router.server import RouterServer
from tests.conftest import make_settings, running_router
from tests.dicom_bytes import (
    A_RELEASE_RQ,
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    IMPLICIT_LE,
    RawAssociation,
    associate_rq,
    pdu_item,
    presentation_context_item,
)

EXPLICIT_BE = "1.2.840.10008.1.2.2"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
VERIFICATION = "1.2.840.10008.1.1"
MODALITY_WORKLIST_FIND = "1.2.840.10008.5.1.4.31"
PRIVATE_SOP_CLASS = "1.2.826.0.1.3680043.9.7433.2.1"
UNKNOWN_STANDARD_ROOT = "1.2.840.10008.5.1.4.1.1.999"
PRIVATE_TRANSFER_SYNTAX = "1.2.826.0.1.3680043.9.7433.3.1"
#: Storage and other SOP classes pynetdicom negotiates differently, all conformant UIDs.
ABSTRACT_SYNTAXES = [
    CT_IMAGE_STORAGE,
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image Storage
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR Storage
    VERIFICATION,
    MODALITY_WORKLIST_FIND,
    PRIVATE_SOP_CLASS,
    UNKNOWN_STANDARD_ROOT,
]
TRANSFER_SYNTAXES = [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_BE, JPEG_BASELINE, PRIVATE_TRANSFER_SYNTAX]
KNOWN_TRANSFER_SYNTAXES = frozenset(STORAGE_TRANSFER_SYNTAXES)


def sub_items(abstract_syntax: str, transfer_syntaxes: list[str]) -> bytes:
    return pdu_item(0x30, abstract_syntax.encode()) + b"".join(
        pdu_item(0x40, syntax.encode()) for syntax in transfer_syntaxes
    )


def request_with(contexts: list[tuple[int, str, list[str]]], calling: str = "RAW_SCU") -> bytes:
    items = b"".join(
        presentation_context_item(context_id, sub_items(abstract, syntaxes))
        for context_id, abstract, syntaxes in contexts
    )
    return associate_rq(calling=calling, contexts=items)


def storescu_like_request(calling: str = "RAW_SCU") -> bytes:
    """Every storage SOP class pynetdicom knows, each with three transfer syntaxes, as DCMTK
    ``storescu`` proposes them."""
    return request_with(
        [
            (2 * number + 1, str(context.abstract_syntax), [EXPLICIT_LE, EXPLICIT_BE, IMPLICIT_LE])
            for number, context in enumerate(StoragePresentationContexts)
        ],
        calling,
    )


def pynetdicom_decoded(request: bytes) -> A_ASSOCIATE_RQ:
    pdu = A_ASSOCIATE_RQ()
    PDU.decode(pdu, request)  # pynetdicom's own, not the router's remembering decode
    return pdu


def fast_decoded(request: bytes) -> tuple[A_ASSOCIATE_RQ, list[PresentationContext]]:
    split = split_request(request)
    assert split is not None
    pdu = A_ASSOCIATE_RQ()
    PDU.decode(pdu, split.rest)
    pdu.variable_items = split.variable_items(pdu.variable_items)  # type: ignore[arg-type]
    return pdu, [context.primitive() for context in split.contexts]


def attributes(value: Any) -> Any:
    """``value`` as plain data: pynetdicom items and primitives as (class name, attributes)."""
    if isinstance(value, (str, bytes, int)) or value is None:  # a UID too (a str with a __dict__)
        return (type(value).__name__, value)
    if isinstance(value, list):
        return [attributes(each) for each in value]
    if isinstance(value, dict):
        return {key: attributes(each) for key, each in value.items()}
    if hasattr(value, "__dict__"):
        return (type(value).__name__, {key: attributes(each) for key, each in vars(value).items()})
    return (type(value).__name__, value)


def assert_same_as_pynetdicom(request: bytes) -> None:
    reference = pynetdicom_decoded(request)
    decoded, contexts = fast_decoded(request)
    assert attributes(vars(decoded)) == attributes(vars(reference))
    expected = [item.to_primitive() for item in reference.variable_items if isinstance(item, PresentationContextItemRQ)]
    assert attributes(contexts) == attributes(expected)
    # the primitive made from the fast-read items is pynetdicom's too
    assert attributes(decoded.to_primitive().presentation_context_definition_list) == attributes(expected)


def test_a_storescu_like_request_reads_as_pynetdicom_decodes_it() -> None:
    request = storescu_like_request()
    assert_same_as_pynetdicom(request)
    split = split_request(request)
    assert split is not None and len(split.contexts) == len(StoragePresentationContexts)
    assert split.positions == tuple(range(1, len(StoragePresentationContexts) + 1))  # after the application context
    assert split.syntax_count == 4 * len(StoragePresentationContexts)


def test_a_transfer_syntax_proposed_twice_is_kept_once_as_pynetdicom_does() -> None:
    request = request_with([(1, CT_IMAGE_STORAGE, [EXPLICIT_LE, IMPLICIT_LE, EXPLICIT_LE])])
    assert_same_as_pynetdicom(request)
    split = split_request(request)
    assert split is not None and split.contexts[0].primitive().transfer_syntax == [EXPLICIT_LE, IMPLICIT_LE]


@pytest.mark.parametrize(
    ("why", "request_bytes"),
    [
        ("even context ID", request_with([(2, CT_IMAGE_STORAGE, [EXPLICIT_LE])])),
        (
            "context ID used twice",
            request_with([(1, CT_IMAGE_STORAGE, [EXPLICIT_LE]), (1, VERIFICATION, [IMPLICIT_LE])]),
        ),
        ("leading zero (non-conformant)", request_with([(1, "1.2.840.10008.5.1.4.1.1.02", [EXPLICIT_LE])])),
        ("trailing NUL", request_with([(1, CT_IMAGE_STORAGE + "\0", [EXPLICIT_LE])])),
        ("not a transfer syntax", request_with([(1, CT_IMAGE_STORAGE, [CT_IMAGE_STORAGE])])),
        ("no transfer syntax", request_with([(1, CT_IMAGE_STORAGE, [])])),
        ("empty abstract syntax", request_with([(1, "", [EXPLICIT_LE])])),
        ("65 characters", request_with([(1, "1." + "2" * 63, [EXPLICIT_LE])])),
        (
            "transfer syntax first",
            associate_rq(
                contexts=presentation_context_item(
                    1, pdu_item(0x40, EXPLICIT_LE.encode()) + pdu_item(0x30, CT_IMAGE_STORAGE.encode())
                )
            ),
        ),
        (
            "two abstract syntaxes",
            associate_rq(
                contexts=presentation_context_item(
                    1, sub_items(CT_IMAGE_STORAGE, [EXPLICIT_LE]) + pdu_item(0x30, VERIFICATION.encode())
                )
            ),
        ),
        ("unknown sub-item", associate_rq(extra_context_items=pdu_item(0x55, b"x"))),
        ("unknown item", associate_rq(extra_items=pdu_item(0x60, b"x"))),
        ("item past the end", associate_rq()[:-3]),
        ("header only", associate_rq()[:60]),
    ],
)
def test_anything_but_a_plain_request_is_left_to_pynetdicom(why: str, request_bytes: bytes) -> None:
    assert split_request(request_bytes) is None, why


uids = st.sampled_from(ABSTRACT_SYNTAXES)
syntax_lists = st.lists(st.sampled_from(TRANSFER_SYNTAXES), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(uids, syntax_lists), min_size=1, max_size=12), st.booleans())
def test_any_plain_request_reads_as_pynetdicom_decodes_it(
    contexts: list[tuple[str, list[str]]], no_context: bool
) -> None:
    numbered = [(2 * number + 1, abstract, syntaxes) for number, (abstract, syntaxes) in enumerate(contexts)]
    assert_same_as_pynetdicom(request_with(numbered))
    if no_context:  # no presentation context at all: still read (and then refused by negotiation)
        assert_same_as_pynetdicom(associate_rq(contexts=b""))


def proposed(context_id: int, abstract_syntax: str, syntaxes: list[str]) -> PresentationContext:
    context = PresentationContext()
    context.context_id = context_id
    context.abstract_syntax = abstract_syntax
    context.transfer_syntax = syntaxes
    return context


def accepting_contexts() -> list[PresentationContext]:
    contexts = [proposed(1, VERIFICATION, [IMPLICIT_LE, EXPLICIT_LE])]
    for context in StoragePresentationContexts:
        contexts.append(proposed(1, str(context.abstract_syntax), list(STORAGE_TRANSFER_SYNTAXES)))
    return contexts


ACCEPTING = accepting_contexts()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(uids, syntax_lists), min_size=1, max_size=12))
def test_storage_contexts_accepted_directly_as_pynetdicom_accepts_them(contexts: list[tuple[str, list[str]]]) -> None:
    original = pynetdicom_presentation.negotiate_unrestricted
    direct = strict_unrestricted(original, KNOWN_TRANSFER_SYNTAXES)
    through_pynetdicom = strict_unrestricted(original, KNOWN_TRANSFER_SYNTAXES, direct=False)
    rq = [proposed(2 * number + 1, abstract, syntaxes) for number, (abstract, syntaxes) in enumerate(contexts)]
    result, roles = direct(rq, ACCEPTING, {})
    expected, expected_roles = through_pynetdicom(rq, ACCEPTING, {})
    assert attributes(result) == attributes(expected)
    assert roles == expected_roles == []


def test_the_direct_acceptance_covers_storage_and_leaves_the_rest() -> None:
    original = pynetdicom_presentation.negotiate_unrestricted
    calls: list[list[str]] = []

    def recording(rq: list[PresentationContext], ac: list[PresentationContext], roles: Any) -> Any:
        calls.append([str(context.abstract_syntax) for context in rq])
        return original(rq, ac, roles)

    negotiate = strict_unrestricted(recording, KNOWN_TRANSFER_SYNTAXES)
    rq = [
        proposed(1, CT_IMAGE_STORAGE, [JPEG_BASELINE, EXPLICIT_LE]),
        proposed(3, VERIFICATION, [IMPLICIT_LE]),
        proposed(5, PRIVATE_SOP_CLASS, [EXPLICIT_LE]),
        proposed(7, MODALITY_WORKLIST_FIND, [EXPLICIT_LE]),
    ]
    result, _ = negotiate(rq, ACCEPTING, {})
    assert calls == [[VERIFICATION]]  # storage and private were accepted directly; MWL refused before
    assert [(context.context_id, context.result, context.transfer_syntax) for context in result] == [
        (1, 0x00, [JPEG_BASELINE]),
        (3, 0x00, [IMPLICIT_LE]),
        (5, 0x00, [EXPLICIT_LE]),
        (7, 0x03, [EXPLICIT_LE]),
    ]
    assert [(context.as_scu, context.as_scp) for context in result if context.context_id in (1, 5)] == [
        (True, True)
    ] * 2


@pytest.fixture
def server(tmp_path: Path, sqlite_url: str) -> Iterator[RouterServer]:
    proposals.KNOWN = Proposals()
    try:
        with running_router(make_settings(tmp_path, sqlite_url)) as router_server:
            yield router_server
    finally:
        proposals.KNOWN = Proposals()


def accept_bytes(port: int, request: bytes) -> bytes:
    association = RawAssociation(port)
    try:
        association.send(request)
        kind, body = association.read_pdu()
        assert kind == 0x02, kind
        association.send(A_RELEASE_RQ)
        association.read_pdu()
        return bytes(body)
    finally:
        association.close()


@pytest.mark.network
def test_the_a_associate_ac_is_pynetdicoms_byte_for_byte(server: RouterServer, monkeypatch: pytest.MonkeyPatch) -> None:
    port = server.ports[0]
    requests = [
        storescu_like_request("FIRST_SCU"),
        request_with(
            [
                (1, VERIFICATION, [IMPLICIT_LE]),
                (3, CT_IMAGE_STORAGE, [JPEG_BASELINE, EXPLICIT_LE]),
                (5, MODALITY_WORKLIST_FIND, [EXPLICIT_LE]),
                (7, PRIVATE_SOP_CLASS, [PRIVATE_TRANSFER_SYNTAX, EXPLICIT_LE]),
            ]
        ),
    ]
    with monkeypatch.context() as pynetdicom_only:
        pynetdicom_only.setattr(proposals, "MAX_REQUEST_BYTES", 0)  # neither read here nor remembered
        pynetdicom_only.setattr(
            acse,
            "negotiate_unrestricted",
            strict_unrestricted(pynetdicom_presentation.negotiate_unrestricted, KNOWN_TRANSFER_SYNTAXES, direct=False),
        )
        references = [accept_bytes(port, request) for request in requests]
    assert len(proposals.KNOWN) == 0
    answers = [accept_bytes(port, request) for request in requests]  # read here, then remembered
    assert len(proposals.KNOWN) == 2
    assert answers == references
    assert [accept_bytes(port, request) for request in requests] == references
    # every context of the storescu-like request accepted (result 0) with Explicit VR Little Endian
    accepted = references[0].count(struct.pack(">BBH", 0x40, 0, len(EXPLICIT_LE)) + EXPLICIT_LE.encode())
    assert accepted == len(StoragePresentationContexts)


@pytest.mark.parametrize("abstract_syntax", ["1.2.840.10008.5.1.4.1.1.02", "1.2.826.0.1.03", "1.02.3"])
def test_a_non_conformant_abstract_syntax_is_left_to_pynetdicom_and_its_warning(
    abstract_syntax: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A leading zero passes the router's own UID check (modalities send such UIDs) but is not
    conformant (PS3.5 section 9.1): pynetdicom accepts the context and warns about it, so it is
    negotiated by pynetdicom, warning and all (a hostile-peer trial of lever 48)."""
    original = pynetdicom_presentation.negotiate_unrestricted
    results, warnings = [], []
    for direct in (True, False):
        rq = PresentationContext()
        rq.context_id = 1
        rq._abstract_syntax = UID(abstract_syntax)  # as decoded from the request
        rq.transfer_syntax = [EXPLICIT_LE]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="pynetdicom"):
            result, _ = strict_unrestricted(original, KNOWN_TRANSFER_SYNTAXES, direct=direct)([rq], ACCEPTING, {})
        results.append(attributes(result))
        warnings.append(
            [r.getMessage() for r in caplog.records if "Non-conformant 'abstract_syntax'" in r.getMessage()]
        )
    assert results[0] == results[1]
    assert warnings[0] == warnings[1] and len(warnings[0]) == 1
