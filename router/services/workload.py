"""The work RVUs of a study's read (router.domain.workload), from the study row and the reference data."""

from __future__ import annotations

from router.db.models import Study
from router.domain.billing import ProcedureCode
from router.domain.enums import CptSource
from router.domain.workload import read_work_rvu_centi
from router.errors import ValidationError
from router.services.reference import ReferenceData


def study_procedure_codes(study: Study) -> list[ProcedureCode]:
    """The procedure codes stored on the study (unreadable items skipped, as billing does)."""
    codes = []
    for item in study.procedure_codes or []:
        try:
            codes.append(
                ProcedureCode(
                    value=str(item.get("value", "")),
                    scheme=str(item.get("scheme", "")),
                    meaning=str(item.get("meaning", "")),
                    source=CptSource(item.get("source", CptSource.PROCEDURE_CODE_SEQUENCE.value)),
                    modifiers=tuple(str(modifier) for modifier in item.get("modifiers") or ()),
                )
            )
        except (ValueError, ValidationError):
            continue
    return codes


def study_work_rvu_centi(study: Study, reference: ReferenceData, default_centi: int) -> int:
    """Work RVUs of the study's read in hundredths (the CPT codes billing would use; else the default).

    Raises
    ------
    DataFileError
        The CPT map or work RVU file is missing or malformed.
    """
    return read_work_rvu_centi(
        study_procedure_codes(study),
        [item for item in (study.modalities or "").split("\\") if item],
        study.body_part,
        study.study_description,
        reference.cpt_map(),
        reference.work_rvus(),
        default_centi,
    )
