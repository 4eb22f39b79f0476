"""Pure rules and parsing of orders and reports (no network): priority, result status, names, ACKs."""

from __future__ import annotations

import datetime as dt

import pytest
from hl7_helpers import ack_fields, order_multi_procedure, order_v23, order_v251_omi, report

from router.config import settings_from_mapping
from router.domain.enums import AckCode, Priority, ReportStatus
from router.domain.orders import names_match, priority_from_hl7, report_status_from_hl7, report_status_from_sr
from router.errors import ConfigError
from router.hl7.compose import compose_order, compose_report, escape
from router.hl7.messages import Hl7ParseError, build_ack, header, parse, parse_order, parse_report

NOW = dt.datetime(2026, 12, 5, 12, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("code", "priority"),
    [("S", Priority.STAT), ("a", Priority.ASAP), ("R", Priority.ROUTINE), ("P", Priority.ROUTINE), ("", None)],
)
def test_priority_from_hl7_table_0027(code: str, priority: Priority | None) -> None:
    assert priority_from_hl7(code) is priority


def test_result_status_and_sr_flags() -> None:
    assert [report_status_from_hl7(c) for c in ("P", "F", "C", "X")] == [
        ReportStatus.PRELIMINARY,
        ReportStatus.FINAL,
        ReportStatus.CORRECTED,
        None,
    ]
    assert report_status_from_sr("VERIFIED", "COMPLETE", False) is ReportStatus.FINAL
    assert report_status_from_sr("UNVERIFIED", "COMPLETE", False) is ReportStatus.PRELIMINARY
    assert report_status_from_sr("VERIFIED", "PARTIAL", False) is ReportStatus.PRELIMINARY
    assert report_status_from_sr("VERIFIED", "COMPLETE", True) is ReportStatus.CORRECTED


def test_names_match_roster_pn() -> None:
    assert names_match("Reader^Avery", "reader", "AVERY")
    assert names_match("Reader^Avery", "Reader", "")
    assert not names_match("Reader^Avery", "Reader", "Blake")
    assert not names_match("Reader^Avery", "", "Avery")


def test_v23_order_with_repetitions_and_dg1() -> None:
    message = parse(order_v23("ACC9", "C9", cpt="71250", priority="R"))
    order = parse_order(message, header(message))
    assert [(p.code, p.system) for p in order.procedures] == [("71250", "C4"), ("CHEST", "L")]
    assert (order.priority_code, order.accession_number, order.patient_class) == ("R", "ACC9", "E")


def test_v251_omi_escapes_and_ipc() -> None:
    message = parse(order_v251_omi("ACC8", "C8"))
    order = parse_order(message, header(message))
    assert order.procedures[0].text == "CT abd&pelvis w contrast"  # \T\ unescaped
    assert order.ordering_facility == "North & South Imaging"
    assert (order.accession_number, order.priority_code, order.patient_location) == ("ACC8", "A", "")


def test_report_with_non_default_encoding_characters() -> None:
    signed = dt.datetime(2026, 12, 5, 9, 30, tzinfo=dt.UTC)
    message = parse(report("ACC7", "C7", "2.4", "F", "1000000012", signed, encoding="*@!%"))
    head = header(message)
    assert (head.message_type, head.encoding_characters, head.version) == ("ORU^R01", "*@!%", "2.4")
    parsed = parse_report(message, head)
    assert (parsed.accession_number, parsed.result_status, parsed.interpreter_id) == ("ACC7", "F", "1000000012")
    assert (parsed.interpreter_family, parsed.interpreter_given, parsed.signed_at) == ("Reader", "Avery", signed)


@pytest.mark.parametrize(
    "payload",
    [b"", b"PID|1", b"MSH|^~\\&|A|B|C|D|2026||ORM^O01||P|2.3", b"MSH|^~\\&|A|B|C|D|2026|||X1|P|2.3"],
)
def test_unreadable_headers_raise(payload: bytes) -> None:
    with pytest.raises(Hl7ParseError):
        header(parse(payload))


def test_ack_escapes_reason_and_uses_sender_delimiters() -> None:
    message = parse(report("A", "C1", "2.5", "F", "x", NOW, encoding="*@!%"))
    ack = build_ack(header(message), AckCode.AE, "C1", NOW, "bad*thing|here", "ROUTER")
    assert ack.startswith(b"MSH|*@!%|ROUTER||REPORTS|NORTH|20261205120000+0000||ACK*R01*ACK|ACKC1|P|2.5\r")
    assert ack_fields(ack) == ("AE", "C1", "bad!S!thing!F!here")


def test_composed_messages_parse_back() -> None:
    raw = compose_order("A|1", "71260", "CT & more", Priority.STAT, "ORD-1", NOW, referring_npi="1234567893")
    message = parse(raw)
    order = parse_order(message, header(message))
    assert (order.accession_number, order.priority_code, order.referring_id) == ("A|1", "S", "1234567893")
    assert order.procedures[0].text == "CT & more"
    assert (order.patient_class, order.diagnoses) == ("", ())
    raw = compose_order("A2", "71260", "CT", Priority.ROUTINE, "ORD-2", NOW, patient_class="O", diagnoses=["R07.9"])
    message = parse(raw)
    order = parse_order(message, header(message))
    assert (order.patient_class, [(d.code, d.system) for d in order.diagnoses]) == ("O", [("R07.9", "I10")])
    raw = compose_report("A|1", "F", "1000000012", "Reader", "Avery", NOW, "RPT-1", NOW)
    message = parse(raw)
    parsed = parse_report(message, header(message))
    assert (parsed.accession_number, parsed.interpreter_id, parsed.signed_at) == ("A|1", "1000000012", NOW)
    assert escape("a\\b") == "a\\E\\b"


@pytest.mark.parametrize(
    ("mapping", "key"),
    [
        ({"hl7": {"port": 70000}}, "hl7.port"),
        ({"hl7": {"max_message_bytes": 10}}, "hl7.max_message_bytes"),
        ({"hl7": {"tls": True}}, "hl7.cert_file"),
        ({"hl7": {"application": "A|B"}}, "hl7.application"),
        ({"hl7": {"prot": 1}}, "hl7.prot"),
    ],
)
def test_hl7_config_is_checked(mapping: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(mapping)
    assert caught.value.key == key


@pytest.mark.parametrize(
    ("obr32", "expected"),
    [
        ("1000000012&Reader&Avery^20261201", ("1000000012", "Reader", "Avery")),  # v2.5 NDL: CNN subcomponents
        ("1000000012^Reader^Avery", ("1000000012", "Reader", "Avery")),  # v2.3 senders: components
        ("1000000012", ("1000000012", "", "")),
        ("&Reader&Avery", ("", "Reader", "Avery")),
        ("1000000012&Reader&Avery~1234567893&Other&X", ("1000000012", "Reader", "Avery")),  # first repetition
        ("", ("", "", "")),
    ],
)
def test_obr32_principal_result_interpreter_forms(obr32: str, expected: tuple[str, str, str]) -> None:
    obr = ["OBR", "1", "", "ACC", *[""] * 21, "F", *[""] * 6, obr32]
    message = parse(("MSH|^~\\&|A|B|C|D|2026||ORU^R01|1|P|2.3\r" + "|".join(obr) + "\r").encode())
    parsed = parse_report(message, header(message))
    assert (parsed.interpreter_id, parsed.interpreter_family, parsed.interpreter_given) == expected
    assert parsed.signed_at is None and parsed.result_status == "F"


def test_order_procedures_carry_obr45_modifiers_and_obr44_codes() -> None:
    message = parse(order_multi_procedure("ACC417", "MSG00417"))
    order = parse_order(message, header(message))
    assert [(p.code, p.system, p.modifiers) for p in order.procedures] == [
        ("73030", "C4", ("RT",)),
        ("73030", "C4", ("LT", "59")),
        ("XRHIP", "L", ("50",)),
        ("73502", "C4", ("50",)),  # OBR-44 CPT code, OBR-4 having only a local code
    ]
    assert [d.code for d in order.diagnoses] == ["M25.511", "M25.512"]
    assert (order.referring_id, order.referring_name, order.patient_class) == ("1234567893", "Refer^Rita", "O")


def test_result_diagnoses_from_dg1_and_obr31() -> None:
    oru = report("ACC5", "R5", "2.5.1", "F", "1000000012", dt.datetime(2026, 12, 5, 9, 0, tzinfo=dt.UTC))
    message = parse(oru.rstrip(b"\r") + b"\rDG1|1|I10|J18.9^Pneumonia, unspecified organism^I10\r")
    parsed = parse_report(message, header(message))
    assert [(d.code, d.system) for d in parsed.diagnoses] == [("J18.9", "I10")]
    plain = parse(oru)
    assert parse_report(plain, header(plain)).diagnoses == ()
