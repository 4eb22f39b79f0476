"""837P service lines as X12 segments: the loop 2400 of each professional line, not an interchange.

What a billing office loads into its claim software: for each line, the segments ASC X12N
005010X222A1 (Health Care Claim: Professional) gives loop 2400 "Service Line Number":

- ``LX`` (2400 Service Line Number): LX01 the line's number within its claim (1-50);
- ``SV1`` (2400 Professional Service): SV101 composite ``HC:<CPT>[:mod1..mod4]``, SV102 line item
  charge amount in dollars, SV103 ``UN`` (unit), SV104 service unit count, SV105 place of service
  code, SV107 composite diagnosis code pointers (1-4, into the claim's HI segment);
- ``DTP*472`` (2400 Date - Service Date), format ``D8`` CCYYMMDD: the date of service;
- ``REF*6R`` (2400 Line Item Control Number): the professional ledger id, so a remittance (835
  SVC/REF*6R) comes back to the ledger line;
- ``NM1*82`` (2420A Rendering Provider Name) and ``NM1*DK`` (2420F Referring Provider Name),
  entity type 1 (person), ID qualifier ``XX`` (NPI). The guide makes them situational: required
  when the line's provider differs from the claim's (2310B / 2310A). Lines are not claims here,
  so every line carries them; a loader drops them when they equal the claim's.

Not produced: ISA/GS/ST envelopes, loops 1000A-2300 (submitter, receiver, billing provider,
subscriber, patient, CLM). The claim's diagnoses (2300 ``HI``, ``ABK`` principal then ``ABF``,
codes without the point) are given on a ``#`` comment line before each claim's lines, for the
loader to put in the claim; ``#`` lines are not X12.

Delimiters: element ``*``, component ``:``, segment terminator ``~`` (one segment per text line).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from router.domain.claims import MAX_DIAGNOSES, MAX_MODIFIERS, MAX_POINTERS

ELEMENT = "*"
COMPONENT = ":"
TERMINATOR = "~"
_DELIMITERS = str.maketrans({ELEMENT: " ", COMPONENT: " ", TERMINATOR: " ", "^": " ", "\r": " ", "\n": " "})


def _clean(value: object) -> str:
    """Text safe inside one X12 element (delimiters become spaces), upper case as most payers want."""
    return " ".join(str(value or "").translate(_DELIMITERS).split()).upper()


def dollars(cents: int) -> str:
    """X12 ``R`` (decimal) dollars of ``cents``: ``35000`` -> ``350``, ``35050`` -> ``350.5``."""
    whole, part = divmod(int(cents), 100)
    return f"{whole}" if part == 0 else f"{whole}.{part:02d}".rstrip("0")


def segment(*elements: object) -> str:
    """One segment: elements joined with ``*``, trailing empty elements dropped, ``~`` at the end."""
    parts = [str(item) for item in elements]
    while parts and parts[-1] == "":
        parts.pop()
    return ELEMENT.join(parts) + TERMINATOR


def _person(qualifier: str, name: str | None, npi: str) -> str:
    """NM1 of a person with an NPI: ``NM1*<qualifier>*1*<last>*<first>****XX*<npi>~``."""
    family, _, rest = (name or "").partition("^")
    given = rest.partition("^")[0]
    return segment("NM1", qualifier, "1", _clean(family), _clean(given), "", "", "", "XX", npi)


def service_line(number: int, line: Mapping[str, Any], pointers: Sequence[int] | None = None) -> list[str]:
    """The loop 2400 (and 2420A/2420F) segments of one ledger line (a dict of the ledger's columns).

    ``pointers``: SV107 into the claim's HI (1-based); default the line's own ``diagnosis_pointers``.

    Raises
    ------
    KeyError, TypeError
        A field the segments need is missing (the caller only passes lines not needing review).
    """
    procedure = COMPONENT.join(["HC", str(line["cpt_code"]), *list(line["modifiers"] or [])[:MAX_MODIFIERS]])
    chosen = line["diagnosis_pointers"] if pointers is None else pointers
    sv107 = COMPONENT.join(str(item) for item in (chosen or [])[:MAX_POINTERS])
    day = str(line["date_of_service"]).replace("-", "")
    out = [
        segment("LX", number),
        segment(
            "SV1", procedure, dollars(line["charge_cents"]), "UN", line["units"], line["place_of_service"], "", sv107
        ),
        segment("DTP", "472", "D8", day),
        segment("REF", "6R", line["id"]),
        _person("82", line["rendering_name"], line["rendering_npi"]),
    ]
    if line.get("referring_npi"):
        out.append(_person("DK", line.get("referring_name"), line["referring_npi"]))
    return out


def claim_of(line: Mapping[str, Any]) -> tuple[str, str]:
    """The claim a ledger line goes on: (accession number, else Study Instance UID; date of service)."""
    return str(line["accession_number"] or line["study_instance_uid"]), str(line["date_of_service"])


def claim_diagnoses(lines: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[list[int]]]:
    """The claim's ICD-10-CM codes (every line's, in order of first use, at most 12: the 2300 HI
    limit) and each line's SV107 pointers into them (at most 4, those within the 12).

    Lines of one claim may carry different codes (a coder corrected one line's), so each line's
    own pointers, which index its own codes, are mapped onto the claim's list.
    """
    codes: list[str] = []
    for line in lines:
        for code in line["diagnosis_codes"] or []:
            if code not in codes:
                codes.append(code)
    codes = codes[:MAX_DIAGNOSES]
    pointers: list[list[int]] = []
    for line in lines:
        own = line["diagnosis_codes"] or []
        mapped = [
            codes.index(own[index - 1]) + 1
            for index in (line["diagnosis_pointers"] or [])
            if 0 < index <= len(own) and own[index - 1] in codes
        ]
        pointers.append(mapped[:MAX_POINTERS])
    return codes, pointers


def claim_hi(codes: Sequence[str]) -> str:
    """The 2300 ``HI`` segment of a claim's ICD-10-CM codes: ``ABK`` (principal), then ``ABF``."""
    items = [
        COMPONENT.join(["ABK" if index == 0 else "ABF", code.replace(".", "")]) for index, code in enumerate(codes)
    ]
    return segment("HI", *items)


def render_groups(
    groups: Iterable[tuple[str, str, Sequence[Mapping[str, Any]]]],
    frequencies: Mapping[tuple[str, str, str], str] | None = None,
) -> list[str]:
    """Text lines for ``(arrangement, note, lines)`` groups: a ``#`` header per group, then per
    claim (accession and date of service) a ``#`` line with its claim frequency type code
    (2300 CLM05-3: 1 original, 7 replacement, 8 void; from ``frequencies`` keyed by
    ``(arrangement, accession, date of service)``, 1 when absent) and its HI, then each line's
    segments (LX numbered from 1 within the claim). A 7 or 8 claim also needs the payer's claim
    control number of the claim it corrects (2300 REF*F8), which only the billing office has."""
    out = [
        "# 837P service lines (ASC X12 005010X222A1 loop 2400 with 2420A/2420F), not an interchange:"
        " no ISA/GS/ST envelope, no loops 1000A-2300"
    ]
    meaning = {"1": "original", "7": "replacement of the claim sent before", "8": "void of the claim sent before"}
    for arrangement, note, lines in groups:
        claims: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for line in lines:
            key = claim_of(line)
            claims.setdefault(key, []).append(line)
        frequency_of = {key: (frequencies or {}).get((arrangement, *key), "1") for key in claims}
        billed = [line for key, members in claims.items() if frequency_of[key] != "8" for line in members]
        total = sum(int(line["charge_cents"]) for line in billed)
        voids = sum(1 for key in claims if frequency_of[key] == "8")
        out.append(
            f"# arrangement {arrangement}: {len(billed)} line(s), {dollars(total)} dollars"
            + (f", {voids} void claim(s)" if voids else "")
            + f"; {note}"
        )
        for (accession, day), members in claims.items():
            frequency = frequency_of[(accession, day)]
            codes, pointers = claim_diagnoses(members)
            out.append(
                f"# claim accession {accession} DOS {day} CLM05-3 {frequency} ({meaning.get(frequency, frequency)}): "
                f"{claim_hi(codes)}"
            )
            for number, (line, line_pointers) in enumerate(zip(members, pointers, strict=True), start=1):
                out.extend(service_line(number, line, line_pointers))
    return out
