"""Read the attributes the router needs from a received Part 10 file, tolerantly.

Only the listed tags are read, and nothing from the pixel data on (``stop_before_pixels``,
``specific_tags``), so a 500 MB multi-frame instance costs a header read. Text is decoded with
the data set's Specific Character Set (0008,0005) by pydicom; a value that could not be decoded
(pydicom substitutes U+FFFD) or cannot be converted counts as absent. A data set that cannot be
parsed at all raises :class:`UndecodableDataSet` (the handler answers 0xC210).

PatientState (0038,0500) is the patient's clinical state, not a US state: it is never read.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.tag import Tag
from pydicom.uid import UID

from router.domain.enums import CptSource
from router.domain.billing import ProcedureCode
from router.domain.instance import InstanceHeader
from router.part10 import dataset_offset

#: Attributes read from each data set (DICOM PS3.6 keywords).
HEADER_KEYWORDS = (
    "SpecificCharacterSet",
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyDate",
    "AccessionNumber",
    "Modality",
    "InstitutionName",
    "InstitutionAddress",
    "StudyDescription",
    "ProcedureCodeSequence",
    "SeriesDescription",
    "PatientAddress",
    "CountryOfResidence",
    "RegionOfResidence",
    "BodyPartExamined",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "RequestedProcedureCodeSequence",
    "RequestAttributesSequence",
    "RequestedProcedurePriority",
)
_SPECIFIC_TAGS = [Tag(keyword) for keyword in HEADER_KEYWORDS]
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_TAGS = {Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")}


class UndecodableDataSet(Exception):
    """The received data set cannot be parsed (maps to C-STORE status 0xC210)."""


def read_header(path: Path) -> InstanceHeader:
    """Read an :class:`InstanceHeader` from a Part 10 file.

    Parameters
    ----------
    path : Path
        A Part 10 file (preamble, File Meta Information, data set as received).

    Raises
    ------
    UndecodableDataSet
        If the file meta or the data set cannot be parsed.
    """
    try:
        dataset = dcmread(path, stop_before_pixels=True, specific_tags=_SPECIFIC_TAGS)
        _check_lengths(path, dataset)
        transfer_syntax = str(dataset.file_meta.TransferSyntaxUID)
        # Touch every element once: a structurally broken data set fails here, not later.
        for element in dataset.iterall():
            _ = element.value
    except UndecodableDataSet:
        raise
    except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, AttributeError,
            OSError, OverflowError, IndexError, NotImplementedError, LookupError) as exc:
        raise UndecodableDataSet(type(exc).__name__) from exc
    return header_from_dataset(dataset, transfer_syntax)


def _check_lengths(path: Path, dataset: Dataset) -> None:
    """Refuse a data set whose top-level elements claim more bytes than were received.

    pydicom reads a truncated value without complaint; a value length running past the end of
    the data set means the sender's encoding is broken (PS3.5 section 7.1), so it is answered
    0xC210 rather than stored as if whole. The walk stops at Pixel Data, whose defined length is
    checked without reading it (an encapsulated one is not scanned). Deflated data sets are
    left to the inflater.
    """
    syntax = UID(str(dataset.file_meta.TransferSyntaxUID))
    if syntax.is_deflated or not syntax.is_transfer_syntax:
        return
    offset = dataset_offset(path)
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        pixel: list[tuple[int, int]] = []

        def at_pixel_data(tag: object, _vr: object, length: int) -> bool:
            if tag in _PIXEL_TAGS:
                pixel.append((handle.tell(), length))
                return True
            return False

        handle.seek(offset)
        elements = data_element_generator(
            handle, syntax.is_implicit_VR, syntax.is_little_endian, stop_when=at_pixel_data, defer_size=256
        )
        for raw in elements:
            if raw.length != _UNDEFINED_LENGTH and raw.value_tell + raw.length > size:
                raise UndecodableDataSet(f"element {raw.tag} is longer than the data set")
        for value_start, length in pixel:
            if length != _UNDEFINED_LENGTH and value_start + length > size:
                raise UndecodableDataSet("Pixel Data is longer than the data set")


def header_from_dataset(dataset: Dataset, transfer_syntax_uid: str) -> InstanceHeader:
    """Build an :class:`InstanceHeader` from an already-read data set (absent values are ``None``)."""
    codes = [*_codes(dataset, "ProcedureCodeSequence", CptSource.PROCEDURE_CODE_SEQUENCE)]
    codes += _codes(dataset, "RequestedProcedureCodeSequence", CptSource.REQUESTED_PROCEDURE_CODE_SEQUENCE)
    for item in _items(dataset, "RequestAttributesSequence"):
        codes += _codes(item, "RequestedProcedureCodeSequence", CptSource.REQUESTED_PROCEDURE_CODE_SEQUENCE)
    return InstanceHeader(
        sop_class_uid=_text(dataset, "SOPClassUID"),
        sop_instance_uid=_text(dataset, "SOPInstanceUID"),
        study_instance_uid=_text(dataset, "StudyInstanceUID"),
        series_instance_uid=_text(dataset, "SeriesInstanceUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        accession_number=_text(dataset, "AccessionNumber"),
        study_date=_date(dataset, "StudyDate"),
        study_description=_text(dataset, "StudyDescription"),
        modality=_text(dataset, "Modality"),
        body_part=_text(dataset, "BodyPartExamined"),
        series_description=_text(dataset, "SeriesDescription"),
        priority=_text(dataset, "RequestedProcedurePriority"),
        institution_name=_text(dataset, "InstitutionName"),
        institution_address=_text(dataset, "InstitutionAddress"),
        patient_address=_text(dataset, "PatientAddress"),
        region_of_residence=_text(dataset, "RegionOfResidence"),
        country_of_residence=_text(dataset, "CountryOfResidence"),
        procedure_codes=tuple(dict.fromkeys(codes)),
    )


def _value(dataset: Dataset, keyword: str) -> Any:
    try:
        element = dataset.get(keyword)
        return None if element is None else element
    except Exception:  # noqa: BLE001 - a value pydicom cannot convert counts as absent
        return None


def _text(dataset: Dataset, keyword: str) -> str | None:
    """Element value as stripped text, or ``None`` if absent, empty or not decodable."""
    value = _value(dataset, keyword)
    if value is None:
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        value = "\\".join(str(item) for item in value)
    text = str(value)
    if "\ufffd" in text:
        return None
    text = text.replace("\x00", "").strip()
    return text or None


def _date(dataset: Dataset, keyword: str) -> dt.date | None:
    text = _text(dataset, keyword)
    if text is None or len(text) != 8 or not text.isdigit():
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
    except ValueError:
        return None


def _items(dataset: Dataset, keyword: str) -> list[Dataset]:
    sequence = _value(dataset, keyword)
    if sequence is None:
        return []
    try:
        return [item for item in sequence if isinstance(item, Dataset)]
    except TypeError:
        return []


def _codes(dataset: Dataset, keyword: str, source: CptSource) -> list[ProcedureCode]:
    codes: list[ProcedureCode] = []
    for item in _items(dataset, keyword):
        value = _text(item, "CodeValue")
        scheme = _text(item, "CodingSchemeDesignator")
        if value is None or scheme is None:
            continue
        codes.append(ProcedureCode(value=value, scheme=scheme, meaning=_text(item, "CodeMeaning") or "", source=source))
    return codes
