"""The fast scan of the elements before Pixel Data (router.dicom.prescan): taken in the common
case, giving exactly what pydicom's walk gives, and leaving everything unusual to that walk."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from router.dicom import extract, prescan
from router.dicom.extract import read_header
from tests.dicom_helpers import make_dataset, pydicom_file, write_part10

_WANTED = frozenset(int(tag) for tag in extract._SPECIFIC_TAGS)


def _scan(path: Path, implicit: bool) -> prescan.Scanned | None:
    with open(path, "rb") as handle:
        extract._read_file_meta(handle)
        return prescan.scan(handle, implicit, True, path.stat().st_size, _WANTED)


def _with_codes(**overrides: object) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = "71250", "CPT4", "CT chest"
    return make_dataset(ProcedureCodeSequence=Sequence([code]), **overrides)


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
def test_the_scan_is_taken_and_reads_what_pydicoms_walk_reads(
    tmp_path: Path, syntax: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_part10(_with_codes(), tmp_path / "a.dcm", syntax)
    scanned = _scan(path, implicit=syntax == ImplicitVRLittleEndian)
    assert scanned is not None and scanned.pixel_tag == 0x7FE00010
    assert scanned.pixel_end is not None and scanned.pixel_end == path.stat().st_size  # pixel data is last
    fast = read_header(path)
    assert fast.procedure_codes and fast.procedure_codes[0].value == "71250"
    monkeypatch.setattr(prescan, "scan", lambda *args: None)  # pydicom's walk only
    assert read_header(path) == fast


def test_a_real_ct_is_scanned_fast(tmp_path: Path) -> None:
    path = pydicom_file("CT_small.dcm")
    scanned = _scan(path, implicit=False)
    assert scanned is not None and scanned.pixel_tag == 0x7FE00010
    assert {int(tag) for tag in scanned.raws} >= {0x00080016, 0x00080018, 0x0020000D, 0x0020000E}


def test_unusual_data_sets_are_left_to_pydicoms_walk(tmp_path: Path) -> None:
    # an undefined-length sequence before Pixel Data
    undefined = _with_codes()
    undefined["ProcedureCodeSequence"].is_undefined_length = True
    path = write_part10(undefined, tmp_path / "undefined.dcm")
    assert _scan(path, implicit=False) is None
    assert read_header(path).procedure_codes[0].value == "71250"  # and pydicom's walk reads it
    # a data set cut inside an element before Pixel Data
    whole = write_part10(make_dataset(), tmp_path / "whole.dcm").read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(whole[: whole.index(b"CHEST") + 2])
    assert _scan(cut, implicit=False) is None
    with pytest.raises(extract.UndecodableDataSet):
        read_header(cut)
