"""Composing HL7 v2.5.1 orders and reports (for ``router demo`` and testing a listener).

Field positions as in :mod:`router.hl7.messages`; free text is escaped (HL7 v2.5.1 section
2.7.4) with the default encoding characters ``^~\\&``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from router.domain.enums import Priority

_PRIORITY_CODE = {Priority.STAT: "S", Priority.ASAP: "A", Priority.ROUTINE: "R"}


def escape(text: str) -> str:
    """``text`` with the delimiters ``| ^ ~ \\ &`` as HL7 escape sequences; CR/LF as spaces."""
    out = []
    for char in text:
        out.append(
            {"\\": "\\E\\", "|": "\\F\\", "^": "\\S\\", "&": "\\T\\", "~": "\\R\\", "\r": " ", "\n": " "}.get(
                char, char
            )
        )
    return "".join(out)


def _stamp(moment: dt.datetime) -> str:
    return moment.strftime("%Y%m%d%H%M%S") + moment.strftime("%z")


def _msh(message_type: str, control_id: str, sender: str, facility: str, now: dt.datetime) -> str:
    return "|".join(
        [
            "MSH",
            "^~\\&",
            escape(sender),
            escape(facility),
            "ROUTER",
            "",
            _stamp(now),
            "",
            message_type,
            escape(control_id),
            "P",
            "2.5.1",
        ]
    )


def compose_order(
    accession: str,
    cpt: str,
    description: str,
    priority: Priority,
    control_id: str,
    now: dt.datetime,
    facility: str = "RIS",
    referring_npi: str = "",
    referring_name: str = "",
    patient_class: str = "",
    diagnoses: Sequence[str] = (),
) -> bytes:
    """An ORM^O01 (new order, ORC-1 NW) for one CPT-coded procedure (coding system C4).

    ``referring_name`` (``family^given``) follows the NPI in ORC-12 and OBR-16 (XCN components 2
    and 3). ``patient_class`` goes in PV1-2 (HL7 table 0004: I, O, E...; no PV1 when empty) and each
    ICD-10-CM code of ``diagnoses`` in a DG1 (DG1-3, coding system I10).
    """
    code = _PRIORITY_CODE[priority]
    referring = "^".join([escape(referring_npi), *(escape(part) for part in referring_name.split("^")[:2])])
    referring = referring if referring_npi else ""
    segments = [
        _msh("ORM^O01", control_id, "RIS", facility, now),
        *([f"PV1|1|{escape(patient_class)}"] if patient_class else []),
        "|".join(
            [
                "ORC",
                "NW",
                escape(accession),
                escape(accession),
                "",
                "",
                "",
                f"^^^^^{code}",
                "",
                _stamp(now),
                "",
                "",
                referring,
            ]
        ),
        "|".join(
            ["OBR", "1", escape(accession), escape(accession), f"{escape(cpt)}^{escape(description)}^C4"]
            + [""] * 11
            + [referring]
            + [""] * 10
            + [f"^^^^^{code}"]
        ),
        *(f"DG1|{index}||{escape(item)}^^I10" for index, item in enumerate(diagnoses, start=1)),
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")


def compose_report(
    accession: str,
    status: str,
    signer_npi: str,
    signer_family: str,
    signer_given: str,
    signed_at: dt.datetime,
    control_id: str,
    now: dt.datetime,
    facility: str = "REPORTING",
) -> bytes:
    """An ORU^R01 with OBR-25 ``status`` (P, F or C), OBR-32 signer and OBR-22 signing time."""
    obr = ["OBR", "1", "", escape(accession), ""] + [""] * 17 + [_stamp(signed_at), "", "", status]
    obr += [""] * 6 + ["&".join([escape(signer_npi), escape(signer_family), escape(signer_given)])]
    segments = [
        _msh("ORU^R01", control_id, "REPORTING", facility, now),
        "|".join(obr),
        f"OBX|1|TX|IMP^Impression||Report text not sent to the router||||||{status}",
    ]
    return ("\r".join(segments) + "\r").encode("utf-8")
