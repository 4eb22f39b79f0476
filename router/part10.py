"""DICOM Part 10 file layout helpers (PS3.10 section 7.1), shared by the archive and the DICOM layer."""

from __future__ import annotations

import struct
from pathlib import Path

_PREAMBLE_AND_PREFIX = 132  # 128-byte preamble + "DICM"


def dataset_offset(path: Path) -> int:
    """Byte offset where the data set starts in a Part 10 file written with a group length.

    Reads the File Meta Information Group Length (0002,0000), which PS3.10 section 7.1 makes
    mandatory and which pydicom and pynetdicom always write.

    Raises
    ------
    ValueError
        If the file is not a Part 10 file with a group length element.
    OSError
        If it cannot be read.
    """
    with open(path, "rb") as handle:
        head = handle.read(_PREAMBLE_AND_PREFIX + 12)
    if len(head) < _PREAMBLE_AND_PREFIX + 12 or head[128:132] != b"DICM":
        raise ValueError(f"{path.name} is not a DICOM Part 10 file")
    group, element, vr, length = struct.unpack("<HH2sH", head[132:140])
    if (group, element, vr, length) != (0x0002, 0x0000, b"UL", 4):
        raise ValueError(f"{path.name} has no File Meta Information Group Length")
    (group_length,) = struct.unpack("<I", head[140:144])
    return _PREAMBLE_AND_PREFIX + 12 + group_length
