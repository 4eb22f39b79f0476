"""Spool files (router/dicom/spool.py): the data set's SHA-256 computed while it is written is the
one read back from the file, and the intake service uses it instead of reading the file again."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import random
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pynetdicom.dsutils import decode
from sqlalchemy import select

from router.archive import dataset_sha256
from router.db.models import Instance
from router.dicom import spool as spool_module
from router.dicom import store_codec
from router.dicom.spool import SpoolFile
from router.dicom.status import StoreStatus
from router.part10 import WrittenFileMeta
from router.server import RouterServer
from router.services import intake
from tests.conftest import mounted_tmpfs
from tests.dicom_bytes import CT_IMAGE_STORAGE, RawAssociation, c_store_command, identifiers, p_data
from tests.dicom_helpers import archived_file, make_dataset, send_paths, write_part10

EXPLICIT_LE = "1.2.840.10008.1.2.1"
JPEG_2000 = "1.2.840.10008.1.2.4.90"  # encapsulated


def _spool_of(
    tmp_path: Path,
    data_set_parts: list[bytes],
    *,
    begin: bool = True,
    direct_io: bool = False,
    told: str | None = EXPLICIT_LE,
) -> SpoolFile:
    """A closed spool file of an Explicit VR LE File Meta Information and ``data_set_parts``
    (``!`` first: written as a view without it); ``told``: the transfer syntax
    ``begin_data_set`` is told (None: not told)."""
    spool = SpoolFile(tmp_path, direct_io=direct_io)
    spool.write(store_codec.encode_file_meta(CT_IMAGE_STORAGE, "1.2.3.4", EXPLICIT_LE))
    if begin:
        spool.begin_data_set(transfer_syntax=told)
    for part in data_set_parts:
        spool.write(memoryview(part)[1:] if part[:1] == b"!" else part)  # views, as the listener writes them
    spool.close()
    return spool


def test_the_digest_written_is_the_one_read_back(tmp_path: Path) -> None:
    parts = [b"\x08\x00\x16\x00UI\x08\x001.2.3.4\x00", b"!" + bytes(range(256)) * 1000, b"", b"!\x00\x01"]
    spool = _spool_of(tmp_path, parts)
    data_set = b"".join(part[1:] if part[:1] == b"!" else part for part in parts)
    assert spool.data_set_digest == dataset_sha256(Path(spool.name))
    assert spool.data_set_digest == (hashlib.sha256(data_set).hexdigest(), Path(spool.name).stat().st_size)


def test_the_file_meta_it_was_told_is_kept_for_the_header_read(tmp_path: Path, tiny_disk: Path) -> None:
    meta = store_codec.encode_file_meta(CT_IMAGE_STORAGE, "1.2.3.4", EXPLICIT_LE, "MODALITY")
    told = SpoolFile(tmp_path)
    told.write(meta)
    told.begin_data_set(transfer_syntax=EXPLICIT_LE, sending_ae_title="MODALITY")
    told.write(b"\x08\x00\x16\x00")
    told.close()
    assert told.file_meta == WrittenFileMeta(EXPLICIT_LE, "MODALITY", len(meta))
    assert _spool_of(tmp_path, [b"\x08\x00\x16\x00"], told=None).file_meta is None  # not told
    failed = SpoolFile(tiny_disk)
    failed.write(meta)
    failed.begin_data_set(transfer_syntax=EXPLICIT_LE)
    failed.write(bytes(600_000))
    failed.close()
    assert failed.failed and failed.file_meta is None


def test_without_the_data_set_start_there_is_no_digest(tmp_path: Path) -> None:
    assert _spool_of(tmp_path, [b"\x08\x00\x16\x00"], begin=False).data_set_digest is None


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 64 KiB tmpfs: a real full disk."""
    with mounted_tmpfs(tmp_path / "tiny", "64k") as mount:
        yield mount


def test_after_a_failed_write_there_is_no_digest(tiny_disk: Path) -> None:
    spool = _spool_of(tiny_disk, [bytes(200_000)])
    assert spool.failed
    assert spool.data_set_digest is None
    assert list(tiny_disk.iterdir()) == []  # nothing partial stays


def _takes_direct_io(folder: Path) -> bool:
    """Whether ``folder``'s file system accepts O_DIRECT (probed with a file of its own)."""
    probe = folder / "probe"
    descriptor = os.open(probe, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        fcntl.fcntl(descriptor, fcntl.F_SETFL, fcntl.fcntl(descriptor, fcntl.F_GETFL) | os.O_DIRECT)
        return True
    except OSError:
        return False
    finally:
        os.close(descriptor)
        probe.unlink()


def _fragments(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` cut at random places (1 byte to 70,000 bytes a fragment)."""
    parts, start = [], 0
    while start < len(data):
        end = min(len(data), start + rng.choice((1, 2, 4095, 4096, 4097, rng.randint(1, 70_000))))
        parts.append(data[start:end])
        start = end
    return parts


def _direct_bytes_expected(total: int) -> int:
    """What lever 54 writes with O_DIRECT of a ``total``-byte file: every full stage, then the
    last stage's whole 4 KiB blocks; nothing for a file that fits in one stage."""
    full, rest = divmod(total, spool_module.STAGE_BYTES)
    return 0 if not full else full * spool_module.STAGE_BYTES + rest - rest % 4096


STAGE = spool_module.STAGE_BYTES


@pytest.mark.parametrize(
    "data_set_bytes",
    [0, 1, 4095, 4096, 40_000, STAGE - 200, STAGE, STAGE + 1, 2 * STAGE - 1, 2 * STAGE + 4097, 1_000_003],
)
def test_a_data_set_of_any_size_is_written_as_received_around_the_page_cache_when_it_fills_a_stage(
    tmp_path: Path, data_set_bytes: int
) -> None:
    rng = random.Random(data_set_bytes)
    data = rng.randbytes(data_set_bytes)
    meta = store_codec.encode_file_meta(CT_IMAGE_STORAGE, "1.2.3.4", EXPLICIT_LE)
    spool = SpoolFile(tmp_path, direct_io=True)
    spool.write(meta)
    spool.begin_data_set(transfer_syntax=EXPLICIT_LE)
    for part in _fragments(data, rng):
        spool.write(memoryview(part))  # views, as the listener writes them
    spool.close()
    written = Path(spool.name).read_bytes()
    assert written == meta + data
    assert spool.data_set_digest == (hashlib.sha256(data).hexdigest(), len(meta) + len(data))
    assert spool.head == ((meta + data)[: spool_module.HEAD_BYTES], len(meta) + len(data))
    expected = _direct_bytes_expected(len(meta) + len(data)) if _takes_direct_io(tmp_path) else 0
    assert spool.direct_bytes == expected


@pytest.mark.parametrize("direct_io, uncompressed", [(False, True), (True, False)])
def test_a_compressed_data_set_or_an_archive_that_reads_it_back_is_written_through_the_page_cache(
    tmp_path: Path, direct_io: bool, uncompressed: bool
) -> None:
    """An encapsulated or deflated data set is read again by the header read; an S3 or
    encrypting archive reads the file to place it: their files stay in the page cache."""
    data = random.Random(5).randbytes(3 * STAGE + 10)
    spool = _spool_written(tmp_path, data, direct_io=direct_io, uncompressed=uncompressed)
    assert (Path(spool.name).read_bytes(), spool.direct_bytes) == (data, 0)


def test_a_file_whose_data_set_start_the_spool_was_not_told_never_bypasses_the_page_cache(tmp_path: Path) -> None:
    """pynetdicom's own decoder (a command set in several fragments) writes the File Meta
    Information itself and never calls begin_data_set; the intake then reads the file back to
    hash it, which it should find in the page cache (found by the hostile trial of lever 54)."""
    data = random.Random(7).randbytes(3 * STAGE + 10)
    spool = SpoolFile(tmp_path, direct_io=True)
    spool.write(data)
    spool.close()
    assert (Path(spool.name).read_bytes(), spool.direct_bytes) == (data, 0)


def test_a_discarded_spool_file_does_not_write_what_it_staged(tmp_path: Path) -> None:
    spares = len(spool_module._SPARE)
    spool = SpoolFile(tmp_path, direct_io=True)
    spool.begin_data_set(transfer_syntax=EXPLICIT_LE)
    spool.write(bytes(STAGE + 5000))  # one stage on disk, 5000 bytes staged
    spool.discard()
    spool.discard()
    assert Path(spool.name).stat().st_size == STAGE
    assert len(spool_module._SPARE) == max(spares, 1)  # its stage went back once


def _spool_written(folder: Path, data: bytes, *, direct_io: bool, uncompressed: bool) -> SpoolFile:
    """A closed spool file of ``data`` alone (no File Meta Information), written at once."""
    spool = SpoolFile(folder, direct_io=direct_io)
    spool.begin_data_set(transfer_syntax=EXPLICIT_LE if uncompressed else JPEG_2000)
    spool.write(data)
    spool.close()
    return spool


def test_a_file_system_that_refuses_direct_io_gets_every_write_through_the_page_cache(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "ramfs", "", fstype="ramfs") as mount:
        assert not _takes_direct_io(mount)
        data = random.Random(6).randbytes(2 * STAGE + 77)
        first = _spool_written(mount, data, direct_io=True, uncompressed=True)
        assert (Path(first.name).read_bytes(), first.direct_bytes) == (data, 0)
        assert str(mount) in spool_module._REFUSE_DIRECT_IO  # the next file is not asked again
        spool_module._REFUSE_DIRECT_IO.discard(str(mount))


def test_a_full_disk_during_a_direct_write_fails_the_file_and_leaves_nothing(tiny_disk: Path) -> None:
    spares = len(spool_module._SPARE)
    spool = _spool_of(tiny_disk, [bytes(600_000), b"more after the failure"], direct_io=True)
    assert spool.failed
    assert spool.error is not None and spool.error.errno == errno.ENOSPC
    assert (spool.data_set_digest, spool.head) == (None, None)
    assert list(tiny_disk.iterdir()) == []
    assert len(spool_module._SPARE) == max(spares, 1)  # its stage went back once, not twice


def test_staging_buffers_are_reused_and_at_most_sixteen_kept(tmp_path: Path) -> None:
    for _ in range(30):
        _spool_of(tmp_path, [b"x" * 1000])
    stages = {id(stage) for stage in spool_module._SPARE}
    assert 1 <= len(stages) <= spool_module._SPARE_STAGES
    open_at_once = [SpoolFile(tmp_path) for _ in range(40)]
    for spool in open_at_once:
        spool.close()
    assert len(spool_module._SPARE) == spool_module._SPARE_STAGES


def test_each_spool_file_is_a_new_private_file_under_its_own_name(tmp_path: Path) -> None:
    spools = [_spool_of(tmp_path, [b"x" * n]) for n in (10, 20, 30)]
    names = [Path(spool.name) for spool in spools]
    assert len(set(names)) == 3 and all(name.parent == tmp_path for name in names)
    assert [name.stat().st_mode & 0o777 for name in names] == [0o600] * 3
    assert [name.stat().st_size for name in names] == [spool.data_set_digest[1] for spool in spools]  # type: ignore[index]


def test_a_name_already_taken_is_never_opened(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """O_EXCL, as ``tempfile.mkstemp``: a file or a link already at a drawn name is passed over,
    neither truncated nor followed."""
    drawn = iter(["taken", "link", "free"])
    monkeypatch.setattr(spool_module, "_random_name_part", lambda: next(drawn))
    taken = tmp_path / "rx-taken.dcm"
    taken.write_bytes(b"someone else's")
    target = tmp_path / "target"
    target.write_bytes(b"not to be written")
    (tmp_path / "rx-link.dcm").symlink_to(target)
    spool = _spool_of(tmp_path, [b"data set"])
    assert Path(spool.name).name == "rx-free.dcm"
    assert (taken.read_bytes(), target.read_bytes()) == (b"someone else's", b"not to be written")
    assert not spool.failed


def test_the_next_spool_name_cannot_be_guessed_from_the_last(tmp_path: Path) -> None:
    """Found by the hostile trial of lever 51: with names from a counter, 100 files planted at
    the next names in the incoming folder made a store fail (0xA700)."""
    names = [Path(_spool_of(tmp_path, [b"x"]).name).name for _ in range(50)]
    parts = [name.removeprefix("rx-").removesuffix(".dcm") for name in names]
    assert all(len(part) == 16 and int(part, 16) >= 0 for part in parts)
    assert len(set(parts)) == 50
    assert sorted(parts) != parts  # not drawn in order (a counter would be)


# ----------------------------------------------------------------------------- over the network


@pytest.fixture
def files_read_back(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Each file the intake service read back to hash (a spy around the real function)."""
    seen: list[Path] = []
    real = intake.dataset_sha256

    def spy(path: Path, offset: int | None = None) -> tuple[str, int]:
        seen.append(path)
        return real(path, offset)

    monkeypatch.setattr(intake, "dataset_sha256", spy)
    return seen


def _indexed(server: RouterServer, sop_instance: str) -> tuple[str, int]:
    with server.app.sessions() as session:
        row = session.scalars(select(Instance).where(Instance.sop_instance_uid == sop_instance)).one()
    return row.dataset_sha256, row.size_bytes


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_data_set_the_codec_received_is_indexed_with_its_digest_without_reading_it_back(
    server: RouterServer, tmp_path: Path, files_read_back: list[Path]
) -> None:
    dataset = make_dataset(Rows=256, Columns=256, PixelData=bytes(range(256)) * 512)
    source = write_part10(dataset, tmp_path / "in.dcm")
    assert send_paths(server.ports[0], [source]) == [StoreStatus.SUCCESS]
    stored = archived_file(server, dataset.SOPInstanceUID)
    assert _indexed(server, dataset.SOPInstanceUID) == dataset_sha256(stored)
    assert files_read_back == []


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_data_set_pynetdicom_received_is_read_back_for_its_digest(
    server: RouterServer, files_read_back: list[Path]
) -> None:
    """A command set in two fragments goes through pynetdicom's decoder, which writes the File
    Meta Information itself: the spool file does not know where the data set starts."""
    sop = "1.2.826.0.1.3680043.9.7433.3.77"
    body = identifiers(sop, "1.2.826.0.1.3680043.9.7433.1.77", "1.2.826.0.1.3680043.9.7433.2.77")
    command = c_store_command(CT_IMAGE_STORAGE, sop)
    raw = RawAssociation(server.ports[0])
    try:
        assert raw.associate(max_pdu=0) == 0x02
        raw.send(p_data(command[:20], command=True, last=False))
        raw.send(p_data(command[20:], command=True, last=True))
        raw.send(p_data(body, command=False, last=True))
        kind, answer = raw.read_pdu()
    finally:
        raw.close()
    assert kind == 0x04
    assert decode(BytesIO(answer[6:]), True, True).Status == StoreStatus.SUCCESS
    assert len(files_read_back) == 1
    stored = archived_file(server, sop)
    assert _indexed(server, sop) == (hashlib.sha256(body).hexdigest(), stored.stat().st_size)
