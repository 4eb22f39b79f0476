"""``router ledger export``: the professional ledger as claim lines (CSV) or 837P service lines (X12).

CSV: every record of the period (charges and reversals), one row each, every claim field; list
fields (modifiers, diagnosis codes, pointers) joined with ``:``. X12: the lines a billing office
can send, grouped by billing arrangement and claim (:mod:`router.domain.x12_lines`), each claim
with its claim frequency (1 original, 7 replacement, 8 void); a line needing coder review, a
``none`` arrangement, a reversal and a reversed charge are not lines of their own (a reversed
charge comes back only in the void of a claim with nothing left standing).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from router.domain.enums import BillingArrangement, ClaimFrequency, ProfessionalEntryKind
from router.domain.x12_lines import claim_of, render_groups
from router.services.ledgers import PROFESSIONAL_COLUMNS, LedgerService

#: What each exported arrangement means for the billing office (the X12 group header).
GROUP_NOTES = {
    BillingArrangement.PAYER.value: "bill the payer on an 837P",
    BillingArrangement.CLIENT.value: "invoice the client facility at its contract rate; not sent to a payer",
    BillingArrangement.GLOBAL.value: "the facility bills the global service (no modifier 26); not sent to a payer",
}
_LIST_COLUMNS = ("modifiers", "diagnosis_codes", "diagnosis_pointers")


@dataclass(frozen=True)
class ClaimExport:
    """Lines of a period: ``groups`` for X12 and ``excluded`` ``(ledger id, reason)`` left out of it."""

    rows: list[dict[str, Any]]
    groups: list[tuple[str, str, list[dict[str, Any]]]] = field(default_factory=list)
    excluded: list[tuple[int, str]] = field(default_factory=list)
    #: claim frequency type code (CLM05-3) per claim key (arrangement, accession, DOS)
    frequencies: dict[tuple[str, str, str], str] = field(default_factory=dict)

    def csv_rows(self) -> list[dict[str, Any]]:
        """Every record with list fields joined by ``:`` (columns :data:`PROFESSIONAL_COLUMNS`)."""
        return [
            {
                column: ":".join(str(item) for item in row[column] or []) if column in _LIST_COLUMNS else row[column]
                for column in PROFESSIONAL_COLUMNS
            }
            for row in self.rows
        ]

    def warnings(self) -> list[str]:
        """What the exported lines lack that a claim needs (the billing office fills it in)."""
        lines = [line for _, _, group in self.groups for line in group]
        out = []
        unset = [str(line["id"]) for line in lines if not line["billing_npi"] or not line["billing_tin"]]
        if unset:
            out.append(
                f"line(s) {', '.join(unset)} have no billing group NPI/TIN (billing.group_npi and billing.tin "
                "were not set when they were written): the claim's loop 2010AA needs both"
            )
        nameless = [str(line["id"]) for line in lines if line["referring_npi"] and not line["referring_name"]]
        if nameless:
            out.append(
                f"line(s) {', '.join(nameless)}: the order gave no referring provider name, so NM1*DK NM103 is "
                "empty (look the NPI up in NPPES)"
            )
        return out

    def x12_lines(self) -> list[str]:
        """The text of the X12 export (see :func:`router.domain.x12_lines.render_groups`)."""
        return render_groups(self.groups, self.frequencies)


def claim_export(ledgers: LedgerService, since: dt.date | None = None, until: dt.date | None = None) -> ClaimExport:
    """The professional records with a date of service in ``[since, until]``, sorted for export.

    Each claim (arrangement, accession, date of service) gets its claim frequency type code
    (X12 005010X222A1 CLM05-3): ``1`` for an original; ``7`` when one of its billable lines
    was corrected or voided since and lines still stand (the whole claim is sent again as a
    replacement); ``8`` when every billable line of it was voided (the voided lines are sent
    back as the void). A line held for coder review was never on a claim, so its reversal
    changes nothing.
    """
    rows = ledgers.professional(since, until)
    by_id = {row["id"]: row for row in rows}
    replaced = {row["replaces_id"] for row in rows if row["replaces_id"] is not None}
    reversed_by = {row["reverses_id"]: row["id"] for row in rows if row["kind"] == ProfessionalEntryKind.REVERSAL}
    grouped: dict[str, list[dict[str, Any]]] = {key: [] for key in GROUP_NOTES}
    excluded: list[tuple[int, str]] = []
    corrected: set[ClaimKey] = set()
    voided: dict[ClaimKey, list[dict[str, Any]]] = {}
    for row in rows:
        arrangement = row["billing_arrangement"]
        if row["kind"] == ProfessionalEntryKind.REVERSAL:
            excluded.append((row["id"], f"reversal of line {row['reverses_id']}"))
            original = by_id.get(row["reverses_id"])
            # a void carries the claim as last sent: a version a replacement superseded is not in it
            if original is not None and _billable(original) and original["id"] not in replaced:
                voided.setdefault(claim_key(original), []).append(original)
        elif row["id"] in reversed_by:
            excluded.append((row["id"], f"reversed by line {reversed_by[row['id']]}"))
        elif arrangement is None:
            excluded.append((row["id"], "written before the claim fields existed (schema 0008): no claim data"))
        elif row["coder_review"]:
            excluded.append((row["id"], f"coder review: {row['review_reason']}"))
        elif arrangement == BillingArrangement.NONE:
            excluded.append((row["id"], "facility arrangement none: not billed"))
        else:
            grouped[arrangement].append(row)
            if row["claim_frequency"] == ClaimFrequency.REPLACEMENT:
                corrected.add(claim_key(row))
    standing = {claim_key(line) for lines in grouped.values() for line in lines}
    frequencies = {key: ClaimFrequency.ORIGINAL.value for key in standing}
    for key in corrected | set(voided):
        frequencies[key] = (ClaimFrequency.REPLACEMENT if key in standing else ClaimFrequency.VOID).value
    for key, lines in voided.items():
        if key not in standing:
            grouped[key[0]].extend(lines)  # a void claim carries the lines it voids
    groups = [(key, GROUP_NOTES[key], lines) for key, lines in grouped.items() if lines]
    return ClaimExport(rows=rows, groups=groups, excluded=excluded, frequencies=frequencies)


#: A claim of the export: (arrangement, accession number or Study Instance UID, date of service).
ClaimKey = tuple[str, str, str]


def claim_key(row: dict[str, Any]) -> ClaimKey:
    """The claim a ledger line belongs to (see :data:`ClaimKey`)."""
    return (str(row["billing_arrangement"]), *claim_of(row))


def _billable(row: dict[str, Any]) -> bool:
    """A charge that was on a claim (or would have been): claim fields, no review, billed."""
    return (
        row["billing_arrangement"] in GROUP_NOTES
        and not row["coder_review"]
        and row["kind"] == ProfessionalEntryKind.CHARGE
    )
