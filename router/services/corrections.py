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

from router.db.models import Assignment, ProfessionalEntry, Radiologist, Study
from router.db.queries import for_update, study_by_uid
from router.domain.cpt_map import validate_cpt_code
from router.domain.enums import ClaimFrequency, CorrectionReason, ProfessionalEntryKind, StudyStatus
from router.errors import NotFoundError, ValidationError
from router.services.audit_log import ChangeContext, jsonable, record_audit
from router.services.ledgers import LEDGER_COPIED_COLUMNS, open_charges, reverse_charge
from router.services.reference import ReferenceData
from router.services.routing import RoutingService
from router.timeutil import Clock, local_date, utcnow

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

#: Modifiers a coder may put on a radiology line: 26 professional component; LT/RT/50 laterality
#: and bilateral; 59 and the X{EPSU} subsets (distinct procedural service); 76/77 repeat
#: procedure by the same / another physician; 52 reduced service (CMS Claims Processing
#: Manual ch. 12 section 40.8 and ch. 13; NCCI policy manual ch. 1 section E for 59/X{EPSU}).
CODER_MODIFIERS = frozenset({"26", "LT", "RT", "50", "59", "XE", "XP", "XS", "XU", "76", "77", "52"})


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
        return ChangeContext(os_user=actor, at=at, today=local_date(at, self._routing.policy.timezone))

    def correct(
        self,
        entry_id: int,
        reason: CorrectionReason,
        actor: str,
        *,
        cpt: str | None = None,
        modifier: str | None = None,
        clear_modifier: bool = False,
        units: int | None = None,
        note: str | None = None,
    ) -> Correction:
        """Replace charge ``entry_id``: its reversal plus a new charge with the changes given.

        ``reason`` is ``corrected_coding`` (at least one change) or ``coder_approved`` (a line
        held for coder review, cleared as it is or with changes). A new ``cpt`` takes modifier
        26 when the CPT map gives the code a professional/technical split, unless ``modifier``
        or ``clear_modifier`` says otherwise. The replacement is claim frequency ``7`` (replaces
        a charge that was billable) or ``1`` (the replaced line was held for review, so never
        on a claim); it is never in coder review. One audit row (``ledger.correct``) commits with it.

        Raises
        ------
        NotFoundError
            No ledger record ``entry_id``.
        ValidationError
            Wrong reason, nothing to change, a malformed or deleted CPT code, an unknown
            modifier, units outside 1-99, or a record that is not a charge.
        ConflictError
            The charge is already reversed.
        """
        if reason not in REPLACEMENT_REASONS:
            raise ValidationError(
                f"reason {reason.value} voids a read: use `router ledger void`; a replacement is "
                + " or ".join(item.value for item in REPLACEMENT_REASONS)
            )
        new_cpt = validate_cpt_code(cpt) if cpt is not None else None
        if modifier is not None:
            modifier = modifier.strip().upper()
            if modifier not in CODER_MODIFIERS:
                raise ValidationError(f"modifier {modifier!r} is not one of {', '.join(sorted(CODER_MODIFIERS))}")
        if units is not None and not 1 <= units <= 99:
            raise ValidationError(f"units must be between 1 and 99, got {units}")
        ctx = self._context(actor)
        with self._sessions.begin() as session:
            charge = self._charge(session, entry_id)
            if (
                reason is CorrectionReason.CORRECTED_CODING
                and new_cpt is None
                and modifier is None
                and not (clear_modifier or units is not None)
            ):
                raise ValidationError("nothing to correct: give --cpt, --modifier, --no-modifier or --units")
            if reason is CorrectionReason.CODER_APPROVED and not charge.coder_review:
                raise ValidationError(f"ledger record {entry_id} is not held for coder review")
            changes: dict[str, Any] = {}
            if new_cpt is not None and new_cpt != charge.cpt_code:
                changes["cpt_code"] = new_cpt
                split = self._reference.cpt_map().has_professional_component(new_cpt)
                if modifier is None and not clear_modifier:
                    changes["modifier"] = "26" if split else None
            if modifier is not None:
                changes["modifier"] = modifier
            elif clear_modifier:
                changes["modifier"] = None
            if units is not None:
                changes["units"] = units
            changes = {key: value for key, value in changes.items() if getattr(charge, key) != value}
            if reason is CorrectionReason.CORRECTED_CODING and not changes:
                raise ValidationError(f"ledger record {entry_id} already has those values; nothing to correct")
            if charge.cpt_code is None and "cpt_code" not in changes:
                raise ValidationError(f"ledger record {entry_id} has no CPT code; give one with --cpt")
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
            for key, value in changes.items():
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
            study = session.scalars(
                for_update(select(Study).where(Study.study_instance_uid == study_instance_uid), session)
            ).one_or_none()
            if study is None:
                study_by_uid(session, study_instance_uid)  # raises NotFoundError
                raise AssertionError  # pragma: no cover
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
            raise ValidationError(f"ledger record {entry_id} is a reversal; only a charge can be corrected")
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
