"""Pure claim-line rules (router.domain.claims, router.domain.x12_lines): POS, ICD-10-CM, modifiers, money, X12."""

from __future__ import annotations

import pytest

from router.domain.claims import (
    FeeSchedule,
    contract_charge,
    diagnosis_codes,
    diagnosis_pointers,
    line_modifiers,
    place_of_service,
    validate_icd10cm,
    validate_pos,
    validate_tin,
)
from router.domain.x12_lines import claim_hi, dollars, segment
from router.errors import DataFileError, ValidationError


@pytest.mark.parametrize(
    ("patient_class", "outpatient", "default", "expected"),
    [
        ("I", "22", None, ("21", None)),
        ("i", "22", "11", ("21", None)),
        ("O", "19", None, ("19", None)),
        ("E", "22", "11", ("23", None)),
        ("R", "22", "11", ("11", None)),
        (None, "22", "11", ("11", None)),
        ("P", "22", None, (None, "no place of service: patient class 'P' and the facility has no default POS")),
        ("", "22", None, (None, "no place of service: no patient class (PV1-2) and the facility has no default POS")),
    ],
)
def test_place_of_service(
    patient_class: str | None, outpatient: str, default: str | None, expected: tuple[str | None, str | None]
) -> None:
    assert place_of_service(patient_class, outpatient, default) == expected


@pytest.mark.parametrize(
    ("value", "message"), [("02", "telehealth"), ("10", "telehealth"), ("9", "not a CMS"), ("28", "not a CMS")]
)
def test_pos_refused(value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        validate_pos(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("R07.9", "R07.9"),
        ("r079", "R07.9"),
        ("R51", "R51"),
        ("S09.90XA", "S09.90XA"),
        (" M25.511 ", "M25.511"),
        ("U07.1", "U07.1"),
    ],
)
def test_icd10cm_shape(value: str, expected: str) -> None:
    assert validate_icd10cm(value) == expected


@pytest.mark.parametrize("value", ["799.9", "R0", "R07.91234", "07.9", "RR7.9", ""])
def test_icd10cm_refused(value: str) -> None:
    with pytest.raises(ValidationError, match="is not an ICD-10-CM code"):
        validate_icd10cm(value)


def test_diagnosis_codes_keep_twelve_distinct_and_pointers_four() -> None:
    codes, problems = diagnosis_codes([f"R{n:02d}.0" for n in range(14)] + ["R00.0"], "order")
    assert len(codes) == 12 and codes[0] == "R00.0" and codes[-1] == "R11.0"
    assert problems == ["order has 14 diagnoses: the first 12 are kept (837P HI limit)"]
    assert diagnosis_pointers(12) == (1, 2, 3, 4) and diagnosis_pointers(2) == (1, 2) and diagnosis_pointers(0) == ()


@pytest.mark.parametrize(
    ("professional", "ordered", "modifiers", "problems"),
    [
        (True, ["rt"], ("26", "RT"), []),
        (False, ["LT", "59"], ("LT", "59"), []),
        (True, ["26", "TC"], ("26",), ["modifier TC from the order ignored: the arrangement decides 26"]),
        (True, ["95"], ("26",), ["modifier 95 is a telehealth modifier: not used on a teleradiology read"]),
        (True, ["ZZ"], ("26",), ["modifier 'ZZ' is not one of LT, RT, 50, 52, 59, XE, XP, XS, XU, 76, 77"]),
        (True, ["LT", "RT"], ("26", "LT", "RT"), ["modifiers LT and RT contradict each other"]),
        (True, ["LT", "59", "76", "52"], ("26", "LT", "59", "76"), ["5 modifiers: an 837P line carries at most 4"]),
    ],
)
def test_line_modifiers(
    professional: bool, ordered: list[str], modifiers: tuple[str, ...], problems: list[str]
) -> None:
    assert line_modifiers(professional, ordered) == (modifiers, problems)


@pytest.mark.parametrize(
    ("fee", "percent", "cents"), [(9000, 65, 5850), (2501, 50, 1251), (2499, 50, 1250), (1, 50, 1), (100, 100, 100)]
)
def test_contract_charge_rounds_half_up(fee: int, percent: int, cents: int) -> None:
    assert contract_charge(fee, percent) == cents


def test_tin() -> None:
    assert validate_tin("12-3456789") == validate_tin("123456789") == "123456789"
    for bad in ("1234-56789", "12345678", "12-34567890", "abcdefghi"):
        with pytest.raises(ValidationError, match="must be nine digits"):
            validate_tin(bad)


def test_fee_schedule_parse_and_errors() -> None:
    text = "# version: 2026\ncpt,modifier,charge_cents,source\n71260,26,9000,placeholder\n71260,,36000,chargemaster\n"
    fees = FeeSchedule.from_csv_text(text, "2026")
    assert (fees.charge("71260", True), fees.charge("71260", False), fees.charge("70450", True)) == (9000, 36000, None)
    assert fees.is_placeholder("71260", True) and not fees.is_placeholder("71260", False)
    for body, message in (
        ("71260,TC,10,x\n", "line 3: modifier must be 26 or empty"),
        ("71260,26,9.50,x\n", "line 3: charge_cents must be whole cents"),
        ("71020,26,10,x\n", "line 3: CPT code 71020 was deleted in CPT 2018"),
        ("71260,26,10,x\n71260,26,11,x\n", "line 4: 71260-26 listed twice"),
    ):
        with pytest.raises(DataFileError, match=message):
            FeeSchedule.from_csv_text("# version: 2026\ncpt,modifier,charge_cents,source\n" + body, "2026")


def test_x12_pieces() -> None:
    assert [dollars(c) for c in (9000, 5850, 5805, 1, 0)] == ["90", "58.5", "58.05", "0.01", "0"]
    assert segment("SV1", "HC:71260:26", "90", "UN", 1, "23", "", "") == "SV1*HC:71260:26*90*UN*1*23~"
    assert claim_hi(["R07.9", "R06.02"]) == "HI*ABK:R079*ABF:R0602~"
