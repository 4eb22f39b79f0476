"""Corrections to the professional ledger: voids and replacements, each audited.

The professional ledger is append-only (DESIGN.md decision 5): a charge is never changed or
deleted. A correction appends a *reversal* of the charge (claim frequency ``8``, void) and, for a
coding correction, a *replacement* charge (claim frequency ``7``, ``replaces_id`` naming the
charge it replaces). Claim frequency type codes are X12 005010X222A1 loop 2300 CLM05-3. A line
that was held for coder review was never on a claim: its reversal stays in review too (so no
export sends a void for it) and its replacement is an original (``1``).

What triggers a correction, and what it writes:

- an order cancelled after the read was billed (ORC-1 ``CA``, :mod:`router.services.orders`):
  every open charge of the study voided, reason ``order_cancelled``;
- ``router ledger void --study UID --reason study-merged|wrong-patient``: every open charge of
  the study voided; the study is flagged for review;
- ``router ledger void --study UID --reason read-reassigned``: every open charge voided, the
  completed assignment withdrawn and the study routed again away from that reader, so the next
  final report (by the new reader) is the one billed;
- ``router ledger correct ID --cpt/--modifier/--units``: one charge replaced (coding correction,
  or a coder clearing a line held for review).

Only one professional charge stands per interpretation: a study's read bills once (a second
final, a corrected report or an addendum bills nothing, :mod:`router.services.reports`), and a
new charge for the same study is only written once every earlier one is reversed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import Assignment, Facility, ProfessionalEntry, Radiologist, Study
from router.db.queries import for_update, locked_study
from router.domain.claims import (
    MAX_DIAGNOSES,
    PROFESSIONAL_MODIFIER,
    diagnosis_codes,
    diagnosis_pointers,
    line_modifiers,
    validate_pos,
)
from router.domain.cpt_map import validate_cpt_code
from router.domain.enums import BillingArrangement, ClaimFrequency, CorrectionReason, ProfessionalEntryKind, StudyStatus
from router.domain.npi import validate_npi
from router.errors import NotFoundError, ValidationError
from router.services.audit_log import ChangeContext, jsonable, record_audit
from router.services.claims import line_charge
from router.services.ledgers import LEDGER_COPIED_COLUMNS, check_not_reversed, open_charges, reverse_charge
from router.services.reference import ReferenceData
from router.services.routing import RoutingService
from router.timeutil import Clock, utcnow

LOG = logging.getLogger(__name__)

#: Reasons that void every open charge of a study (``router ledger void --study``).
STUDY_VOID_REASONS = (
    CorrectionReason.ORDER_CANCELLED,
    CorrectionReason.STUDY_MERGED,
    CorrectionReason.WRONG_PATIENT,
    CorrectionReason.READ_REASSIGNED,
)
#: Reasons that replace one charge (``router ledger correct``).
REPLACEMENT_REASONS = (CorrectionReason.CORRECTED_CODING, CorrectionReason.CODER_APPROVED)


@dataclass(frozen=True)
class Correction:
    """What a correction wrote: ledger ids of the reversals and of the replacement charges."""

    study_instance_uid: str
    reason: CorrectionReason
    reversal_ids: tuple[int, ...]
    replacement_ids: tuple[int, ...]
    rerouted_to: str | None = None  # READ_REASSIGNED: the NPI the read went to, if any


class CorrectionService:
    """Voids and replacements on the professional ledger, audited (``router ledger void|correct``)."""

    def __init__(
        self, sessions: sessionmaker[Session], reference: ReferenceData, routing: RoutingService, clock: Clock = utcnow
    ) -> None:
        self._sessions = sessions
        self._reference = reference
        self._routing = routing
        self._clock = clock

    def _context(self, actor: str) -> ChangeContext:
        at = self._clock()
        return ChangeContext.of(actor, at, self._routing.policy.timezone)

    def correct(
        self,
        entry_id: int,
        reason: CorrectionReason,
        actor: str,
        *,
        cpt: str | None = None,
        modifiers: Sequence[str] | None = None,
        units: int | None = None,
        place_of_service: str | None = None,
        diagnoses: Sequence[str] | None = None,
        referring_npi: str | None = None,
        note: str | None = None,
    ) -> Correction:
        """Replace charge ``entry_id``: its reversal plus a new charge with the changes given.

        ``reason`` is ``corrected_coding`` (at least one change) or ``coder_approved`` (a line
        held for coder review, cleared with what it lacked). ``modifiers`` are the line's
        modifiers besides 26 (``[]`` clears them); 26 itself follows the CPT map of the
        date-of-service year and the facility's arrangement, as when the read was billed. A new
        CPT code or new units reprice the line from the fee schedule of the date-of-service
        year. The replacement must hold what a claim of its arrangement needs (CPT, POS, an
        ICD-10-CM code, a charge, a referring NPI for a payer claim). It is claim frequency
        ``7`` (replaces a charge that was billable) or ``1`` (the replaced line was held for
        review, so never on a claim). One audit row (``ledger.correct``) commits with it.

        Raises
        ------
        NotFoundError
            No ledger record ``entry_id``.
        ValidationError
            Wrong reason, nothing to change, a malformed value (CPT, modifier, POS, ICD-10-CM,
            NPI, units outside 1-99), a code the CPT map or fee schedule lacks, a replacement
            that would still lack a claim field, or a record that is not a charge.
        ConflictError
            The charge is already reversed.
        """
        if reason not in REPLACEMENT_REASONS:
            raise ValidationError(
                f"reason {reason.value} voids a read: use `router ledger void`; a replacement is "
                + " or ".join(item.value for item in REPLACEMENT_REASONS)
            )
        if units is not None and not 1 <= units <= 99:
            raise ValidationError(f"units must be between 1 and 99, got {units}")
        ctx = self._context(actor)
        with self._sessions.begin() as session:
            charge = self._charge(session, entry_id)
            if reason is CorrectionReason.CODER_APPROVED and not charge.coder_review:
                raise ValidationError(f"ledger record {entry_id} is not held for coder review")
            line = self._corrected_line(
                session,
                charge,
                cpt=cpt,
                modifiers=modifiers,
                units=units,
                place_of_service=place_of_service,
                diagnoses=diagnoses,
                referring_npi=referring_npi,
            )
            changes = {key: value for key, value in line.items() if getattr(charge, key) != value}
            if reason is CorrectionReason.CORRECTED_CODING and not changes:
                raise ValidationError(f"nothing to correct: ledger record {entry_id} already has those values")
            reversal = reverse_charge(session, charge, reason, ctx.at, note)
            replacement = ProfessionalEntry(
                kind=ProfessionalEntryKind.CHARGE,
                recorded_at=ctx.at,
                claim_frequency=(ClaimFrequency.ORIGINAL if charge.coder_review else ClaimFrequency.REPLACEMENT).value,
                replaces_id=charge.id,
                correction_reason=reason.value,
                correction_note=note,
                **{column: getattr(charge, column) for column in LEDGER_COPIED_COLUMNS},
            )
            for key, value in line.items():
                setattr(replacement, key, value)
            replacement.coder_review = False
            replacement.review_reason = None
            session.add(replacement)
            session.flush()
            record_audit(
                session,
                ctx,
                "ledger.correct",
                "professional_entry",
                str(charge.id),
                jsonable({key: getattr(charge, key) for key in (*changes, "coder_review")}),
                jsonable(
                    {
                        **changes,
                        "coder_review": False,
                        "reason": reason,
                        "reversal_id": reversal.id,
                        "replacement_id": replacement.id,
                        "note": note,
                    }
                ),
            )
            LOG.info(
                "ledger record %d of study %s replaced by %d (%s)",
                charge.id,
                charge.study_instance_uid,
                replacement.id,
                reason.value,
            )
            return Correction(charge.study_instance_uid, reason, (reversal.id,), (replacement.id,))

    def _corrected_line(
        self,
        session: Session,
        charge: ProfessionalEntry,
        *,
        cpt: str | None,
        modifiers: Sequence[str] | None,
        units: int | None,
        place_of_service: str | None,
        diagnoses: Sequence[str] | None,
        referring_npi: str | None,
    ) -> dict[str, Any]:
        """The billing fields of the replacement of ``charge`` (only those a correction decides)."""
        year = charge.date_of_service.year
        new_cpt = validate_cpt_code(cpt) if cpt is not None else charge.cpt_code
        if new_cpt is None:
            raise ValidationError(f"ledger record {charge.id} has no CPT code; give one with --cpt")
        arrangement = BillingArrangement(charge.billing_arrangement or BillingArrangement.PAYER)
        cpt_map = self._reference.cpt_map_for_year(year)
        split = cpt_map.has_professional_component(new_cpt) if cpt_map is not None else None
        if split is None:
            where = f"the CPT map {cpt_map.version}" if cpt_map is not None else f"any CPT map for {year}"
            raise ValidationError(f"CPT {new_cpt} is not in {where}: add it to the map first (modifier 26 unknown)")
        professional = split and arrangement is not BillingArrangement.GLOBAL
        extras = (
            list(modifiers)
            if modifiers is not None
            else [item for item in charge.modifiers or [] if item != PROFESSIONAL_MODIFIER]
        )
        line_mods, problems = line_modifiers(professional, extras)
        if problems:
            raise ValidationError("; ".join(problems))
        count = units if units is not None else charge.units
        line: dict[str, Any] = {
            "cpt_code": new_cpt,
            "modifier": PROFESSIONAL_MODIFIER if PROFESSIONAL_MODIFIER in line_mods else None,
            "modifiers": list(line_mods),
            "units": count,
        }
        if new_cpt != charge.cpt_code:
            line["cpt_map_version"] = cpt_map.version if cpt_map is not None else None
        if arrangement is not BillingArrangement.NONE:
            if new_cpt != charge.cpt_code or line["modifier"] != charge.modifier or charge.charge_cents is None:
                fees = self._reference.fee_schedule_for_year(year)
                rate = charge.contract_rate_percent
                if rate is None and arrangement is BillingArrangement.CLIENT:  # set on the facility since
                    rate = session.scalar(
                        select(Facility.contract_rate_percent).where(Facility.ae_title == charge.facility_ae_title)
                    )
                unit, percent, charge_problems = line_charge(
                    new_cpt,
                    split,
                    arrangement,
                    rate,
                    fees,
                    self._reference.year_file_name("fee_schedule", year),
                )
                if charge_problems or unit is None:
                    raise ValidationError("; ".join(charge_problems) or f"no charge for CPT {new_cpt}")
                line["fee_schedule_version"] = fees.version if fees is not None else None
                line["contract_rate_percent"] = percent
            else:
                unit = charge.charge_cents // max(charge.units, 1)
            line["charge_cents"] = unit * count
        if place_of_service is not None:
            line["place_of_service"] = validate_pos(place_of_service)
        if diagnoses is not None:
            if len(diagnoses) > MAX_DIAGNOSES:
                raise ValidationError(f"{len(diagnoses)} diagnoses: an 837P claim carries at most {MAX_DIAGNOSES}")
            codes, problems = diagnosis_codes(diagnoses, "coder")
            if problems or not codes:
                raise ValidationError("; ".join(problems) or "give at least one ICD-10-CM code")
            line["diagnosis_codes"] = list(codes)
            line["diagnosis_pointers"] = list(diagnosis_pointers(len(codes)))
            line["diagnosis_source"] = None  # the coder's, not the report's or the order's
        if referring_npi is not None:
            line["referring_npi"] = validate_npi(referring_npi)
        if arrangement is not BillingArrangement.NONE:
            missing = [
                what
                for what, value in (
                    ("a place of service (--pos)", line.get("place_of_service", charge.place_of_service)),
                    ("an ICD-10-CM diagnosis (--icd10)", line.get("diagnosis_codes", charge.diagnosis_codes)),
                    (
                        "a referring provider NPI (--referring-npi)",
                        line.get("referring_npi", charge.referring_npi)
                        if arrangement is BillingArrangement.PAYER
                        else True,
                    ),
                )
                if not value
            ]
            if missing:
                raise ValidationError(
                    f"the replacement of ledger record {charge.id} would still lack {', '.join(missing)}"
                )
        return line

    def void(self, entry_id: int, reason: CorrectionReason, actor: str, note: str | None = None) -> Correction:
        """Void one charge (its reversal, claim frequency ``8``), audited as ``ledger.void``.

        Raises
        ------
        NotFoundError
            No ledger record ``entry_id``.
        ValidationError
            The record is a reversal.
        ConflictError
            The charge is already reversed.
        """
        ctx = self._context(actor)
        with self._sessions.begin() as session:
            charge = self._charge(session, entry_id)
            reversal = reverse_charge(session, charge, reason, ctx.at, note)
            study = session.get(Study, charge.study_id)
            if study is not None:
                study.needs_review = True
            self._audit_void(session, ctx, charge.study_instance_uid, reason, [charge], [reversal], note)
            return Correction(charge.study_instance_uid, reason, (reversal.id,), ())

    def void_study(
        self, study_instance_uid: str, reason: CorrectionReason, actor: str, note: str | None = None
    ) -> Correction:
        """Void every open charge of a study, audited as ``ledger.void``.

        ``read_reassigned`` also withdraws the completed assignment and routes the study again,
        avoiding the reader who was billed (the next final report, by the reader it goes to,
        bills the read); the other reasons flag the study for review.

        Raises
        ------
        NotFoundError
            Unknown study.
        ValidationError
            ``reason`` is a coding reason, or the study has no open charge.
        """
        if reason not in STUDY_VOID_REASONS:
            raise ValidationError(
                f"reason {reason.value} is not a void; use one of {', '.join(item.value for item in STUDY_VOID_REASONS)}"
            )
        ctx = self._context(actor)
        with self._sessions.begin() as session:
            study = locked_study(session, study_instance_uid)
            charges = open_charges(session, study.id)
            if not charges:
                raise ValidationError(f"study {study_instance_uid} has no charge to void")
            reversals = [reverse_charge(session, charge, reason, ctx.at, note) for charge in charges]
            study.needs_review = True
            rerouted_to = None
            if reason is CorrectionReason.READ_REASSIGNED:
                rerouted_to = self._reopen(session, study, f"read reassigned by {actor}")
            self._audit_void(session, ctx, study_instance_uid, reason, charges, reversals, note)
            return Correction(
                study_instance_uid, reason, tuple(item.id for item in reversals), (), rerouted_to=rerouted_to
            )

    def _reopen(self, session: Session, study: Study, why: str) -> str | None:
        """Withdraw the study's completed assignment and route it again away from that reader."""
        assignment = session.scalar(
            select(Assignment).where(Assignment.study_id == study.id, Assignment.superseded_at.is_(None))
        )
        avoid: dict[int, str] = {}
        if assignment is not None:
            self._routing.withdraw(session, study, assignment, why)
            avoid[assignment.radiologist_id] = "the read was reassigned away from this reader"
        study.status = StudyStatus.HELD
        result = self._routing.decide(session, study, trigger="ledger.void read_reassigned", avoid=avoid)
        if study.status != StudyStatus.ASSIGNED:
            return None
        current = session.scalar(
            select(Radiologist.npi)
            .join(Assignment, Assignment.radiologist_id == Radiologist.id)
            .where(Assignment.study_id == study.id, Assignment.superseded_at.is_(None))
        )
        LOG.info("read of study %s reassigned: %s", study.study_instance_uid, result.status)
        return current

    @staticmethod
    def _charge(session: Session, entry_id: int) -> ProfessionalEntry:
        charge = session.scalars(
            for_update(select(ProfessionalEntry).where(ProfessionalEntry.id == entry_id), session)
        ).one_or_none()
        if charge is None:
            raise NotFoundError(f"no professional ledger record {entry_id}")
        if charge.kind != ProfessionalEntryKind.CHARGE:
            raise ValidationError(f"ledger record {entry_id} is a reversal; only a charge can be corrected or voided")
        check_not_reversed(session, charge)  # before any other check: nothing else matters then
        return charge

    @staticmethod
    def _audit_void(
        session: Session,
        ctx: ChangeContext,
        study_instance_uid: str,
        reason: CorrectionReason,
        charges: Sequence[ProfessionalEntry],
        reversals: Sequence[ProfessionalEntry],
        note: str | None,
    ) -> None:
        record_audit(
            session,
            ctx,
            "ledger.void",
            "study",
            study_instance_uid,
            {"charge_ids": [charge.id for charge in charges]},
            {"reason": reason.value, "reversal_ids": [reversal.id for reversal in reversals], "note": note},
        )
        LOG.info("%d charge(s) of study %s voided (%s)", len(reversals), study_instance_uid, reason.value)
