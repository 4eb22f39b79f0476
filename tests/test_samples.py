"""The sample studies in ``sample_dicom/`` and the demo roster in ``config/demo/``.

Checks that every sample is a valid DICOM Part 10 file (PS3.10 Section 7.1) with valid, unique
UIDs (PS3.5 Section 9.1), that each case folder is one study sent under a valid AE title (PS3.8
Section 9.3.2), that the transfer syntaxes and location tags are the ones the README documents,
that the generator is deterministic, and that the demo roster has what the demo needs (valid NPIs
by the CMS check-digit rule, the licenses each case relies on).
"""

from __future__ import annotations

import csv
import datetime as dt
import re
import struct
import subprocess
import sys
import zlib
from collections import defaultdict
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import zipcodes
from pydicom import dcmread
from pydicom.dataset import Dataset, validate_file_meta
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    DigitalMammographyXRayImageStorageForPresentation,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundImageStorage,
)

from router.domain.enums import LicensePathway, LicenseStatus
from router.domain.jurisdictions import LICENSING_JURISDICTIONS

REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_dicom"
DEMO = REPO / "config" / "demo"
SCRIPT = SAMPLES / "make_samples.py"

# case -> (calling AE, transfer syntax, SOP class, modality, series count, instance count, charset)
EXPECTED = {
    "facility_tx": ("CT_NORTH", ExplicitVRLittleEndian, CTImageStorage, "CT", 2, 3, "ISO_IR 100"),
    "institution_address_ok": (
        "ER_SOUTH",
        ExplicitVRLittleEndian,
        DigitalXRayImageStorageForPresentation,
        "DX",
        1,
        2,
        "ISO_IR 100",
    ),
    "patient_address_hl7": ("MRI_WEST", ImplicitVRLittleEndian, MRImageStorage, "MR", 2, 3, "ISO_IR 100"),
    "patient_address_zip4": ("US_CLINIC", ExplicitVRLittleEndian, UltrasoundImageStorage, "US", 1, 2, "ISO_IR 100"),
    "territory_pr": ("CT_ISLAND", ExplicitVRLittleEndian, CTImageStorage, "CT", 1, 2, "ISO_IR 100"),
    "conflict_ok_tx": ("ER_TULSA", DeflatedExplicitVRLittleEndian, CTImageStorage, "CT", 2, 2, "ISO_IR 100"),
    "no_state": ("MODALITY1", ExplicitVRLittleEndian, ComputedRadiographyImageStorage, "CR", 1, 3, None),
    "mammo_wy": (
        "MAMMO_WY",
        ExplicitVRLittleEndian,
        DigitalMammographyXRayImageStorageForPresentation,
        "MG",
        1,
        2,
        "ISO_IR 100",
    ),
}

# case -> (InstitutionAddress, PatientAddress, state the ZIPs in them belong to, in that order)
LOCATION = {
    "facility_tx": ("100 Sample Imaging Way\r\nDenton, TX 76201", None, ("TX",)),
    "institution_address_ok": ("1000 N Lincoln Blvd\r\nOklahoma City, OK 73104", None, ("OK",)),
    "patient_address_hl7": (None, "123 Elm St^^Denver^CO^80202^USA", ("CO",)),
    "patient_address_zip4": (None, "742 Evergreen Terrace, Springfield 62704-1234", ("IL",)),
    "territory_pr": ("1 Calle Ficticia\r\nSan Juan, PR 00901", None, ("PR",)),
    "conflict_ok_tx": ("1 Demo Plaza\r\nTulsa, OK 74103", "500 Main St^^Dallas^TX^75201^USA", ("OK", "TX")),
    "no_state": (None, None, ()),
    "mammo_wy": ("200 Sample Ave\r\nCheyenne, WY 82001", None, ("WY",)),
}

# case -> (sequence keyword, CodeValue, CodingSchemeDesignator) or None
PROCEDURE_CODES = {
    "facility_tx": ("ProcedureCodeSequence", "71260", "C4"),
    "patient_address_hl7": ("RequestedProcedureCodeSequence", "70551", "CPT4"),
}

ROSTER_HEADER = ["npi", "name", "license_state", "license_number", "pathway", "status", "issued", "expires"]
RADIOLOGISTS_HEADER = ["npi", "email", "spl_state", "loq_issued", "mqsa_qualified", "reading_state"]
FACILITIES_HEADER = ["ae_title", "name", "state", "timezone", "requires_privileges", "federal", "aliases"]
VALID_THROUGH = dt.date(2028, 12, 31)


def npi_is_valid(npi: str) -> bool:
    """CMS NPI rule: 10 digits, first 1 or 2, Luhn check digit over ``80840`` + first nine digits."""
    if len(npi) != 10 or not npi.isascii() or not npi.isdigit() or npi[0] not in "12":
        return False
    total = 0
    for position, char in enumerate(reversed("80840" + npi[:9])):
        digit = int(char) * (2 if position % 2 == 0 else 1)
        total += digit - 9 if digit > 9 else digit
    return (10 - total % 10) % 10 == int(npi[9])


def ae_title_is_valid(title: str) -> bool:
    """PS3.5 Table 6.2-1 (AE): 1-16 characters of the default repertoire, no backslash or
    control characters, not only spaces."""
    return (
        0 < len(title) <= 16
        and title.isascii()
        and title.strip() != ""
        and all(char.isprintable() and char != "\\" for char in title)
    )


def sample_files() -> list[Path]:
    return sorted(SAMPLES.glob("*/*/*.dcm"))


def case_folders() -> dict[str, Path]:
    return {folder.name: folder for folder in SAMPLES.glob("*/*") if folder.is_dir()}


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def read_case(case: str) -> list[Dataset]:
    folder = case_folders()[case]
    return [dcmread(path) for path in sorted(folder.glob("*.dcm"), key=lambda p: int(p.stem))]


# --- the helpers the tests rely on, on both sides of each boundary ---------------------------


@pytest.mark.parametrize(
    ("npi", "valid"),
    [
        ("1234567893", True),  # the CMS example
        ("1234567890", False),  # wrong check digit
        ("1000000012", True),
        ("1000000013", False),
        ("2000000010", True),  # first digit 2 is allowed
        ("3000000018", False),  # first digit 3 is not (check digit would match otherwise)
        ("0000000014", False),  # first digit 0 (check digit would match otherwise)
        ("123456789", False),  # 9 digits
        ("12345678931", False),  # 11 digits
        ("123456789a", False),
    ],
)
def test_npi_rule(npi: str, valid: bool) -> None:
    assert npi_is_valid(npi) is valid


@pytest.mark.parametrize(
    ("title", "valid"),
    [
        ("A" * 16, True),
        ("A" * 17, False),
        ("", False),
        ("   ", False),
        ("CT\\NORTH", False),
        ("CT\nNORTH", False),
        ("CT_NORTH", True),
        ("CT NORTH", True),
        ("ÄCT", False),
    ],
)
def test_ae_title_rule(title: str, valid: bool) -> None:
    assert ae_title_is_valid(title) is valid


# --- layout ---------------------------------------------------------------------------------


def test_case_folders_are_the_expected_ones() -> None:
    present = {(path.parent.name, path.name) for path in SAMPLES.glob("*/*") if path.is_dir()}
    assert present == {(spec[0], case) for case, spec in EXPECTED.items()}
    assert not [path for path in SAMPLES.glob("*/*/*") if path.suffix != ".dcm"]


@pytest.mark.parametrize("ae_title", sorted({spec[0] for spec in EXPECTED.values()}))
def test_calling_ae_folder_is_valid_ae_title(ae_title: str) -> None:
    assert (SAMPLES / ae_title).is_dir()
    assert ae_title_is_valid(ae_title)


def test_readme_case_table_matches_folders() -> None:
    text = (SAMPLES / "README.md").read_text(encoding="utf-8")
    section = text.split("## Cases", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    table = {tuple(cell.strip().strip("`") for cell in row.strip("|").split("|")[:2]) for row in rows}
    present = {(path.parent.name, path.name) for path in SAMPLES.glob("*/*") if path.is_dir()}
    assert len(rows) == len(table)
    assert table == present


# --- every file -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", sample_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_file_is_valid_part10(path: Path) -> None:
    raw = path.read_bytes()
    assert raw[:128] == bytes(128)
    assert raw[128:132] == b"DICM"
    ds = dcmread(path)  # force=False: needs the preamble and file meta
    validate_file_meta(ds.file_meta, enforce_standard=True)
    assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID
    assert ds.file_meta.ImplementationVersionName == "TRSAMPLES_1"
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID"):
        assert UID(ds[keyword].value).is_valid, keyword
    assert UID(ds.file_meta.ImplementationClassUID).is_valid
    for keyword in (
        "Modality",
        "BodyPartExamined",
        "StudyDescription",
        "AccessionNumber",
        "StudyDate",
        "StudyTime",
        "PatientName",
        "PatientID",
        "PatientBirthDate",
    ):
        assert str(ds.get(keyword, "")).strip(), keyword
    assert "PatientState" not in ds  # (0038,0500) is clinical, never a US state
    assert ds.PhotometricInterpretation == "MONOCHROME2"
    assert len(ds.PixelData) == ds.Rows * ds.Columns * ds.BitsAllocated // 8
    assert len(raw) < 4096


def test_sop_instance_uids_are_unique() -> None:
    uids = [dcmread(path, stop_before_pixels=True).SOPInstanceUID for path in sample_files()]
    assert len(uids) == len(set(uids)) == sum(spec[5] for spec in EXPECTED.values())


def test_series_belong_to_one_study_and_studies_differ() -> None:
    study_of_series: dict[str, set[str]] = defaultdict(set)
    studies = set()
    for path in sample_files():
        ds = dcmread(path, stop_before_pixels=True)
        study_of_series[ds.SeriesInstanceUID].add(ds.StudyInstanceUID)
        studies.add(ds.StudyInstanceUID)
    assert all(len(owners) == 1 for owners in study_of_series.values())
    assert len(studies) == len(EXPECTED)


# --- per case -------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_case_is_one_study_with_expected_encoding(case: str) -> None:
    _ae, syntax, sop_class, modality, n_series, n_instances, charset = EXPECTED[case]
    datasets = read_case(case)
    assert len(datasets) == n_instances
    assert [int(p.stem) for p in sorted(case_folders()[case].glob("*.dcm"))] == list(range(1, n_instances + 1))
    assert len({ds.StudyInstanceUID for ds in datasets}) == 1
    assert len({ds.SeriesInstanceUID for ds in datasets}) == n_series
    assert len({ds.AccessionNumber for ds in datasets}) == 1
    for ds in datasets:
        assert ds.file_meta.TransferSyntaxUID == syntax
        assert ds.SOPClassUID == sop_class
        assert ds.Modality == modality
        assert ds.get("SpecificCharacterSet") == charset


def test_some_study_has_two_series() -> None:
    assert max(spec[4] for spec in EXPECTED.values()) >= 2


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_location_tags(case: str) -> None:
    institution_address, patient_address, zip_states = LOCATION[case]
    for ds in read_case(case):
        assert ds.get("InstitutionAddress") == institution_address
        assert ds.get("PatientAddress") == patient_address
        for keyword in ("RegionOfResidence", "CountryOfResidence", "PatientState"):
            assert keyword not in ds
    zips = re.findall(r"\b(\d{5})(?:-\d{4})?\b", f"{institution_address or ''}\n{patient_address or ''}")
    assert tuple(zipcodes.matching(code)[0]["state"] for code in zips) == zip_states


def test_zip4_case_names_no_state() -> None:
    address = LOCATION["patient_address_zip4"][1]
    assert re.search(r"\b\d{5}-\d{4}$", address)
    words = {word.upper() for word in re.findall(r"[A-Za-z]+", address)}
    assert not words & LICENSING_JURISDICTIONS  # only the ZIP+4 tells the state
    assert "ILLINOIS" not in words


def test_no_state_case_has_no_location_at_all() -> None:
    facilities = {row["ae_title"] for row in read_csv(DEMO / "facilities.csv")[1]}
    assert EXPECTED["no_state"][0] not in facilities
    for ds in read_case("no_state"):
        for keyword in (
            "InstitutionAddress",
            "InstitutionName",
            "PatientAddress",
            "RegionOfResidence",
            "CountryOfResidence",
        ):
            assert keyword not in ds


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_procedure_codes(case: str) -> None:
    expected = PROCEDURE_CODES.get(case)
    for ds in read_case(case):
        present = [kw for kw in ("ProcedureCodeSequence", "RequestedProcedureCodeSequence") if kw in ds]
        if expected is None:
            assert present == []
            continue
        keyword, value, scheme = expected
        assert present == [keyword]
        (item,) = ds[keyword].value
        assert (item.CodeValue, item.CodingSchemeDesignator) == (value, scheme)


def test_non_ascii_name_is_latin1_encoded() -> None:
    for path in sorted(case_folders()["patient_address_zip4"].glob("*.dcm")):
        assert "Müller^Zoë".encode("latin-1") in path.read_bytes()
        assert str(dcmread(path).PatientName) == "Müller^Zoë"
    assert all(
        str(ds.PatientName).isascii() for case in EXPECTED if case != "patient_address_zip4" for ds in read_case(case)
    )


def test_deflated_file_is_compressed_and_reads_back() -> None:
    path = case_folders()["conflict_ok_tx"] / "1.dcm"
    raw = path.read_bytes()
    (group_length,) = struct.unpack("<I", raw[140:144])  # (0002,0000) UL value
    body = raw[144 + group_length :]
    inflated = zlib.decompressobj(-zlib.MAX_WBITS).decompress(body)
    assert inflated[:4] == b"\x08\x00\x05\x00"  # (0008,0005) SpecificCharacterSet, first element
    assert len(inflated) > len(body)
    ds = dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert ds.PatientAddress == "500 Main St^^Dallas^TX^75201^USA"
    assert len(ds.PixelData) == 16 * 16 * 2


# --- generator ------------------------------------------------------------------------------


def test_rerun_gives_byte_identical_files(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path)], check=True, cwd=tmp_path, timeout=120)
    fresh = {path.relative_to(tmp_path): path.read_bytes() for path in tmp_path.glob("*/*/*.dcm")}
    kept = {path.relative_to(SAMPLES): path.read_bytes() for path in sample_files()}
    assert sorted(fresh) == sorted(kept)
    stale = [str(name) for name in kept if kept[name] != fresh[name]]
    assert stale == [], "rerun `python sample_dicom/make_samples.py` and commit the result"


# --- demo roster and facilities -------------------------------------------------------------


def test_roster_npis_pass_the_luhn_rule() -> None:
    header, rows = read_csv(DEMO / "roster.csv")
    assert header == ROSTER_HEADER
    assert 4 <= len({row["npi"] for row in rows}) <= 6
    assert all(npi_is_valid(row["npi"]) for row in rows)
    _header, extra = read_csv(DEMO / "radiologists.csv")
    assert {row["npi"] for row in extra} == {row["npi"] for row in rows}


def test_roster_rows_are_well_formed() -> None:
    _header, rows = read_csv(DEMO / "roster.csv")
    names_by_npi: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        names_by_npi[row["npi"]].add(row["name"])
        assert row["license_state"] in LICENSING_JURISDICTIONS
        assert row["pathway"] in {LicensePathway.FULL, LicensePathway.IMLC}
        assert row["status"] in LicenseStatus.values()
        assert row["license_number"].strip()
        assert dt.date.fromisoformat(row["issued"]) < dt.date.fromisoformat(row["expires"])
    assert all(len(names) == 1 for names in names_by_npi.values())
    assert len({(row["npi"], row["license_state"]) for row in rows}) == len(rows)


def _active_readers(state: str, on: dt.date) -> set[str]:
    _header, rows = read_csv(DEMO / "roster.csv")
    return {
        row["npi"]
        for row in rows
        if row["license_state"] == state
        and row["status"] == LicenseStatus.ACTIVE
        and dt.date.fromisoformat(row["issued"]) <= on <= dt.date.fromisoformat(row["expires"])
    }


@pytest.mark.parametrize(
    ("state", "at_least", "at_most"),
    [("TX", 2, 2), ("OK", 1, 9), ("CO", 1, 9), ("IL", 1, 9), ("WY", 1, 9), ("PR", 0, 0)],
)
def test_roster_covers_the_demo_states(state: str, at_least: int, at_most: int) -> None:
    for day in (dt.date(2026, 11, 29), VALID_THROUGH):
        assert at_least <= len(_active_readers(state, day)) <= at_most


def test_roster_has_one_expired_license_and_the_rest_last() -> None:
    _header, rows = read_csv(DEMO / "roster.csv")
    expired = [row for row in rows if row["status"] == LicenseStatus.EXPIRED]
    assert len(expired) == 1
    assert dt.date.fromisoformat(expired[0]["expires"]) < dt.date(2026, 11, 29)
    assert expired[0]["license_state"] == "TX"  # shown as considered but ineligible for facility_tx
    others = [row for row in rows if row["status"] != LicenseStatus.EXPIRED]
    assert all(dt.date.fromisoformat(row["expires"]) >= VALID_THROUGH for row in others)
    assert not [row for row in rows if row["license_state"] == "PR"]


def test_exactly_one_mqsa_reader_and_they_hold_wyoming() -> None:
    header, rows = read_csv(DEMO / "radiologists.csv")
    assert header == RADIOLOGISTS_HEADER
    assert {row["mqsa_qualified"] for row in rows} <= {"true", "false"}
    mqsa = [row["npi"] for row in rows if row["mqsa_qualified"] == "true"]
    assert len(mqsa) == 1
    wyoming = _active_readers("WY", VALID_THROUGH)
    assert mqsa[0] in wyoming
    assert len(wyoming) >= 2  # someone else holds WY, so the MQSA rule decides the mammogram


def test_radiologist_attributes_are_well_formed() -> None:
    _header, rows = read_csv(DEMO / "radiologists.csv")
    _header, licenses = read_csv(DEMO / "roster.csv")
    full = {(row["npi"], row["license_state"]) for row in licenses if row["pathway"] == LicensePathway.FULL}
    for row in rows:
        assert row["email"].endswith("@example.org")
        assert row["spl_state"] in LICENSING_JURISDICTIONS and row["reading_state"] in LICENSING_JURISDICTIONS
        assert (row["npi"], row["spl_state"]) in full  # an SPL is a state of full licensure
        if row["loq_issued"]:
            dt.date.fromisoformat(row["loq_issued"])


def test_facilities_register_only_ct_north() -> None:
    header, rows = read_csv(DEMO / "facilities.csv")
    assert header == FACILITIES_HEADER
    by_ae = {row["ae_title"]: row for row in rows}
    assert by_ae["CT_NORTH"]["state"] == "TX"
    assert by_ae["CT_NORTH"]["timezone"] == "America/Chicago"
    for row in rows:
        assert ae_title_is_valid(row["ae_title"])
        assert row["state"] in LICENSING_JURISDICTIONS
        ZoneInfo(row["timezone"])
        assert row["requires_privileges"] in {"true", "false"}
    sample_aes = {spec[0] for spec in EXPECTED.values()}
    assert sample_aes & set(by_ae) == {"CT_NORTH"}  # every other case resolves from its own tags
    institution_names = {
        str(ds.get("InstitutionName", ""))
        for case in EXPECTED
        for ds in read_case(case)
        if EXPECTED[case][0] != "CT_NORTH"
    }
    aliases = {alias for row in rows for alias in row["aliases"].split("|") if alias}
    assert not institution_names & aliases
