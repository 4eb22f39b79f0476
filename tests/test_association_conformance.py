"""What the listener answers to association requests it cannot serve (PS3.8 section 9.3).

- An application context name other than DICOM's (PS3.7 Annex A.2.1), or none: A-ASSOCIATE-RJ
  rejected-permanent, service-user, application-context-name-not-supported (PS3.8 Table 9-21),
  as DCMTK ``storescp`` and Orthanc answer, with one WARNING.
- A request whose every presentation context is refused (a DICOMDIR), or that proposes none:
  accepted, as DCMTK and Orthanc do, with one WARNING naming what was refused.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from router.dicom.status import StoreStatus
from router.server import RouterServer
from tests.conftest import make_settings, running_router
from tests.dicom_bytes import (
    APPLICATION_CONTEXT,
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    RawAssociation,
    associate_rq,
    pdu_item,
    presentation_context_item,
)
from tests.dicom_helpers import make_dataset, send_datasets

pytestmark = [pytest.mark.network, pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)]

#: Media Storage Directory Storage: the SOP class of a DICOMDIR (PS3.4 Annex B.5).
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"
NOTHING_ACCEPTED = "accepted with no presentation context"
#: SOP classes of services other than storage (PS3.4): Query/Retrieve FIND and MOVE, Modality
#: Worklist FIND, Storage Commitment Push, and the DICOMDIR's; refused (abstract syntax not supported).
NOT_STORAGE = [
    "1.2.840.10008.5.1.4.1.2.1.1",
    "1.2.840.10008.5.1.4.1.2.1.2",
    "1.2.840.10008.5.1.4.1.2.2.1",
    "1.2.840.10008.5.1.4.1.2.2.2",
    "1.2.840.10008.5.1.4.31",
    "1.2.840.10008.1.20.1",
    MEDIA_STORAGE_DIRECTORY,
]


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[RouterServer]:
    with running_router(make_settings(tmp_path, database_url)) as router_server:
        yield router_server


def _first_answer(port: int, request: bytes) -> tuple[int, bytes]:
    raw = RawAssociation(port)
    try:
        raw.send(request)
        return raw.read_pdu()
    finally:
        raw.close()


def _context(context_id: int, abstract_syntax: str, transfer_syntax: str = EXPLICIT_LE) -> bytes:
    syntaxes = pdu_item(0x30, abstract_syntax.encode()) + pdu_item(0x40, transfer_syntax.encode())
    return presentation_context_item(context_id, syntaxes)


def _context_results(ac_body: bytes) -> list[tuple[int, int]]:
    """(context ID, result) of each presentation context item of an A-ASSOCIATE-AC's body."""
    results = []
    offset = 68  # protocol version, reserved, AE titles, reserved (PS3.8 Table 9-17)
    while offset < len(ac_body):
        kind, length = ac_body[offset], struct.unpack(">H", ac_body[offset + 2 : offset + 4])[0]
        if kind == 0x21:
            results.append((ac_body[offset + 4], ac_body[offset + 6]))
        offset += 4 + length
    return results


def _warnings(caplog: pytest.LogCaptureFixture, text: str, count: int = 1) -> list[str]:
    """The WARNING messages holding ``text``, once there are ``count`` of them (at most 5 s): the
    association's thread logs after it has sent its answer."""
    deadline = time.monotonic() + 5.0
    while True:
        lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and text in r.getMessage()]
        if len(lines) >= count or time.monotonic() > deadline:
            return lines
        time.sleep(0.01)


def _assert_a_sender_still_stores(port: int) -> None:
    (status,) = send_datasets(port, [make_dataset()])
    assert status.Status == StoreStatus.SUCCESS


@pytest.mark.parametrize(
    ("application_context", "named"),
    [
        (b"1.2.3.4", "application context name 1.2.3.4 is not DICOM's"),
        (b"1.2.840.10008.3.1.1.2", "application context name 1.2.840.10008.3.1.1.2 is not DICOM's"),
        (b"urn:example:context", "application context name (not a UID: 19 characters) is not DICOM's"),
        (None, "no application context name"),
    ],
)
def test_an_application_context_other_than_dicoms_is_rejected_as_not_supported(
    server: RouterServer, caplog: pytest.LogCaptureFixture, application_context: bytes | None, named: str
) -> None:
    port = server.ports[0]
    request = associate_rq(application_context=application_context)
    with caplog.at_level(logging.WARNING, logger="router.dicom.listener"):
        # the second request has the same bytes: made from the remembered decoding
        answers = [_first_answer(port, request) for _ in range(2)]
        lines = _warnings(caplog, "rejected", count=2)
    # A-ASSOCIATE-RJ: reserved, result 1 (permanent), source 1 (service-user), reason 2
    assert answers == [(0x03, b"\x00\x01\x01\x02")] * 2
    assert len(lines) == 2
    for line in lines:
        assert named in line
        assert "'RAW_SCU' at 127.0.0.1:" in line and "application-context-name-not-supported" in line
    _assert_a_sender_still_stores(port)


@pytest.mark.parametrize(
    "application_context",
    [
        APPLICATION_CONTEXT,
        APPLICATION_CONTEXT + b"\x00\x00",  # more padding than PS3.8's one NUL: DCMTK accepts it too
        APPLICATION_CONTEXT + b" ",
    ],
)
def test_dicoms_application_context_is_accepted_without_a_warning(
    server: RouterServer, caplog: pytest.LogCaptureFixture, application_context: bytes
) -> None:
    with caplog.at_level(logging.WARNING, logger="router.dicom"):
        kind, body = _first_answer(server.ports[0], associate_rq(application_context=application_context))
        _assert_a_sender_still_stores(server.ports[0])
    assert kind == 0x02
    assert _context_results(body) == [(1, 0)]
    # (pynetdicom itself warns of the extra padding as non-conformant; the router does not reject it)
    assert [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith("router")
    ] == []


def test_a_dicomdir_only_association_is_accepted_with_its_context_refused_and_one_warning_each_time(
    server: RouterServer, caplog: pytest.LogCaptureFixture
) -> None:
    request = associate_rq(contexts=_context(1, MEDIA_STORAGE_DIRECTORY))
    with caplog.at_level(logging.WARNING, logger="router.dicom.listener"):
        # the second request has the same bytes: answered from the remembered negotiation
        answers = [_first_answer(server.ports[0], request) for _ in range(2)]
        lines = _warnings(caplog, NOTHING_ACCEPTED, count=2)
    for kind, body in answers:
        assert kind == 0x02
        assert _context_results(body) == [(1, 3)]  # abstract syntax not supported (PS3.8 Table 9-18)
    assert len(lines) == 2
    assert f"(abstract syntax not supported: {MEDIA_STORAGE_DIRECTORY}); it can send nothing" in lines[0]
    assert lines[0].startswith("association from 'RAW_SCU' at 127.0.0.1:")


def test_refusals_are_named_by_reason_with_at_most_five_syntaxes(
    server: RouterServer, caplog: pytest.LogCaptureFixture
) -> None:
    contexts = b"".join(_context(2 * n + 1, uid) for n, uid in enumerate(NOT_STORAGE))
    contexts += _context(21, CT_IMAGE_STORAGE, transfer_syntax="1.2.3.4.5.6")  # result 4
    with caplog.at_level(logging.WARNING, logger="router.dicom.listener"):
        kind, body = _first_answer(server.ports[0], associate_rq(contexts=contexts))
        (line,) = _warnings(caplog, NOTHING_ACCEPTED)
    assert kind == 0x02
    assert _context_results(body) == [(2 * n + 1, 3) for n in range(7)] + [(21, 4)]
    named = ", ".join(NOT_STORAGE[:5])
    assert (
        f"(abstract syntax not supported: {named} and 2 more; "
        f"transfer syntaxes not supported: {CT_IMAGE_STORAGE}); it can send nothing"
    ) in line


def test_a_request_with_no_presentation_context_is_accepted_with_a_warning(
    server: RouterServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="router.dicom.listener"):
        kind, body = _first_answer(server.ports[0], associate_rq(contexts=b""))
        (line,) = _warnings(caplog, NOTHING_ACCEPTED)
    assert kind == 0x02
    assert _context_results(body) == []
    assert "(it proposed none)" in line
    _assert_a_sender_still_stores(server.ports[0])


def test_one_refused_context_beside_an_accepted_one_is_not_warned_about(
    server: RouterServer, caplog: pytest.LogCaptureFixture
) -> None:
    contexts = _context(1, CT_IMAGE_STORAGE) + _context(3, MEDIA_STORAGE_DIRECTORY)
    with caplog.at_level(logging.WARNING, logger="router.dicom.listener"):
        kind, body = _first_answer(server.ports[0], associate_rq(contexts=contexts))
        _assert_a_sender_still_stores(server.ports[0])  # its association is accepted after this one
    assert kind == 0x02
    assert _context_results(body) == [(1, 0), (3, 3)]
    assert _warnings(caplog, NOTHING_ACCEPTED, count=0) == []


def test_a_context_whose_only_transfer_syntax_is_empty_is_refused_not_dropped(
    server: RouterServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A Transfer Syntax Sub-Item of length 0 (pynetdicom reads it as none): the context is
    refused, transfer-syntaxes-not-supported (PS3.8 Table 9-18), with a transfer syntax sub-item
    all the same (its value not significant). The association thread had died building the
    A-ASSOCIATE-AC (IndexError) and the sender got a closed connection (a hostile-peer trial)."""
    port = server.ports[0]
    empty_syntax = presentation_context_item(1, pdu_item(0x30, CT_IMAGE_STORAGE.encode()) + pdu_item(0x40, b""))
    request = associate_rq(contexts=empty_syntax + _context(3, CT_IMAGE_STORAGE))
    with caplog.at_level(logging.WARNING):
        kind, body = _first_answer(port, request)
    assert kind == 0x02, "no A-ASSOCIATE-AC"
    assert _context_results(body) == [(3, 0x00), (1, 0x04)]  # pynetdicom lists the accepted first
    assert b"\x40\x00\x00\x111.2.840.10008.1.2\x50" in body  # the refused context's placeholder, then user information
    assert not [r for r in caplog.records if "uncaught" in r.getMessage()]
    _assert_a_sender_still_stores(port)
