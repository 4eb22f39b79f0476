"""Eligibility rules, one table per rule, with dates on both sides of every boundary."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from router.domain.compact_paths import FastestPathKind, fastest_paths
from router.domain.eligibility_facts import (
    DisciplinaryActionFacts,
    EligibilityRules,
    LicenseFacts,
    PrivilegeFacts,
    ReaderFacts,
    StudyFacts,
)
from router.domain.enums import FederalFacility, LicensePathway, LicenseStatus
from router.domain.imlc import ImlcMembership
from router.domain.licensure import evaluate_reader, evaluate_readers, license_standing
from router.errors import ValidationError

P, S = LicensePathway, LicenseStatus
MEMBERSHIP = ImlcMembership.from_csv_text(
    """# as_of: 2026-11-29
state,status,effective_date,note,source
TX,spl,2023-01-01,,t
CO,spl,2016-01-01,,t
OK,spl,2023-01-01,,t
CT,non_spl,2022-01-01,,t
NC,pending,2026-01-01,,t
MI,at_risk,2026-03-28,,t
PA,spl,2025-07-07,,t
"""
)
RULES = EligibilityRules(imlc=MEMBERSHIP)
DAY = date(2026, 12, 1)
TX_STUDY = StudyFacts(exam_state="TX", modalities=frozenset({"CT"}))


def lic(
    state: str, number: str, pathway: P = P.FULL, status: S = S.ACTIVE, expires: date = date(2028, 1, 31), **kw: object
) -> LicenseFacts:
    return LicenseFacts(state=state, number=number, pathway=pathway, status=status, expires=expires, **kw)  # type: ignore[arg-type]


def reader(*licenses: LicenseFacts, **kw: object) -> ReaderFacts:
    base: dict[str, object] = {"radiologist_id": 1, "npi": "1234567893", "name": "Doe^Jane"}
    base.update(kw)
    return ReaderFacts(licenses=tuple(licenses), **base)  # type: ignore[arg-type]


def reasons(
    r: ReaderFacts, day: date = DAY, study: StudyFacts = TX_STUDY, rules: EligibilityRules = RULES
) -> tuple[str, ...]:
    verdict = evaluate_reader(r, study, day, rules)
    assert verdict.eligible is (verdict.reasons == ())
    assert (verdict.license is not None) is verdict.eligible
    return verdict.reasons


# --- dates and status -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("issued", "expires", "day", "expected"),
    [
        (date(2026, 12, 1), date(2027, 6, 30), date(2026, 11, 30), ("license TX-123 not valid before 2026-12-01",)),
        (date(2026, 12, 1), date(2027, 6, 30), date(2026, 12, 1), ()),
        (None, date(2026, 3, 1), date(2026, 3, 1), ()),
        (None, date(2026, 3, 1), date(2026, 3, 2), ("license TX-123 expired 2026-03-01",)),
        (date(2025, 3, 2), date(2026, 3, 1), date(2025, 3, 2), ()),
    ],
)
def test_issue_and_expiry_days_included(
    issued: date | None, expires: date, day: date, expected: tuple[str, ...]
) -> None:
    assert reasons(reader(lic("TX", "123", issued=issued, expires=expires)), day) == expected


@pytest.mark.parametrize(
    ("status", "since", "in_lieu", "expected"),
    [
        (S.ACTIVE, None, False, ()),
        (S.EXPIRED, date(2026, 3, 1), False, ("license TX-123 expired since 2026-03-01",)),
        (S.SUSPENDED, date(2026, 10, 2), False, ("license TX-123 suspended since 2026-10-02",)),
        (S.SUSPENDED, None, False, ("license TX-123 suspended",)),
        (S.REVOKED, date(2026, 10, 2), False, ("license TX-123 revoked since 2026-10-02",)),
        (S.SURRENDERED, date(2026, 10, 2), False, ("license TX-123 surrendered since 2026-10-02",)),
        (
            S.SURRENDERED,
            date(2026, 10, 2),
            True,
            ("license TX-123 surrendered in lieu of discipline since 2026-10-02",),
        ),
        # a non-active status is applied to every day, even before its date (current status only)
        (S.SUSPENDED, date(2026, 12, 2), False, ("license TX-123 suspended since 2026-12-02",)),
    ],
)
def test_status_must_be_active(status: S, since: date | None, in_lieu: bool, expected: tuple[str, ...]) -> None:
    r = reader(lic("TX", "123", status=status, status_since=since, in_lieu_of_discipline=in_lieu))
    assert reasons(r) == expected


def test_no_license_in_exam_state() -> None:
    assert reasons(reader(lic("OK", "7"))) == ("no license in TX",)
    assert reasons(reader()) == ("no license in TX",)


def test_exam_state_is_case_insensitive() -> None:
    assert reasons(reader(lic("TX", "1")), study=StudyFacts(exam_state=" tx ")) == ()


# --- pathways ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pathway", "telehealth", "federal", "expected"),
    [
        (P.TELEHEALTH_REGISTRATION, frozenset({"TX"}), None, ()),
        (
            P.TELEHEALTH_REGISTRATION,
            frozenset({"OK"}),
            None,
            ("telehealth registration in TX does not cover store-and-forward reads",),
        ),
        (
            P.TELEHEALTH_REGISTRATION,
            frozenset(),
            None,
            ("telehealth registration in TX does not cover store-and-forward reads",),
        ),
        (P.FEDERAL_VA, frozenset(), FederalFacility.VA, ()),
        (P.FEDERAL_VA, frozenset(), FederalFacility.DOD, ("federal_va license counts only at VA facilities",)),
        (P.FEDERAL_VA, frozenset(), None, ("federal_va license counts only at VA facilities",)),
        (P.FEDERAL_DOD, frozenset(), FederalFacility.DOD, ()),
        (P.FEDERAL_DOD, frozenset(), FederalFacility.VA, ("federal_dod license counts only at DoD facilities",)),
        (P.FULL, frozenset(), FederalFacility.VA, ()),
    ],
)
def test_pathway_limits(
    pathway: P, telehealth: frozenset[str], federal: FederalFacility | None, expected: tuple[str, ...]
) -> None:
    rules = replace(RULES, telehealth_registration_states=telehealth)
    study = StudyFacts(exam_state="TX", facility_federal=federal)
    assert reasons(reader(lic("TX", "123", pathway)), study=study, rules=rules) == expected


def test_federal_license_needs_a_study() -> None:
    r = reader(lic("TX", "1", P.FEDERAL_VA))
    assert license_standing(r, r.licenses[0], DAY, RULES) == (False, "federal_va license counts only at VA facilities")
    full = reader(lic("TX", "2"))
    assert license_standing(full, full.licenses[0], DAY, RULES) == (True, None)


# --- the Compact ------------------------------------------------------------------------------

CO9 = lic("CO", "9")
TX5 = lic("TX", "5", P.IMLC)


@pytest.mark.parametrize(
    ("spl_state", "spl_license", "day", "expected"),
    [
        ("CO", CO9, DAY, ()),
        (
            "CO",
            replace(CO9, status=S.SUSPENDED, status_since=date(2026, 10, 2)),
            DAY,
            ("IMLC license TX-5 held because SPL license CO-9 suspended 2026-10-02",),
        ),
        (
            "CO",
            replace(CO9, status=S.REVOKED, status_since=date(2026, 10, 2)),
            DAY,
            ("IMLC license TX-5 held because SPL license CO-9 revoked 2026-10-02",),
        ),
        (
            "CO",
            replace(CO9, status=S.SURRENDERED, status_since=date(2026, 10, 2), in_lieu_of_discipline=True),
            DAY,
            ("IMLC license TX-5 held because SPL license CO-9 surrendered in lieu of discipline 2026-10-02",),
        ),
        ("CO", replace(CO9, status=S.SUSPENDED), DAY, ("IMLC license TX-5 held because SPL license CO-9 suspended",)),
        # a plain surrender does not propagate, but leaves no license in the SPL
        (
            "CO",
            replace(CO9, status=S.SURRENDERED, status_since=date(2026, 10, 2)),
            DAY,
            ("IMLC license TX-5 does not count: no active license in designated SPL CO",),
        ),
        (
            "CO",
            replace(CO9, expires=date(2026, 11, 30)),
            DAY,
            ("IMLC license TX-5 does not count: no active license in designated SPL CO",),
        ),
        ("CO", replace(CO9, expires=date(2026, 12, 1)), DAY, ()),
        (
            "CO",
            replace(CO9, issued=date(2026, 12, 2)),
            DAY,
            ("IMLC license TX-5 does not count: no active license in designated SPL CO",),
        ),
        (
            "CO",
            replace(CO9, pathway=P.IMLC),
            DAY,  # a Compact license cannot be the SPL license
            ("IMLC license TX-5 does not count: no active license in designated SPL CO",),
        ),
        ("CO", None, DAY, ("IMLC license TX-5 does not count: no active license in designated SPL CO",)),
        (None, CO9, DAY, ("IMLC license TX-5 does not count: no designated SPL",)),
        (
            "CT",
            lic("CT", "3"),
            DAY,
            (
                "IMLC license TX-5 does not count: designated SPL CT cannot serve as SPL on 2026-12-01 (Compact status non_spl)",
            ),
        ),
        (
            "MI",
            lic("MI", "3"),
            DAY,
            (
                "IMLC license TX-5 does not count: designated SPL MI cannot serve as SPL on 2026-12-01 (Compact status at_risk)",
            ),
        ),
        (
            "CA",
            lic("CA", "3"),
            DAY,
            (
                "IMLC license TX-5 does not count: designated SPL CA cannot serve as SPL on 2026-12-01 (not a Compact member)",
            ),
        ),
        (
            "PA",
            lic("PA", "3"),
            date(2025, 7, 6),
            (
                "IMLC license TX-5 does not count: designated SPL PA cannot serve as SPL on 2025-07-06 (Compact status pending)",
            ),
        ),
        ("PA", lic("PA", "3"), date(2025, 7, 7), ()),
    ],
)
def test_compact_license_follows_spl(
    spl_state: str | None, spl_license: LicenseFacts | None, day: date, expected: tuple[str, ...]
) -> None:
    licenses = (TX5,) if spl_license is None else (TX5, spl_license)
    assert reasons(reader(*licenses, spl_state=spl_state), day) == expected


def test_compact_license_relied_on_when_usable() -> None:
    verdict = evaluate_reader(reader(TX5, CO9, spl_state="CO"), TX_STUDY, DAY, RULES)
    assert verdict.eligible and verdict.license == TX5


def test_imlc_never_makes_anyone_eligible_by_itself() -> None:
    r = reader(CO9, spl_state="CO", loq_issued=date(2026, 6, 1))
    assert reasons(r) == ("no license in TX",)


SPL_ACTION = DisciplinaryActionFacts("CO", "9", S.SUSPENDED, date(2026, 10, 2))


@pytest.mark.parametrize(
    ("cleared", "day", "held"),
    [
        (None, date(2026, 10, 1), False),  # before the order
        (None, date(2026, 10, 2), True),
        (None, date(2027, 6, 1), True),  # past 90 days: still encumbered until the TX board acts
        (date(2026, 10, 1), date(2027, 6, 1), True),  # cleared before the order: not for this order
        (date(2026, 11, 1), date(2026, 10, 31), True),
        (date(2026, 11, 1), date(2026, 11, 1), False),
    ],
)
def test_compact_license_stays_encumbered_after_spl_reinstated(cleared: date | None, day: date, held: bool) -> None:
    r = reader(replace(TX5, compact_hold_cleared_on=cleared), CO9, spl_state="CO", disciplinary_actions=(SPL_ACTION,))
    expected = (
        (
            "IMLC license TX-5 held after SPL CO suspension of license CO-9 on 2026-10-02 until the TX board "
            "reinstates it (Compact section 10)",
        )
        if held
        else ()
    )
    assert reasons(r, day) == expected


OK7 = lic("OK", "7")
OK_ACTION = DisciplinaryActionFacts("OK", "7", S.SUSPENDED, date(2026, 10, 3))
HOLD_OK = (
    "IMLC license TX-5 held until 2027-01-01 after OK suspension of license OK-7 on 2026-10-03 (Compact section 10)"
)


@pytest.mark.parametrize(
    ("cleared", "day", "expected"),
    [
        (None, date(2026, 10, 2), ()),  # day before the order
        (None, date(2026, 10, 3), (HOLD_OK,)),  # day 0
        (None, date(2026, 12, 31), (HOLD_OK,)),  # day 89
        (None, date(2027, 1, 1), ()),  # day 90
        (date(2026, 10, 2), date(2026, 12, 1), (HOLD_OK,)),  # cleared before the order: does not count
        (date(2026, 10, 3), date(2026, 10, 3), ()),  # cleared on the order's day
        (
            date(2026, 11, 1),
            date(2026, 10, 31),
            (
                "IMLC license TX-5 held until 2026-11-01 after OK suspension of license OK-7 on 2026-10-03 (Compact section 10)",
            ),
        ),
        (date(2026, 11, 1), date(2026, 11, 1), ()),
        (date(2027, 2, 1), date(2026, 12, 31), (HOLD_OK,)),  # cleared after the hold ends: ends on day 90 anyway
        (date(2027, 2, 1), date(2027, 1, 1), ()),
    ],
)
def test_ninety_day_hold(cleared: date | None, day: date, expected: tuple[str, ...]) -> None:
    r = reader(
        replace(TX5, compact_hold_cleared_on=cleared), CO9, OK7, spl_state="CO", disciplinary_actions=(OK_ACTION,)
    )
    assert reasons(r, day) == expected


@pytest.mark.parametrize(
    ("ok_license", "expected"),
    [
        (replace(OK7, status=S.SUSPENDED, status_since=date(2026, 10, 3)), HOLD_OK),
        (
            replace(OK7, status=S.REVOKED, status_since=date(2026, 10, 3)),
            "IMLC license TX-5 held until 2027-01-01 after OK revocation of license OK-7 on 2026-10-03 (Compact section 10)",
        ),
        (
            replace(OK7, status=S.SURRENDERED, status_since=date(2026, 10, 3), in_lieu_of_discipline=True),
            "IMLC license TX-5 held until 2027-01-01 after OK surrender in lieu of discipline of license OK-7 on 2026-10-03 "
            "(Compact section 10)",
        ),
        (replace(OK7, status=S.SURRENDERED, status_since=date(2026, 10, 3)), None),  # plain surrender
        (replace(OK7, status=S.EXPIRED, status_since=date(2026, 10, 3)), None),
        (
            replace(OK7, status=S.SUSPENDED),
            "IMLC license TX-5 held after OK suspension of license OK-7 on an unrecorded date until its board acts (Compact section 10)",
        ),
    ],
)
def test_hold_from_current_license_status(ok_license: LicenseFacts, expected: str | None) -> None:
    r = reader(TX5, CO9, ok_license, spl_state="CO")
    assert reasons(r, date(2026, 12, 1)) == ((expected,) if expected else ())


def test_hold_without_date_ends_when_cleared() -> None:
    r = reader(
        replace(TX5, compact_hold_cleared_on=date(2026, 11, 1)), CO9, replace(OK7, status=S.SUSPENDED), spl_state="CO"
    )
    assert reasons(r, date(2026, 10, 31)) != ()
    assert reasons(r, date(2026, 11, 1)) == ()


@pytest.mark.parametrize(("hold_days", "day", "held"), [(30, date(2026, 11, 1), True), (30, date(2026, 11, 2), False)])
def test_hold_length_is_configurable(hold_days: int, day: date, held: bool) -> None:
    r = reader(TX5, CO9, OK7, spl_state="CO", disciplinary_actions=(OK_ACTION,))
    assert bool(reasons(r, day, rules=replace(RULES, suspension_hold_days=hold_days))) is held


def test_hold_applies_to_compact_licenses_only() -> None:
    r = reader(lic("TX", "1"), CO9, OK7, spl_state="CO", disciplinary_actions=(OK_ACTION,))
    assert reasons(r, date(2026, 10, 3)) == ()


def test_order_against_the_held_license_itself_is_its_own_status() -> None:
    action = DisciplinaryActionFacts("TX", "5", S.SUSPENDED, date(2026, 10, 3))
    assert reasons(reader(TX5, CO9, spl_state="CO", disciplinary_actions=(action,)), date(2026, 10, 10)) == ()


def test_full_license_preferred_and_all_reasons_listed() -> None:
    full = lic("TX", "1", expires=date(2027, 1, 1))
    verdict = evaluate_reader(reader(TX5, full, CO9, spl_state="CO"), TX_STUDY, DAY, RULES)
    assert verdict.license == full
    verdict = evaluate_reader(
        reader(TX5, replace(full, expires=date(2026, 1, 1)), CO9, spl_state="CO"), TX_STUDY, DAY, RULES
    )
    assert verdict.license == TX5
    both_bad = reader(replace(TX5, status=S.REVOKED), replace(full, expires=date(2026, 1, 1)))
    assert reasons(both_bad) == ("license TX-1 expired 2026-01-01", "license TX-5 revoked")


# --- privileges, MQSA, activity, reading state -------------------------------------------------

FAC = StudyFacts(exam_state="TX", facility_ae_title="CT_NORTH", facility_requires_privileges=True)


@pytest.mark.parametrize(
    ("grants", "day", "expected"),
    [
        ((), DAY, "no privileges at facility CT_NORTH"),
        ((PrivilegeFacts("CT_SOUTH", date(2026, 1, 1), date(2027, 1, 1)),), DAY, "no privileges at facility CT_NORTH"),
        ((PrivilegeFacts("CT_NORTH", date(2026, 1, 1), date(2026, 5, 1)),), date(2026, 5, 1), None),
        (
            (PrivilegeFacts("CT_NORTH", date(2026, 1, 1), date(2026, 5, 1)),),
            date(2026, 5, 2),
            "privileges at facility CT_NORTH ended 2026-05-01",
        ),
        (
            (PrivilegeFacts("CT_NORTH", date(2026, 6, 1), date(2027, 5, 1)),),
            date(2026, 5, 31),
            "privileges at facility CT_NORTH not valid before 2026-06-01",
        ),
        ((PrivilegeFacts("CT_NORTH", date(2026, 6, 1), date(2027, 5, 1)),), date(2026, 6, 1), None),
        (
            (PrivilegeFacts("CT_NORTH", date(2026, 1, 1), date(2027, 1, 1), revoked_on=date(2026, 5, 1)),),
            date(2026, 4, 30),
            None,
        ),
        (
            (PrivilegeFacts("CT_NORTH", date(2026, 1, 1), date(2027, 1, 1), revoked_on=date(2026, 5, 1)),),
            date(2026, 5, 1),
            "privileges at facility CT_NORTH revoked 2026-05-01",
        ),
        ((PrivilegeFacts("CT_NORTH", date(2026, 1, 1), date(2027, 1, 1), by_proxy=True),), DAY, None),
        (
            (
                PrivilegeFacts("CT_NORTH", date(2025, 1, 1), date(2025, 12, 31)),
                PrivilegeFacts("CT_NORTH", date(2026, 1, 1), date(2026, 12, 31)),
            ),
            DAY,
            None,
        ),
    ],
)
def test_privileges(grants: tuple[PrivilegeFacts, ...], day: date, expected: str | None) -> None:
    r = reader(lic("TX", "1"), privileges=grants)
    assert reasons(r, day, study=FAC) == ((expected,) if expected else ())
    assert reasons(r, day, study=replace(FAC, facility_requires_privileges=False)) == ()


def test_privileges_required_without_known_facility() -> None:
    study = replace(FAC, facility_ae_title=None)
    assert reasons(reader(lic("TX", "1")), study=study) == ("privileges required but the facility is unknown",)


@pytest.mark.parametrize(
    ("modalities", "mqsa", "ok"),
    [
        ({"MG"}, False, False),
        ({"MG"}, True, True),
        ({"mg", "SR"}, False, False),
        ({"CT"}, False, True),
        (set(), False, True),
    ],
)
def test_mammography_needs_mqsa(modalities: set[str], mqsa: bool, ok: bool) -> None:
    study = StudyFacts(exam_state="TX", modalities=frozenset(modalities))
    expected = () if ok else ("not MQSA qualified (mammography)",)
    assert reasons(reader(lic("TX", "1"), mqsa_qualified=mqsa), study=study) == expected


@pytest.mark.parametrize(
    ("required", "reading_state", "extra", "expected"),
    [
        (False, None, (), ()),
        (True, None, (), ("reading state unknown (a license where the radiologist reads from is required)",)),
        (True, "CO", (), ("reading state CO: no license in CO",)),
        (True, "CO", (lic("CO", "9"),), ()),
        (
            True,
            "CO",
            (lic("CO", "9", expires=date(2026, 11, 30)),),
            ("reading state CO: license CO-9 expired 2026-11-30",),
        ),
        (True, "TX", (), ()),
    ],
)
def test_reading_state_rule(
    required: bool, reading_state: str | None, extra: tuple[LicenseFacts, ...], expected: tuple[str, ...]
) -> None:
    rules = replace(RULES, require_reading_state_license=required)
    assert reasons(reader(lic("TX", "1"), *extra, reading_state=reading_state), rules=rules) == expected


def test_all_reasons_collected_in_order() -> None:
    r = reader(lic("OK", "1"), active=False)
    study = replace(FAC, modalities=frozenset({"MG"}))
    assert reasons(r, study=study) == (
        "inactive",
        "no license in TX",
        "no privileges at facility CT_NORTH",
        "not MQSA qualified (mammography)",
    )


def test_evaluate_readers_keeps_order_and_json() -> None:
    a = reader(lic("TX", "1", issued=date(2026, 1, 1), license_id=11), radiologist_id=1, npi="1000000001")
    b = reader(radiologist_id=2, npi="1000000002")
    verdicts = evaluate_readers([b, a], TX_STUDY, DAY, RULES)
    assert [v.npi for v in verdicts] == ["1000000002", "1000000001"]
    assert verdicts[0].to_json() == {
        "radiologist_id": 2,
        "npi": "1000000002",
        "name": "Doe^Jane",
        "eligible": False,
        "reasons": ["no license in TX"],
        "license": None,
    }
    assert verdicts[1].to_json()["license"] == {
        "license_id": 11,
        "state": "TX",
        "number": "1",
        "pathway": "full",
        "status": "active",
        "issued": "2026-01-01",
        "expires": "2028-01-31",
    }


@pytest.mark.parametrize(("field", "value"), [("suspension_hold_days", -1), ("loq_valid_days", 0)])
def test_rules_validated(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        replace(RULES, **{field: value})


# --- fastest paths ----------------------------------------------------------------------------


def _path_reader(npi: str, *licenses: LicenseFacts, **kw: object) -> ReaderFacts:
    return reader(*licenses, radiologist_id=int(npi), npi=npi, **kw)


@pytest.mark.parametrize(
    ("loq_issued", "tier"),
    [
        (date(2025, 12, 2), 1),  # day 364
        (date(2025, 12, 1), 2),  # day 365: expired
        (DAY, 1),  # issue day
        (date(2026, 12, 2), 2),  # not valid yet
        (None, 2),
    ],
)
def test_loq_validity_days(loq_issued: date | None, tier: int) -> None:
    r = _path_reader("1000000001", CO9, spl_state="CO", loq_issued=loq_issued)
    [path] = fastest_paths([r], "TX", DAY, RULES)
    assert path.tier == tier
    assert path.path == (FastestPathKind.LOQ_READY if tier == 1 else FastestPathKind.LOQ_NEEDED).value


def test_fastest_path_details_and_order() -> None:
    loq = date(2026, 6, 1)
    readers = [
        _path_reader("1000000005", CO9, spl_state="CO", loq_issued=loq, open_assignments=3),
        _path_reader("1000000004", CO9, spl_state="CO", loq_issued=loq, open_assignments=1),
        _path_reader("1000000003", lic("OK", "2"), open_assignments=0),  # no SPL designated, OK can serve
        _path_reader("1000000002", lic("CT", "4"), lic("CO", "8"), spl_state="CT", loq_issued=loq, open_assignments=2),
        _path_reader("1000000006", lic("CA", "1")),  # no SPL-capable license
        _path_reader("1000000007", lic("TX", "1"), CO9, spl_state="CO", loq_issued=loq),  # already licensed
        _path_reader("1000000008", CO9, spl_state="CO", loq_issued=loq, active=False),
        _path_reader("1000000009", CO9, OK7, spl_state="CO", loq_issued=loq, disciplinary_actions=(OK_ACTION,)),
        _path_reader("1000000010", replace(CO9, status=S.SUSPENDED), spl_state="CO", loq_issued=loq),
    ]
    paths = fastest_paths(readers, "TX", DAY, RULES)
    assert [(p.npi, p.tier) for p in paths] == [
        ("1000000004", 1),
        ("1000000005", 1),
        ("1000000003", 2),
        ("1000000002", 2),
    ]
    assert paths[0].detail == (
        "Letter of Qualification issued 2026-06-01, valid through 2027-05-31; SPL CO (license CO-9): "
        "apply for a TX Compact license"
    )
    assert paths[2].detail == (
        "no Letter of Qualification; active license OK-2 in SPL-capable OK: request a Letter of Qualification "
        "with SPL OK, then a TX Compact license"
    )
    assert paths[3].detail.startswith(
        "Letter of Qualification valid but designated SPL CT cannot serve; active license CO-8"
    )
    assert paths[0].to_json() == {
        "npi": "1000000004",
        "name": "Doe^Jane",
        "tier": 1,
        "path": "imlc_loq_ready",
        "detail": paths[0].detail,
    }


@pytest.mark.parametrize(
    ("exam_state", "day", "listed"),
    [
        ("TX", DAY, True),
        ("CT", DAY, True),
        ("NC", DAY, False),
        ("MI", DAY, False),
        ("CA", DAY, False),
        ("PA", date(2025, 7, 6), False),
        ("PA", date(2025, 7, 7), True),
    ],
)
def test_fastest_paths_only_for_operating_exam_states(exam_state: str, day: date, listed: bool) -> None:
    r = _path_reader(
        "1000000001", CO9, spl_state="CO", loq_issued=date(2025, 6, 1) if day.year == 2025 else date(2026, 6, 1)
    )
    assert bool(fastest_paths([r], exam_state, day, RULES)) is listed


def test_fastest_paths_tie_broken_by_npi() -> None:
    loq = date(2026, 6, 1)
    readers = [
        _path_reader(npi, CO9, spl_state="CO", loq_issued=loq, open_assignments=1)
        for npi in ("1000000009", "1000000001")
    ]
    assert [p.npi for p in fastest_paths(readers, "TX", DAY, RULES)] == ["1000000001", "1000000009"]


@pytest.mark.parametrize(
    ("federal", "listed"),
    [(None, True), (FederalFacility.DOD, True), (FederalFacility.VA, False)],
)
def test_fastest_paths_apply_federal_pathway_with_the_study(federal: FederalFacility | None, listed: bool) -> None:
    r = _path_reader("1000000001", CO9, lic("TX", "3", P.FEDERAL_VA), spl_state="CO", loq_issued=date(2026, 6, 1))
    study = StudyFacts(exam_state="TX", facility_federal=federal)
    assert bool(fastest_paths([r], "TX", DAY, RULES, study=study)) is listed
    assert len(fastest_paths([r], "TX", DAY, RULES)) == 1


@pytest.mark.parametrize(
    ("state", "number", "tag"),
    [
        ("TX", "123", "TX-123"),
        ("TX", "TX-123", "TX-123"),
        ("TX", "tx 123", "tx 123"),
        ("TX", "TXA123", "TX-TXA123"),
        ("CO", "DR.0055", "CO-DR.0055"),
    ],
)
def test_license_tag_does_not_repeat_the_state(state: str, number: str, tag: str) -> None:
    from router.domain.eligibility_facts import license_tag

    assert license_tag(state, number) == tag
