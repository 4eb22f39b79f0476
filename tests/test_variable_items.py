"""Association items of a type not defined at their place are skipped (router.dicom.variable_items,
PS3.8 section 9.3.1). The network side, an A-ASSOCIATE-RQ to the listener, is in
tests/test_hostile_peers.py; here the decoding itself, and the A-ASSOCIATE-AC the router reads
when it forwards as an SCU."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from pathlib import Path

import pytest
from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
from pynetdicom.pdu_items import (
    AbstractSyntaxSubItem,
    ApplicationContextItem,
    PresentationContextItemAC,
    PresentationContextItemRQ,
    TransferSyntaxSubItem,
    UserInformationItem,
)

from router.dicom import scp as scp_module
from router.dicom import user_items, variable_items
from router.dicom.scu import Destination, SendError, send_files
from router.dicom.variable_items import MissingSubItem, defined_items
from tests.dicom_bytes import APPLICATION_CONTEXT, CT_IMAGE_STORAGE, EXPLICIT_LE, IMPLICIT_LE, associate_rq, pdu_item
from tests.dicom_helpers import make_dataset, write_part10


@pytest.fixture(autouse=True)
def _installed() -> None:
    user_items.install()
    variable_items.install()


def _associate_ac(
    *,
    extra_items: bytes = b"",
    extra_context_items: bytes = b"",
    accepted_items: bytes = pdu_item(0x40, EXPLICIT_LE.encode()),
    refused_items: bytes = pdu_item(0x40, IMPLICIT_LE.encode()),
) -> bytes:
    """An A-ASSOCIATE-AC (PS3.8 section 9.3.3): context 1 accepted with explicit VR little
    endian, context 3 refused (abstract syntax not supported) with its transfer syntax field
    left as sent (not significant, Table 9-18)."""
    accepted = struct.pack(">BBBB", 1, 0, 0, 0) + accepted_items + extra_context_items
    refused = struct.pack(">BBBB", 3, 0, 3, 0) + refused_items
    user = pdu_item(0x51, struct.pack(">I", 16384)) + pdu_item(0x52, b"1.2.826.0.1.3680043.9.7433.1")
    body = struct.pack(">HH", 1, 0) + b"ROUTER".ljust(16) + b"FORWARDER".ljust(16) + b"\x00" * 32
    body += pdu_item(0x10, APPLICATION_CONTEXT) + pdu_item(0x21, accepted) + pdu_item(0x21, refused)
    body += pdu_item(0x50, user) + extra_items
    return struct.pack(">BBI", 0x02, 0, len(body)) + body


def test_only_the_items_defined_there_are_kept_in_order_and_each_other_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="router.dicom.variable_items")
    first, unknown, second, misplaced = (
        pdu_item(0x30, b"1.2"),
        pdu_item(0x99, b"vendor"),
        pdu_item(0x40, b"1.2.3"),
        pdu_item(0x10, b"x"),
    )
    kept = defined_items(first + unknown + second + misplaced, frozenset({0x30, 0x40}), "presentation context (RQ)")
    assert kept == first + second
    assert [r.getMessage() for r in caplog.records] == [
        "presentation context (RQ) item of type 0x99 ignored (10 bytes)",
        "presentation context (RQ) item of type 0x10 ignored (5 bytes)",
    ]


@pytest.mark.parametrize("trailer", [struct.pack(">BBH", 0x99, 0, 50) + b"short", b"\x99\x00\x00"])
def test_an_item_running_past_the_field_is_left_for_pynetdicom_to_refuse(trailer: bytes) -> None:
    items = pdu_item(0x99, b"vendor") + pdu_item(0x30, b"1.2") + trailer
    assert defined_items(items, frozenset({0x30}), "x") == items
    with pytest.raises((AssertionError, struct.error)):
        A_ASSOCIATE_RQ().decode(associate_rq(extra_items=trailer))


def test_a_field_of_defined_items_is_returned_as_it_is() -> None:
    items = pdu_item(0x30, b"1.2") + pdu_item(0x40, b"1.2.3")
    assert defined_items(items, frozenset({0x30, 0x40}), "x") is items


def test_a_request_decodes_as_if_the_undefined_items_were_not_there() -> None:
    plain, extended = A_ASSOCIATE_RQ(), A_ASSOCIATE_RQ()
    plain.decode(associate_rq())
    extended.decode(
        associate_rq(
            extra_items=pdu_item(0x60, b"vendor") + pdu_item(0x21, b"\x01\x00\x00\x00"),
            extra_context_items=pdu_item(0x35, b"vendor"),
        )
    )
    assert [type(item) for item in extended.variable_items] == [
        ApplicationContextItem,
        PresentationContextItemRQ,
        UserInformationItem,
    ]
    (context,) = extended.presentation_context
    assert [type(item) for item in context.abstract_transfer_syntax_sub_items] == [
        AbstractSyntaxSubItem,
        TransferSyntaxSubItem,
    ]
    (plain_context,) = plain.presentation_context
    assert context.abstract_syntax == plain_context.abstract_syntax == CT_IMAGE_STORAGE
    assert context.transfer_syntax == plain_context.transfer_syntax == [EXPLICIT_LE]


def test_an_answer_with_undefined_items_gives_the_same_accepted_and_refused_contexts() -> None:
    """What the router reads as an SCU (forwarding to a reader's PACS): an unknown item and a
    request's context item (20H) in the AC, an abstract syntax sub-item in an accepted context."""
    answer = A_ASSOCIATE_AC()
    answer.decode(
        _associate_ac(
            extra_items=pdu_item(0x60, b"vendor") + pdu_item(0x20, b"\x05\x00\x00\x00"),
            extra_context_items=pdu_item(0x30, CT_IMAGE_STORAGE.encode()),
        )
    )
    assert [type(item) for item in answer.variable_items] == [
        ApplicationContextItem,
        PresentationContextItemAC,
        PresentationContextItemAC,
        UserInformationItem,
    ]
    accepted, refused = answer.presentation_context
    assert (accepted.presentation_context_id, accepted.result_reason, accepted.transfer_syntax) == (1, 0, EXPLICIT_LE)
    assert [type(item) for item in accepted.transfer_syntax_sub_item] == [TransferSyntaxSubItem]
    # a refused context's transfer syntax is not significant: pynetdicom still skips its checks
    assert (refused.presentation_context_id, refused.result_reason) == (3, 3)
    assert refused.transfer_syntax_sub_item[0]._skip_validation is True
    assert answer.user_information.maximum_length == 16384


@pytest.mark.parametrize("accepted_items", [b"", pdu_item(0x35, b"vendor")], ids=["none", "unknown-instead"])
def test_an_accepted_context_without_a_transfer_syntax_cannot_be_decoded(accepted_items: bytes) -> None:
    """pynetdicom took such an answer as an established association whose context had no
    transfer syntax, and its C-STORE then raised IndexError out of the forwarder."""
    with pytest.raises(MissingSubItem, match=r"^presentation context \(AC\) 1 has no Transfer Syntax sub-item"):
        A_ASSOCIATE_AC().decode(_associate_ac(accepted_items=accepted_items))


def test_a_refused_context_needs_no_transfer_syntax() -> None:
    answer = A_ASSOCIATE_AC()
    answer.decode(_associate_ac(refused_items=b""))
    assert [(item.presentation_context_id, item.result_reason) for item in answer.presentation_context] == [
        (1, 0),
        (3, 3),
    ]


def test_forwarding_to_a_peer_answering_such_an_ac_is_a_send_error(tmp_path: Path) -> None:
    """The forwarder reads the answer through the listener's PDU reader (router.dicom.pdata):
    the undecodable AC is one WARNING and an A-ABORT, and the send fails as any unestablished
    association does (retried on a later pass), instead of an IndexError."""
    scp_module.configure_pynetdicom(tmp_path / "incoming")
    path = write_part10(make_dataset(), tmp_path / "one.dcm")
    listener = socket.create_server(("127.0.0.1", 0))
    answered: list[bytes] = []

    def _answer_badly() -> None:
        connection, _ = listener.accept()
        with connection:
            head = connection.recv(6)
            _, _, length = struct.unpack(">BBI", head)
            while length > 0:
                length -= len(connection.recv(length))
            connection.sendall(_associate_ac(accepted_items=b""))
            connection.settimeout(5)
            answered.append(connection.recv(6))  # what the SCU sends next

    thread = threading.Thread(target=_answer_badly, daemon=True)
    thread.start()
    try:
        destination = Destination("READER", "127.0.0.1", listener.getsockname()[1])
        with pytest.raises(SendError, match="was not established"):
            send_files([path], destination, timeout=5)
        thread.join(10)
    finally:
        listener.close()
    assert answered and answered[0][:1] == b"\x07"  # A-ABORT
