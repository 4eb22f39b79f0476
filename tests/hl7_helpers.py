"""HL7 v2 sample messages written for the tests (v2.3, v2.4, v2.5, v2.5.1) and a tiny MLLP poller."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

#: Valid NPIs (CMS check digit).
REFERRING_NPI = "1234567893"


def message(segments: list[str]) -> bytes:
    """Segments joined with CR, as a sender puts them on the wire."""
    return ("\r".join(segments) + "\r").encode("utf-8")


def msh(message_type: str, control_id: str, version: str, sender: str = "RIS", facility: str = "NORTH") -> str:
    return f"MSH|^~\\&|{sender}|{facility}|ROUTER|TELERAD|20261205083000||{message_type}|{control_id}|P|{version}"


def order_v23(accession: str, control_id: str, cpt: str = "71260", priority: str = "S", control: str = "NW") -> bytes:
    """ORM^O01 v2.3: priority in ORC-7 component 6, two CPT repetitions in OBR-4, DG1 reason."""
    return message(
        [
            msh("ORM^O01", control_id, "2.3"),
            "PID|1||MRN123^^^NORTH||Synthetic^Patient||19700101|F",
            "PV1|1|E|ER^12^B^NORTH",
            f"ORC|{control}|PLC{accession}|{accession}||||^^^^^{priority}||20261205082500|||{REFERRING_NPI}^Refer^Rita",
            f"OBR|1|PLC{accession}|{accession}|{cpt}^CT chest w contrast^C4~CHEST^Local code^L|||20261205082000||||||||{REFERRING_NPI}^Refer^Rita",
            "DG1|1|I10|R07.9^Chest pain, unspecified^I10",
        ]
    )


def order_v251_omi(accession: str, control_id: str, cpt: str = "74177") -> bytes:
    """OMI^O23 v2.5.1: TQ1-9 priority, IPC accession, ORC-21 facility with an escape, OBR-31 ICD-10 reasons repeated, no PV1."""
    orc = (
        ["ORC", "NW", f"P{accession}"]
        + [""] * 9
        + [f"{REFERRING_NPI}^Refer^Rita"]
        + [""] * 8
        + ["North \\T\\ South Imaging"]
    )
    obr = ["OBR", "1", f"P{accession}", "", f"{cpt}^CT abd\\T\\pelvis w contrast^CPT4"] + [""] * 26
    obr.append("R10.9^Abdominal pain^I10~K35.80^Appendicitis^I10")
    return message(
        [
            msh("OMI^O23", control_id, "2.5.1"),
            "PID|1||MRN9^^^NORTH||Synthetic^Patient",
            "|".join(orc),
            "TQ1|1||||||||A",
            "|".join(obr),
            f"IPC|{accession}|RP1|1.2.3.4|SPS1|CT",
        ]
    )


def order_multi_procedure(accession: str, control_id: str) -> bytes:
    """ORM^O01 v2.5.1 as a RIS sends a bilateral shoulder series and a hip: one OBR per procedure,
    OBR-44 procedure code (CNE) and OBR-45 procedure code modifiers (CNE, repeating; HL7 v2.5.1
    section 4.5.3.44-45), PV1-2 outpatient, the ordering provider in OBR-16 with a name, OBR-31
    and DG1 ICD-10-CM reasons. The third OBR has only a local code in OBR-4 and the CPT in OBR-44.
    """
    text = "\r".join(
        [
            f"MSH|^~\\&|RIS|NORTH|ROUTER|TELERAD|20261205083000||ORM^O01^ORM_O01|{control_id}|P|2.5.1",
            "PID|1||MRN417^^^NORTH^MR||Synthetic^Patient||19650412|M",
            f"PV1|1|O|XR^2^A^NORTH||||{REFERRING_NPI}^Refer^Rita",
            f"ORC|NW|PLC417|{accession}||SC||^^^^^R||20261205082500|||{REFERRING_NPI}^Refer^Rita",
            f"OBR|1|PLC417|{accession}|73030^XR SHOULDER 2+ VIEWS RIGHT^C4|||20261205082000|||||||||{REFERRING_NPI}^Refer^Rita"
            "|||||||||||||||M25.511^Pain in right shoulder^I10|||||||||||||73030^XR shoulder^C4|RT^Right side^HCPCS",
            f"OBR|2|PLC417|{accession}|73030^XR SHOULDER 2+ VIEWS LEFT^C4|||20261205082000|||||||||{REFERRING_NPI}^Refer^Rita"
            "|||||||||||||||M25.512^Pain in left shoulder^I10||||||||||||||LT^Left side^HCPCS~59^Distinct procedural service^C4",
            f"OBR|3|PLC417|{accession}|XRHIP^Hip local code^L|||20261205082000|||||||||||||||||||||||||||||||||||||"
            "73502^XR hip 2-3 views^C4|50^Bilateral procedure^C4",
            "DG1|1|I10|M25.511^Pain in right shoulder^I10",
        ]
    )
    return (text + "\r").encode()


def report(
    accession: str,
    control_id: str,
    version: str,
    status: str,
    signer: str,
    signed: dt.datetime,
    encoding: str = "^~\\&",
) -> bytes:
    """ORU^R01: OBR-25 status, OBR-32 principal result interpreter (NPI & family & given), OBR-22 signing time.

    ``encoding`` changes MSH-2 (component, repetition, escape, subcomponent).
    """
    comp, rep, esc, sub = encoding
    stamp = signed.strftime("%Y%m%d%H%M%S") + signed.strftime("%z")
    obr = ["OBR", "1", "", accession, f"71260{comp}CT chest{comp}C4"] + [""] * 17 + [stamp, "", "", status]
    obr += ["", "", "", "", "", "", f"{signer}{sub}Reader{sub}Avery"]
    segments = [
        msh("ORU^R01", control_id, version, sender="REPORTS")
        .replace("^~\\&", encoding)
        .replace("ORU^R01", f"ORU{comp}R01"),
        f"PID|1||MRN123{comp}{comp}{comp}NORTH||Synthetic{comp}Patient",
        "|".join(obr),
        f"OBX|1|TX|IMP{comp}Impression||No acute findings{esc}F{esc} see{esc}S{esc}note{esc}E{esc}{rep}Line two||||||{status}",
    ]
    return message(segments)


def wait_for(probe: Callable[[], T | None], timeout: float = 15.0) -> T:
    """Poll ``probe`` every 0.05 s until it returns a truthy value; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met before the deadline")


def ack_fields(ack: bytes) -> tuple[str, str, str]:
    """``(MSA-1, MSA-2, MSA-3)`` of an ACK (field separator from MSH)."""
    text = ack.decode("utf-8")
    field = text[3]
    msa = next(segment for segment in text.split("\r") if segment.startswith("MSA"))
    parts = [*msa.split(field), "", "", ""]
    return parts[1], parts[2], parts[3]
