"""Routing: locate a stable study, judge every radiologist, assign or hold, and record why.

A study is routed when no instance has arrived for ``stable_seconds`` (DESIGN.md decision 3).
Claiming it is a ``SELECT ... FOR UPDATE SKIP LOCKED`` of the still-due row (PostgreSQL; SQLite
has one writer at a time) in the same transaction that writes the outcome, so a study is routed
once even with several timers or nodes, a study another node holds (even a stalled one) is
passed over rather than waited for, and a crash mid-way leaves it ``receiving`` to be routed
after restart. Every decision holds the roster version row ``FOR SHARE``
(:func:`router.db.queries.share_roster`), so no assignment commits on a roster state that a
concurrent roster change has superseded. Routing trouble never fails a transfer: the study is
held with a reason an admin can act on.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from router.db.models import (
    Assignment,
    Facility,
    Instance,
    Radiologist,
    RoutingDecision,
    Series,
    Study,
)
from router.db.queries import (
    facility_by_ae_title,
    facility_by_institution_name,
    for_update,
    locked_study,
    share_roster,
    skip_locked,
)
from router.domain.compact_paths import fastest_paths
from router.domain.eligibility_facts import EligibilityRules, ReaderFacts
from router.domain.enums import ExamStateSource, HoldReason, Priority, StudyStatus
from router.domain.licensure import Verdict, evaluate_reader
from router.domain.location import ExamLocation, LocationEvidence, resolve_exam_state
from router.domain.priority import RANK, study_priority
from router.domain.state_zones import state_local_date
from router.domain.subspecialty import SubspecialtyRule
from router.errors import DataFileError, IneligibleError, ValidationError
from router.keyring import KeyRing
from router.services.assignment_gates import load_gates
from router.services.audit_log import ChangeContext, record_audit
from router.services.candidates import judge
from router.services.facts import load_readers, study_facts, unlicensed_npis
from router.services.forwarding_queue import cancel_forwarding, enqueue_forwarding
from router.services.reference import ReferenceData
from router.services.workload import study_work_rvu_centi
from router.timeutil import Clock, local_date, utcnow

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoutingPolicy:
    """Routing settings (from ``[routing]``, ``[imlc]``, ``[licensure]``, ``[billing]``)."""

    stable_seconds: float = 30.0
    timezone: str = "UTC"
    use_patient_address: bool = False
    stat_stable_seconds: float = 5.0
    require_shift: bool = False
    max_open_reads: int = 0  # per-reader cap on open reads; 0: no cap
    default_work_rvu_centi: int = 100  # workload of a read whose CPT has no work RVU
    # turnaround clock per priority, seconds from the first instance received (router.services.escalation)
    turnaround_seconds: tuple[tuple[Priority, float], ...] = (
        (Priority.STAT, 3600.0),
        (Priority.ASAP, 4 * 3600.0),
        (Priority.ROUTINE, 24 * 3600.0),
    )
    require_reading_state_license: bool = False
    telehealth_registration_states: frozenset[str] = frozenset()
    suspension_hold_days: int = 90
    forwarding_enabled: bool = True
    keyring: KeyRing | None = None  # decrypts the patient's location text (encryption at rest)

    def plain(self, value: str | None, column: str) -> str | None:
        """A study's ``column`` value as text: decrypted when it was stored encrypted.

        Raises
        ------
        KeyRingError
            If it was encrypted with a key not in the key ring, or was altered.
        """
        return value if self.keyring is None else self.keyring.decrypt_value(value, column)


@dataclass(frozen=True)
class RouteResult:
    """Outcome of routing one study."""

    study_instance_uid: str
    status: StudyStatus
    exam_state: str | None
    exam_state_source: ExamStateSource | None
    assigned_npi: str | None = None
    hold_reason: HoldReason | None = None
    withdrawn_npi: str | None = None  # a re-check took the study from this reader


class RoutingService:
    """Routes studies. Each public method runs its own transaction(s)."""

    def __init__(
        self, sessions: sessionmaker[Session], reference: ReferenceData, policy: RoutingPolicy, clock: Clock = utcnow
    ) -> None:
        self._sessions = sessions
        self._reference = reference
        self.policy = policy
        self._clock = clock

    # ------------------------------------------------------------------ rules
    def now(self) -> dt.datetime:
        """The router's current time (UTC), from the injected clock."""
        return self._clock()

    def rules(self) -> EligibilityRules:
        """The eligibility rules in force (IMLC membership re-read when its file changes)."""
        return EligibilityRules(
            imlc=self._reference.imlc(),
            telehealth_registration_states=self.policy.telehealth_registration_states,
            suspension_hold_days=self.policy.suspension_hold_days,
            require_reading_state_license=self.policy.require_reading_state_license,
        )

    def read_day(self, facility: Facility | None, moment: dt.datetime, state: str | None = None) -> dt.date:
        """The calendar day of ``moment`` where the exam happened.

        A registered facility's time zone (``routing.timezone`` when it has none registered);
        with no registered facility and an exam ``state``, the state's zone that is cautious for
        license expiry (router.domain.state_zones); else ``routing.timezone``.
        """
        if facility is not None:
            return local_date(moment, facility.timezone or self.policy.timezone)
        if state:
            return state_local_date(state, moment, self.policy.timezone)[0]
        return local_date(moment, self.policy.timezone)

    # ------------------------------------------------------------------ the timer
    def route_due(self) -> list[RouteResult]:
        """Route every study quiet for ``stable_seconds``; account for late instances.

        One failing study is logged and skipped; it never stops the others.

        Raises
        ------
        DataFileError, sqlalchemy.exc.DBAPIError
            When the reference data or the database fail: every study would fail the same way,
            so the pass stops (the studies stay receiving and are retried).
        """
        now = self._clock()
        cutoff = now - dt.timedelta(seconds=self.policy.stable_seconds)
        stat_cutoff = now - dt.timedelta(seconds=min(self.policy.stat_stable_seconds, self.policy.stable_seconds))
        with self._sessions() as session:
            due = _due_by_priority(session, cutoff, stat_cutoff)
            late = list(
                session.scalars(
                    select(Instance.study_id)
                    .join(Study, Study.id == Instance.study_id)
                    .where(
                        Instance.accounted_at.is_(None),
                        Study.status != StudyStatus.RECEIVING,
                        Study.last_received_at <= cutoff,
                    )
                    .distinct()
                )
            )
        results: list[RouteResult] = []
        for study_id, study_cutoff in due:
            try:
                result = self._route_claimed(study_id, study_cutoff)
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise  # the database is gone: the pass fails and the timer logs the condition once
                # a lock or statement timeout on this study: the others still go; it is retried
                LOG.warning("routing study id %s deferred: %s", study_id, type(exc.orig).__name__)
                continue
            except DataFileError:
                raise  # not this study's fault: the pass fails and the timer logs the condition once
            except Exception:  # one bad study must not stop the loop (set aside, logged)
                LOG.exception("routing study id %s failed; it stays receiving and is retried", study_id)
                continue
            if result is not None:
                results.append(result)
        for study_id in late:
            try:
                result = self._late_instances(study_id, cutoff)
            except DBAPIError as exc:
                if exc.connection_invalidated:
                    raise
                LOG.warning("late instances of study id %s deferred: %s", study_id, type(exc.orig).__name__)
                continue
            except DataFileError:
                raise
            except Exception:
                LOG.exception("accounting late instances of study id %s failed; retried next tick", study_id)
                continue
            if result is not None:
                results.append(result)
        return results

    def _route_claimed(self, study_id: int, cutoff: dt.datetime) -> RouteResult | None:
        with self._sessions.begin() as session:
            study = session.scalar(
                skip_locked(
                    select(Study).where(
                        Study.id == study_id, Study.status == StudyStatus.RECEIVING, Study.last_received_at <= cutoff
                    )
                )
            )
            if study is None:
                return None  # another timer or node routed it or holds it, or an instance just arrived
            study.status = StudyStatus.HELD
            return self._decide(session, study, trigger="stable")

    def _late_instances(self, study_id: int, cutoff: dt.datetime) -> RouteResult | None:
        """Instances that arrived after routing: forward them, re-route if held (storage accrues monthly)."""
        with self._sessions.begin() as session:
            study = session.scalar(skip_locked(select(Study).where(Study.id == study_id)))
            if study is None or study.status == StudyStatus.RECEIVING or study.last_received_at > cutoff:
                return None  # held by another node (it does the accounting), or receiving again
            now = self._clock()
            if study.status == StudyStatus.HELD:
                return self._decide(session, study, trigger="late_instances")
            _mark_accounted(session, study, now)
            study.modalities = study_modalities(session, study.id)
            current = _current_assignment(session, study.id)
            if current is not None and self.policy.forwarding_enabled:
                enqueue_forwarding(session, study, current.radiologist, now)
            LOG.info("late instances of study %s joined its assignment", study.study_instance_uid)
            return _result(study, current.radiologist.npi if current else None)

    # ------------------------------------------------------------------ deciding
    def _locate(self, session: Session, study: Study) -> tuple[Facility | None, ExamLocation | None]:
        facility = facility_by_ae_title(session, study.first_calling_ae_title or "") or facility_by_institution_name(
            session, study.institution_name
        )
        study.facility_id = facility.id if facility is not None else None
        if study.exam_state_source == ExamStateSource.MANUAL and study.exam_state:
            return facility, None
        evidence = LocationEvidence(
            facility_state=facility.state if facility is not None else None,
            facility_label=_facility_label(facility),
            institution_address=study.institution_address,
            region_of_residence=self.policy.plain(study.region_of_residence, "region_of_residence"),
            patient_address=self.policy.plain(study.patient_address, "patient_address"),
            country_of_residence=self.policy.plain(study.country_of_residence, "country_of_residence"),
        )
        location = resolve_exam_state(evidence, use_patient_address=self.policy.use_patient_address)
        study.exam_state = location.state
        study.exam_state_source = location.source
        study.exam_state_detail = location.detail
        study.location_conflicts = location.conflicts_as_json() or None
        return facility, location

    def _decide(
        self,
        session: Session,
        study: Study,
        trigger: str,
        note: str | None = None,
        avoid: dict[int, str] | None = None,
    ) -> RouteResult:
        """Locate, judge, assign or hold; writes the decision and the outbox.

        ``avoid`` passes over the readers it names (radiologist id -> reason), e.g. the reader
        whose turnaround was breached.
        """
        share_roster(session)  # before the roster is read: see the module docstring
        now = self._clock()
        study.modalities = study_modalities(session, study.id)
        facility, _location = self._locate(session, study)
        day = self.read_day(facility, now, study.exam_state)
        study.routed_at = now
        _mark_accounted(session, study, now)
        if not study.exam_state:
            return self._hold(
                session,
                study,
                HoldReason.NO_EXAM_STATE,
                study.exam_state_detail or "no exam state",
                trigger,
                day,
                [],
                None,
                note,
            )
        conflict = facility_address_conflict(study, _location)
        if conflict is not None:
            return self._hold(
                session, study, HoldReason.FACILITY_ADDRESS_CONFLICT, conflict, trigger, day, [], None, note
            )
        state = study.exam_state
        facts = study_facts(study, state, facility)
        rules = self.rules()
        gates = load_gates(
            session, facility, now, self.policy.require_shift, avoid, self.policy.max_open_reads, self.need_for(study)
        )
        judgement = judge(session, facts, day, rules, gates)
        chosen = judgement.chosen
        unlicensed = unlicensed_npis(session, state)
        candidates = judgement.records
        if chosen is None and judgement.off_shift:
            detail = (
                f"{len(judgement.off_shift)} reader(s) may read in {state} but none is on shift (or under the "
                f"open-read cap) at {now.isoformat(timespec='minutes')}; re-routed by the periodic recheck"
            )
            return self._hold(
                session, study, HoldReason.NO_READER_ON_SHIFT, detail, trigger, day, candidates, None, note, unlicensed
            )
        if chosen is None:
            everyone = load_readers(session)
            paths = [path.to_json() for path in fastest_paths(everyone, state, day, rules, study=facts)]
            detail = f"nobody is eligible to read in {state} on {day.isoformat()}"
            return self._hold(
                session,
                study,
                HoldReason.NO_ELIGIBLE_RADIOLOGIST,
                detail,
                trigger,
                day,
                candidates,
                paths,
                note,
                unlicensed,
            )
        decision = RoutingDecision(
            study_id=study.id,
            decided_at=now,
            read_date=day,
            trigger=trigger,
            exam_state=state,
            exam_state_source=study.exam_state_source,
            outcome=StudyStatus.ASSIGNED,
            chosen_npi=chosen.npi,
            candidates=candidates,
            unlicensed_npis=unlicensed,
            not_evaluated_npis=judgement.not_evaluated or None,
            note=note,
        )
        session.add(decision)
        session.flush()
        self._assign(session, study, chosen, decision, now, assigned_by="router")
        return _result(study, chosen.npi)

    def _assign(
        self,
        session: Session,
        study: Study,
        verdict: Verdict,
        decision: RoutingDecision,
        now: dt.datetime,
        assigned_by: str,
    ) -> Assignment:
        assert verdict.eligible and verdict.license is not None, "never assign to an ineligible reader"
        radiologist = session.get(Radiologist, verdict.radiologist_id)
        assert radiologist is not None
        assignment = Assignment(
            study_id=study.id,
            radiologist_id=radiologist.id,
            decision_id=decision.id,
            license_id=verdict.license.license_id,
            license_state=verdict.license.state,
            license_number=verdict.license.number,
            assigned_at=now,
            assigned_by=assigned_by,
            work_rvu_centi=study_work_rvu_centi(study, self._reference, self.policy.default_work_rvu_centi),
        )
        session.add(assignment)
        study.status = StudyStatus.ASSIGNED
        study.hold_reason = None
        study.hold_detail = None
        session.flush()
        if self.policy.forwarding_enabled:
            enqueue_forwarding(session, study, radiologist, now)
        LOG.info(
            "study %s (accession %s) assigned to NPI %s on license %s",
            study.study_instance_uid,
            study.accession_number or "-",
            radiologist.npi,
            verdict.license.tag,
        )
        return assignment

    def _hold(
        self,
        session: Session,
        study: Study,
        reason: HoldReason,
        detail: str,
        trigger: str,
        day: dt.date,
        candidates: list[dict[str, object]],
        paths: list[dict[str, object]] | None,
        note: str | None,
        unlicensed: list[str] | None = None,
    ) -> RouteResult:
        now = self._clock()
        last = session.scalar(
            select(RoutingDecision)
            .where(RoutingDecision.study_id == study.id)
            .order_by(RoutingDecision.id.desc())
            .limit(1)
        )
        unchanged = (
            study.status == StudyStatus.HELD
            and study.hold_reason == reason
            and last is not None
            and last.outcome == StudyStatus.HELD
            and last.hold_reason == reason
            and last.exam_state == study.exam_state
            and last.candidates == candidates
            and trigger not in ("stable", "late_instances")
        )
        if unchanged:
            # Re-evaluated after a roster change with the same result: keep the record lean.
            study.hold_detail = detail
            return _result(study, None)
        session.add(
            RoutingDecision(
                study_id=study.id,
                decided_at=now,
                read_date=day,
                trigger=trigger,
                exam_state=study.exam_state,
                exam_state_source=study.exam_state_source,
                outcome=StudyStatus.HELD,
                hold_reason=reason,
                candidates=candidates,
                unlicensed_npis=unlicensed,
                fastest_paths=paths,
                note=note,
            )
        )
        study.status = StudyStatus.HELD
        study.hold_reason = reason
        study.hold_detail = detail
        LOG.info("study %s held: %s", study.study_instance_uid, reason.value)
        return _result(study, None)

    def need_for(self, study: Study) -> SubspecialtyRule | None:
        """The subspecialty rule the study falls under (``[routing] subspecialty_rules``), or ``None``."""
        modalities = [item for item in (study.modalities or "").split("\\") if item]
        return self._reference.subspecialty_rules().rule_for(modalities, study.body_part, study.study_description)

    @property
    def sessions(self) -> sessionmaker[Session]:
        """The session factory (for services that decide inside their own transactions)."""
        return self._sessions

    def decide(
        self, session: Session, study: Study, trigger: str, note: str | None = None, avoid: dict[int, str] | None = None
    ) -> RouteResult:
        """Route ``study`` again inside the caller's transaction (see ``_decide``)."""
        return self._decide(session, study, trigger=trigger, note=note, avoid=avoid)

    def withdraw(self, session: Session, study: Study, assignment: Assignment, reason: str) -> None:
        """Withdraw an open assignment with ``reason`` inside the caller's transaction."""
        self._supersede(session, study, assignment, reason)

    # ------------------------------------------------------------------ admin actions
    def reevaluate(
        self, trigger: str, radiologist_id: int | None = None, *, skip_locked: bool = False
    ) -> list[RouteResult]:
        """After a roster change: re-check open assignments and re-route held studies.

        An assigned reader who is no longer eligible loses the study (the assignment is
        superseded with the reason, the study flagged for review) and it is reassigned or held.
        ``radiologist_id`` limits the open-assignment check to one reader's studies.
        ``skip_locked`` (the periodic recheck) passes over studies another node holds instead
        of waiting for them; a roster change waits, so none of its studies is missed.
        Re-evaluations running at once (several admins, nodes) each lock the study and read its
        current assignment under that lock, so one never supersedes what another already did.
        """
        results: list[RouteResult] = []
        with self._sessions() as session:
            query = (
                select(Assignment.id)
                .join(Study, Study.id == Assignment.study_id)
                .where(
                    Assignment.superseded_at.is_(None),
                    Assignment.completed_at.is_(None),
                    Study.status == StudyStatus.ASSIGNED,
                )
            )
            if radiologist_id is not None:
                query = query.where(Assignment.radiologist_id == radiologist_id)
            open_ids = list(session.scalars(query.order_by(Assignment.id)))
            held_ids = list(
                session.scalars(select(Study.id).where(Study.status == StudyStatus.HELD).order_by(Study.id))
            )
        for assignment_id in open_ids:
            result = self._recheck_assignment(assignment_id, trigger, skip_locked)
            if result is not None:
                results.append(result)
        for study_id in held_ids:
            with self._sessions.begin() as session:
                study = session.scalar(
                    self._lock_study(select(Study).where(Study.id == study_id), session, skip_locked)
                )
                if study is None or study.status != StudyStatus.HELD:
                    continue
                results.append(self._decide(session, study, trigger=trigger))
        return results

    @staticmethod
    def _lock_study(statement: Select[Any], session: Session, skip: bool) -> Select[Any]:
        return skip_locked(statement) if skip else for_update(statement, session)

    def _recheck_assignment(self, assignment_id: int, trigger: str, skip: bool = False) -> RouteResult | None:
        with self._sessions.begin() as session:
            study_id = session.scalar(select(Assignment.study_id).where(Assignment.id == assignment_id))
            if study_id is None:
                return None
            # Lock the study first, then read the assignment: a concurrent re-evaluation may have
            # superseded it (and assigned anew) while this one waited for the lock.
            study = session.scalar(self._lock_study(select(Study).where(Study.id == study_id), session, skip))
            if study is None or study.status != StudyStatus.ASSIGNED:
                return None
            share_roster(session)
            assignment = session.get(Assignment, assignment_id, populate_existing=True)
            if assignment is None or assignment.superseded_at is not None or assignment.completed_at is not None:
                return None
            # A registered facility's state may have been corrected: locate again. A study whose
            # facility registration was removed keeps the state it was routed with.
            if study.facility_id is not None and study.exam_state_source == ExamStateSource.FACILITY:
                facility, _ = self._locate(session, study)
            else:
                facility = session.get(Facility, study.facility_id) if study.facility_id else None
            previous_npi = session.scalar(select(Radiologist.npi).where(Radiologist.id == assignment.radiologist_id))
            if not study.exam_state:
                self._supersede(session, study, assignment, f"{trigger}: the exam state can no longer be determined")
                result = self._decide(session, study, trigger=trigger, note="assignment withdrawn: no exam state")
                return dataclasses.replace(result, withdrawn_npi=previous_npi)
            verdict = self._verdict_for(session, study, facility, assignment.radiologist_id, self._clock())
            reasons = list(verdict.reasons)
            if verdict.eligible:
                gates = load_gates(session, facility, self._clock(), self.policy.require_shift)
                excluded = gates.exclusion_reason(assignment.radiologist_id)
                if excluded is None:
                    return None
                reasons = [excluded]
            reason = "; ".join(reasons)
            self._supersede(session, study, assignment, f"{trigger}: NPI {verdict.npi} no longer eligible: {reason}")
            result = self._decide(
                session, study, trigger=trigger, note=f"reassigned: NPI {verdict.npi} no longer eligible ({reason})"
            )
            return dataclasses.replace(result, withdrawn_npi=verdict.npi)

    def _audit(
        self,
        session: Session,
        by_user: str,
        at: dt.datetime,
        action: str,
        study: Study,
        old: dict[str, object],
        new: dict[str, object],
    ) -> None:
        """One append-only audit row for a manual study action (``router audit list --entity study``)."""
        context = ChangeContext.of(by_user, at, self.policy.timezone)
        record_audit(session, context, action, "study", study.study_instance_uid, old, new)

    def _supersede(self, session: Session, study: Study, assignment: Assignment, reason: str) -> None:
        assignment.superseded_at = self._clock()
        assignment.superseded_reason = reason
        study.needs_review = True
        cancel_forwarding(
            session, study.id, keep_radiologist_id=None, reason="assignment withdrawn", now=assignment.superseded_at
        )
        session.flush()
        LOG.warning(
            "assignment of study %s to radiologist id %s withdrawn", study.study_instance_uid, assignment.radiologist_id
        )

    def _verdict_for(
        self, session: Session, study: Study, facility: Facility | None, radiologist_id: int, moment: dt.datetime
    ) -> Verdict:
        readers = load_readers(session, [radiologist_id])
        if not readers:
            raise ValidationError(f"radiologist id {radiologist_id} not found")
        study.modalities = study_modalities(session, study.id)
        assert study.exam_state
        return evaluate_reader(
            readers[0],
            study_facts(study, study.exam_state, facility),
            self.read_day(facility, moment, study.exam_state),
            self.rules(),
        )

    def assign_manually(self, study_instance_uid: str, npi: str, by_user: str) -> RouteResult:
        """Give a study to a named radiologist, if eligible today.

        Raises
        ------
        NotFoundError
            Unknown study or NPI.
        IneligibleError
            The radiologist may not read it (the message lists every reason), or the study has
            no exam state yet, or its read is already completed.
        """
        with self._sessions.begin() as session:
            study = locked_study(session, study_instance_uid)
            if study.status == StudyStatus.COMPLETED:
                raise IneligibleError(f"study {study_instance_uid} is already completed")
            share_roster(session)
            facility, _ = self._locate(session, study)
            if not study.exam_state:
                raise IneligibleError(
                    f"study {study_instance_uid} has no exam state; set it first with `router studies set-state`"
                )
            radiologist = session.scalar(select(Radiologist).where(Radiologist.npi == npi))
            if radiologist is None:
                from router.db.queries import radiologist_by_npi

                radiologist_by_npi(session, npi)
            assert radiologist is not None
            now = self._clock()
            verdict = self._verdict_for(session, study, facility, radiologist.id, now)
            if not verdict.eligible:
                raise IneligibleError(
                    f"NPI {npi} may not read study {study_instance_uid}: {'; '.join(verdict.reasons)}"
                )
            current = _current_assignment(session, study.id)
            previous_npi = None
            if current is not None:
                if current.radiologist_id == radiologist.id:
                    return _result(study, npi)
                previous_npi = session.scalar(select(Radiologist.npi).where(Radiologist.id == current.radiologist_id))
                self._supersede(session, study, current, f"manually reassigned by {by_user}")
                study.needs_review = False
            self._audit(
                session,
                by_user,
                now,
                "study.assign",
                study,
                {"status": study.status, "assigned_npi": previous_npi, "hold_reason": study.hold_reason},
                {"status": StudyStatus.ASSIGNED, "assigned_npi": npi, "exam_state": study.exam_state},
            )
            readers = load_readers(session, [radiologist.id])
            decision = RoutingDecision(
                study_id=study.id,
                decided_at=now,
                read_date=self.read_day(facility, now, study.exam_state),
                trigger="manual_assign",
                exam_state=study.exam_state,
                exam_state_source=study.exam_state_source,
                outcome=StudyStatus.ASSIGNED,
                chosen_npi=npi,
                candidates=[_candidate_json(verdict, readers)],
                note=f"assigned by {by_user}",
            )
            session.add(decision)
            session.flush()
            study.routed_at = study.routed_at or now
            _mark_accounted(session, study, now)
            self._assign(session, study, verdict, decision, now, assigned_by=by_user)
            return _result(study, npi)

    def set_state(self, study_instance_uid: str, state: str, by_user: str) -> RouteResult:
        """Set a study's exam state by hand (source ``manual``) and route it again.

        An open assignment whose reader is not eligible in the new state is withdrawn.

        Raises
        ------
        NotFoundError
            Unknown study.
        IneligibleError
            The read is already completed (its billing record names the old state).
        """
        with self._sessions.begin() as session:
            study = locked_study(session, study_instance_uid)
            if study.status == StudyStatus.COMPLETED:
                raise IneligibleError(
                    f"study {study_instance_uid} is already completed; its read was billed in {study.exam_state}"
                )
            self._audit(
                session,
                by_user,
                self._clock(),
                "study.set_state",
                study,
                {
                    "exam_state": study.exam_state,
                    "exam_state_source": study.exam_state_source,
                    "exam_state_detail": study.exam_state_detail,
                },
                {"exam_state": state, "exam_state_source": ExamStateSource.MANUAL},
            )
            study.exam_state = state
            study.exam_state_source = ExamStateSource.MANUAL
            study.exam_state_detail = f"set by {by_user}"
            if study.status == StudyStatus.RECEIVING:
                return _result(study, None)  # the timer routes it once stable
            share_roster(session)
            current = _current_assignment(session, study.id)
            if current is not None:
                facility, _ = self._locate(session, study)
                verdict = self._verdict_for(session, study, facility, current.radiologist_id, self._clock())
                if verdict.eligible:
                    return _result(study, verdict.npi)
                self._supersede(
                    session, study, current, f"exam state set to {state} by {by_user}: {'; '.join(verdict.reasons)}"
                )
            return self._decide(session, study, trigger="manual_state", note=f"exam state set to {state} by {by_user}")


def study_modalities(session: Session, study_id: int) -> str | None:
    """Distinct modalities of a study's series, backslash-joined in arrival order (at most 64 chars)."""
    seen: list[str] = []
    for value in session.scalars(select(Series.modality).where(Series.study_id == study_id).order_by(Series.id)):
        for item in (value or "").split("\\"):
            item = item.strip().upper()
            if item and item not in seen:
                seen.append(item)
    return "\\".join(seen)[:64] or None


def _due_by_priority(session: Session, cutoff: dt.datetime, stat_cutoff: dt.datetime) -> list[tuple[int, dt.datetime]]:
    """Receiving studies due for routing with the cutoff each is claimed with, most urgent first.

    A STAT study (router.domain.priority) is due once quiet for ``stat_stable_seconds``; the
    others after ``stable_seconds``. Within a priority, the longest quiet goes first.
    """
    rows = session.execute(
        select(Study.id, Study.priority, Study.last_received_at).where(
            Study.status == StudyStatus.RECEIVING, Study.last_received_at <= stat_cutoff
        )
    ).all()
    due = []
    for study_id, priority_value, last in rows:
        priority = study_priority(priority_value)
        limit = stat_cutoff if priority is Priority.STAT else cutoff
        if last <= limit:
            due.append((RANK[priority], last, study_id, limit))
    due.sort()
    return [(study_id, limit) for _, _, study_id, limit in due]


def facility_address_conflict(study: Study, location: ExamLocation | None) -> str | None:
    """Why a registered facility's state cannot be trusted for this study, or ``None``.

    When the facility gave the exam state but InstitutionAddress (0008,0081) names another
    state, the sender may be a multi-state PACS gateway: the study is held for an admin, who
    resolves it with ``router studies set-state`` (a manual state is never second-guessed).
    """
    if location is None or location.source is not ExamStateSource.FACILITY:
        return None
    for finding in location.findings:
        if (
            finding.source is ExamStateSource.INSTITUTION_ADDRESS
            and finding.state is not None
            and finding.state != location.state
        ):
            return (
                f"facility registered in {location.state} but InstitutionAddress names {finding.state} "
                "(a multi-state gateway?); set the exam state with `router studies set-state`"
            )
    return None


def _current_assignment(session: Session, study_id: int) -> Assignment | None:
    return session.scalar(select(Assignment).where(Assignment.study_id == study_id, Assignment.superseded_at.is_(None)))


def _facility_label(facility: Facility | None) -> str | None:
    if facility is None:
        return None
    return f"{facility.ae_title} ({facility.name})" if facility.name else facility.ae_title


def _candidate_json(verdict: Verdict, readers: list[ReaderFacts]) -> dict[str, object]:
    data = dict(verdict.to_json())
    reader = next((item for item in readers if item.radiologist_id == verdict.radiologist_id), None)
    data["open_assignments"] = reader.open_assignments if reader is not None else None
    return data


def _result(study: Study, npi: str | None) -> RouteResult:
    return RouteResult(
        study_instance_uid=study.study_instance_uid,
        status=study.status,
        exam_state=study.exam_state,
        exam_state_source=study.exam_state_source,
        assigned_npi=npi,
        hold_reason=study.hold_reason,
    )


__all__ = ["RouteResult", "RoutingPolicy", "RoutingService"]


def _mark_accounted(session: Session, study: Study, now: dt.datetime) -> None:
    """Mark the study's instances as taken into account by routing (routed with the study, or
    joined as late instances), so the timer's late-instance query passes over them."""
    session.execute(
        update(Instance)
        .where(Instance.study_id == study.id, Instance.accounted_at.is_(None))
        .values(accounted_at=now)
        .execution_options(synchronize_session=False)
    )
