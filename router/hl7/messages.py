"""Parsing HL7 v2 messages (v2.3 to v2.5.1) with python-hl7 into plain value objects, and ACKs.

Field positions follow HL7 v2.5.1: chapter 2 (MSH, MSA, ERR, ACK), chapter 4 (ORC, OBR, TQ1,
IPC; ORM^O01 and OMI^O23), chapter 6 (DG1), chapter 3 (PV1), chapter 7 (ORU^R01, OBR-25
result status, OBR-32 principal result interpreter). Values come back unescaped (``\\F\\``,
``\\S\\``, ``\\T\\``, ``\\R\\``, ``\\E\\``) in whatever encoding characters MSH-1/MSH-2 declare.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import hl7

from router.domain.enums import AckCode

#: Coding systems that mean CPT (HL7 table 0396: ``C4`` CPT-4; ``CPT``/``CPT4`` as sent in the field).
CPT_SYSTEMS = frozenset({"C4", "CPT", "CPT4", "CPT-4"})
#: ICD-10-CM (HL7 table 0396 ``I10``, also seen as ``I10C``/``ICD10``/``ICD-10-CM``).
ICD10_SYSTEMS = frozenset({"I10", "I10C", "ICD10", "ICD-10", "ICD10CM", "ICD-10-CM"})


class Hl7ParseError(Exception):
    """The payload is not an HL7 v2 message this router can read (reason in the message)."""


@dataclass(frozen=True)
class MessageHeader:
    """MSH of a received message (HL7 v2.5.1 section 2.14.9)."""

    control_id: str  # MSH-10
    message_code: str  # MSH-9.1, e.g. ORM
    trigger_event: str  # MSH-9.2, e.g. O01
    sending_application: str  # MSH-3.1
    sending_facility: str  # MSH-4.1
    receiving_application: str  # MSH-5.1
    receiving_facility: str  # MSH-6.1
    version: str  # MSH-12
    field_separator: str
    encoding_characters: str  # MSH-2

    @property
    def message_type(self) -> str:
        """``ORM^O01`` style."""
        return f"{self.message_code}^{self.trigger_event}" if self.trigger_event else self.message_code


@dataclass(frozen=True)
class CodedValue:
    """A CE/CWE: identifier, text, coding system; for a procedure, its modifiers (OBR-45)."""

    code: str
    text: str
    system: str
    modifiers: tuple[str, ...] = ()


@dataclass(frozen=True)
class OrderMessage:
    """An order (ORM^O01 or OMI^O23) as the router uses it."""

    header: MessageHeader
    order_control: str  # ORC-1: NW, CA, OC, XO, SC...
    accession_number: str
    placer_order_number: str
    procedures: tuple[CodedValue, ...]  # every OBR-4 repetition of every OBR, with its OBR's OBR-45 modifiers
    diagnoses: tuple[CodedValue, ...]  # DG1-3 and OBR-31
    priority_code: str  # TQ1-9.1, ORC-7.6 or OBR-27.6 as sent
    referring_id: str  # OBR-16.1 or ORC-12.1 as sent
    ordering_facility: str  # ORC-21.1, else MSH-4
    patient_class: str  # PV1-2
    patient_location: str  # PV1-3 as sent (components joined with ^)
    referring_name: str = ""  # family^given of the referring XCN (components 2 and 3), as sent


@dataclass(frozen=True)
class ReportMessage:
    """A result (ORU^R01) as the router uses it."""

    header: MessageHeader
    accession_number: str
    result_status: str  # OBR-25
    interpreter_id: str  # OBR-32.1.1
    interpreter_family: str  # OBR-32.1.2
    interpreter_given: str  # OBR-32.1.3
    signed_at: dt.datetime | None  # OBR-22, else OBR-7; naive when sent without an offset
    diagnoses: tuple[CodedValue, ...] = ()  # DG1-3 and OBR-31 of the result, as sent


def decode(payload: bytes) -> str:
    """Text of a payload: UTF-8 when it decodes, else ISO 8859-1 (every byte is a character)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = payload.decode("latin-1")
    return text.replace("\r\n", "\r").replace("\n", "\r").strip("\r")


def parse(payload: bytes) -> Any:
    """The python-hl7 message of ``payload``.

    Raises
    ------
    Hl7ParseError
        No MSH segment first, or python-hl7 cannot split it.
    """
    text = decode(payload)
    if not text.startswith("MSH") or len(text) < 8:
        raise Hl7ParseError("the message does not start with an MSH segment")
    if "\x00" in text:
        raise Hl7ParseError("the message holds NUL bytes")
    try:
        return hl7.parse(text)
    except Exception as exc:
        raise Hl7ParseError(f"unreadable HL7 v2: {type(exc).__name__}") from exc


def value(message: Any, path: str) -> str:
    """Unescaped text at ``path`` (python-hl7 accessor, e.g. ``OBR.F4.R1.C1``), ``""`` if absent."""
    try:
        result = message[path]
    except (KeyError, IndexError, ValueError, TypeError):
        return ""
    return str(result).strip() if result is not None else ""


def header(message: Any) -> MessageHeader:
    """The MSH fields of a parsed message.

    Raises
    ------
    Hl7ParseError
        No control ID (MSH-10) or no message type (MSH-9).
    """
    msh = message.segment("MSH")
    control_id = value(message, "MSH.F10")
    code = value(message, "MSH.F9.R1.C1")
    if not code:
        raise Hl7ParseError("MSH-9 message type is empty")
    if not control_id:
        raise Hl7ParseError("MSH-10 message control ID is empty")
    return MessageHeader(
        control_id=control_id[:199],
        message_code=code.upper(),
        trigger_event=value(message, "MSH.F9.R1.C2").upper(),
        sending_application=value(message, "MSH.F3.R1.C1"),
        sending_facility=value(message, "MSH.F4.R1.C1"),
        receiving_application=value(message, "MSH.F5.R1.C1"),
        receiving_facility=value(message, "MSH.F6.R1.C1"),
        version=value(message, "MSH.F12.R1.C1"),
        field_separator=str(msh[1]),
        encoding_characters=str(msh[2]),
    )


def _segments(message: Any, name: str) -> list[Any]:
    try:
        return list(message.segments(name))
    except KeyError:
        return []


def _field_reps(message: Any, segment: Any, index: int) -> list[list[str]]:
    """Repetitions of field ``index`` of ``segment`` as lists of unescaped component texts."""
    if len(segment) <= index:
        return []
    field = segment[index]
    out: list[list[str]] = []
    if isinstance(field, str):
        return [[message.unescape(field)]] if field else []
    reps = field if isinstance(field, hl7.Repetition) or _is_repetition(field) else [field]
    for rep in reps:
        if isinstance(rep, str):
            out.append([message.unescape(rep)])
        else:
            out.append([message.unescape(str(component)) for component in rep])
    return [rep for rep in out if any(rep)]


def _is_repetition(field: Any) -> bool:
    return bool(field) and not isinstance(field[0], str)


def _coded(reps: list[list[str]]) -> list[CodedValue]:
    return [
        CodedValue(
            code=rep[0].strip(),
            text=(rep[1] if len(rep) > 1 else "").strip(),
            system=(rep[2] if len(rep) > 2 else "").strip().upper(),
        )
        for rep in reps
        if rep and rep[0].strip()
    ]


def _component(message: Any, segment: Any, index: int, component: int) -> str:
    reps = _field_reps(message, segment, index)
    if not reps or len(reps[0]) < component:
        return ""
    return reps[0][component - 1].strip()


def _obr_procedures(message: Any, obr: Any) -> list[CodedValue]:
    """The procedures of one OBR: OBR-4 repetitions, and OBR-44 when it is a CPT code OBR-4 lacks.

    OBR-45 (Procedure Code Modifier, CNE, repeating; HL7 v2.5.1 section 4.5.3.45) applies to the
    OBR's procedure: its codes (component 1, upper-cased) go on every procedure of the OBR.
    """
    modifiers = tuple(dict.fromkeys(item.code.upper() for item in _coded(_field_reps(message, obr, 45))))
    found = _coded(_field_reps(message, obr, 4))
    for item in _coded(_field_reps(message, obr, 44)):
        if item.system in CPT_SYSTEMS and all(other.code != item.code for other in found):
            found.append(item)
    return [CodedValue(item.code, item.text, item.system, modifiers) for item in found]


def _diagnoses(message: Any, obrs: list[Any]) -> list[CodedValue]:
    """OBR-31 (reason for study) of every OBR, then DG1-3 (diagnosis code) of every DG1."""
    found: list[CodedValue] = []
    for segment in obrs:
        found.extend(_coded(_field_reps(message, segment, 31)))
    for dg1 in _segments(message, "DG1"):
        found.extend(_coded(_field_reps(message, dg1, 3)))
    return found


def parse_order(message: Any, head: MessageHeader) -> OrderMessage:
    """An ORM^O01 / OMI^O23 as an :class:`OrderMessage`.

    Raises
    ------
    Hl7ParseError
        No ORC segment, or no accession number (ORC-3, OBR-3, OBR-18 or IPC-1).
    """
    orcs = _segments(message, "ORC")
    if not orcs:
        raise Hl7ParseError("order without an ORC segment")
    orc = orcs[0]
    obrs = _segments(message, "OBR")
    obr = obrs[0] if obrs else None
    ipcs = _segments(message, "IPC")
    accession = (
        _component(message, orc, 3, 1)
        or (_component(message, obr, 3, 1) if obr is not None else "")
        or (_component(message, ipcs[0], 1, 1) if ipcs else "")
        or (_component(message, obr, 18, 1) if obr is not None else "")
    )
    if not accession:
        raise Hl7ParseError("order without an accession number (ORC-3, OBR-3, IPC-1 or OBR-18)")
    procedures: list[CodedValue] = []
    for segment in obrs:
        procedures.extend(_obr_procedures(message, segment))
    diagnoses = _diagnoses(message, obrs)
    tq1s = _segments(message, "TQ1")
    priority = (
        (_component(message, tq1s[0], 9, 1) if tq1s else "")
        or _component(message, orc, 7, 6)
        or (_component(message, obr, 27, 6) if obr is not None else "")
    )
    referring_field = (obr, 16) if obr is not None and _component(message, obr, 16, 1) else (orc, 12)
    referring = _component(message, *referring_field, 1)
    referring_name = "^".join(_component(message, *referring_field, part) for part in (2, 3)).rstrip("^")
    pv1s = _segments(message, "PV1")
    location = ""
    if pv1s:
        reps = _field_reps(message, pv1s[0], 3)
        location = "^".join(reps[0]).rstrip("^") if reps else ""
    return OrderMessage(
        header=head,
        order_control=_component(message, orc, 1, 1).upper(),
        accession_number=accession[:64],
        placer_order_number=(
            _component(message, orc, 2, 1) or (_component(message, obr, 2, 1) if obr is not None else "")
        )[:64],
        procedures=tuple(dict.fromkeys(procedures)),
        diagnoses=tuple(dict.fromkeys(diagnoses)),
        priority_code=priority.upper(),
        referring_id=referring,
        referring_name=referring_name[:200],
        ordering_facility=(_component(message, orc, 21, 1) or head.sending_facility)[:128],
        patient_class=(_component(message, pv1s[0], 2, 1) if pv1s else "")[:8],
        patient_location=location[:128],
    )


def parse_report(message: Any, head: MessageHeader) -> ReportMessage:
    """An ORU^R01 as a :class:`ReportMessage` (the first OBR is the report's).

    Raises
    ------
    Hl7ParseError
        No OBR, no accession number (OBR-3 filler order number, ORC-3 or OBR-18), or an
        unreadable OBR-22/OBR-7 time.
    """
    obrs = _segments(message, "OBR")
    if not obrs:
        raise Hl7ParseError("result without an OBR segment")
    obr = obrs[0]
    orcs = _segments(message, "ORC")
    accession = (
        _component(message, obr, 3, 1)
        or (_component(message, orcs[0], 3, 1) if orcs else "")
        or _component(message, obr, 18, 1)
    )
    if not accession:
        raise Hl7ParseError("result without an accession number (OBR-3, ORC-3 or OBR-18)")
    # OBR-32 is NDL (v2.5) / CM (v2.3): component 1 is a CNN whose subcomponents are
    # ID & family & given ...
    interpreter: list[str] = []
    if len(obr) > 32 and str(obr[32]):
        first = obr[32]
        while not isinstance(first, str) and len(first) > 0 and not isinstance(first[0], str):
            first = first[0]
        interpreter = [first] if isinstance(first, str) else [str(part) for part in first]
        interpreter = [message.unescape(part).strip() for part in interpreter]
        components = _field_reps(message, obr, 32)
        if len(interpreter) == 1 and components and len(components[0]) > 1:
            # v2.3 senders often send ID^family^given as components rather than subcomponents
            interpreter = [part.strip() for part in components[0][:3]]
    interpreter += ["", "", ""]
    stamp = _component(message, obr, 22, 1) or _component(message, obr, 7, 1)
    signed_at = None
    if stamp:
        try:
            signed_at = hl7.parse_datetime(stamp)
        except ValueError as exc:
            raise Hl7ParseError(f"OBR-22 / OBR-7 {stamp!r} is not an HL7 date/time") from exc
    return ReportMessage(
        header=head,
        accession_number=accession[:64],
        result_status=_component(message, obr, 25, 1).upper(),
        interpreter_id=interpreter[0],
        interpreter_family=interpreter[1],
        interpreter_given=interpreter[2],
        signed_at=signed_at,
        diagnoses=tuple(dict.fromkeys(_diagnoses(message, obrs))),
    )


#: HL7 v2.5.1 table 0357 (message error condition codes) used in ERR-3.
SEGMENT_SEQUENCE_ERROR = ("100", "Segment sequence error")
REQUIRED_FIELD_MISSING = ("101", "Required field missing")
TABLE_VALUE_NOT_FOUND = ("103", "Table value not found")
UNSUPPORTED_MESSAGE_TYPE = ("200", "Unsupported message type")
UNKNOWN_KEY_IDENTIFIER = ("204", "Unknown key identifier")
APPLICATION_INTERNAL_ERROR = ("207", "Application internal error")


def build_ack(
    head: MessageHeader | None,
    code: AckCode,
    control_id: str,
    now: dt.datetime,
    text: str = "",
    application: str = "ROUTER",
    error: tuple[str, str] | None = None,
) -> bytes:
    """An ACK (HL7 v2.5.1 section 2.14.1) answering ``head`` with MSA-1 ``code``.

    MSA-3 and, for AE/AR, ERR carry ``text`` (escaped). ``error`` is the ERR-3 condition, a code
    and its name from HL7 table 0357 (e.g. ``("204", "Unknown key identifier")``); by default
    200 "Unsupported message type" for AR and 207 "Application internal error" for AE. The ACK
    uses the sender's field separator and encoding characters and version; with no readable
    header, ``|^~\\&`` and 2.5.1.
    """
    field = head.field_separator if head else "|"
    encoding = head.encoding_characters if head and len(head.encoding_characters) >= 4 else "^~\\&"
    component, _repetition, escape, subcomponent = encoding[0], encoding[1], encoding[2], encoding[3]
    version = head.version if head and head.version else "2.5.1"

    def esc(raw: str) -> str:
        out = []
        for char in raw:
            if char == escape:
                out.append(f"{escape}E{escape}")
            elif char == field:
                out.append(f"{escape}F{escape}")
            elif char == component:
                out.append(f"{escape}S{escape}")
            elif char == subcomponent:
                out.append(f"{escape}T{escape}")
            elif char == encoding[1]:
                out.append(f"{escape}R{escape}")
            elif char in "\r\n":
                out.append(" ")
            else:
                out.append(char)
        return "".join(out)

    stamp = now.astimezone(dt.UTC).strftime("%Y%m%d%H%M%S") + "+0000"
    trigger = head.trigger_event if head else ""
    msh = field.join(
        [
            "MSH",
            encoding,
            application,
            "",
            esc(head.sending_application) if head else "",
            esc(head.sending_facility) if head else "",
            stamp,
            "",
            f"ACK{component}{trigger}{component}ACK" if trigger else "ACK",
            esc(f"ACK{control_id}")[:199] if control_id else f"ACK{now.strftime('%Y%m%d%H%M%S%f')}",
            "P",
            version,
        ]
    )
    segments = [msh, field.join(["MSA", code.value, esc(control_id), esc(text[:80])])]
    if code != AckCode.AA:
        error_code, error_name = error or (
            UNSUPPORTED_MESSAGE_TYPE if code == AckCode.AR else APPLICATION_INTERNAL_ERROR
        )
        if version.startswith(("2.5", "2.6", "2.7", "2.8")):
            segments.append(
                field.join(
                    [
                        "ERR",
                        "",
                        "",
                        component.join([error_code, error_name, "HL70357"]),
                        "E",
                        "",
                        "",
                        "",
                        esc(text[:250]),
                    ]
                )
            )
        else:
            segments.append(field.join(["ERR", component * 3 + subcomponent.join([error_code, error_name, "HL70357"])]))
    return ("\r".join(segments) + "\r").encode("utf-8")
