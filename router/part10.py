"""DICOM Part 10 file layout helpers (PS3.10 section 7.1), shared by the archive and the DICOM layer."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import NamedTuple

_PREAMBLE_AND_PREFIX = 132  # 128-byte preamble + "DICM"
_HEAD = _PREAMBLE_AND_PREFIX + 12  # bytes: up to the end of the group length element (0002,0000)


class WrittenFileMeta(NamedTuple):
    """What the File Meta Information a file starts with says, as the router wrote it (a received
    file's :attr:`router.dicom.spool.SpoolFile.file_meta`)."""

    transfer_syntax: str  # Transfer Syntax UID (0002,0010)
    sending_ae_title: str | None  # Sending Application Entity Title (0002,0017), None if absent
    data_set_offset: int  # bytes before the data set: preamble, "DICM" and the File Meta Information


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
        return _offset(handle.read(_HEAD), path)


def file_meta_elements(path: Path) -> tuple[bytes, int]:
    """The File Meta Information elements of a Part 10 file written with a group length, as
    bytes (Explicit VR Little Endian, from (0002,0000) to where the group length says the meta
    ends; not a group 0002 element the data set itself may begin with), and the byte offset
    where the data set starts (:func:`dataset_offset`). One read of the file's head.

    Raises
    ------
    ValueError
        If the file is not a Part 10 file with a group length element.
    OSError
        If it cannot be read.
    """
    with open(path, "rb") as handle:
        head = handle.read(_HEAD)
        offset = _offset(head, path)
        return head[_PREAMBLE_AND_PREFIX:] + handle.read(offset - _HEAD), offset


def _offset(head: bytes, path: Path) -> int:
    """The data set's offset from a file's first :data:`_HEAD` bytes (see :func:`dataset_offset`)."""
    if len(head) < _HEAD or head[128:132] != b"DICM":
        raise ValueError(f"{path.name} is not a DICOM Part 10 file")
    group, element, vr, length = struct.unpack("<HH2sH", head[132:140])
    if (group, element, vr, length) != (0x0002, 0x0000, b"UL", 4):
        raise ValueError(f"{path.name} has no File Meta Information Group Length")
    (group_length,) = struct.unpack("<I", head[140:144])
    return _HEAD + group_length
