"""``router ledger export``: the professional ledger as claim lines (CSV) or 837P service lines (X12).

CSV: every record of the period (charges and reversals), one row each, every claim field; list
fields (modifiers, diagnosis codes, pointers) joined with ``:``. X12: the lines a billing office
can send, grouped by billing arrangement (:mod:`router.domain.x12_lines`); a line needing coder
review, a ``none`` arrangement, a reversal and a reversed charge are left out with the reason.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from router.domain.enums import BillingArrangement, ProfessionalEntryKind
from router.domain.x12_lines import render_groups
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
        return render_groups(self.groups)


def claim_export(ledgers: LedgerService, since: dt.date | None = None, until: dt.date | None = None) -> ClaimExport:
    """The professional records with a date of service in ``[since, until]``, sorted for export."""
    rows = ledgers.professional(since, until)
    reversed_by = {row["reverses_id"]: row["id"] for row in rows if row["kind"] == ProfessionalEntryKind.REVERSAL}
    grouped: dict[str, list[dict[str, Any]]] = {key: [] for key in GROUP_NOTES}
    excluded: list[tuple[int, str]] = []
    for row in rows:
        arrangement = row["billing_arrangement"]
        if row["kind"] == ProfessionalEntryKind.REVERSAL:
            excluded.append((row["id"], f"reversal of line {row['reverses_id']}"))
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
    groups = [(key, GROUP_NOTES[key], lines) for key, lines in grouped.items() if lines]
    return ClaimExport(rows=rows, groups=groups, excluded=excluded)
