"""A fast scan of a data set's top-level elements up to Pixel Data, for the common case.

:func:`scan` reads the start of the data set into memory once and walks its element headers
with ``struct`` (PS3.5 section 7.1): the wanted elements' values are kept as pydicom
``RawDataElement`` objects (decoded later, by pydicom, exactly as before), every other value is
skipped by its length. It never decides that a data set is malformed: on anything it does not
handle, or anything unusual, it returns ``None`` and the caller walks the data set with pydicom
(:func:`router.dicom.extract._walk`), which gives the verdict. Handled: little endian, implicit
or explicit VR, every top-level element of defined length (a wanted sequence's bytes are kept
for pydicom to parse), Pixel Data of defined or undefined length. Left to pydicom: big endian,
an undefined-length element before Pixel Data, an item or delimiter tag (FFFE,xxxx), a VR that is not one of PS3.5 Table 6.2-1, a
length running past the data set, and a data set whose elements before Pixel Data do not fit
in :data:`SCAN_BYTES`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, cast

from pydicom.dataelem import RawDataElement, empty_value_for_VR
from pydicom.tag import BaseTag

#: Bytes read at once from the start of the data set; elements before Pixel Data beyond this
#: are left to pydicom.
SCAN_BYTES = 1 << 16
_UNDEFINED_LENGTH = 0xFFFFFFFF
_PIXEL_TAGS = frozenset({0x7FE00008, 0x7FE00009, 0x7FE00010})
#: Explicit VRs with a 2-byte length (PS3.5 section 7.1.2, Table 7.1-2).
_SHORT_VRS = frozenset(b"AE AS AT CS DA DS DT FD FL IS LO LT PN SH SL SS ST TM UI UL US".split())
#: Explicit VRs with a 2-byte reserved field and a 4-byte length (Table 7.1-1).
_LONG_VRS = frozenset(b"OB OD OF OL OV OW SQ SV UC UN UR UT UV".split())
_TAG_LENGTH = struct.Struct("<HHL")  # implicit VR: tag, 4-byte length
_TAG_VR_LENGTH = struct.Struct("<HH2sH")  # explicit VR: tag, VR, 2-byte length
_LONG_LENGTH = struct.Struct("<L")


@dataclass
class Scanned:
    """What :func:`scan` found before Pixel Data.

    The reader is left at the Pixel Data element's header (when there is one).
    """

    raws: dict[BaseTag, Any]  # RawDataElement (or, from pydicom's walk, a parsed DataElement)
    pixel_tag: int | None  # None: the data set has no Pixel Data
    pixel_end: int | None  # absolute offset after its value; None: undefined length (encapsulated)


def scan(reader: Any, implicit: bool, little_endian: bool, size: int, wanted: frozenset[int]) -> Scanned | None:
    """Scan from ``reader``'s position (the first element of the data set) to Pixel Data.

    Parameters
    ----------
    reader : binary file object
        Positioned at the start of the data set.
    implicit, little_endian : bool
        The VR encoding actually used, and the byte order.
    size : int
        Offset of the end of the data set in ``reader``, in bytes.
    wanted : frozenset of int
        Tags whose values are kept.

    Returns
    -------
    Scanned or None
        ``None`` when the data set needs pydicom's walk (see the module docstring); the reader
        is then at an arbitrary position.
    """
    if not little_endian:
        return None
    start = reader.tell()
    buffer = reader.read(min(size - start, SCAN_BYTES))
    end = len(buffer)
    complete = start + end == size  # the whole data set is in the buffer
    raws: dict[BaseTag, RawDataElement] = {}
    position = 0
    while position < end:
        if position + 8 > end:
            return None
        if implicit:
            group, element, length = _TAG_LENGTH.unpack_from(buffer, position)
            encoded_vr = None
            value_start = position + 8
        else:
            group, element, encoded_vr, length = _TAG_VR_LENGTH.unpack_from(buffer, position)
            if encoded_vr in _LONG_VRS:
                if position + 12 > end:
                    return None
                (length,) = _LONG_LENGTH.unpack_from(buffer, position + 8)
                value_start = position + 12
            elif encoded_vr not in _SHORT_VRS:
                return None
            else:
                value_start = position + 8
        tag = group << 16 | element
        if group == 0xFFFE:  # an item or delimiter outside a sequence: pydicom's walk judges it
            return None
        if tag in _PIXEL_TAGS:
            reader.seek(start + position)
            if length == _UNDEFINED_LENGTH:
                return Scanned(raws, tag, None)
            if start + value_start + length > size:
                return None
            return Scanned(raws, tag, start + value_start + length)
        value_end = value_start + length
        if length == _UNDEFINED_LENGTH or value_end > end:
            return None
        if tag in wanted:
            vr = encoded_vr.decode("ascii") if encoded_vr else None
            value = buffer[value_start:value_end] if length else cast(bytes | None, empty_value_for_VR(vr, raw=True))
            raws[BaseTag(tag)] = RawDataElement(
                BaseTag(tag), vr, length, value, start + value_start, implicit, little_endian
            )
        position = value_end
    return Scanned(raws, None, None) if complete else None
