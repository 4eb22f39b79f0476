"""The 837P claim fields of a professional line, from the order, the report, the facility and config.

Called by :meth:`router.services.reads.ReadService.complete_in` when it writes the professional
ledger: each :class:`~router.domain.billing.BillingLine` (one per ordered CPT code and its
modifiers) becomes a :class:`ClaimFields` stored on the record. The rules are in
:mod:`router.domain.claims`; where a field cannot be filled the line goes to coder review with the
reason (never a guess):

- place of service from the order's PV1-2 patient class and the facility (never telehealth 02/10);
- ICD-10-CM codes from the signed report when it carries them (ORU DG1-3 / OBR-31), else from the
  order (DG1-3 / OBR-31); an SR report carries none (docs/billing.md);
- referring NPI from the order (OBR-16 / ORC-12, only a valid NPI); billing group NPI and TIN
  from ``[billing]``; reading location = the reader's ``reading_state``; exam date = StudyDate;
- charge in cents from the fee schedule of the date-of-service year, per the facility's billing
  arrangement (payer: the fee; client: the fee at the facility's contract rate; global: no
  modifier 26, the professional fee at the contract rate if any, never sent to a payer; none: 0).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from router.db.models import Facility, Order, Radiologist, Study
from router.domain.billing import BillingLine
from router.domain.claims import (
    FeeSchedule,
    contract_charge,
    diagnosis_codes,
    diagnosis_pointers,
    line_modifiers,
    place_of_service,
)
from router.domain.enums import BillingArrangement, DiagnosisSource, OrderStatus
from router.hl7.messages import ICD10_SYSTEMS

#: Columns of :class:`~router.db.models.ProfessionalEntry` a claim line fills (also copied onto a reversal).
CLAIM_COLUMNS = (
    "billing_arrangement",
    "modifiers",
    "place_of_service",
    "diagnosis_codes",
    "diagnosis_pointers",
    "diagnosis_source",
    "referring_npi",
    "referring_name",
    "billing_npi",
    "billing_tin",
    "reading_state",
    "exam_date",
    "charge_cents",
    "fee_schedule_version",
    "contract_rate_percent",
)


@dataclass(frozen=True)
class ClaimDefaults:
    """``[billing]`` values every line uses (validated by the config loader).

    Attributes
    ----------
    group_npi, tin : str or None
        Billing provider NPI (837P loop 2010AA NM109) and TIN (nine digits, REF*EI).
    outpatient_pos : str
        ``"22"`` or ``"19"``: POS of an outpatient (PV1-2 ``O``) exam when the facility sets none.
    default_pos : str or None
        POS when neither the patient class nor the facility decides it; None: coder review.
    """

    group_npi: str | None = None
    tin: str | None = None
    outpatient_pos: str = "22"
    default_pos: str | None = None


@dataclass(frozen=True)
class Diagnosis:
    """One diagnosis as sent (HL7 CE/CWE identifier and coding system)."""

    code: str
    system: str


@dataclass(frozen=True)
class ClaimFields:
    """The claim fields of one professional line (columns :data:`CLAIM_COLUMNS`) and its problems."""

    billing_arrangement: BillingArrangement
    modifiers: list[str]
    place_of_service: str | None
    diagnosis_codes: list[str]
    diagnosis_pointers: list[int]
    diagnosis_source: DiagnosisSource | None
    referring_npi: str | None
    referring_name: str | None
    billing_npi: str | None
    billing_tin: str | None
    reading_state: str | None
    exam_date: dt.date | None
    charge_cents: int | None
    fee_schedule_version: str | None
    contract_rate_percent: int | None
    problems: tuple[str, ...]

    def columns(self) -> dict[str, object]:
        """The values of :data:`CLAIM_COLUMNS`, for the ledger record."""
        values = asdict(self)
        return {column: values[column] for column in CLAIM_COLUMNS}


def order_of(session: Session, study: Study) -> Order | None:
    """The active order matched to ``study`` (the newest when several are), or None."""
    return session.scalars(
        select(Order)
        .where(Order.study_id == study.id, Order.status == OrderStatus.ACTIVE)
        .order_by(Order.id.desc())
        .limit(1)
    ).first()


def _icd10(items: Sequence[Diagnosis]) -> list[str]:
    """Codes of the items coded in ICD-10-CM (or with no coding system named)."""
    return [item.code for item in items if not item.system or item.system.upper() in ICD10_SYSTEMS]


def _diagnoses(
    report: Sequence[Diagnosis], order: Order | None
) -> tuple[tuple[str, ...], DiagnosisSource | None, list[str]]:
    """ICD-10-CM codes from the report when it has any valid one, else from the order."""
    codes, problems = diagnosis_codes(_icd10(report), "report")
    if codes:
        return codes, DiagnosisSource.REPORT, problems
    sent = [
        Diagnosis(str(item.get("code", "")), str(item.get("system", ""))) for item in (order.diagnoses if order else [])
    ]
    order_codes, order_problems = diagnosis_codes(_icd10(sent), "order")
    problems += order_problems
    if order_codes:
        return order_codes, DiagnosisSource.ORDER, problems
    return (), None, [*problems, "no ICD-10-CM diagnosis on the report or the order"]


def line_charge(
    cpt_code: str | None,
    professional: bool,
    arrangement: BillingArrangement,
    contract_rate_percent: int | None,
    fees: FeeSchedule | None,
    fee_file: str,
) -> tuple[int | None, int | None, list[str]]:
    """``(charge_cents, contract_rate_percent applied, problems)`` of one unit of a line.

    ``professional``: the code has a PC/TC split (modifier 26 from the map), so the CPT-26 fee
    is used, also for a ``global`` arrangement (the group's share of the facility's global
    bill, docs/billing.md). ``none`` is 0 cents; ``client`` needs a contract rate; ``global``
    applies one when set. A ledger correction that changes the CPT code reprices with this.
    """
    if arrangement is BillingArrangement.NONE:
        return 0, None, []
    if cpt_code is None:
        return None, None, []
    if fees is None:
        return None, None, [f"no fee schedule for the date-of-service year ({fee_file} not found)"]
    fee = fees.charge(cpt_code, professional)
    if fee is None:
        shown = cpt_code + ("-26" if professional else "")
        return None, None, [f"no charge for {shown} in fee schedule {fees.version}"]
    percent = contract_rate_percent
    if arrangement is BillingArrangement.CLIENT and percent is None:
        return None, None, ["client arrangement without a contract rate (facilities set --contract-rate)"]
    if arrangement in (BillingArrangement.CLIENT, BillingArrangement.GLOBAL) and percent is not None:
        return contract_charge(fee, percent), percent, []
    return fee, None, []


def claim_fields(
    line: BillingLine,
    *,
    study: Study,
    order: Order | None,
    facility: Facility | None,
    radiologist: Radiologist,
    report_diagnoses: Sequence[Diagnosis],
    fees: FeeSchedule | None,
    fee_file: str,
    defaults: ClaimDefaults,
) -> ClaimFields:
    """The claim fields of ``line`` (see the module docstring for each rule).

    A field that cannot be filled leaves a problem in ``problems`` (the caller sends the line to
    coder review with them). A line of a ``none`` arrangement is never sent anywhere, so its
    missing POS, diagnosis or referring NPI are not problems.
    """
    arrangement = facility.billing_arrangement if facility is not None else BillingArrangement.PAYER
    billed = arrangement is not BillingArrangement.NONE
    professional = line.modifier == "26" and arrangement is not BillingArrangement.GLOBAL
    modifiers, problems = line_modifiers(professional, line.order_modifiers)
    outpatient = (facility.outpatient_pos if facility is not None else None) or defaults.outpatient_pos
    default_pos = (facility.default_pos if facility is not None else None) or defaults.default_pos
    pos, pos_problem = place_of_service(order.patient_class if order else None, outpatient, default_pos)
    codes, source, diagnosis_problems = _diagnoses(report_diagnoses, order)
    referring = order.referring_npi if order is not None else None
    charge, percent, charge_problems = line_charge(
        line.cpt_code,
        line.modifier == "26",
        arrangement,
        facility.contract_rate_percent if facility is not None else None,
        fees,
        fee_file,
    )
    if billed:
        problems += [pos_problem] if pos_problem else []
        problems += diagnosis_problems
        if referring is None and arrangement is BillingArrangement.PAYER:
            problems.append("no referring provider NPI on the order (required for diagnostic imaging claims)")
    problems += charge_problems
    return ClaimFields(
        billing_arrangement=arrangement,
        modifiers=list(modifiers),
        place_of_service=pos,
        diagnosis_codes=list(codes),
        diagnosis_pointers=list(diagnosis_pointers(len(codes))),
        diagnosis_source=source,
        referring_npi=referring,
        referring_name=order.referring_name if order is not None else None,
        billing_npi=defaults.group_npi,
        billing_tin=defaults.tin,
        reading_state=radiologist.reading_state,
        exam_date=study.study_date,
        charge_cents=charge,
        fee_schedule_version=fees.version if fees is not None and charge is not None and billed else None,
        contract_rate_percent=percent,
        problems=tuple(problems),
    )
