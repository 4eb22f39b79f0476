"""Hostile data sets over the real listener (issue 12): a deflate "zip bomb" is inflated in
bounded steps up to ``listener.max_inflated_bytes`` and answered 0xA700 with the association
going on; anything malformed after Pixel Data is answered 0xC210 and nothing is stored."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import psutil
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, generate_uid
from sqlalchemy import func, select

from router.db.models import Instance
from router.dicom.extract import UndecodableDataSet, read_header
from router.dicom.status import StoreStatus
from router.dicom.structure import InflationLimitExceeded
from tests.conftest import make_settings, running_router
from tests.dicom_bytes import (
    CT_IMAGE_STORAGE,
    EXPLICIT_LE,
    SEQUENCE_END,
    UNDEFINED,
    explicit,
    explicit_undefined,
    identifiers,
    item,
)
from tests.dicom_helpers import send_paths, write_raw_part10

pytestmark = [pytest.mark.network]

MIB = 1 << 20


def _pixel_data(length: int) -> bytes:
    """Header of a native (7FE0,0010) OW of ``length`` bytes (the value is appended by the caller)."""
    return struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)


def _dataset(sop_instance_uid: str, tail: bytes = b"", pixel_bytes: int = 32) -> bytes:
    body = identifiers(sop_instance_uid, generate_uid(), generate_uid())
    return body + _pixel_data(pixel_bytes) + b"\x00" * pixel_bytes + tail


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def _bomb(sop_instance_uid: str, inflated_bytes: int) -> bytes:
    """A deflated data set whose Pixel Data is ``inflated_bytes`` of zeros (about 1000:1).

    After a full flush a deflate block depends on nothing before it, so one compressed block of
    8 MiB of zeros is repeated instead of compressing the whole gigabyte.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    header = identifiers(sop_instance_uid, generate_uid(), generate_uid()) + _pixel_data(inflated_bytes)
    head = compressor.compress(header) + compressor.flush(zlib.Z_FULL_FLUSH)
    step = 8 * MIB
    block = compressor.compress(b"\x00" * step) + compressor.flush(zlib.Z_FULL_FLUSH)
    return head + block * (inflated_bytes // step) + compressor.flush()


def _file(tmp_path: Path, data: bytes, syntax: str = EXPLICIT_LE) -> tuple[Path, str]:
    sop = generate_uid()
    return write_raw_part10(tmp_path / f"{sop}.dcm", CT_IMAGE_STORAGE, sop, data, syntax), sop


def _file_for(tmp_path: Path, sop: str, data: bytes, syntax: str) -> Path:
    return write_raw_part10(tmp_path / f"{sop}.dcm", CT_IMAGE_STORAGE, sop, data, syntax)


def _stored(server) -> int:  # type: ignore[no-untyped-def]
    with server.app.sessions() as session:
        return int(session.scalar(select(func.count()).select_from(Instance)) or 0)


# ----------------------------------------------------------------------------- after Pixel Data
_TRAILING = {
    "trailing garbage": b"\x01\x02garbage!",
    "length past the end": explicit(0x7FE10010, b"LO", b"PRIVATE")[:-7] + b"x",
    "private element too long": struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"OB", 0, 4096) + b"\x00" * 16,
    "unterminated sequence": struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"SQ", 0, UNDEFINED)
    + item(explicit(0x00080100, b"SH", b"X")),
    "unterminated item": struct.pack("<HH2sHI", 0x7FE1, 0x1010, b"SQ", 0, UNDEFINED)
    + struct.pack("<HHI", 0xFFFE, 0xE000, UNDEFINED)
    + explicit(0x00080100, b"SH", b"X"),
    "element before Pixel Data's tag": explicit(0x00100010, b"PN", b"Late^Name"),
    "element header cut short": b"\xe1\x7f\x10\x00LO",
}


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_anything_malformed_after_pixel_data_is_refused(tmp_path: Path, database_url: str) -> None:
    with running_router(make_settings(tmp_path, database_url)) as server:
        paths = [_file(tmp_path, _dataset(generate_uid(), tail))[0] for tail in _TRAILING.values()]
        statuses = send_paths(server.ports[0], paths, contexts=[(CT_IMAGE_STORAGE, EXPLICIT_LE)])
        assert dict(zip(_TRAILING, statuses, strict=True)) == dict.fromkeys(_TRAILING, StoreStatus.CANNOT_DECODE)
        assert _stored(server) == 0
        assert list(server.app.archive.incoming.iterdir()) == []


def test_well_formed_elements_after_pixel_data_are_kept(tmp_path: Path) -> None:
    defined_item = item(explicit(0x00080100, b"SH", b"ABC"), undefined=False)
    tail = (
        explicit(0x7FE10010, b"LO", b"ACME 1.0")
        + explicit_undefined(0x7FE11020, b"SQ", item(explicit(0x00080100, b"SH", b"X")) + item(b"", undefined=False))
        + struct.pack("<HH2sHI", 0x7FE1, 0x1030, b"SQ", 0, len(defined_item))
        + defined_item
        + explicit_undefined(0x7FE11040, b"UN", item(struct.pack("<HHI", 0x0008, 0x0100, 2) + b"AB"))
        + struct.pack("<HH2sHI", 0xFFFC, 0xFFFC, b"OB", 0, 6)
        + b"\x00" * 6
    )
    sop = generate_uid()
    assert read_header(_file_for(tmp_path, sop, _dataset(sop, tail), EXPLICIT_LE)).sop_instance_uid == sop


def test_encapsulated_pixel_data_then_garbage_is_refused(tmp_path: Path) -> None:
    syntax = "1.2.840.10008.1.2.4.50"
    fragments = struct.pack("<HHI", 0xFFFE, 0xE000, 0) + struct.pack("<HHI", 0xFFFE, 0xE000, 4) + b"\xff\xd8\xff\xd9"
    pixel = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, UNDEFINED) + fragments + SEQUENCE_END
    body = identifiers(generate_uid(), generate_uid(), generate_uid()) + pixel
    good, _ = _file(tmp_path, body, syntax)
    assert read_header(good).modality == "CT"
    bad, _ = _file(tmp_path, body + b"\x00\x00", syntax)
    with pytest.raises(UndecodableDataSet, match="ends inside"):
        read_header(bad)


# ----------------------------------------------------------------------------- deflate
def test_inflation_stops_at_the_limit(tmp_path: Path) -> None:
    path, _ = _file(tmp_path, _bomb(generate_uid(), 64 * MIB), DeflatedExplicitVRLittleEndian)
    with pytest.raises(InflationLimitExceeded):
        read_header(path, max_inflated_bytes=8 * MIB)
    assert list(tmp_path.glob("tmp*")) == []  # the inflated copy is anonymous and gone
    assert read_header(path, max_inflated_bytes=128 * MIB).modality == "CT"


def test_deflated_data_set_with_garbage_after_pixel_data_is_refused(tmp_path: Path) -> None:
    good, _ = _file(tmp_path, _deflate(_dataset(generate_uid())), DeflatedExplicitVRLittleEndian)
    assert read_header(good).modality == "CT"
    bad, _ = _file(tmp_path, _deflate(_dataset(generate_uid(), b"\x01\x02garbage!")), DeflatedExplicitVRLittleEndian)
    with pytest.raises(UndecodableDataSet):
        read_header(bad)
    cut, _ = _file(tmp_path, _deflate(_dataset(generate_uid()))[:-20], DeflatedExplicitVRLittleEndian)
    with pytest.raises(UndecodableDataSet):
        read_header(cut)


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_deflate_bomb_is_refused_with_0xA700_and_the_association_goes_on(tmp_path: Path, database_url: str) -> None:
    settings = make_settings(tmp_path, database_url).replace("listener", max_inflated_bytes=16 * MIB)
    bomb_sop = generate_uid()
    bomb = _file_for(tmp_path, bomb_sop, _bomb(bomb_sop, 1024 * MIB), DeflatedExplicitVRLittleEndian)
    assert bomb.stat().st_size < 2 * MIB  # 2 MiB on the wire, 1 GiB inflated
    good_sop = generate_uid()
    good = _file_for(tmp_path, good_sop, _deflate(_dataset(good_sop)), DeflatedExplicitVRLittleEndian)
    process = psutil.Process()
    with running_router(settings) as server:
        before = process.memory_info().rss
        statuses = send_paths(
            server.ports[0], [bomb, good], contexts=[(CT_IMAGE_STORAGE, DeflatedExplicitVRLittleEndian)]
        )
        growth = process.memory_info().rss - before
        assert statuses == [StoreStatus.OUT_OF_RESOURCES_ARCHIVE, StoreStatus.SUCCESS]
        assert growth < 300 * MIB
        assert _stored(server) == 1
        assert list(server.app.archive.incoming.iterdir()) == []
