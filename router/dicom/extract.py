"""Read the attributes the router needs from a received Part 10 file, tolerantly.

Only the listed tags are read, in one pass that stops at the pixel data, so a 500 MB
multi-frame instance costs a header read. Text is decoded with
the data set's Specific Character Set (0008,0005) by pydicom, never guessed (a value of
printable ASCII, the same under every character set, is read directly:
:mod:`router.dicom.ascii_values`), and a value that could not be decoded counts as absent:

- a misspelled defined term (``ISO IR 100``, ``ISO_IR100``, ``iso_ir 192``) is read as the one
  defined term it spells (PS3.3 section C.12.1.1.2); an unknown one (``LATIN1``) counts as
  none, and with none the Default Character Repertoire (ISO 646, PS3.5 section 6.1.2.1)
  applies, so a value with bytes outside it (8-bit text with no declaration) is absent;
- a value pydicom could not decode (it substitutes U+FFFD) or holding a control character
  other than TAB, LF, FF and CR (PS3.5 section 6.1.3; an ESC left over is a broken ISO 2022
  escape sequence; C1 controls are Windows-1252 or Shift-JIS bytes under a Latin-1
  declaration) is absent, as is one that cannot be converted.

A data set that cannot be parsed at all raises :class:`UndecodableDataSet` (the handler
answers 0xC210).

PatientState (0038,0500) is the patient's clinical state, not a US state: it is never read.
"""

from __future__ import annotations

import datetime as dt
import errno
import os
import re
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydicom import dcmread
from pydicom.charset import convert_encodings, default_encoding, python_encoding
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.filereader import data_element_generator
from pydicom.tag import BaseTag, Tag
from pydicom.uid import UID, ExplicitVRLittleEndian

from router.dicom import ascii_values, prescan
from router.dicom.head_reader import HeadFirstReader
from router.dicom.structure import InflationLimitExceeded, MalformedDataSet, check_to_end, inflate_dataset
from router.domain.billing import ProcedureCode
from router.domain.enums import CptSource
from router.domain.instance import InstanceHeader
from router.part10 import WrittenFileMeta

_is_implicit_vr: Callable[..., bool] | None
try:  # pydicom's own check of the VR encoding actually used (private, so optional)
    from pydicom.filereader import _is_implicit_vr
except ImportError:  # pragma: no cover - a pydicom without it
    _is_implicit_vr = None

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
#: Default of ``listener.max_inflated_bytes``: largest inflated deflated data set, in bytes (1 GiB).
DEFAULT_MAX_INFLATED_BYTES = 1 << 30
_NUMBER_OF_FRAMES = Tag("NumberOfFrames")
_SPECIFIC_TAGS: list[BaseTag | int] = [*(Tag(keyword) for keyword in HEADER_KEYWORDS), _NUMBER_OF_FRAMES]
_WANTED = frozenset(int(tag) for tag in _SPECIFIC_TAGS)
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PREAMBLE_AND_PREFIX = 132  # 128-byte preamble + "DICM" (PS3.10 section 7.1)
_PIXEL_TAGS = {Tag("PixelData"), Tag("FloatPixelData"), Tag("DoubleFloatPixelData")}
_CHARSET_TAG = Tag("SpecificCharacterSet")
#: Control characters a text value may hold once decoded (PS3.5 section 6.1.3; ESC is consumed
#: by the ISO 2022 decoder).
_ALLOWED_CONTROLS = frozenset("\t\n\f\r")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_PADDING = ascii_values.PADDING
_UID_KEYWORDS = frozenset({"SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID"})
#: Top-level elements whose printable-ASCII values are read without pydicom
#: (:mod:`router.dicom.ascii_values`): tag -> (keyword, the data dictionary's VR). The character
#: set itself stays with pydicom (:func:`_normalize_character_set`), and so do sequences.
_PLAIN_TEXT_TAGS = {
    int(Tag(keyword)): (keyword, dictionary_VR(keyword))
    for keyword in HEADER_KEYWORDS
    if keyword != "SpecificCharacterSet" and dictionary_VR(keyword) in ascii_values.VRS
}


def _charset_key(term: str) -> str:
    """A Specific Character Set term with case, spaces, underscores and hyphens ignored."""
    return re.sub(r"[\s_\-]", "", term.upper())


#: Defined terms of Specific Character Set (PS3.3 section C.12.1.1.2) pydicom can decode, by
#: their spelling-insensitive key.
_CHARSET_TERMS = {_charset_key(term): term for term in python_encoding if term}


class UndecodableDataSet(Exception):
    """The received data set cannot be parsed (maps to C-STORE status 0xC210)."""


class ReceivedFileUnreadable(Exception):
    """The received file could not be read back: a fault of this system (the file is gone, an
    I/O error, no file handles), not of the data (maps to C-STORE status 0xA700, so the sender
    retries; PS3.4 Table B.2-1)."""


#: errno values of an ``OSError`` that say the system failed, not the data set: any other
#: ``OSError`` met while reading (a seek to a negative offset a malformed length asked for,
#: EINVAL) still counts as an undecodable data set.
SYSTEM_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EIO,
        errno.EACCES,
        errno.EPERM,
        errno.EMFILE,
        errno.ENFILE,
        errno.ENOMEM,
        errno.ENOSPC,
        errno.ESTALE,
        errno.EROFS,
        errno.EDQUOT,
    }
)


def read_header(
    path: Path,
    max_inflated_bytes: int = DEFAULT_MAX_INFLATED_BYTES,
    head: tuple[bytes, int] | None = None,
    file_meta: WrittenFileMeta | None = None,
) -> InstanceHeader:
    """Read an :class:`InstanceHeader` from a Part 10 file, in one pass over its data set.

    The File Meta Information gives the transfer syntax; the data set is then walked once to
    its end: only the wanted elements' values are read, every other value (Pixel Data
    included) is skipped, and the walk checks that no element claims bytes that were not
    received and that the elements after Pixel Data parse to the last byte (see :func:`_walk`).
    A deflated data set (PS3.5 section A.5) is first inflated, in bounded steps, to an
    anonymous temporary file beside ``path`` (:func:`~router.dicom.structure.inflate_dataset`).

    Parameters
    ----------
    path : Path
        A Part 10 file (preamble, File Meta Information, data set as received).
    max_inflated_bytes : int
        Largest inflated size of a deflated data set, in bytes (``listener.max_inflated_bytes``).
    head : (bytes, int), optional
        The file's first bytes, already in memory, and its size in bytes (a received file's
        :attr:`~router.dicom.spool.SpoolFile.head`): read from memory, the file is opened only
        for what lies past them (:class:`~router.dicom.head_reader.HeadFirstReader`). The same
        result as without, in fewer system calls.
    file_meta : WrittenFileMeta, optional
        What the file's File Meta Information says, as the router wrote it (a received file's
        :attr:`~router.dicom.spool.SpoolFile.file_meta`): not parsed again (about a fifth of
        the header read; docs/benchmarks.md, lever 55).

    Raises
    ------
    UndecodableDataSet
        If the file meta or the data set cannot be parsed, or the data set is truncated or has
        anything malformed after Pixel Data.
    InflationLimitExceeded
        If a deflated data set inflates to more than ``max_inflated_bytes``.
    ReceivedFileUnreadable
        If the file cannot be read back for a reason of the system (:data:`SYSTEM_ERRNOS`).
    """
    try:
        dataset: Dataset
        plain: dict[str, str | None] = {}
        with _open(path, head) as handle:
            if file_meta is None:
                syntax, sending_ae_title = _read_file_meta(handle)
            else:
                handle.seek(file_meta.data_set_offset)
                syntax, sending_ae_title = UID(file_meta.transfer_syntax), file_meta.sending_ae_title
            if syntax.is_deflated:
                with tempfile.TemporaryFile(dir=path.parent) as inflated:
                    size = inflate_dataset(handle, inflated, max_inflated_bytes)
                    inflated.seek(0)
                    dataset, plain = _walk(inflated, UID(ExplicitVRLittleEndian), size)
            elif not syntax.is_transfer_syntax:
                dataset = dcmread(path, stop_before_pixels=True, specific_tags=_SPECIFIC_TAGS)
            else:
                dataset, plain = _walk(handle, syntax, _size(handle))
        _normalize_character_set(dataset)
        # Touch every element once: a structurally broken data set fails here, not later.
        for element in dataset.iterall():
            _ = element.value
    except (UndecodableDataSet, InflationLimitExceeded):
        raise
    except MalformedDataSet as exc:
        raise UndecodableDataSet(str(exc)) from exc
    except OSError as exc:
        if exc.errno in SYSTEM_ERRNOS:
            raise ReceivedFileUnreadable(exc.strerror or type(exc).__name__) from exc
        raise UndecodableDataSet(type(exc).__name__) from exc
    except (
        InvalidDicomError,
        EOFError,
        ValueError,
        KeyError,
        TypeError,
        AttributeError,
        OverflowError,
        IndexError,
        NotImplementedError,
        LookupError,
        BytesLengthException,  # a value whose length is not a multiple of its VR's size
        struct.error,
        zlib.error,
        RecursionError,
    ) as exc:
        raise UndecodableDataSet(type(exc).__name__) from exc
    return header_from_dataset(dataset, str(syntax), plain, sending_ae_title=sending_ae_title)


_UL = struct.Struct("<L")


def _open(path: Path, head: tuple[bytes, int] | None) -> Any:
    """The file at ``path`` for reading: from ``head`` first when given (see :func:`read_header`)."""
    if head is None:
        return open(path, "rb")
    return HeadFirstReader(path, *head)


def _size(handle: Any) -> int:
    """The length of the file ``handle`` reads, in bytes."""
    if isinstance(handle, HeadFirstReader):
        return handle.size
    return os.fstat(handle.fileno()).st_size


def _read_file_meta(reader: Any) -> tuple[UID, str | None]:
    """Check the preamble and read the Transfer Syntax UID (0002,0010) and the Sending
    Application Entity Title (0002,0017, None when absent) from the File Meta Information;
    leaves the reader at the start of the data set (PS3.10 section 7.1)."""
    head = reader.read(_PREAMBLE_AND_PREFIX)
    if len(head) < _PREAMBLE_AND_PREFIX or head[128:132] != b"DICM":
        raise InvalidDicomError("not a DICOM Part 10 file")
    syntax: str | None = None
    sending_ae_title: str | None = None
    # The File Meta Information ends where its group length (0002,0000) says (PS3.10 section
    # 7.1): a group 0002 element in the data set after it (which the sender put there) is
    # not read as the file's own (it could name another transfer syntax or sender).
    meta_end: list[int] = []

    def past_meta(tag: BaseTag, _vr: str | None, _length: int) -> bool:
        return tag.group != 0x0002 or (bool(meta_end) and reader.tell() > meta_end[0])

    meta = data_element_generator(reader, False, True, stop_when=past_meta)
    # The data set starts where the last File Meta element ends. pydicom's walk leaves the reader
    # there, except when the data set is shorter than one element header: it then reads those
    # bytes as a header cut short and stops at the end, and the data set would look empty
    # (0xC001, no Study Instance UID) instead of truncated (0xC210).
    start = reader.tell()
    for raw in meta:
        if isinstance(raw, RawDataElement):  # always: the generator reads, it converts nothing
            start = raw.value_tell + raw.length
            if raw.tag == 0x00020000 and raw.value is not None and len(raw.value) == 4 and not meta_end:
                meta_end.append(start + _UL.unpack(raw.value)[0])
        if raw.tag == 0x00020010:
            syntax = (raw.value or b"").decode("ascii", "replace").strip("\x00 ")
        elif raw.tag == 0x00020017:
            sending_ae_title = (raw.value or b"").decode("ascii", "replace").strip() or None
    if not syntax:
        raise InvalidDicomError("no Transfer Syntax UID in the File Meta Information")
    reader.seek(start)
    return UID(syntax), sending_ae_title


def _walk(reader: Any, syntax: UID, size: int) -> tuple[Dataset, dict[str, str | None]]:
    """One pass over the data set: wanted values read, others skipped, lengths checked.

    Returns the wanted elements as a pydicom data set, less the top-level text values of
    printable ASCII, which come back already read, by keyword (:func:`_plain_texts`).

    The elements before Pixel Data are scanned from their headers by
    :func:`~router.dicom.prescan.scan` (the common case, about 5x cheaper) or, for anything it
    leaves alone, walked by pydicom (:func:`_generate`); the checks below are the same either way.
    pydicom reads a truncated value without complaint; a value length running past the end of
    the data set, or a last element header cut short, means the sender's encoding is broken
    (PS3.5 section 7.1), so it is answered 0xC210 rather than stored as if whole. Every element
    is checked from its header (``stop_when`` sees each one before its value is read or
    skipped). The walk stops at Pixel Data, whose defined length is checked without reading it;
    encapsulated Pixel Data is checked fragment by fragment, from the item headers only, up to
    its sequence delimiter (:func:`_check_encapsulated`). An undefined-length sequence is
    parsed to its delimiter by pydicom (a truncated one raises). What follows Pixel Data is
    walked by its element headers to the last byte (:func:`~router.dicom.structure.check_to_end`):
    trailing garbage, a length past the end or an unterminated sequence raises.
    """
    start = reader.tell()
    implicit = syntax.is_implicit_VR
    if _is_implicit_vr is not None:  # tolerate a data set whose VR encoding contradicts its syntax
        implicit = _is_implicit_vr(reader, implicit, syntax.is_little_endian, None, is_sequence=False)
        reader.seek(start)
    scanned = prescan.scan(reader, implicit, syntax.is_little_endian, size, _WANTED)
    if scanned is None:  # anything unusual: pydicom's walk, which also gives the verdict
        reader.seek(start)
        scanned = _generate(reader, implicit, syntax.is_little_endian, size)
    raws = scanned.raws
    if scanned.pixel_tag is not None and scanned.pixel_end is None:
        fragments = _check_encapsulated(reader, implicit, syntax.is_little_endian, size)
        frames = _number_of_frames(raws)
        if frames is not None and fragments < frames and not _is_video(syntax):
            raise UndecodableDataSet(f"encapsulated Pixel Data holds {fragments} fragment(s) for {frames} frames")
    elif scanned.pixel_end is not None:
        reader.seek(scanned.pixel_end)
    if scanned.pixel_tag is not None:
        check_to_end(reader, implicit, syntax.is_little_endian, size, scanned.pixel_tag)
    plain = _plain_texts(raws)
    dataset = Dataset(raws)
    encoding: Any = default_encoding
    if _CHARSET_TAG in raws:
        charset = convert_raw_data_element(raws[_CHARSET_TAG]).value
        encoding = convert_encodings(charset)
    dataset.set_original_encoding(implicit, syntax.is_little_endian, encoding)
    return dataset, plain


def _plain_texts(raws: dict[Any, Any]) -> dict[str, str | None]:
    """Take the top-level text values of printable ASCII out of ``raws``, read (by keyword).

    The VR is the one the data set gives (explicit VR), else the data dictionary's; a value of
    another VR, or with any other byte, stays in ``raws`` for pydicom. The text is what
    :func:`_text` would have made of pydicom's value (:mod:`router.dicom.ascii_values`).
    """
    plain: dict[str, str | None] = {}
    for tag, raw in list(raws.items()):
        known = _PLAIN_TEXT_TAGS.get(int(tag))
        if known is None or not isinstance(raw, RawDataElement):
            continue
        keyword, dictionary_vr = known
        text = ascii_values.text(raw.value or b"", raw.VR or dictionary_vr)
        if text is None:
            continue
        plain[keyword] = _checked(keyword, text, eight_bit=True)
        del raws[tag]
    return plain


def _generate(reader: Any, implicit: bool, little_endian: bool, size: int) -> prescan.Scanned:
    """pydicom's walk to Pixel Data (the reader is left at its header), checking every length.

    Raises
    ------
    UndecodableDataSet
        An element runs past the end of the data set, or the data set ends inside a header.
    """
    tell = reader.tell
    state: dict[str, Any] = {"end": tell(), "pixel": None, "overrun": None}

    def check(tag: Any, _vr: object, length: int) -> bool:
        if length == _UNDEFINED_LENGTH:
            state["end"] = None  # a sequence or encapsulated value: its end is found by parsing
        else:
            end = tell() + length
            if end > size:
                state["overrun"] = tag
            state["end"] = end
        if tag in _PIXEL_TAGS:
            state["pixel"] = int(tag)
            return True
        return False

    elements = data_element_generator(reader, implicit, little_endian, stop_when=check, specific_tags=_SPECIFIC_TAGS)
    raws = {raw.tag: raw for raw in elements}
    if state["overrun"] is not None:
        raise UndecodableDataSet(f"element {state['overrun']} is longer than the data set")
    if state["pixel"] is None and state["end"] is not None and state["end"] < size:
        raise UndecodableDataSet("the data set ends inside an element header")
    return prescan.Scanned(raws, state["pixel"], state["end"] if state["pixel"] is not None else None)


_ITEM = (0xFFFE, 0xE000)
_SEQUENCE_DELIMITER = (0xFFFE, 0xE0DD)


def _check_encapsulated(reader: Any, implicit: bool, little_endian: bool, size: int) -> int:
    """Check encapsulated Pixel Data, the reader being at its element header, without reading it.

    PS3.5 section A.4: a sequence of items (FFFE,E000), each of defined length (the Basic
    Offset Table, then the fragments), ended by a Sequence Delimitation Item (FFFE,E0DD). A
    fragment running past the end, a missing delimiter or anything but an item raises
    :class:`UndecodableDataSet`: a compressed image cut short in transfer is refused (0xC210)
    rather than stored as if whole. Costs one 8-byte read per fragment. Returns the number of
    fragments after the Basic Offset Table.
    """
    reader.seek(reader.tell() + (8 if implicit else 12))  # tag, (VR, reserved,) length
    order = "<" if little_endian else ">"
    items = 0
    while True:
        header = reader.read(8)
        if len(header) < 8:
            raise UndecodableDataSet("encapsulated Pixel Data ends before its sequence delimiter")
        group, element, length = struct.unpack(f"{order}HHL", header)
        if (group, element) == _SEQUENCE_DELIMITER:
            return max(0, items - 1)
        items += 1
        if (group, element) != _ITEM or length == _UNDEFINED_LENGTH:
            raise UndecodableDataSet(f"encapsulated Pixel Data holds ({group:04X},{element:04X}) where an item belongs")
        end = reader.tell() + length
        if end > size:
            raise UndecodableDataSet("a Pixel Data fragment is longer than the data set")
        reader.seek(end)


def _number_of_frames(raws: dict[Any, Any]) -> int | None:
    """Number of Frames (0028,0008) when present and a positive whole number, else None."""
    raw = raws.get(_NUMBER_OF_FRAMES)
    if raw is None:
        return None
    try:
        value = int(convert_raw_data_element(raw).value)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def _is_video(syntax: UID) -> bool:
    """MPEG-2, MPEG-4 and HEVC transfer syntaxes (1.2.840.10008.1.2.4.100-108): one stream for
    all frames, in as few fragments as the sender likes (PS3.5 sections 8.2.5-8.2.8)."""
    prefix = "1.2.840.10008.1.2.4.10"
    return str(syntax).startswith(prefix) and str(syntax)[len(prefix) : len(prefix) + 1].isdigit()


def _normalize_character_set(dataset: Dataset) -> None:
    """Replace (0008,0005) in ``dataset`` (in memory only) by the defined terms it spells.

    Must run before any text element is converted. A term that is no defined term, however
    spelled, makes the whole declaration unusable: it is removed, so only default-repertoire
    text is read (see :func:`_text`). PS3.3 section C.12.1.1.2.
    """
    element = dataset.get(_CHARSET_TAG)
    if element is None:
        return
    value = element.value
    terms = [value] if isinstance(value, str) else list(value or [])
    terms = [str(term or "").strip() for term in terms]
    corrected: list[str] = []
    for position, term in enumerate(terms):
        known = "" if term == "" and position == 0 else _CHARSET_TERMS.get(_charset_key(term))
        if known is None:
            del dataset.SpecificCharacterSet
            return
        corrected.append(known)
    if not any(corrected):
        del dataset.SpecificCharacterSet
    elif corrected != terms:
        dataset.SpecificCharacterSet = corrected if len(corrected) > 1 else corrected[0]


def header_from_dataset(
    dataset: Dataset,
    transfer_syntax_uid: str,
    plain: dict[str, str | None] | None = None,
    sending_ae_title: str | None = None,
) -> InstanceHeader:
    """Build an :class:`InstanceHeader` from an already-read data set (absent values are ``None``);
    ``sending_ae_title`` comes from the file's File Meta Information.

    Without a Specific Character Set in ``dataset`` only default-repertoire (ASCII) text is
    read; :func:`read_header` first turns a misspelled declaration into the defined terms.
    ``plain`` holds top-level text values already read (by keyword), which ``dataset`` lacks.
    """
    eight_bit = "SpecificCharacterSet" in dataset
    known = plain or {}

    def text(source: Dataset, keyword: str) -> str | None:
        if source is dataset and keyword in known:
            return known[keyword]
        return _text(source, keyword, eight_bit=eight_bit)

    codes = [*_codes(dataset, "ProcedureCodeSequence", CptSource.PROCEDURE_CODE_SEQUENCE, text)]
    codes += _codes(dataset, "RequestedProcedureCodeSequence", CptSource.REQUESTED_PROCEDURE_CODE_SEQUENCE, text)
    for item in _items(dataset, "RequestAttributesSequence"):
        codes += _codes(item, "RequestedProcedureCodeSequence", CptSource.REQUESTED_PROCEDURE_CODE_SEQUENCE, text)
    return InstanceHeader(
        sop_class_uid=text(dataset, "SOPClassUID"),
        sop_instance_uid=text(dataset, "SOPInstanceUID"),
        study_instance_uid=text(dataset, "StudyInstanceUID"),
        series_instance_uid=text(dataset, "SeriesInstanceUID"),
        transfer_syntax_uid=transfer_syntax_uid,
        accession_number=text(dataset, "AccessionNumber"),
        study_date=_date(text(dataset, "StudyDate")),
        study_description=text(dataset, "StudyDescription"),
        modality=text(dataset, "Modality"),
        body_part=text(dataset, "BodyPartExamined"),
        series_description=text(dataset, "SeriesDescription"),
        priority=text(dataset, "RequestedProcedurePriority"),
        institution_name=text(dataset, "InstitutionName"),
        institution_address=text(dataset, "InstitutionAddress"),
        patient_address=text(dataset, "PatientAddress"),
        region_of_residence=text(dataset, "RegionOfResidence"),
        country_of_residence=text(dataset, "CountryOfResidence"),
        procedure_codes=tuple(dict.fromkeys(codes)),
        sending_ae_title=sending_ae_title,
    )


def _value(dataset: Dataset, keyword: str) -> Any:
    try:
        element = dataset.get(keyword)
        return None if element is None else element
    except Exception:  # noqa: BLE001 - a value pydicom cannot convert counts as absent
        return None


def _text(dataset: Dataset, keyword: str, *, eight_bit: bool = True) -> str | None:
    """Element value as stripped text, or ``None`` if absent, empty or not decodable.

    Leading and trailing spaces and NUL padding are stripped. Not decodable: pydicom
    substituted U+FFFD, a control character other than TAB, LF, FF or CR remains (PS3.5
    section 6.1.3), or, with ``eight_bit`` false (no usable Specific Character Set), a
    character outside the default repertoire (PS3.5 section 6.1.2.1). UIDs are returned as
    they are, embedded NULs included, for :func:`~router.domain.instance.uid_problem` to judge
    (a UID is never repaired into another one).
    """
    value = _value(dataset, keyword)
    if value is None:
        return None
    try:
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            value = "\\".join(str(item) for item in value)
        text = str(value).strip(_PADDING)
    except Exception:  # noqa: BLE001 - a value pydicom cannot convert counts as absent
        return None
    return _checked(keyword, text, eight_bit=eight_bit)


def _checked(keyword: str, text: str, *, eight_bit: bool) -> str | None:
    """``text`` (stripped) if the router may use it as the value of ``keyword`` (see :func:`_text`)."""
    if keyword not in _UID_KEYWORDS:
        if "\ufffd" in text or any(ch not in _ALLOWED_CONTROLS for ch in _CONTROL.findall(text)):
            return None
        if not eight_bit and not text.isascii():
            return None
    return text or None


def _date(text: str | None) -> dt.date | None:
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


def _codes(
    dataset: Dataset, keyword: str, source: CptSource, text: Callable[[Dataset, str], str | None]
) -> list[ProcedureCode]:
    codes: list[ProcedureCode] = []
    for item in _items(dataset, keyword):
        value = text(item, "CodeValue")
        scheme = text(item, "CodingSchemeDesignator")
        if value is None or scheme is None:
            continue
        codes.append(ProcedureCode(value=value, scheme=scheme, meaning=text(item, "CodeMeaning") or "", source=source))
    return codes
