"""Write the synthetic sample studies that ``router demo`` sends over C-STORE.

Run from the repository root::

    python sample_dicom/make_samples.py            # rewrite sample_dicom/ in place
    python sample_dicom/make_samples.py --out DIR  # write the same files under DIR

Layout: ``<out>/<CALLING_AE_TITLE>/<case_name>/<n>.dcm``. The first folder is the calling AE
title the demo sends that study with (DICOM PS3.8 Section 9.3.2: at most 16 characters); ``n``
counts the instances of the study from 1 in sending order.

Every patient is SYNTHETIC (names such as ``Testpatient^Alpha``, made-up street addresses).
Output is deterministic: UIDs are ``2.25.<int>`` with the integer of a name-based (SHA-1, version
5) UUID (PS3.5 Annex B.2, ISO/IEC 9834-8), dates and times are fixed, and the file meta carries
this script's own Implementation Class UID and Version Name rather than pydicom's, so a rerun
gives byte-identical files.
"""

from __future__ import annotations

import argparse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
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

#: Namespace of every name-based UUID behind the sample UIDs. Changing it changes every UID.
UID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:teleradiology-router:sample-dicom:v1")
IMPLEMENTATION_VERSION_NAME = "TRSAMPLES_1"  # SH, at most 16 characters
ROWS = COLUMNS = 16


def sample_uid(*parts: str) -> UID:
    """Return the fixed UID named by ``parts``.

    Parameters
    ----------
    *parts : str
        Path-like name of the object, e.g. ``("facility_tx", "series", "1")``.

    Returns
    -------
    pydicom.uid.UID
        ``2.25.`` followed by the decimal integer of a version 5 UUID (PS3.5 Annex B.2); at most
        44 characters, so well under the 64-character limit of PS3.5 Section 9.1.
    """
    return UID(f"2.25.{uuid.uuid5(UID_NAMESPACE, '/'.join(parts)).int}")


@dataclass(frozen=True)
class SeriesSpec:
    """One series: its number, description and the per-instance attributes (one dict each)."""

    number: int
    description: str
    instances: tuple[Mapping[str, object], ...]


@dataclass(frozen=True)
class ProcedureCode:
    """A coded procedure placed in ProcedureCodeSequence or RequestedProcedureCodeSequence."""

    sequence: str  # DICOM keyword of the sequence
    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class CaseSpec:
    """One sample study and the calling AE title it is sent with."""

    ae_title: str
    name: str
    transfer_syntax: UID
    charset: str | None  # SpecificCharacterSet; None leaves the default repertoire
    patient_name: str
    patient_id: str
    birth_date: str
    sex: str
    modality: str
    sop_class: UID
    body_part: str
    description: str
    accession: str
    study_date: str
    study_time: str
    series: tuple[SeriesSpec, ...]
    bits_stored: int = 12
    institution_name: str | None = None
    institution_address: str | None = None
    patient_address: str | None = None
    timezone_offset: str | None = None
    procedure_code: ProcedureCode | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


_CT = {"KVP": "120", "SliceThickness": "5", "RescaleIntercept": "-1024", "RescaleSlope": "1"}
_MR = {
    "ScanningSequence": "SE",
    "SequenceVariant": "NONE",
    "MRAcquisitionType": "2D",
    "RepetitionTime": "500",
    "EchoTime": "15",
    "MagneticFieldStrength": "1.5",
    "SliceThickness": "5",
}
_PROJECTION = {"PresentationIntentType": "FOR PRESENTATION", "ImagerPixelSpacing": [0.5, 0.5]}


def _axial(count: int) -> tuple[dict[str, object], ...]:
    return tuple({"ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"], "SliceLocation": str(5 * i)} for i in range(count))


CASES: tuple[CaseSpec, ...] = (
    CaseSpec(
        ae_title="CT_NORTH",
        name="facility_tx",
        transfer_syntax=ExplicitVRLittleEndian,
        charset="ISO_IR 100",
        patient_name="Testpatient^Alpha",
        patient_id="SYN0001",
        birth_date="19610214",
        sex="M",
        modality="CT",
        sop_class=CTImageStorage,
        body_part="CHEST",
        description="CT chest with contrast",
        accession="SYNACC0001",
        study_date="20261102",
        study_time="081500",
        timezone_offset="-0600",
        institution_name="North Texas Imaging",
        institution_address="100 Sample Imaging Way\r\nDenton, TX 76201",
        procedure_code=ProcedureCode("ProcedureCodeSequence", "71260", "C4", "CT chest with contrast"),
        series=(
            SeriesSpec(1, "Scout", ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},)),
            SeriesSpec(2, "Axial 5mm with contrast", _axial(2)),
        ),
        extra=_CT,
    ),
    CaseSpec(
        ae_title="ER_SOUTH",
        name="institution_address_ok",
        transfer_syntax=ExplicitVRLittleEndian,
        charset="ISO_IR 100",
        patient_name="Testpatient^Bravo",
        patient_id="SYN0002",
        birth_date="19850630",
        sex="F",
        modality="DX",
        sop_class=DigitalXRayImageStorageForPresentation,
        body_part="CHEST",
        description="Chest PA LAT",
        accession="SYNACC0002",
        study_date="20261103",
        study_time="221000",
        institution_name="Sample Emergency Center",
        institution_address="1000 N Lincoln Blvd\r\nOklahoma City, OK 73104",
        series=(
            SeriesSpec(
                1,
                "Chest PA LAT",
                (
                    {"ImageType": ["ORIGINAL", "PRIMARY"], "ViewPosition": "PA", "PatientOrientation": ["L", "F"]},
                    {"ImageType": ["ORIGINAL", "PRIMARY"], "ViewPosition": "LL", "PatientOrientation": ["P", "F"]},
                ),
            ),
        ),
        extra=_PROJECTION,
    ),
    CaseSpec(
        ae_title="MRI_WEST",
        name="patient_address_hl7",
        transfer_syntax=ImplicitVRLittleEndian,
        charset="ISO_IR 100",
        patient_name="Testpatient^Charlie",
        patient_id="SYN0003",
        birth_date="19790911",
        sex="M",
        modality="MR",
        sop_class=MRImageStorage,
        body_part="BRAIN",
        description="MRI brain without contrast",
        accession="SYNACC0003",
        study_date="20261104",
        study_time="140500",
        institution_name="Westside Sample MRI",
        patient_address="123 Elm St^^Denver^CO^80202^USA",
        procedure_code=ProcedureCode("RequestedProcedureCodeSequence", "70551", "CPT4", "MRI brain without contrast"),
        series=(
            SeriesSpec(1, "Ax T1 SE", _axial(2)),
            SeriesSpec(2, "Ax T2 FSE", _axial(1)),
        ),
        extra=_MR,
    ),
    CaseSpec(
        ae_title="US_CLINIC",
        name="patient_address_zip4",
        transfer_syntax=ExplicitVRLittleEndian,
        charset="ISO_IR 100",
        patient_name="Müller^Zoë",
        patient_id="SYN0004",
        birth_date="19920118",
        sex="F",
        modality="US",
        sop_class=UltrasoundImageStorage,
        body_part="ABDOMEN",
        description="US abdomen complete",
        accession="SYNACC0004",
        study_date="20261105",
        study_time="093000",
        bits_stored=8,
        patient_address="742 Evergreen Terrace, Springfield 62704-1234",
        series=(
            SeriesSpec(
                1,
                "Abdomen",
                (
                    {"ImageType": ["ORIGINAL", "PRIMARY", "ABDOMINAL"]},
                    {"ImageType": ["ORIGINAL", "PRIMARY", "ABDOMINAL"]},
                ),
            ),
        ),
    ),
    CaseSpec(
        ae_title="CT_ISLAND",
        name="territory_pr",
        transfer_syntax=ExplicitVRLittleEndian,
        charset="ISO_IR 100",
        patient_name="Testpatient^Delta",
        patient_id="SYN0005",
        birth_date="19550402",
        sex="M",
        modality="CT",
        sop_class=CTImageStorage,
        body_part="HEAD",
        description="CT head without contrast",
        accession="SYNACC0005",
        study_date="20261106",
        study_time="031200",
        timezone_offset="-0400",
        institution_name="Sample Island Hospital",
        institution_address="1 Calle Ficticia\r\nSan Juan, PR 00901",
        series=(SeriesSpec(1, "Axial head 5mm", _axial(2)),),
        extra=_CT,
    ),
    CaseSpec(
        ae_title="ER_TULSA",
        name="conflict_ok_tx",
        transfer_syntax=DeflatedExplicitVRLittleEndian,
        charset="ISO_IR 100",
        patient_name="Testpatient^Echo",
        patient_id="SYN0006",
        birth_date="19880725",
        sex="M",
        modality="CT",
        sop_class=CTImageStorage,
        body_part="ABDOMENPELVIS",
        description="CT abdomen and pelvis with contrast",
        accession="SYNACC0006",
        study_date="20261107",
        study_time="190000",
        institution_name="Sample Tulsa ER",
        institution_address="1 Demo Plaza\r\nTulsa, OK 74103",
        patient_address="500 Main St^^Dallas^TX^75201^USA",
        series=(
            SeriesSpec(1, "Scout", ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]},)),
            SeriesSpec(2, "Axial portal venous", _axial(1)),
        ),
        extra=_CT,
    ),
    CaseSpec(
        ae_title="MODALITY1",
        name="no_state",
        transfer_syntax=ExplicitVRLittleEndian,
        charset=None,
        patient_name="Testpatient^Foxtrot",
        patient_id="SYN0007",
        birth_date="20010909",
        sex="F",
        modality="CR",
        sop_class=ComputedRadiographyImageStorage,
        body_part="KNEE",
        description="Knee 3 views",
        accession="SYNACC0007",
        study_date="20261108",
        study_time="110000",
        series=(
            SeriesSpec(
                1,
                "Right knee",
                (
                    {"ViewPosition": "AP", "Laterality": "R"},
                    {"ViewPosition": "LL", "Laterality": "R"},
                    {"Laterality": "R"},
                ),
            ),
        ),
    ),
    CaseSpec(
        ae_title="MAMMO_WY",
        name="mammo_wy",
        transfer_syntax=ExplicitVRLittleEndian,
        charset="ISO_IR 100",
        patient_name="Testpatient^Golf",
        patient_id="SYN0008",
        birth_date="19700303",
        sex="F",
        modality="MG",
        sop_class=DigitalMammographyXRayImageStorageForPresentation,
        body_part="BREAST",
        description="Screening mammography bilateral",
        accession="SYNACC0008",
        study_date="20261109",
        study_time="100000",
        timezone_offset="-0700",
        institution_name="Sample Breast Center",
        institution_address="200 Sample Ave\r\nCheyenne, WY 82001",
        series=(
            SeriesSpec(
                1,
                "Screening CC",
                (
                    {"ImageType": ["ORIGINAL", "PRIMARY"], "ImageLaterality": "R", "ViewPosition": "CC"},
                    {"ImageType": ["ORIGINAL", "PRIMARY"], "ImageLaterality": "L", "ViewPosition": "CC"},
                ),
            ),
        ),
        extra=_PROJECTION,
    ),
)


def _pixels(bits_stored: int, seed: int) -> bytes:
    """Deterministic ROWS x COLUMNS MONOCHROME2 pattern, little endian, 8 or 16 bits allocated."""
    top = 1 << bits_stored
    values = [(x * 97 + y * 31 + seed * 257) % top for y in range(ROWS) for x in range(COLUMNS)]
    if bits_stored <= 8:
        return bytes(values)
    return b"".join(v.to_bytes(2, "little") for v in values)


def _code_item(code: ProcedureCode) -> Dataset:
    item = Dataset()
    item.CodeValue = code.value
    item.CodingSchemeDesignator = code.scheme
    item.CodeMeaning = code.meaning
    return item


def build_dataset(case: CaseSpec, series: SeriesSpec, index: int, number: int, attrs: Mapping[str, object]) -> Dataset:
    """Build one instance of ``case``.

    Parameters
    ----------
    case : CaseSpec
        The study.
    series : SeriesSpec
        The series the instance belongs to.
    index : int
        Position of the instance in its series, from 0.
    number : int
        Position of the instance in the study, from 1 (the file name).
    attrs : Mapping[str, object]
        Per-instance attributes (keyword to value).

    Returns
    -------
    pydicom.dataset.Dataset
        A data set with its ``file_meta`` (PS3.10 Section 7.1) ready for ``save_as``.
    """
    sop_uid = sample_uid(case.name, "instance", str(number))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = case.sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = case.transfer_syntax
    meta.ImplementationClassUID = sample_uid("implementation")
    meta.ImplementationVersionName = IMPLEMENTATION_VERSION_NAME

    ds = Dataset()
    ds.file_meta = meta
    if case.charset is not None:
        ds.SpecificCharacterSet = case.charset
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = case.sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = case.study_date
    ds.StudyTime = ds.SeriesTime = case.study_time
    ds.ContentTime = f"{case.study_time[:4]}{number:02d}"
    if case.timezone_offset is not None:
        ds.TimezoneOffsetFromUTC = case.timezone_offset
    ds.AccessionNumber = case.accession
    ds.Modality = case.modality
    ds.Manufacturer = "SYNTHETIC"
    if case.institution_name is not None:
        ds.InstitutionName = case.institution_name
    if case.institution_address is not None:
        ds.InstitutionAddress = case.institution_address
    ds.ReferringPhysicianName = "Referrer^Sample"
    ds.StudyDescription = case.description
    ds.SeriesDescription = series.description
    if case.procedure_code is not None and case.procedure_code.sequence == "ProcedureCodeSequence":
        ds.ProcedureCodeSequence = Sequence([_code_item(case.procedure_code)])
    ds.PatientName = case.patient_name
    ds.PatientID = case.patient_id
    ds.PatientBirthDate = case.birth_date
    ds.PatientSex = case.sex
    if case.patient_address is not None:
        ds.PatientAddress = case.patient_address
    ds.BodyPartExamined = case.body_part
    for keyword, value in case.extra.items():
        setattr(ds, keyword, value)
    ds.StudyInstanceUID = sample_uid(case.name, "study")
    ds.SeriesInstanceUID = sample_uid(case.name, "series", str(series.number))
    ds.StudyID = case.accession[-4:]
    ds.SeriesNumber = series.number
    ds.InstanceNumber = index + 1
    if case.modality in ("CT", "MR"):
        ds.FrameOfReferenceUID = sample_uid(case.name, "frame")
        ds.ImagePositionPatient = [-4.0, -4.0, 5.0 * index]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [0.5, 0.5]
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    if case.procedure_code is not None and case.procedure_code.sequence == "RequestedProcedureCodeSequence":
        ds.RequestedProcedureCodeSequence = Sequence([_code_item(case.procedure_code)])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ROWS
    ds.Columns = COLUMNS
    ds.BitsAllocated = 8 if case.bits_stored <= 8 else 16
    ds.BitsStored = case.bits_stored
    ds.HighBit = case.bits_stored - 1
    ds.PixelRepresentation = 0
    ds.add_new("PixelData", "OB" if ds.BitsAllocated == 8 else "OW", _pixels(case.bits_stored, number))
    return ds


def write_samples(out: Path) -> list[Path]:
    """Write every case under ``out``; return the files written, in sending order.

    Raises
    ------
    OSError
        If a folder or file cannot be written.
    """
    written: list[Path] = []
    for case in CASES:
        folder = out / case.ae_title / case.name
        folder.mkdir(parents=True, exist_ok=True)
        number = 0
        for series in case.series:
            for index, attrs in enumerate(series.instances):
                number += 1
                ds = build_dataset(case, series, index, number, attrs)
                path = folder / f"{number}.dcm"
                ds.save_as(path, enforce_file_format=True)
                written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``--out DIR`` (default: the folder of this script)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parent,
        help="folder to write <AE_TITLE>/<case>/<n>.dcm under (default: beside this script)",
    )
    args = parser.parse_args(argv)
    write_samples(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
