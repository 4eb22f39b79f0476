"""The header read from the spool file's first bytes (router.dicom.head_reader): the same
header, or the same refusal, as from the file, and the file left unopened in the common case."""

from __future__ import annotations

import dataclasses
import io
import os
import random
import tracemalloc
from pathlib import Path

import pydicom.data
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from router.dicom.extract import ReceivedFileUnreadable, UndecodableDataSet, read_header
from router.dicom.head_reader import HeadFirstReader
from router.dicom.spool import HEAD_BYTES, SpoolFile
from router.part10 import WrittenFileMeta, dataset_offset
from tests.dicom_helpers import make_dataset, pydicom_file, write_part10


def _outcome(path: Path, head: tuple[bytes, int] | None) -> object:
    try:
        return read_header(path, head=head)
    except (UndecodableDataSet, ReceivedFileUnreadable) as exc:
        return type(exc)


def _head(path: Path, keep: int) -> tuple[bytes, int]:
    data = path.read_bytes()
    return data[:keep], len(data)


def _pydicom_files() -> list[Path]:
    """The test files inside the pydicom wheel (``get_testdata_files`` would try to download more)."""
    return sorted((Path(pydicom.data.__file__).parent / "test_files").rglob("*.dcm"))


def test_reads_and_seeks_give_the_files_bytes(tmp_path: Path) -> None:
    generator = random.Random(14)
    data = generator.randbytes(5000)
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    for keep in (0, 1, 999, 4999, 5000):
        with open(path, "rb") as expected, HeadFirstReader(path, data[:keep], len(data)) as reader:
            for _step in range(300):
                action = generator.randrange(4)
                if action == 0:
                    count = generator.choice([-1, 0, 1, 7, 600, 6000])
                    assert reader.read(count) == expected.read(count)
                elif action == 1:
                    offset = generator.randrange(6000)
                    assert reader.seek(offset) == expected.seek(offset)
                elif action == 2:
                    offset = generator.randrange(-50, 50)
                    if expected.tell() + offset >= 0:
                        assert reader.seek(offset, os.SEEK_CUR) == expected.seek(offset, os.SEEK_CUR)
                else:
                    offset = -generator.randrange(5000)
                    assert reader.seek(offset, os.SEEK_END) == expected.seek(offset, os.SEEK_END)
                assert reader.tell() == expected.tell()
    with pytest.raises(ValueError):
        HeadFirstReader(path, data, len(data)).seek(-1)
    with pytest.raises(ValueError):  # as a file: a malformed length can ask for this
        HeadFirstReader(path, data, len(data)).read(-26)


def test_a_read_within_the_head_never_opens_the_file(tmp_path: Path) -> None:
    reader = HeadFirstReader(tmp_path / "never-written.dcm", b"0123456789", 10)
    assert reader.read(4) == b"0123"
    assert reader.read() == b"456789"
    assert reader.read(5) == b""  # at the end: no file needed either
    assert not reader.opened
    with pytest.raises(FileNotFoundError):
        HeadFirstReader(tmp_path / "never-written.dcm", b"0123456789", 20).read()


def test_every_pydicom_test_file_reads_the_same_from_its_head() -> None:
    files = _pydicom_files()
    assert len(files) > 50
    outcomes = {"header": 0, "refused": 0}
    for index, path in enumerate(files):
        expected = _outcome(path, None)
        # the whole head, and a cut at a varying place (in the preamble, the meta or the data set)
        for keep in (HEAD_BYTES, (0, 1, 131, 132, 200, 1000, 4096)[index % 7]):
            assert _outcome(path, _head(path, keep)) == expected, (path.name, keep)
        outcomes["refused" if isinstance(expected, type) else "header"] += 1
    assert outcomes["header"] > 40 and outcomes["refused"] > 0  # both kinds are compared


def test_a_file_meta_given_reads_the_same_as_the_one_parsed() -> None:
    """Lever 55: a received file's File Meta Information, as the router wrote it, is not parsed
    again; told what it says, the header read gives what it gives when it parses it."""
    compared = 0
    for path in _pydicom_files():
        try:
            offset = dataset_offset(path)
            meta = pydicom.dcmread(path, stop_before_pixels=True).file_meta
        except (ValueError, OSError, pydicom.errors.InvalidDicomError):
            continue
        syntax = meta.get("TransferSyntaxUID")
        if not syntax:
            continue
        sender = str(meta.get("SendingApplicationEntityTitle", "") or "").strip() or None
        told = WrittenFileMeta(str(syntax), sender, offset)
        expected = _outcome(path, None)
        try:
            got: object = read_header(path, head=_head(path, HEAD_BYTES), file_meta=told)
        except (UndecodableDataSet, ReceivedFileUnreadable) as exc:
            got = type(exc)
        assert got == expected, path.name
        compared += 1
    assert compared > 40


def test_a_file_meta_given_is_not_parsed_again(tmp_path: Path) -> None:
    source = pydicom_file("CT_small.dcm")
    offset = dataset_offset(source)
    damaged = tmp_path / "no-dicm.dcm"
    damaged.write_bytes(bytes(offset) + source.read_bytes()[offset:])  # no "DICM", no meta
    told = WrittenFileMeta(str(pydicom.dcmread(source).file_meta.TransferSyntaxUID), "MODALITY", offset)
    assert _outcome(damaged, None) is UndecodableDataSet
    header = read_header(damaged, head=_head(damaged, HEAD_BYTES), file_meta=told)
    assert header == dataclasses.replace(read_header(source), sending_ae_title="MODALITY")


@pytest.mark.parametrize(
    "syntax", [ImplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian], ids=str
)
def test_other_transfer_syntaxes_and_cut_files_read_the_same(tmp_path: Path, syntax: str) -> None:
    whole = write_part10(make_dataset(), tmp_path / "whole.dcm", syntax)
    data = whole.read_bytes()
    for length in range(132, len(data) + 1, max(1, len(data) // 60)):
        cut = tmp_path / f"cut-{length}.dcm"
        cut.write_bytes(data[:length])
        for keep in (0, 300, length):
            assert _outcome(cut, _head(cut, keep)) == _outcome(cut, None), (length, keep)


def test_a_received_ct_needs_no_file_once_its_head_is_kept(tmp_path: Path) -> None:
    # CT_small.dcm: native Pixel Data last, the whole file in the head (40 KB in the benchmark)
    path = tmp_path / "ct.dcm"
    path.write_bytes(pydicom_file("CT_small.dcm").read_bytes())
    head = _head(path, HEAD_BYTES)
    expected = read_header(path)
    path.unlink()
    assert read_header(path, head=head) == expected


def test_a_large_native_image_needs_no_file_past_its_head(tmp_path: Path) -> None:
    # 512 x 512 x 16 bit native Pixel Data: the elements before it are in the head, and it is last
    dataset = make_dataset(Rows=512, Columns=512, PixelData=bytes(512 * 512 * 2))
    path = write_part10(dataset, tmp_path / "large.dcm")
    head = _head(path, HEAD_BYTES)
    assert head[1] > 500_000 and len(head[0]) == HEAD_BYTES
    expected = read_header(path)
    path.unlink()
    assert read_header(path, head=head) == expected


def test_encapsulated_pixel_data_is_checked_in_the_file(tmp_path: Path) -> None:
    # JPEG fragments past the head: their item headers are read from the file
    path = tmp_path / "jpeg.dcm"
    path.write_bytes(pydicom_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes())
    head = _head(path, 1000)
    assert read_header(path, head=head) == read_header(path)
    path.unlink()
    with pytest.raises(ReceivedFileUnreadable):  # a fault of the system: 0xA700, the sender retries
        read_header(path, head=head)


def test_the_spool_keeps_the_first_bytes_written(tmp_path: Path) -> None:
    spool = SpoolFile(tmp_path)
    generator = random.Random(5)
    written = io.BytesIO()
    for size in (132, 1, 70_000, 3, 200_000):
        chunk = generator.randbytes(size)
        spool.write(memoryview(chunk))
        written.write(chunk)
    spool.close()
    data = written.getvalue()
    assert Path(spool.name).read_bytes() == data
    assert spool.head == (data[:HEAD_BYTES], len(data))
    assert spool.size == len(data) == 270_136  # what the metrics count as received (no stat)
    small = SpoolFile(tmp_path)
    small.write(b"abc")
    small.write(b"def")
    small.close()
    assert small.head == (b"abcdef", 6)


def test_a_peer_sending_one_byte_fragments_costs_the_head_its_bytes_only(tmp_path: Path) -> None:
    # the hostile-peer trial's case: a data set in 1-byte PDVs, each one write
    spool = SpoolFile(tmp_path)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(HEAD_BYTES + 1000):
            spool.write(b"x")
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    spool.close()
    assert spool.head == (b"x" * HEAD_BYTES, HEAD_BYTES + 1000)
    assert held < 2 * HEAD_BYTES  # one buffer (a list of the writes held 40 times this)


def test_a_failed_spool_offers_no_head(tmp_path: Path) -> None:
    spool = SpoolFile(tmp_path / "missing-folder")
    spool.write(b"abc")
    assert spool.failed and spool.head is None
