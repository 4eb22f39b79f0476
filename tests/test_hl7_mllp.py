"""Orders and signed reports over a real MLLP connection to the listener inside a running router.

A real MLLP client on 127.0.0.1, the real listener, real C-STORE for the images; sample
messages in HL7 v2.3, v2.4, v2.5 and v2.5.1 written for these tests (tests/hl7_helpers.py).
Runs on SQLite and, with ROUTER_TEST_DATABASE_URL, on PostgreSQL.
"""

from __future__ import annotations

import datetime as dt
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import running_router
from dicom_helpers import make_dataset, send_datasets
from hl7_helpers import REFERRING_NPI, ack_fields, order_multi_procedure, order_v23, order_v251_omi, report, wait_for
from roster_fixtures import NPI_A, NPI_B, roster_with_readers
from sqlalchemy import func, select

from router.app import RouterApp
from router.config import Settings
from router.db.models import Hl7Message, Order, ProfessionalEntry, Report, Study
from router.domain.enums import AckCode, CptSource, OrderStatus, ProfessionalEntryKind, ReportOutcome, StudyStatus
from router.hl7.mllp import END_BLOCK, START_BLOCK, MllpError, frame, send_message
from router.server import RouterServer

pytestmark = pytest.mark.network


@pytest.fixture
def hl7_server(settings: Settings) -> Iterator[RouterServer]:
    """A started router with the MLLP listener on a free port (4 KiB message cap)."""
    settings = settings.replace("hl7", enabled=True, host="127.0.0.1", port=0, max_message_bytes=4096, timeout=5.0)
    app = RouterApp.open(settings, upgrade=True)
    server = RouterServer(app)
    server.start()
    try:
        yield server
    finally:
        server.stop(drain_timeout=2)
        app.close()


def _send(server: RouterServer, payload: bytes) -> bytes:
    assert server.hl7_port is not None
    return send_message("127.0.0.1", server.hl7_port, payload, timeout=10)


def _study(server: RouterServer, uid: str) -> Study | None:
    with server.app.sessions() as session:
        return session.scalars(select(Study).where(Study.study_instance_uid == uid)).one_or_none()


def _assigned_study(server: RouterServer, accession: str) -> str:
    """Send a one-instance CT study from CT_NORTH with ``accession`` and wait until it is assigned."""
    ds = make_dataset(AccessionNumber=accession)
    (status,) = send_datasets(server.ports[0], [ds], calling_ae="CT_NORTH")
    assert status.Status == 0
    uid = str(ds.StudyInstanceUID)
    wait_for(lambda: (s := _study(server, uid)) is not None and s.status == StudyStatus.ASSIGNED)
    return uid


def _ledger(server: RouterServer) -> list[ProfessionalEntry]:
    with server.app.sessions() as session:
        return list(session.scalars(select(ProfessionalEntry).order_by(ProfessionalEntry.id)))


def test_order_then_images_then_reports_bill_from_the_signed_report(hl7_server: RouterServer) -> None:
    roster_with_readers(hl7_server.app, (NPI_A, "TX"))
    ack = _send(hl7_server, order_v23("ACC-HL7-1", "ORD-1", cpt="71260", priority="S"))
    assert ack_fields(ack) == ("AA", "ORD-1", "")
    uid = _assigned_study(hl7_server, "ACC-HL7-1")
    study = wait_for(lambda: (s := _study(hl7_server, uid)) is not None and s.priority == "stat" and s)
    assert study.procedure_codes is not None and [code["value"] for code in study.procedure_codes] == ["71260"]
    with hl7_server.app.sessions() as session:
        order = session.scalars(select(Order)).one()
        assert (order.study_id, order.referring_npi, order.patient_class, order.patient_location) == (
            study.id,
            REFERRING_NPI,
            "E",
            "ER^12^B^NORTH",
        )
        assert order.diagnoses == [{"code": "R07.9", "text": "Chest pain, unspecified", "system": "I10"}]

    signed = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    ack = _send(hl7_server, report("ACC-HL7-1", "RPT-P", "2.5", "P", NPI_A, signed))
    assert ack_fields(ack)[0] == "AA"
    assert _ledger(hl7_server) == []  # a preliminary report bills nothing
    assert _study(hl7_server, uid).status == StudyStatus.ASSIGNED  # type: ignore[union-attr]

    final = report("ACC-HL7-1", "RPT-F", "2.5.1", "F", NPI_A, signed)
    first_ack = _send(hl7_server, final)
    assert ack_fields(first_ack) == ("AA", "RPT-F", "")
    (entry,) = _ledger(hl7_server)
    assert (entry.rendering_npi, entry.date_of_service, entry.interpreted_at, entry.cpt_code, entry.modifier) == (
        NPI_A,
        signed.date(),
        signed,
        "71260",
        "26",
    )
    assert entry.cpt_source == CptSource.REQUESTED_PROCEDURE_CODE_SEQUENCE  # the order's code
    assert _study(hl7_server, uid).status == StudyStatus.COMPLETED  # type: ignore[union-attr]

    # The same message again (same MSH-10 from the same sender): the same ACK, no second effect.
    assert _send(hl7_server, final) == first_ack
    # A corrected report bills nothing again.
    assert ack_fields(_send(hl7_server, report("ACC-HL7-1", "RPT-C", "2.4", "C", NPI_A, signed)))[0] == "AA"
    assert len(_ledger(hl7_server)) == 1
    with hl7_server.app.sessions() as session:
        outcomes = [(r.status.value, r.outcome) for r in session.scalars(select(Report).order_by(Report.id))]
        stored = session.scalar(select(func.count()).select_from(Hl7Message))
    assert outcomes == [
        ("preliminary", ReportOutcome.NOT_BILLED),
        ("final", ReportOutcome.BILLED),
        ("corrected", ReportOutcome.NOT_BILLED),
    ]
    assert stored == 4  # order, three reports; the duplicate is not stored twice


def test_images_first_then_omi_order_and_a_report_signed_by_someone_else_is_flagged(hl7_server: RouterServer) -> None:
    roster_with_readers(hl7_server.app, (NPI_A, "TX"), (NPI_B, "TX"))
    uid = _assigned_study(hl7_server, "ACC-HL7-2")
    ack = _send(hl7_server, order_v251_omi("ACC-HL7-2", "ORD-2"))
    assert ack_fields(ack) == ("AA", "ORD-2", "")
    study = _study(hl7_server, uid)
    assert study is not None and study.priority == "asap"
    with hl7_server.app.sessions() as session:
        order = session.scalars(select(Order)).one()
        assert order.ordering_facility == "North & South Imaging"
        assert [d["code"] for d in order.diagnoses] == ["R10.9", "K35.80"]
    assigned = hl7_server.app.routing  # the assignment policy picks the lowest NPI on a tie
    del assigned
    other = NPI_B if _current_npi(hl7_server, uid) == NPI_A else NPI_A
    signed = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # MSH-2 with non-default encoding characters: component *, repetition @, escape !, subcomponent %.
    ack = _send(hl7_server, report("ACC-HL7-2", "RPT-X", "2.5", "F", other, signed, encoding="*@!%"))
    assert ack.startswith(b"MSH|*@!%|")
    assert ack_fields(ack)[0] == "AA"
    assert _ledger(hl7_server) == []
    flagged = _study(hl7_server, uid)
    assert flagged is not None and flagged.needs_review and flagged.status == StudyStatus.ASSIGNED
    with hl7_server.app.sessions() as session:
        row = session.scalars(select(Report)).one()
    assert row.outcome == ReportOutcome.FLAGGED and row.signer_npi == other
    assert row.reason is not None and f"signed by NPI {other}" in row.reason


def _current_npi(server: RouterServer, uid: str) -> str:
    from roster_fixtures import study_state

    npi = study_state(server.app, uid)["current_npi"]
    assert npi is not None
    return str(npi)


def test_cancel_after_billing_writes_reversals(hl7_server: RouterServer) -> None:
    roster_with_readers(hl7_server.app, (NPI_A, "TX"))
    uid = _assigned_study(hl7_server, "ACC-HL7-3")
    assert ack_fields(_send(hl7_server, order_v23("ACC-HL7-3", "ORD-3")))[0] == "AA"
    signed = dt.datetime.now(dt.UTC).replace(microsecond=0)
    assert ack_fields(_send(hl7_server, report("ACC-HL7-3", "RPT-3", "2.5", "F", NPI_A, signed)))[0] == "AA"
    assert [e.kind for e in _ledger(hl7_server)] == [ProfessionalEntryKind.CHARGE]
    assert ack_fields(_send(hl7_server, order_v23("ACC-HL7-3", "ORD-3-CA", control="CA")))[0] == "AA"
    charge, reversal = _ledger(hl7_server)
    assert (reversal.kind, reversal.reverses_id, reversal.cpt_code) == (
        ProfessionalEntryKind.REVERSAL,
        charge.id,
        charge.cpt_code,
    )
    with hl7_server.app.sessions() as session:
        assert session.scalars(select(Order)).one().status == OrderStatus.CANCELLED
    assert _study(hl7_server, uid).needs_review  # type: ignore[union-attr]


def test_cancel_before_the_read_blocks_billing(hl7_server: RouterServer) -> None:
    roster_with_readers(hl7_server.app, (NPI_A, "TX"))
    assert ack_fields(_send(hl7_server, order_v23("ACC-HL7-4", "ORD-4")))[0] == "AA"
    assert ack_fields(_send(hl7_server, order_v23("ACC-HL7-4", "ORD-4-CA", control="CA")))[0] == "AA"
    uid = _assigned_study(hl7_server, "ACC-HL7-4")
    wait_for(lambda: (s := _study(hl7_server, uid)) is not None and s.needs_review)
    signed = dt.datetime.now(dt.UTC).replace(microsecond=0)
    assert ack_fields(_send(hl7_server, report("ACC-HL7-4", "RPT-4", "2.3", "F", NPI_A, signed)))[0] == "AA"
    assert _ledger(hl7_server) == []
    with hl7_server.app.sessions() as session:
        row = session.scalars(select(Report)).one()
    assert row.outcome == ReportOutcome.FLAGGED and row.reason is not None and "cancelled" in row.reason


def test_a_final_report_signed_before_the_assignment_is_flagged_not_billed(hl7_server: RouterServer) -> None:
    roster_with_readers(hl7_server.app, (NPI_A, "TX"))
    uid = _assigned_study(hl7_server, "ACC-HL7-5")
    signed = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(days=1)
    assert ack_fields(_send(hl7_server, report("ACC-HL7-5", "RPT-5", "2.5", "F", NPI_A, signed)))[0] == "AA"
    assert _ledger(hl7_server) == []
    with hl7_server.app.sessions() as session:
        row = session.scalars(select(Report)).one()
    assert row.outcome == ReportOutcome.FLAGGED
    assert row.reason == "not billed: interpretation time is before the study was assigned to this radiologist"
    study = _study(hl7_server, uid)
    assert study is not None and study.needs_review and study.status == StudyStatus.ASSIGNED


def test_a_signer_without_npi_is_matched_by_name_to_the_roster(hl7_server: RouterServer) -> None:
    roster_with_readers(hl7_server.app, (NPI_A, "TX"))  # roster name Reader^012
    _assigned_study(hl7_server, "ACC-HL7-6")
    signed = dt.datetime.now(dt.UTC).replace(microsecond=0)
    # OBR-32 as a v2.3 sender writes it: no ID, family^given as components.
    payload = report("ACC-HL7-6", "RPT-6", "2.3", "F", "", signed).replace(b"|&Reader&Avery", b"|^READER^012")
    assert ack_fields(_send(hl7_server, payload))[0] == "AA"
    (entry,) = _ledger(hl7_server)
    assert (entry.rendering_npi, entry.date_of_service) == (NPI_A, signed.date())


def _raw_exchange(port: int, data: bytes, close_write: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        if close_write:
            sock.shutdown(socket.SHUT_WR)
        received = b""
        while True:
            chunk = sock.recv(65536)
            received += chunk
            if not chunk or (not close_write and received.endswith(END_BLOCK + b"\r")):
                return received


#: ERR-3 condition code (HL7 table 0357) each bad input gets
ERR_CONDITIONS = {
    "garbage without framing": b"100",  # segment sequence error: no MSH to begin with
    "truncated frame": b"100",
    "no end block": b"100",
    "over max_message_bytes": b"100",
    "framed garbage": b"100",
    "missing MSH": b"100",
    "unknown message type": b"200",  # unsupported message type
    "order without ORC": b"101",  # required field missing
    "report for no study": b"204",  # unknown key identifier
}


@pytest.mark.parametrize(
    ("name", "payload", "close_write", "code"),
    [
        ("garbage without framing", b"\x00\xffGARBAGE\r\n", False, "AR"),
        ("truncated frame", START_BLOCK + b"MSH|^~\\&|RIS|NORTH|ROUTER||2026||ORM^O01|T1|P|2.3\rORC|NW", True, "AR"),
        ("no end block", START_BLOCK + b"MSH|^~\\&|RIS|NORTH|ROUTER||2026||ORM^O01|T2|P|2.3\r" + END_BLOCK, True, "AR"),
        ("over max_message_bytes", START_BLOCK + b"MSH|^~\\&|" + b"X" * 8000, False, "AR"),
        ("framed garbage", frame(b"\x00\x01\x02 not hl7"), False, "AR"),
        ("missing MSH", frame(b"PID|1||X\rORC|NW|1|A"), False, "AR"),
        ("unknown message type", frame(b"MSH|^~\\&|ADT|NORTH|ROUTER||2026||ADT^A01|U1|P|2.4\rPID|1"), False, "AR"),
        ("order without ORC", frame(b"MSH|^~\\&|RIS|NORTH|ROUTER||2026||ORM^O01|U2|P|2.4\rPID|1"), False, "AE"),
        (
            "report for no study",
            frame(report("NOPE", "U3", "2.5", "F", NPI_A, dt.datetime(2026, 12, 1, tzinfo=dt.UTC))),
            False,
            "AE",
        ),
    ],
)
def test_bad_input_gets_a_nak_and_is_stored(
    hl7_server: RouterServer, name: str, payload: bytes, close_write: bool, code: str
) -> None:
    assert hl7_server.hl7_port is not None
    received = _raw_exchange(hl7_server.hl7_port, payload, close_write)
    assert received.startswith(START_BLOCK) and received.endswith(END_BLOCK + b"\r"), name
    msa_code = ack_fields(received[1:-2])[0]
    assert msa_code == code, name
    # ERR-3: the condition from HL7 table 0357 (component 1 in v2.5+, ERR-1's 4th in v2.3/2.4)
    (err,) = [segment for segment in received[1:-2].split(b"\r") if segment.startswith(b"ERR")]
    condition = ERR_CONDITIONS[name]
    assert re.search(rb"[|^&]" + condition + rb"[\^&]", err), (name, err)
    with hl7_server.app.sessions() as session:
        rows = list(session.scalars(select(Hl7Message)))
    assert [(row.ack_code, row.accepted_key) for row in rows] == [(AckCode(code), None)]
    assert rows[0].raw  # what was received is kept
    # The listener still serves after a refusal.
    ok = _send(hl7_server, order_v23("ACC-AFTER", "AFTER-1"))
    assert ack_fields(ok)[0] == "AA"


def test_several_messages_on_one_connection_are_answered_in_order(hl7_server: RouterServer, tmp_path: Path) -> None:
    assert hl7_server.hl7_port is not None
    payload = b"".join(frame(order_v23(f"ACC-M{i}", f"M-{i}")) for i in range(3))
    received = _raw_exchange(hl7_server.hl7_port, payload, close_write=True)
    acks = [part for part in received.split(END_BLOCK + b"\r") if part]
    assert [ack_fields(ack.lstrip(START_BLOCK))[:2] for ack in acks] == [("AA", f"M-{i}") for i in range(3)]
    with hl7_server.app.sessions() as session:
        assert sorted(session.scalars(select(Order.accession_number))) == ["ACC-M0", "ACC-M1", "ACC-M2"]


def test_idle_connections_beyond_the_cap_are_closed_and_the_ris_still_gets_through(settings: Settings) -> None:
    settings = settings.replace(
        "hl7", enabled=True, host="127.0.0.1", port=0, timeout=30.0, max_connections=3, max_connections_per_address=2
    )
    with running_router(settings) as server:
        assert server.hl7_port is not None
        idle = [socket.create_connection(("127.0.0.1", server.hl7_port), timeout=5) for _ in range(2)]
        try:
            extra = socket.create_connection(("127.0.0.1", server.hl7_port), timeout=5)
            with extra:
                assert extra.recv(1) == b""  # the third from one address is closed at once
            # the two admitted ones are still open (the router waits for a frame on them)
            for sock in idle:
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
            idle.pop().close()
            # a freed slot lets the RIS in
            answer = wait_for(lambda: _try_send(server, order_v23("ACC-CAP-1", "ORD-CAP-1")))
            assert ack_fields(answer)[0] == "AA"
        finally:
            for sock in idle:
                sock.close()


def _try_send(server: RouterServer, payload: bytes) -> bytes | None:
    try:
        return _send(server, payload)
    except (OSError, MllpError):
        return None  # the slot of the connection just closed is not free yet


def test_multi_procedure_order_over_mllp_bills_one_claim_line_per_procedure(hl7_server: RouterServer) -> None:
    """ORM with three OBRs (OBR-45 modifiers, OBR-44 CPT), images by C-STORE, ORU final with DG1."""
    roster_with_readers(hl7_server.app, (NPI_A, "TX"))
    assert ack_fields(_send(hl7_server, order_multi_procedure("ACC-HL7-M", "ORD-M")))[0] == "AA"
    _assigned_study(hl7_server, "ACC-HL7-M")
    signed = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(minutes=1)
    final = report("ACC-HL7-M", "RPT-M", "2.5.1", "F", NPI_A, signed)
    final = final.rstrip(b"\r") + b"\rDG1|1|I10|M19.011^Primary osteoarthritis, right shoulder^I10\r"
    assert ack_fields(_send(hl7_server, final))[0] == "AA"
    lines = [
        (e.accession_number, e.cpt_code, e.modifiers, e.place_of_service, e.diagnosis_codes, e.diagnosis_source)
        for e in _ledger(hl7_server)
    ]
    assert lines == [
        ("ACC-HL7-M", "73030", ["26", "RT"], "22", ["M19.011"], "report"),
        ("ACC-HL7-M", "73030", ["26", "LT", "59"], "22", ["M19.011"], "report"),
        ("ACC-HL7-M", "73502", ["26", "50"], "22", ["M19.011"], "report"),
    ]
    assert {(e.referring_npi, e.referring_name, e.charge_cents) for e in _ledger(hl7_server)} == {
        (REFERRING_NPI, "Refer^Rita", 2500)
    }
