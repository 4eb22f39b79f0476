"""Reading workload in work RVUs (hundredths), for the assignment policy.

A read's workload is the sum of the work RVUs (professional component) of its CPT codes, found
the way billing finds them (:func:`router.domain.billing.resolve_billing_lines`: codes sent in
the study, else inferred from the CPT map). A code without a work RVU in the table, or a study
with no code, counts ``default_centi``. Work RVUs come from a dated file
(``config/work_rvu_2026.csv``); they balance workload only and are never billed.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from types import MappingProxyType

from router.domain.billing import ProcedureCode, resolve_billing_lines
from router.domain.cpt_map import CptMap
from router.errors import DataFileError


@dataclass(frozen=True)
class WorkRvuTable:
    """Work RVUs by CPT code, in hundredths (``1.82`` -> ``182``)."""

    centi: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))

    @classmethod
    def from_csv_text(cls, text: str, source_name: str = "") -> WorkRvuTable:
        """Parse ``cpt,work_rvu`` rows (``#`` comment lines allowed).

        Raises
        ------
        DataFileError
            Bad header, duplicate code, or a work RVU that is not a non-negative number.
        """
        prefix = f"{source_name} " if source_name else ""
        values: dict[str, int] = {}
        header = False
        for line_no, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            cells = [cell.strip() for cell in next(csv.reader([line]))]
            if not header:
                if [cell.lower() for cell in cells] != ["cpt", "work_rvu"]:
                    raise DataFileError(f"{prefix}line {line_no}: expected header cpt,work_rvu")
                header = True
                continue
            if len(cells) != 2 or not cells[0]:
                raise DataFileError(f"{prefix}line {line_no}: expected cpt,work_rvu")
            try:
                value = Decimal(cells[1])
            except InvalidOperation as exc:
                raise DataFileError(f"{prefix}line {line_no}: work_rvu {cells[1]!r} is not a number") from exc
            if not value.is_finite() or value < 0:
                raise DataFileError(f"{prefix}line {line_no}: work_rvu must be a non-negative number")
            code = cells[0].upper()
            if code in values:
                raise DataFileError(f"{prefix}line {line_no}: duplicate CPT {code}")
            values[code] = int((value * 100).quantize(Decimal(1), rounding=ROUND_HALF_UP))
        return cls(MappingProxyType(values))


def read_work_rvu_centi(
    codes: Sequence[ProcedureCode],
    modalities: Sequence[str],
    body_part: str | None,
    description: str | None,
    cpt_map: CptMap,
    table: WorkRvuTable,
    default_centi: int,
) -> int:
    """Work RVUs of one read, in hundredths: the sum over its billing lines' CPT codes."""
    lines = resolve_billing_lines(codes, modalities, body_part, description, cpt_map)
    return sum(table.centi.get((line.cpt_code or "").upper(), default_centi) for line in lines)
