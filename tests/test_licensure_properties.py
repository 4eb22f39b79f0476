"""Property tests: generated rosters, licenses, Compact data, discipline, privileges and studies.

Every check re-derives the rules plainly from the generated facts, without calling the code under
test, so a wrong rule in the engine cannot also make its check pass. Dates are drawn relative to
the day of the read, often exactly on a boundary (issue day, expiry day, day 89/90 of a hold,
LoQ day 364/365, privilege end, the day a hold was cleared, a membership's effective date).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from router.domain.assignment import choose_reader
from router.domain.compact_paths import fastest_paths
from router.domain.eligibility_facts import (
    DisciplinaryActionFacts,
    EligibilityRules,
    LicenseFacts,
    PrivilegeFacts,
    ReaderFacts,
    StudyFacts,
)
from router.domain.enums import (
    FederalFacility,
    ImlcStatus,
    LicensePathway,
    LicenseStatus,
)
from router.domain.imlc import ImlcMembership
from router.domain.licensure import evaluate_reader, evaluate_readers

DAY0 = date(2026, 6, 1)
STATES = ("TX", "CO", "OK", "CT", "NC", "CA")
FACILITIES = ("CT_NORTH", "CT_SOUTH")
HOLD_DAYS = 90
Rows = dict[str, tuple[ImlcStatus, date]]

state = st.sampled_from(STATES)
# Weighted choices (repeats weigh): most licenses active, full or Compact, so both the eligible
# and the ineligible branches are exercised often.
statuses = st.sampled_from([LicenseStatus.ACTIVE] * 10 + list(LicenseStatus))
pathways = st.sampled_from([LicensePathway.FULL] * 3 + [LicensePathway.IMLC] * 4 + list(LicensePathway))
imlc_statuses = st.sampled_from([ImlcStatus.SPL] * 4 + list(ImlcStatus))
orders_kinds = st.sampled_from([LicenseStatus.SUSPENDED, LicenseStatus.REVOKED, LicenseStatus.SURRENDERED])


def rel(day: date, edges: tuple[int, ...], lo: int, hi: int) -> st.SearchStrategy[date]:
    """``day`` plus an offset: about one time in four one of ``edges`` (boundaries), else any in ``lo..hi``."""
    anywhere = st.integers(min_value=lo, max_value=hi)
    return st.one_of(st.sampled_from(edges), anywhere, anywhere, anywhere).map(lambda n: day + timedelta(days=n))


def _membership(rows: Rows) -> ImlcMembership:
    lines = ["# as_of: 2026-11-29", "state,status,effective_date,note,source"]
    lines += [f"{s},{status.value},{eff.isoformat()},,generated" for s, (status, eff) in rows.items()]
    return ImlcMembership.from_csv_text("\n".join(lines))


def membership_rows(day: date) -> st.SearchStrategy[Rows]:
    """Compact data; a state missing from the dict is not a member. Effective on ``day`` or the day after."""
    return st.dictionaries(state, st.tuples(imlc_statuses, rel(day, (0, 1), -400, 0)), min_size=3, max_size=len(STATES))


@st.composite
def a_license(
    draw: st.DrawFn, day: date, states: st.SearchStrategy[str], pathway: st.SearchStrategy[LicensePathway] = pathways
) -> LicenseFacts:
    return LicenseFacts(
        state=draw(states),
        number=draw(st.sampled_from(("1", "2"))),
        pathway=draw(pathway),
        status=draw(statuses),
        expires=draw(rel(day, (-1, 0), 0, 200)),
        issued=draw(st.none() | rel(day, (0, 1), -200, 0)),
        status_since=draw(st.none() | rel(day, (0,), -150, 30)),
        in_lieu_of_discipline=draw(st.booleans()),
        compact_hold_cleared_on=draw(st.none() | st.none() | rel(day, (0, 1), -150, 30)),
    )


@st.composite
def discipline(
    draw: st.DrawFn, day: date, licenses: list[LicenseFacts], min_size: int = 0
) -> tuple[DisciplinaryActionFacts, ...]:
    """Orders against the reader's own licenses (mostly) or others, dated on hold boundaries or anywhere."""
    targets = st.sampled_from([(x.state, x.number) for x in licenses] * 3 + [(s, "1") for s in STATES])
    order = st.builds(
        lambda target, kind, on: DisciplinaryActionFacts(target[0], target[1], kind, on),
        targets,
        orders_kinds,
        st.one_of(st.sampled_from((0, 1, -(HOLD_DAYS - 1), -HOLD_DAYS)), st.integers(-150, 30)).map(
            lambda n: day + timedelta(days=n)
        ),
    )
    return tuple(draw(st.lists(order, min_size=min_size, max_size=2)))


def _unique(licenses: list[LicenseFacts]) -> tuple[LicenseFacts, ...]:
    """One license per (state, number), as the database enforces; the first drawn is kept."""
    return tuple({(x.state, x.number): x for x in reversed(licenses)}.values())


@st.composite
def rosters(draw: st.DrawFn, day: date, exam_state: str, rows: Rows) -> list[ReaderFacts]:
    """Up to five readers; licenses lean towards the exam state and the SPL, the SPL towards SPL-capable states."""
    spl_rows = sorted(s for s, (status, _) in rows.items() if status is ImlcStatus.SPL)
    privileges = st.builds(
        PrivilegeFacts,
        facility_ae_title=st.sampled_from(FACILITIES[:1] * 3 + FACILITIES),
        valid_from=rel(day, (0, 1), -120, 40),
        valid_until=rel(day, (-1, 0), -40, 120),
        by_proxy=st.booleans(),
        revoked_on=st.none()
        | st.one_of(st.sampled_from((0, 1)), st.integers(-60, 60)).map(lambda n: day + timedelta(days=n)),
    )
    out = []
    for i in range(draw(st.integers(min_value=0, max_value=5))):
        spl = draw(st.sampled_from([None, *STATES, *(spl_rows * 3)]))
        lean = st.sampled_from([exam_state] * 3 + ([spl] * 2 if spl else []) + list(STATES))
        held = [draw(a_license(day, st.just(exam_state))), *draw(st.lists(a_license(day, lean), max_size=2))]
        if spl is not None and draw(st.sampled_from((True, True, False))):
            held.insert(0, draw(a_license(day, st.just(spl), st.just(LicensePathway.FULL))))
        licenses = _unique(held)
        out.append(
            ReaderFacts(
                radiologist_id=i + 1,
                npi=f"10000000{i:02d}",
                name=f"Reader^{i}",
                active=draw(st.sampled_from((True,) * 7 + (False,))),
                spl_state=spl,
                loq_issued=draw(st.none() | rel(day, (-364, -365, 0, 1), -400, 30)),
                mqsa_qualified=draw(st.booleans()),
                reading_state=draw(st.none() | st.just(exam_state) | state),
                licenses=licenses,
                disciplinary_actions=draw(discipline(day, list(licenses))),
                privileges=tuple(draw(st.lists(privileges, min_size=1, max_size=2))),
                open_assignments=draw(st.integers(min_value=0, max_value=3)),
                last_assigned_at=draw(st.none() | st.sampled_from([datetime(2026, 5, d, tzinfo=UTC) for d in (1, 2)])),
            )
        )
    return out


studies = st.builds(
    StudyFacts,
    exam_state=state,
    modalities=st.sampled_from([frozenset({"CT"}), frozenset({"MR"}), frozenset({"MG", "CT"}), frozenset()]),
    facility_ae_title=st.just(FACILITIES[0]),
    facility_requires_privileges=st.sampled_from((False, False, False, True)),
    facility_federal=st.sampled_from((None, None, FederalFacility.VA, FederalFacility.DOD)),
)
read_days = st.integers(min_value=-30, max_value=30).map(lambda n: DAY0 + timedelta(days=n))


# --- the rules, stated plainly -------------------------------------------------------------------


def _covers(lic: LicenseFacts, day: date) -> bool:
    return (lic.issued is None or lic.issued <= day) and day <= lic.expires


def _disciplined(lic: LicenseFacts) -> bool:
    return lic.status in (LicenseStatus.SUSPENDED, LicenseStatus.REVOKED) or (
        lic.status is LicenseStatus.SURRENDERED and lic.in_lieu_of_discipline
    )


def _events(reader: ReaderFacts) -> list[tuple[str, str, date | None]]:
    found = [(a.state, a.license_number, a.action_date) for a in reader.disciplinary_actions]
    return found + [(lic.state, lic.number, lic.status_since) for lic in reader.licenses if _disciplined(lic)]


def _compact_usable(reader: ReaderFacts, lic: LicenseFacts, day: date, rows: Rows) -> bool:
    """An IMLC license counts only with an SPL that can serve, an undisciplined active full license
    there, and no order in force that its board has not lifted (Compact section 10(b), 10(d))."""
    spl = reader.spl_state
    if spl is None or spl not in rows or rows[spl][0] is not ImlcStatus.SPL or rows[spl][1] > day:
        return False
    in_spl = [o for o in reader.licenses if o.state == spl and (o.state, o.number) != (lic.state, lic.number)]
    if any(_disciplined(o) for o in in_spl):
        return False
    if not any(
        o.pathway is LicensePathway.FULL and o.status is LicenseStatus.ACTIVE and _covers(o, day) for o in in_spl
    ):
        return False
    cleared = lic.compact_hold_cleared_on
    for ev_state, ev_number, ev_day in _events(reader):
        if (ev_state, ev_number) == (lic.state, lic.number):
            continue
        if ev_day is None:
            in_force = True
        elif ev_state == spl:
            in_force = ev_day <= day  # until this license's own board acts
        else:
            in_force = ev_day <= day < ev_day + timedelta(days=HOLD_DAYS)
        board_acted = cleared is not None and cleared <= day and (ev_day is None or ev_day <= cleared)
        if in_force and not board_acted:
            return False
    return True


def _usable(
    reader: ReaderFacts, lic: LicenseFacts, study: StudyFacts, day: date, rules: EligibilityRules, rows: Rows
) -> bool:
    if lic.status is not LicenseStatus.ACTIVE or not _covers(lic, day):
        return False
    if lic.pathway is LicensePathway.TELEHEALTH_REGISTRATION:
        return lic.state in rules.telehealth_registration_states
    if lic.pathway is LicensePathway.FEDERAL_VA:
        return study.facility_federal is FederalFacility.VA
    if lic.pathway is LicensePathway.FEDERAL_DOD:
        return study.facility_federal is FederalFacility.DOD
    if lic.pathway is LicensePathway.IMLC:
        return _compact_usable(reader, lic, day, rows)
    return True


def _plainly_eligible(reader: ReaderFacts, study: StudyFacts, day: date, rules: EligibilityRules, rows: Rows) -> bool:
    def licensed_in(where: str) -> bool:
        return any(_usable(reader, x, study, day, rules, rows) for x in reader.licenses if x.state == where)

    if not reader.active or not licensed_in(study.exam_state):
        return False
    if study.facility_requires_privileges and not any(
        p.facility_ae_title == study.facility_ae_title
        and p.valid_from <= day <= p.valid_until
        and (p.revoked_on is None or p.revoked_on > day)
        for p in reader.privileges
    ):
        return False
    if "MG" in study.modalities and not reader.mqsa_qualified:
        return False
    if rules.require_reading_state_license:
        where = reader.reading_state
        if where is None or (where != study.exam_state and not licensed_in(where)):
            return False
    return True


def _check_relied_license(
    reader: ReaderFacts, lic: LicenseFacts | None, study: StudyFacts, day: date, rules: EligibilityRules, rows: Rows
) -> None:
    """The license an eligible verdict relies on: active, in the exam state, dates cover the day."""
    assert lic is not None and lic in reader.licenses
    assert lic.state == study.exam_state  # the IMLC never makes anyone eligible by itself
    assert lic.status is LicenseStatus.ACTIVE
    assert (lic.issued is None or lic.issued <= day) and day <= lic.expires
    if lic.pathway is LicensePathway.TELEHEALTH_REGISTRATION:
        assert study.exam_state in rules.telehealth_registration_states
    if lic.pathway is LicensePathway.FEDERAL_VA:
        assert study.facility_federal is FederalFacility.VA
    if lic.pathway is LicensePathway.FEDERAL_DOD:
        assert study.facility_federal is FederalFacility.DOD
    if lic.pathway is LicensePathway.IMLC:
        spl_licenses = [x for x in reader.licenses if x.state == reader.spl_state]
        assert not any(x.status is LicenseStatus.SUSPENDED for x in spl_licenses), (
            "IMLC license used while SPL suspended"
        )
        assert _compact_usable(reader, lic, day, rows)


# --- properties ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    study=studies,
    day=read_days,
    telehealth=st.frozensets(state, max_size=2),
    require_reading=st.sampled_from((False, False, False, True)),
)
def test_assignment_never_goes_to_an_ineligible_reader(
    data: st.DataObject, study: StudyFacts, day: date, telehealth: frozenset[str], require_reading: bool
) -> None:
    rows = data.draw(membership_rows(day), label="membership")
    roster = data.draw(rosters(day, study.exam_state, rows), label="roster")
    rules = EligibilityRules(
        imlc=_membership(rows),
        telehealth_registration_states=telehealth,
        suspension_hold_days=HOLD_DAYS,
        require_reading_state_license=require_reading,
    )
    verdicts = evaluate_readers(roster, study, day, rules)
    by_id = {r.radiologist_id: r for r in roster}
    assert [v.radiologist_id for v in verdicts] == [r.radiologist_id for r in roster]
    for reader, verdict in zip(roster, verdicts, strict=True):
        assert verdict.eligible is (not verdict.reasons)
        assert verdict.eligible is _plainly_eligible(reader, study, day, rules, rows), verdict.reasons
        if verdict.eligible:
            _check_relied_license(reader, verdict.license, study, day, rules, rows)
        else:
            assert verdict.license is None

    chosen = choose_reader(verdicts, by_id)
    event(f"chosen via {chosen.license.pathway.value}" if chosen and chosen.license else "held")
    assert (chosen is not None) is any(v.eligible for v in verdicts), (
        "held although someone is eligible, or the reverse"
    )
    if chosen is not None:
        reader = by_id[chosen.radiologist_id]
        assert chosen.eligible and _plainly_eligible(reader, study, day, rules, rows)
        _check_relied_license(reader, chosen.license, study, day, rules, rows)
        assert reader.open_assignments == min(by_id[v.radiologist_id].open_assignments for v in verdicts if v.eligible)

    # A reader whose SPL license is suspended is exactly as eligible without their IMLC licenses.
    for reader, verdict in zip(roster, verdicts, strict=True):
        if any(x.state == reader.spl_state and x.status is LicenseStatus.SUSPENDED for x in reader.licenses):
            stripped = replace(
                reader, licenses=tuple(x for x in reader.licenses if x.pathway is not LicensePathway.IMLC)
            )
            assert evaluate_reader(stripped, study, day, rules).eligible is verdict.eligible

    # Fastest paths: only for operating exam states; nobody eligible, licensed there or inactive.
    paths = fastest_paths(roster, study.exam_state, day, rules, study=study)
    if paths:
        row = rows.get(study.exam_state)
        assert row is not None and row[0] in (ImlcStatus.SPL, ImlcStatus.NON_SPL) and row[1] <= day
    for path in paths:
        reader = next(r for r in roster if r.npi == path.npi)
        assert reader.active and not _plainly_eligible(reader, study, day, rules, rows)
        assert not any(
            _usable(reader, x, study, day, rules, rows) for x in reader.licenses if x.state == study.exam_state
        )
        if path.tier == 1:
            assert reader.loq_issued is not None and reader.loq_issued <= day <= reader.loq_issued + timedelta(days=364)
    keys = [(p.tier, next(r.open_assignments for r in roster if r.npi == p.npi), p.npi) for p in paths]
    assert keys == sorted(keys)


@st.composite
def a_good_license(draw: st.DrawFn, day: date, where: str, pathway: LicensePathway) -> LicenseFacts:
    """An active license whose dates cover ``day`` (often exactly on the issue or expiry day)."""
    return LicenseFacts(
        state=where,
        number=draw(st.sampled_from(("1", "2"))),
        pathway=pathway,
        status=LicenseStatus.ACTIVE,
        expires=draw(rel(day, (0,), 0, 200)),
        issued=draw(st.none() | rel(day, (0,), -200, 0)),
        compact_hold_cleared_on=draw(st.none() | rel(day, (0, 1), -150, 30)),
    )


@st.composite
def compact_cases(draw: st.DrawFn) -> tuple[ReaderFacts, StudyFacts, date, Rows]:
    """One reader with a Compact license in the exam state, an SPL, other licenses and discipline.

    Four times in five each part is set up to pass (SPL-capable SPL, good SPL license, good
    Compact license), so that what decides the verdict is usually the discipline and its dates.
    """
    day = draw(read_days)
    rows = draw(membership_rows(day))
    exam = draw(state)
    spl = draw(st.sampled_from([None, *(STATES * 4)]))
    mostly = st.sampled_from((True, True, True, True, False))
    if spl is not None and draw(mostly):
        rows[spl] = (ImlcStatus.SPL, draw(rel(day, (0,), -400, 0)))
    full_or_compact = st.sampled_from([LicensePathway.FULL] * 3 + [LicensePathway.IMLC])
    compact = (
        a_good_license(day, exam, LicensePathway.IMLC)
        if draw(mostly)
        else a_license(day, st.just(exam), st.just(LicensePathway.IMLC))
    )
    held = [draw(compact)]
    if spl is not None:
        if draw(mostly):
            held.append(draw(a_good_license(day, spl, LicensePathway.FULL)))
        held += draw(st.lists(a_license(day, st.just(spl), full_or_compact), max_size=1))
    held += draw(st.lists(a_license(day, state, full_or_compact), max_size=2))
    licenses = _unique(held)
    reader = ReaderFacts(
        radiologist_id=1,
        npi="1000000000",
        name="Reader^0",
        spl_state=spl,
        licenses=licenses,
        disciplinary_actions=draw(discipline(day, list(licenses), min_size=draw(st.sampled_from((0, 1, 1))))),
    )
    return reader, StudyFacts(exam_state=exam, modalities=frozenset({"CT"})), day, rows


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=compact_cases())
def test_compact_verdict_matches_plain_rules(case: tuple[ReaderFacts, StudyFacts, date, Rows]) -> None:
    """Both ways: never eligible through a Compact license the rules forbid, never refused one they allow."""
    reader, study, day, rows = case
    rules = EligibilityRules(imlc=_membership(rows), suspension_hold_days=HOLD_DAYS)
    verdict = evaluate_reader(reader, study, day, rules)
    event(f"relied on {verdict.license.pathway.value}" if verdict.license else "not eligible")
    assert verdict.eligible is _plainly_eligible(reader, study, day, rules, rows), verdict.reasons
