"""The real listener on 127.0.0.1, real SCUs (pynetdicom and DCMTK storescu), real statuses."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import func, select

from router.db.models import Instance, InstanceConflict, Series, Study, StudySender
from router.dicom.status import StoreStatus
from router.part10 import dataset_offset
from router.server import RouterServer
from tests.conftest import DCMTK_STORESCU, SAMPLES
from tests.dicom_helpers import make_dataset, pydicom_file, send_datasets, send_paths, write_part10, write_raw_part10

pytestmark = pytest.mark.network


def _rows(server: RouterServer, model: type) -> list:
    with server.app.sessions() as session:
        return list(session.scalars(select(model)))


def _dataset_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return data[dataset_offset(path) :]


def test_c_echo_succeeds(server: RouterServer) -> None:
    ae = AE(ae_title="ECHO_SCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", server.ports[0], ae_title="ROUTER")
    assert assoc.is_established
    status = assoc.send_c_echo()
    assoc.release()
    assert status.Status == 0x0000


def test_real_ct_and_mr_are_archived_byte_for_byte_and_indexed(server: RouterServer) -> None:
    files = [pydicom_file("CT_small.dcm"), pydicom_file("MR_small.dcm")]
    assert send_paths(server.ports[0], files, calling_ae="CT_NORTH") == [0x0000, 0x0000]
    archive = server.app.archive
    instances = sorted(_rows(server, Instance), key=lambda row: row.sop_instance_uid)
    assert len(instances) == 2
    for source in files:
        ds = dcmread(source, stop_before_pixels=True)
        row = next(item for item in instances if item.sop_instance_uid == ds.SOPInstanceUID)
        expected = f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm"
        assert row.relative_path == expected
        stored = archive.path(expected)
        assert _dataset_bytes(stored) == _dataset_bytes(source)  # stored byte for byte
        assert row.dataset_sha256 == hashlib.sha256(_dataset_bytes(source)).hexdigest()
        assert row.size_bytes == stored.stat().st_size
        assert row.transfer_syntax_uid == str(ds.file_meta.TransferSyntaxUID)
        assert row.calling_ae_title == "CT_NORTH"
    senders = _rows(server, StudySender)
    assert {(s.calling_ae_title, s.peer_address, s.instance_count) for s in senders} == {
        ("CT_NORTH", "127.0.0.1", 1)
    } and len(senders) == 2
    assert not list(archive.incoming.iterdir())  # nothing left in the incoming folder


def test_same_instance_again_is_a_no_op_and_differing_copy_is_quarantined(server: RouterServer, tmp_path: Path) -> None:
    ds = make_dataset()
    first = write_part10(ds, tmp_path / "first.dcm")
    assert send_paths(server.ports[0], [first, first]) == [0x0000, 0x0000]
    original = server.app.archive.path(f"{ds.StudyInstanceUID}/{ds.SeriesInstanceUID}/{ds.SOPInstanceUID}.dcm")
    original_bytes = original.read_bytes()
    ds.StudyDescription = "changed after the first send"
    second = write_part10(ds, tmp_path / "second.dcm")
    assert send_paths(server.ports[0], [second, second]) == [0x0000, 0x0000]
    assert original.read_bytes() == original_bytes  # the first copy stays in place
    (study,) = _rows(server, Study)
    assert study.instance_count == 1
    (conflict,) = _rows(server, InstanceConflict)
    assert conflict.sop_instance_uid == ds.SOPInstanceUID
    kept = server.app.archive.path(conflict.relative_path)
    assert _dataset_bytes(kept) == _dataset_bytes(second)
    assert conflict.relative_path.startswith(".quarantine/")


@pytest.mark.parametrize(
    ("override", "status", "comment"),
    [
        ({"StudyInstanceUID": None}, StoreStatus.INVALID_STUDY_UID, "StudyInstanceUID missing"),
        ({"StudyInstanceUID": ""}, StoreStatus.INVALID_STUDY_UID, "StudyInstanceUID missing"),
        ({"SeriesInstanceUID": "1.2.x.4"}, StoreStatus.INVALID_SERIES_UID, "SeriesInstanceUID not digits and dots"),
        (
            {"SeriesInstanceUID": "1." + "2" * 70},
            StoreStatus.INVALID_SERIES_UID,
            "SeriesInstanceUID longer than 64 characters",
        ),
        ({"StudyInstanceUID": "../../etc"}, StoreStatus.INVALID_STUDY_UID, "StudyInstanceUID not digits and dots"),
    ],
)
def test_bad_uids_get_a_c000_range_failure_and_nothing_is_filed(
    server: RouterServer, override: dict, status: int, comment: str
) -> None:
    (response,) = send_datasets(server.ports[0], [make_dataset(**override)])
    assert response.Status == status
    assert response.ErrorComment == comment
    assert _rows(server, Instance) == []
    assert [p.name for p in server.app.archive.root.iterdir() if not p.name.startswith(".")] == []


def test_uid_with_nul_cannot_escape_the_archive(server: RouterServer, tmp_path: Path) -> None:
    ds = make_dataset()
    ds.StudyInstanceUID = "1.2.3\x00/../../x"
    path = write_part10(ds, tmp_path / "nul.dcm")
    assert send_paths(server.ports[0], [path]) == [StoreStatus.INVALID_STUDY_UID]
    assert not (tmp_path.parent / "x").exists()
    assert _rows(server, Instance) == []


def test_data_set_uids_that_disagree_with_the_request_get_a900(server: RouterServer, tmp_path: Path) -> None:
    ds = make_dataset()
    other_instance = write_part10(ds, tmp_path / "a.dcm", meta_sop_instance_uid="1.2.826.0.1.3680043.99.1")
    other_class = write_part10(make_dataset(), tmp_path / "b.dcm", meta_sop_class_uid="1.2.840.10008.5.1.4.1.1.4")
    statuses = send_paths(
        server.ports[0],
        [other_instance, other_class],
        contexts=[
            ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.1.2.1"),
            ("1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.1.2.1"),
        ],
    )
    assert statuses == [StoreStatus.DATA_SET_MISMATCH, StoreStatus.DATA_SET_MISMATCH]
    assert _rows(server, Instance) == []


def test_undecodable_data_set_gets_c210(server: RouterServer, tmp_path: Path) -> None:
    garbage = write_raw_part10(
        tmp_path / "garbage.dcm", "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5", b"\x08\x00\x18\x00UI\xff\xff" + b"\x01" * 10
    )
    assert send_paths(server.ports[0], [garbage]) == [StoreStatus.CANNOT_DECODE]
    assert _rows(server, Instance) == []
    assert not list(server.app.archive.incoming.iterdir())


@pytest.mark.parametrize("syntax", [ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_other_transfer_syntaxes_are_stored_as_received(server: RouterServer, tmp_path: Path, syntax: str) -> None:
    ds = make_dataset()
    path = write_part10(ds, tmp_path / "x.dcm", transfer_syntax=syntax)
    assert send_paths(server.ports[0], [path]) == [0x0000]
    (row,) = _rows(server, Instance)
    assert row.transfer_syntax_uid == syntax
    stored = server.app.archive.path(row.relative_path)
    assert _dataset_bytes(stored) == _dataset_bytes(path)
    assert str(dcmread(stored).StudyInstanceUID) == ds.StudyInstanceUID


def test_jpeg_compressed_real_file_is_accepted(server: RouterServer) -> None:
    source = pydicom_file("SC_rgb_jpeg_dcmtk.dcm")
    assert send_paths(server.ports[0], [source]) == [0x0000]
    (row,) = _rows(server, Instance)
    assert row.transfer_syntax_uid == str(dcmread(source, stop_before_pixels=True).file_meta.TransferSyntaxUID)


def test_one_study_over_several_associations_and_senders(server: RouterServer, tmp_path: Path) -> None:
    study_uid = "1.2.826.0.1.3680043.10.999.1"
    paths = [write_part10(make_dataset(StudyInstanceUID=study_uid), tmp_path / f"{i}.dcm") for i in range(3)]
    assert send_paths(server.ports[0], paths[:2], calling_ae="MOD_A") == [0, 0]
    assert send_paths(server.ports[0], paths[2:], calling_ae="PACS_B") == [0]
    (study,) = _rows(server, Study)
    assert study.instance_count == 3
    assert study.first_calling_ae_title == "MOD_A"
    assert len(_rows(server, Series)) == 3
    senders = {(s.calling_ae_title, s.instance_count) for s in _rows(server, StudySender)}
    assert senders == {("MOD_A", 2), ("PACS_B", 1)}


@pytest.mark.skipif(DCMTK_STORESCU is None, reason="DCMTK storescu not installed")
def test_dcmtk_storescu_sends_the_samples(server: RouterServer) -> None:
    files = sorted(SAMPLES.glob("CT_NORTH/*/*.dcm"))
    assert files
    result = subprocess.run(
        [DCMTK_STORESCU, "-aet", "CT_NORTH", "-aec", "ROUTER", "127.0.0.1", str(server.ports[0]), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    uids = {str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files}
    assert {row.sop_instance_uid for row in _rows(server, Instance)} == uids
    with server.app.sessions() as session:
        assert session.scalar(select(func.count(StudySender.id)).where(StudySender.calling_ae_title == "CT_NORTH")) == 1
