"""Helpers for tests that build and send DICOM data."""

from __future__ import annotations

import datetime as dt
import socket
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.dataset import FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config
from pynetdicom.pdu_primitives import A_ASSOCIATE
from pynetdicom.presentation import build_context

if TYPE_CHECKING:
    from pynetdicom.association import Association

    from router.server import RouterServer

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


def archived_file(server: RouterServer, sop_instance: str) -> Path:
    """The one archived file of ``sop_instance`` (fails the test if there is none, or several)."""
    paths = list(server.app.archive.root.rglob(f"{sop_instance}.dcm"))
    assert len(paths) == 1
    return paths[0]


def pydicom_file(name: str) -> Path:
    """A file shipped inside the pydicom wheel (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} not in the pydicom wheel"
    return Path(path)


def make_dataset(**overrides: object) -> Dataset:
    """A small valid CT data set with fresh UIDs; keyword overrides (None deletes)."""
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = CT_IMAGE_STORAGE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientName = "Synthetic^Patient"
    ds.PatientID = "SYN-0001"
    ds.StudyDate = "20261129"
    ds.AccessionNumber = "ACC0001"
    ds.BodyPartExamined = "CHEST"
    ds.StudyDescription = "CT chest with contrast"
    ds.Rows = 4
    ds.Columns = 4
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = bytes(range(32))
    for keyword, value in overrides.items():
        if value is None:
            if keyword in ds:
                delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    return ds


def store_event(
    dataset_path: Path, sop_instance_uid: str, sop_class_uid: str, calling_ae_title: str = "TEST_SCU"
) -> SimpleNamespace:
    """What :class:`~router.dicom.scp.StoreHandler` reads of pynetdicom's EVT_C_STORE event, for
    calling the handler directly on a data set already in the incoming folder."""
    return SimpleNamespace(
        dataset_path=dataset_path,
        request=SimpleNamespace(AffectedSOPInstanceUID=sop_instance_uid, AffectedSOPClassUID=sop_class_uid),
        assoc=SimpleNamespace(requestor=SimpleNamespace(ae_title=calling_ae_title, address="127.0.0.1")),
    )


def write_part10(
    ds: Dataset,
    path: Path,
    transfer_syntax: str = ExplicitVRLittleEndian,
    meta_sop_instance_uid: str | None = None,
    meta_sop_class_uid: str | None = None,
) -> Path:
    """Save ``ds`` as a Part 10 file; the file meta UIDs may be made to differ from the data set."""
    if meta_sop_instance_uid or meta_sop_class_uid:
        from pydicom.filebase import DicomBytesIO
        from pydicom.filewriter import write_dataset

        syntax = UID(transfer_syntax)
        buffer = DicomBytesIO()
        buffer.is_little_endian = syntax.is_little_endian
        buffer.is_implicit_VR = syntax.is_implicit_VR
        write_dataset(buffer, ds)
        return write_raw_part10(
            path,
            meta_sop_class_uid or str(ds.SOPClassUID),
            meta_sop_instance_uid or str(ds.SOPInstanceUID),
            buffer.getvalue(),
            transfer_syntax,
        )
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = meta_sop_class_uid or ds.get("SOPClassUID", CT_IMAGE_STORAGE)
    meta.MediaStorageSOPInstanceUID = meta_sop_instance_uid or ds.get("SOPInstanceUID", "1.2.3.4")
    meta.TransferSyntaxUID = transfer_syntax
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_raw_part10(
    path: Path,
    sop_class_uid: str,
    sop_instance_uid: str,
    dataset_bytes: bytes,
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> Path:
    """A Part 10 file whose data set is arbitrary bytes (to send undecodable data)."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = transfer_syntax
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = False
    write_file_meta_info(buffer, meta, enforce_standard=True)
    path.write_bytes(b"\x00" * 128 + b"DICM" + buffer.getvalue() + dataset_bytes)
    return path


def send_paths(
    port: int,
    paths: Sequence[Path],
    calling_ae: str = "TEST_SCU",
    called_ae: str = "ROUTER",
    contexts: Sequence[tuple[str, str]] | None = None,
) -> list[int | None]:
    """Send files byte for byte (chunked from disk) over one association; returns the statuses."""
    from pydicom import dcmread

    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    pairs = set(contexts or ())
    if not contexts:
        for path in paths:
            meta = dcmread(path, stop_before_pixels=True).file_meta
            pairs.add((str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)))
    ae.requested_contexts = [build_context(sop, [ts]) for sop, ts in sorted(pairs)]
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    assert assoc.is_established, "association refused"
    statuses: list[int | None] = []
    try:
        for path in paths:
            status = assoc.send_c_store(path)
            statuses.append(int(status.Status) if "Status" in status else None)
    finally:
        assoc.release()
    return statuses


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def send_datasets(port: int, datasets: Sequence[Dataset], calling_ae: str = "TEST_SCU") -> list[Dataset]:
    """Send data sets (encoded by pynetdicom) over one association; returns the status data sets."""
    _config.STORE_SEND_CHUNKED_DATASET = False
    try:
        ae = AE(ae_title=calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
        for sop in {str(ds.SOPClassUID) for ds in datasets}:
            ae.add_requested_context(sop, [ExplicitVRLittleEndian])
        assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
        assert assoc.is_established
        out = []
        try:
            for ds in datasets:
                if not hasattr(ds, "file_meta"):
                    ds.file_meta = FileMetaDataset()
                ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                out.append(assoc.send_c_store(ds))
        finally:
            assoc.release()
        return out
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = True


def rejection_of(assoc: Association) -> tuple[int, int, int] | None:
    """(result, source, diagnostic) of the A-ASSOCIATE-RJ the association got, if it got one.

    pynetdicom's requestor checks that its socket is still connected after sending the request
    and before it reads the answer: on a loaded machine the router's A-ASSOCIATE-RJ has already
    arrived and the connection closed by then (PS3.8 AE-4), and it reports an abort with the
    rejection unread in its queue (a test flake, 3 in 20 runs under load). It is read there.
    """
    primitive = assoc.acceptor.primitive if assoc.is_rejected else None
    unread = list(assoc.dul.to_user_queue.queue)
    if primitive is None and assoc.is_aborted and unread and isinstance(unread[0], A_ASSOCIATE):
        primitive = unread[0]
    if primitive is None or primitive.result not in (0x01, 0x02):
        return None
    return int(primitive.result), int(primitive.result_source), int(primitive.diagnostic)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=dt.UTC)
