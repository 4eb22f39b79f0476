"""A-ASSOCIATE-RQs decoded and negotiated once per distinct request (router/dicom/proposals.py):
the answer is the same byte for byte, and every association gets its own contexts."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGBaseline8Bit
from pynetdicom import evt
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import (
    A_ASSOCIATE,
    ImplementationClassUIDNotification,
    MaximumLengthNotification,
    SCP_SCU_RoleSelectionNegotiation,
)
from pynetdicom.presentation import PresentationContext, StoragePresentationContexts

from router.dicom import proposals
from router.dicom.negotiation import ABSTRACT_SYNTAX_NOT_SUPPORTED, encode_presentation_context_ac
from router.dicom.proposals import Proposal, Proposals, copy_context
from router.dicom.status import StoreStatus
from router.server import RouterServer
from tests.conftest import make_settings, running_router
from tests.dicom_bytes import APPLICATION_CONTEXT, CT_IMAGE_STORAGE, RawAssociation, associate_rq
from tests.dicom_helpers import make_dataset, send_datasets

pytestmark = pytest.mark.network

TRANSFER_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian]


def request_bytes(
    *,
    calling: str = "MODALITY",
    abstract_syntaxes: list[str] | None = None,
    transfer_syntaxes: list[str] = TRANSFER_SYNTAXES,
    roles: list[tuple[str, bool, bool]] = (),  # type: ignore[assignment]
) -> bytes:
    """An A-ASSOCIATE-RQ as a modality proposing every storage SOP class (PS3.8 section 9.3.2),
    encoded by pynetdicom."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = calling
    primitive.called_ae_title = "ROUTER"
    contexts = []
    syntaxes = abstract_syntaxes or [str(context.abstract_syntax) for context in StoragePresentationContexts]
    for number, abstract_syntax in enumerate(syntaxes):
        context = PresentationContext()
        context.context_id = 2 * number + 1
        context._abstract_syntax = abstract_syntax  # as sent, even if not a valid UID
        context.transfer_syntax = transfer_syntaxes
        contexts.append(context)
    primitive.presentation_context_definition_list = contexts
    length = MaximumLengthNotification()
    length.maximum_length_received = 16382
    implementation = ImplementationClassUIDNotification()
    implementation.implementation_class_uid = "1.2.826.0.1.3680043.9.7433.1.1"
    items: list[object] = [length, implementation]
    for sop_class, scu, scp in roles:
        role = SCP_SCU_RoleSelectionNegotiation()
        role.sop_class_uid = sop_class
        role.scu_role, role.scp_role = scu, scp
        items.append(role)
    primitive.user_information = items
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(primitive)
    return bytes(pdu.encode())


def associate(port: int, request: bytes) -> bytes:
    """Send ``request``; returns the answer's PDU type and body, after releasing an association."""
    association = RawAssociation(port)
    try:
        association.send(request)
        kind, body = association.read_pdu()
        if kind == 0x02:
            association.send(struct.pack(">BBIL", 0x05, 0, 4, 0))  # A-RELEASE-RQ
            association.read_pdu()  # A-RELEASE-RP
        return bytes([kind]) + body
    finally:
        association.close()


@pytest.fixture
def server(tmp_path: Path, sqlite_url: str) -> Iterator[RouterServer]:
    with running_router(make_settings(tmp_path, sqlite_url)) as router_server:
        yield router_server


@pytest.fixture(autouse=True)
def forget_proposals() -> Iterator[None]:
    proposals.KNOWN = Proposals()
    yield
    proposals.KNOWN = Proposals()


def test_a_remembered_request_gets_the_same_answer_byte_for_byte(
    server: RouterServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = request_bytes()
    with monkeypatch.context() as nothing_remembered:
        nothing_remembered.setattr(proposals, "MAX_REQUEST_BYTES", 0)
        reference = associate(server.ports[0], request)  # decoded and negotiated by pynetdicom
    assert reference[0] == 0x02 and len(proposals.KNOWN) == 0
    first = associate(server.ports[0], request)  # decoded, then remembered
    assert len(proposals.KNOWN) == 1
    second = associate(server.ports[0], request)  # from what was remembered
    third = associate(server.ports[0], request)
    assert first == second == third == reference
    known = proposals.KNOWN.get(request)
    assert known is not None and known.contexts is not None and known.negotiated is not None
    assert len(known.contexts) == len(StoragePresentationContexts)


def test_associations_from_a_remembered_request_have_their_own_contexts_and_store(server: RouterServer) -> None:
    accepted: list[dict[int, PresentationContext]] = []
    listening = server.listener.servers[0]  # type: ignore[union-attr]
    listening.bind(evt.EVT_ACCEPTED, lambda event: accepted.append(dict(event.assoc._accepted_cx)))
    for _ in range(2):  # pynetdicom sends the same A-ASSOCIATE-RQ both times
        (status,) = send_datasets(server.ports[0], [make_dataset()])
        assert status.Status == StoreStatus.SUCCESS
    assert len(proposals.KNOWN) == 1
    first, second = accepted
    assert first.keys() == second.keys() and len(first) == 1
    for context_id, context in first.items():
        other = second[context_id]
        assert other is not context and other._transfer_syntax is not context._transfer_syntax
        assert vars(other) == vars(context)


def test_a_request_with_a_malformed_abstract_syntax_is_never_remembered(server: RouterServer) -> None:
    request = request_bytes(abstract_syntaxes=["1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2."])
    answers = [associate(server.ports[0], request) for _ in range(2)]
    assert answers[0] == answers[1] and answers[0][0] == 0x02
    assert len(proposals.KNOWN) == 0
    # the second context is refused, abstract-syntax-not-supported (PS3.8 Table 9-18)
    assert encode_presentation_context_ac(3, ABSTRACT_SYNTAX_NOT_SUPPORTED, ExplicitVRLittleEndian) in answers[0]


def test_a_context_with_a_second_malformed_abstract_syntax_is_never_remembered(server: RouterServer) -> None:
    """pynetdicom takes a context's last abstract syntax sub-item; every one is checked."""
    good = associate_rq(sop_class=CT_IMAGE_STORAGE)
    item = struct.pack(">BBH", 0x30, 0, 9) + b"1.2.3.abc"
    # one more abstract syntax sub-item inside the context, lengths grown to match
    context_at = 6 + 68 + 4 + len(APPLICATION_CONTEXT)  # after the fixed fields and the application context item
    context_length = struct.unpack(">H", good[context_at + 2 : context_at + 4])[0]
    context = good[context_at + 4 : context_at + 4 + context_length] + item
    body = good[6:context_at] + struct.pack(">BBH", 0x20, 0, len(context)) + context
    body += good[context_at + 4 + context_length :]
    request = struct.pack(">BBI", 0x01, 0, len(body)) + body
    answers = [associate(server.ports[0], request) for _ in range(2)]
    assert answers[0] == answers[1] and answers[0][0] == 0x02
    assert len(proposals.KNOWN) == 0


def test_a_request_with_more_uids_than_the_bound_is_never_remembered(server: RouterServer) -> None:
    syntaxes = [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian, JPEGBaseline8Bit]
    request = request_bytes(transfer_syntaxes=syntaxes)  # 128 contexts x 5 UIDs
    assert len(StoragePresentationContexts) * 5 > proposals.MAX_SYNTAXES
    answers = [associate(server.ports[0], request) for _ in range(2)]
    assert answers[0] == answers[1] and answers[0][0] == 0x02
    assert len(proposals.KNOWN) == 0


def test_a_request_proposing_role_selection_is_negotiated_each_time(server: RouterServer) -> None:
    ct = "1.2.840.10008.5.1.4.1.1.2"
    request = request_bytes(abstract_syntaxes=[ct], roles=[(ct, True, True)])
    answers = [associate(server.ports[0], request) for _ in range(2)]
    assert answers[0] == answers[1] and answers[0][0] == 0x02
    known = proposals.KNOWN.get(request)
    assert known is not None and known.contexts is not None
    assert known.negotiated is None  # the decode is remembered, the negotiation is not


def test_a_copied_context_is_equal_and_independent() -> None:
    context = PresentationContext()
    context.context_id = 3
    context.abstract_syntax = "1.2.840.10008.5.1.4.1.1.2"
    context.transfer_syntax = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    copied = copy_context(context)
    assert vars(copied) == vars(context) and copied is not context
    copied.add_transfer_syntax(JPEGBaseline8Bit)
    copied.result = 0
    assert context.transfer_syntax == [ExplicitVRLittleEndian, ImplicitVRLittleEndian] and context.result is None


def test_the_least_recently_used_request_is_forgotten_first() -> None:
    known = Proposals(limit=2)
    a, b, c = Proposal({}), Proposal({}), Proposal({})
    known.remember(b"a", a)
    known.remember(b"b", b)
    assert known.get(b"a") is a  # now the most recently used
    known.remember(b"c", c)
    assert (known.get(b"a"), known.get(b"b"), known.get(b"c"), len(known)) == (a, None, c, 2)
