"""Text values of printable ASCII read without pydicom (router/dicom/ascii_values.py): the same
text pydicom's conversion gives the router, value by value, and the same InstanceHeader for
every Part 10 file shipped with pydicom."""

from __future__ import annotations

from pathlib import Path

import pydicom.data
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydicom.charset import convert_encodings
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.tag import Tag

from router.dicom import ascii_values, extract
from router.dicom.extract import UndecodableDataSet, read_header

# Printable ASCII and NUL, weighted towards what changes the result: padding, separators.
_PLAIN_BYTES = st.lists(st.one_of(st.sampled_from(b" \\\x00 \\"), st.integers(0x20, 0x7E)), max_size=24).map(bytes)


#: Declared character sets (PS3.3 C.12.1.1.2), single-byte, multi-byte, with code extensions.
CHARACTER_SETS = [
    [""],
    ["ISO_IR 100"],
    ["ISO_IR 13"],  # JIS X 0201: pydicom decodes it as Shift JIS
    ["ISO_IR 192"],
    ["GB18030"],
    ["ISO 2022 IR 6", "ISO 2022 IR 87"],
    ["ISO 2022 IR 149"],
    ["ISO_IR 126"],
    ["ISO_IR 166"],
]


def _through_pydicom(value: bytes, vr: str, keyword: str, character_set: list[str]) -> str | None:
    """What the router read before: pydicom converts the element (by its explicit VR)."""
    dataset = Dataset({Tag(keyword): RawDataElement(Tag(keyword), vr, len(value), value, 0, False, True)})
    dataset.set_original_encoding(False, True, convert_encodings(character_set))
    return extract._text(dataset, keyword)


@pytest.mark.parametrize("vr", sorted(ascii_values.VRS))
@given(value=_PLAIN_BYTES, character_set=st.sampled_from(CHARACTER_SETS))
def test_a_plain_value_reads_as_pydicom_reads_it(vr: str, character_set: list[str], value: bytes) -> None:
    # UIDs skip the control-character check (extract._UID_KEYWORDS): read them under a UID keyword
    keyword = "SOPInstanceUID" if vr == "UI" else "AccessionNumber"
    fast = ascii_values.text(value, vr)
    assert fast is not None
    assert extract._checked(keyword, fast, eight_bit=True) == _through_pydicom(value, vr, keyword, character_set)


@pytest.mark.parametrize(
    ("value", "vr", "expected"),
    [
        (b"1.2.840.10008.5.1.4.1.1.2\x00", "UI", "1.2.840.10008.5.1.4.1.1.2"),
        (b"1.2.3 \\ 4.5 ", "UI", "1.2.3\\4.5"),
        (b"CT\\PT ", "CS", "CT\\PT"),
        (b"A \\B ", "CS", "A \\B"),  # CS: values are not stripped one by one
        (b"A \\B ", "LO", "A\\B"),  # LO: each value right-stripped
        (b" 1 Main St\\Suite 2 ", "ST", "1 Main St\\Suite 2"),  # ST: one value, backslash and all
        (b"", "SH", ""),
    ],
)
def test_known_plain_values(value: bytes, vr: str, expected: str) -> None:
    assert ascii_values.text(value, vr) == expected


@pytest.mark.parametrize(
    ("value", "vr"),
    [
        (b"M\xfcller", "LO"),  # Latin-1: the declared character set decides, pydicom decodes it
        (b"\x1b$B", "LO"),  # ESC: an ISO 2022 escape sequence
        (b"line\r\nbreak", "ST"),  # controls: the router's own checks judge them through pydicom
        (b"Doe^John", "PN"),  # a VR the router does not read as plain text
        (b"12", "IS"),
    ],
)
def test_anything_else_is_left_to_pydicom(value: bytes, vr: str) -> None:
    assert ascii_values.text(value, vr) is None


def _readable_test_files() -> list[Path]:
    """The Part 10 files shipped inside pydicom (its data package's test_files folder; nothing
    is downloaded, unlike pydicom.data.get_testdata_files for the files it keeps elsewhere)."""
    paths = []
    for path in sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm")):
        with open(path, "rb") as handle:
            if handle.read(132)[128:] == b"DICM":
                paths.append(path)
    return paths


def test_every_pydicom_test_file_gives_the_same_header_as_through_pydicom(monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _readable_test_files()
    assert len(paths) > 50
    fast: dict[Path, object] = {}
    for path in paths:
        try:
            fast[path] = read_header(path)
        except UndecodableDataSet as exc:
            fast[path] = ("refused", str(exc))
    monkeypatch.setattr(extract, "_plain_texts", lambda raws: {})  # every value through pydicom
    taken = 0
    for path in paths:
        try:
            slow: object = read_header(path)
        except UndecodableDataSet as exc:
            slow = ("refused", str(exc))
        assert fast[path] == slow, path.name
        taken += not isinstance(slow, tuple)
    assert taken > 50


def test_a_character_set_with_a_wrong_length_for_its_vr_is_undecodable(tmp_path: Path) -> None:
    """Found by hypothesis in CI: (0008,0005) sent with VR SL and 1 byte made pydicom raise
    BytesLengthException out of read_header (the handler must answer a status, 0xC210)."""
    from tests.dicom_helpers import write_raw_part10

    path = write_raw_part10(tmp_path / "bad.dcm", "1.2.840.10008.5.1.4.1.1.2", "1.0", b"\x08\x00\x05\x00SL\x01\x00\x00")
    with pytest.raises(UndecodableDataSet, match=r"^BytesLengthException$"):
        read_header(path)
