"""Tests for router.domain.location: the exam state from every source (DESIGN.md "Which state")."""

from __future__ import annotations

import pytest

from router.domain.enums import ExamStateSource
from router.domain.location import ExamLocation, LocationEvidence, SourceFinding, resolve_exam_state

FAC = ExamStateSource.FACILITY
INST = ExamStateSource.INSTITUTION_ADDRESS
REGION = ExamStateSource.REGION_OF_RESIDENCE
PAT = ExamStateSource.PATIENT_ADDRESS

OK_ER = "1 ER Way, Tulsa, OK 74103"
TX_HOME = "12 Ranch Rd^^Austin^TX^78701^USA"


def test_texan_in_an_oklahoma_er() -> None:
    result = resolve_exam_state(LocationEvidence(institution_address=OK_ER, patient_address=TX_HOME))
    assert (result.state, result.source) == ("OK", INST)
    assert result.detail == "InstitutionAddress: ZIP 74103 is in OK (state code OK agrees)"
    assert [(c.source, c.state) for c in result.conflicts] == [(PAT, "TX")]
    assert result.conflicts_as_json() == [
        {
            "source": "patient_address",
            "state": "TX",
            "detail": "PatientAddress: ZIP 78701 is in TX (state code TX agrees)",
        }
    ]


@pytest.mark.parametrize(
    ("evidence", "state", "source", "conflict_sources"),
    [
        # 1. a registered facility wins over everything
        (LocationEvidence(facility_state="TX", institution_address=OK_ER), "TX", FAC, [INST]),
        (LocationEvidence(facility_state="OK", institution_address=OK_ER, patient_address=TX_HOME), "OK", FAC, [PAT]),
        (LocationEvidence(facility_state="ok", patient_address="Tulsa OK"), "OK", FAC, []),
        (LocationEvidence(facility_state=" pr ", region_of_residence="PR"), "PR", FAC, []),
        # a facility with no licensing jurisdiction falls through
        (LocationEvidence(facility_state="AE", institution_address=OK_ER), "OK", INST, []),
        (LocationEvidence(facility_state="", institution_address=OK_ER), "OK", INST, []),
        # 2. InstitutionAddress
        (LocationEvidence(institution_address=OK_ER), "OK", INST, []),
        (LocationEvidence(institution_address=OK_ER, region_of_residence="Texas"), "OK", INST, [REGION]),
        (
            LocationEvidence(institution_address=OK_ER, region_of_residence="OK", patient_address="Tulsa OK"),
            "OK",
            INST,
            [],
        ),
        (
            LocationEvidence(institution_address="Washington, DC 20001", patient_address="Arlington, VA"),
            "DC",
            INST,
            [PAT],
        ),
        # 3. RegionOfResidence, then PatientAddress
        (LocationEvidence(region_of_residence="Texas"), "TX", REGION, []),
        (LocationEvidence(patient_address=TX_HOME), "TX", PAT, []),
        (LocationEvidence(region_of_residence="Texas", patient_address="Tulsa, OK 74103"), "TX", REGION, [PAT]),
        (LocationEvidence(region_of_residence="Kansas City", patient_address="Tulsa, OK"), "OK", PAT, []),
        (LocationEvidence(institution_address="garbage", patient_address="San Juan, PR 00901"), "PR", PAT, []),
        (LocationEvidence(region_of_residence="TX", country_of_residence="USA"), "TX", REGION, []),
        # "Georgia" is a US state and a country: unknown, so the patient tags still count
        (LocationEvidence(region_of_residence="TX", country_of_residence="Georgia"), "TX", REGION, []),
        (LocationEvidence(patient_address="Hagatna, Guam 96910", country_of_residence="Guam"), "GU", PAT, []),
        # a higher source that contradicts itself is recorded, the facility still wins
        (LocationEvidence(facility_state="OK", institution_address="Dallas, TX 74103"), "OK", FAC, [INST]),
        # an InstitutionAddress outside the US under a registered facility is a conflict...
        (LocationEvidence(facility_state="TX", institution_address="Toronto ON M5V 2T6"), "TX", FAC, [INST]),
        # ...a foreign patient is not: residence is not where the exam happened
        (LocationEvidence(facility_state="TX", patient_address="Toronto ON M5V 2T6"), "TX", FAC, []),
        # a foreign patient with a US institution: not a conflict
        (LocationEvidence(institution_address=OK_ER, patient_address="Toronto ON M5V 2T6"), "OK", INST, []),
    ],
)
def test_order_of_sources(
    evidence: LocationEvidence, state: str, source: ExamStateSource, conflict_sources: list[ExamStateSource]
) -> None:
    result = resolve_exam_state(evidence)
    assert (result.state, result.source) == (state, source)
    assert [c.source for c in result.conflicts] == conflict_sources


@pytest.mark.parametrize(
    ("evidence", "use_patient_address", "detail_part", "conflict_sources"),
    [
        (LocationEvidence(), True, "facility: no registered facility", []),
        (LocationEvidence(institution_address="  \x00"), True, "InstitutionAddress not sent", []),
        (LocationEvidence(institution_address="garbage"), True, "no US state, ZIP or country", []),
        (LocationEvidence(region_of_residence="TX", patient_address=TX_HOME), False, "use_patient_address is off", []),
        # a non-US CountryOfResidence blocks the patient tags
        (
            LocationEvidence(region_of_residence="TX", patient_address=TX_HOME, country_of_residence="Canada"),
            True,
            "CountryOfResidence Canada is outside the US",
            [],
        ),
        (
            LocationEvidence(patient_address="Austin TX", country_of_residence="CA"),
            True,
            "CountryOfResidence CA is outside the US",
            [],
        ),
        # an explicitly foreign, military or self-contradicting source stops the search
        (
            LocationEvidence(institution_address="Toronto ON M5V 2T6", patient_address=TX_HOME),
            True,
            "institution_address stops the search",
            [PAT],
        ),
        (
            LocationEvidence(institution_address="PSC 123 Box 4, APO AE 09012", region_of_residence="TX"),
            True,
            "military address (APO AE)",
            [REGION],
        ),
        (
            LocationEvidence(institution_address="Dallas, TX 74103", patient_address="Tulsa OK"),
            True,
            "state code TX and ZIP 74103 (OK) disagree",
            [INST, PAT],
        ),
        (
            LocationEvidence(region_of_residence="Ontario", patient_address="Austin TX"),
            True,
            "region_of_residence stops the search",
            [PAT],
        ),
        (
            LocationEvidence(patient_address="^^Dallas^TX^75201~^^Tulsa^OK^74103"),
            True,
            "repeated addresses disagree",
            [PAT],
        ),
        (LocationEvidence(patient_address="Majuro, MH 96960"), True, "freely associated state MH", []),
    ],
)
def test_no_exam_state(
    evidence: LocationEvidence, use_patient_address: bool, detail_part: str, conflict_sources: list[ExamStateSource]
) -> None:
    result = resolve_exam_state(evidence, use_patient_address=use_patient_address)
    assert (result.state, result.source) == (None, None)
    assert result.detail.startswith("no exam state")
    assert detail_part in result.detail
    assert [c.source for c in result.conflicts] == conflict_sources


@pytest.mark.parametrize(
    ("use_patient_address", "state", "source"),
    [(True, "TX", REGION), (False, None, None)],
)
def test_patient_fallback_switch(use_patient_address: bool, state: str | None, source: ExamStateSource | None) -> None:
    result = resolve_exam_state(LocationEvidence(region_of_residence="TX"), use_patient_address=use_patient_address)
    assert (result.state, result.source) == (state, source)


@pytest.mark.parametrize(
    ("country", "state"),
    [
        ("USA", "TX"),
        ("United States", "TX"),
        ("Puerto Rico", "TX"),
        ("", "TX"),
        (None, "TX"),
        ("xyz", "TX"),
        ("Canada", None),
        ("Mexico", None),
        ("MEX", None),
        ("Palau", None),
    ],
)
def test_country_of_residence_boundary(country: str | None, state: str | None) -> None:
    result = resolve_exam_state(LocationEvidence(patient_address="Austin TX", country_of_residence=country))
    assert result.state == state


def test_findings_list_every_source_in_order() -> None:
    result = resolve_exam_state(
        LocationEvidence(
            facility_state="OK",
            facility_label="CT_NORTH (North Clinic)",
            institution_address=OK_ER,
            region_of_residence="Texas",
            patient_address=TX_HOME,
        )
    )
    assert [f.source for f in result.findings] == [FAC, INST, REGION, PAT]
    assert [f.state for f in result.findings] == ["OK", "OK", "TX", "TX"]
    assert result.findings[0] == SourceFinding(FAC, "OK", "facility CT_NORTH (North Clinic) is registered in OK")
    assert result.detail == "facility CT_NORTH (North Clinic) is registered in OK"
    assert [c.source for c in result.conflicts] == [REGION, PAT]


def test_findings_say_why_patient_tags_were_skipped() -> None:
    result = resolve_exam_state(LocationEvidence(region_of_residence="TX"), use_patient_address=False)
    assert [f.detail for f in result.findings[2:]] == [
        "RegionOfResidence not used: use_patient_address is off",
        "PatientAddress not used: use_patient_address is off",
    ]


def test_invalid_facility_state_is_explained() -> None:
    result = resolve_exam_state(LocationEvidence(facility_state="ZZ", facility_label="SITE_A"))
    expected = SourceFinding(FAC, None, "facility SITE_A has state 'ZZ', not a licensing jurisdiction")
    assert result.findings[0] == expected


def test_result_is_frozen_and_json_is_plain() -> None:
    result = resolve_exam_state(LocationEvidence(institution_address="Dallas, TX 74103"))
    assert isinstance(result, ExamLocation)
    with pytest.raises(AttributeError):
        result.state = "TX"  # type: ignore[misc]
    assert result.conflicts_as_json() == [
        {
            "source": "institution_address",
            "state": None,
            "detail": "InstitutionAddress: state code TX and ZIP 74103 (OK) disagree",
        }
    ]
    assert resolve_exam_state(LocationEvidence(institution_address=OK_ER)).conflicts_as_json() == []
