"""Workloads built at run time from real CT images, re-identified with new UIDs.

- ``small``: ``CT_small.dcm`` from the pydicom wheel (128x128 CT, about 39 KB per file);
- ``large``: ``693_UNCR.dcm`` from the ``pydicom-data`` package (512x512 CT, about 526 KB);
- ``huge``: one multi-frame instance of about 500 MB, built from the 512x512 CT frame and
  written to disk frame by frame (never held in memory).

Each workload is split into ``chunks`` (4) studies of one series each: the 4-association runs
send one study per association, as 4 modalities would; the 1-association run sends the 4
studies one after the other. Every file gets new Study, Series and SOP Instance UIDs and a
synthetic patient.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

SOURCES = {"small": "CT_small.dcm", "large": "693_UNCR.dcm"}
MULTIFRAME_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"  # Multi-frame Grayscale Word SC Image Storage
_PIXEL_DATA_TAG = 0x7FE00010


@dataclass(frozen=True)
class Workload:
    """Files on disk for one size: ``chunks[i]`` is study ``i`` (one series), in send order."""

    name: str
    chunks: tuple[tuple[Path, ...], ...]
    study_uids: tuple[str, ...]
    file_bytes: int  # size of one file, in bytes (all files of a workload are the same size)

    @property
    def files(self) -> list[Path]:
        """Every file, study after study."""
        return [path for chunk in self.chunks for path in chunk]

    @property
    def count(self) -> int:
        """Number of instances."""
        return sum(len(chunk) for chunk in self.chunks)

    def capped(self, limit: int) -> Workload:
        """The first ``limit`` instances, spread over the same studies (for the Nagle-on runs)."""
        if limit >= self.count:
            return self
        per = [len(chunk) for chunk in self.chunks]
        keep = [0] * len(per)
        remaining = limit
        while remaining:
            for index in range(len(per)):
                if remaining and keep[index] < per[index]:
                    keep[index] += 1
                    remaining -= 1
        chunks = tuple(chunk[:n] for chunk, n in zip(self.chunks, keep, strict=True) if n)
        uids = tuple(uid for uid, n in zip(self.study_uids, keep, strict=True) if n)
        return Workload(self.name, chunks, uids, self.file_bytes)


def source_path(name: str) -> Path:
    """Path of a source CT shipped by pydicom or pydicom-data (no download)."""
    path = get_testdata_file(SOURCES[name], download=False)
    if path is None:
        raise SystemExit(f"{SOURCES[name]} not found: is pydicom-data installed?")
    return Path(str(path))


def _reidentify(ds: Dataset, study_uid: str, series_uid: str, sop_uid: str, study_index: int, number: int) -> None:
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SOPInstanceUID = sop_uid
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.PatientName = f"BENCH^PATIENT{study_index:02d}"
    ds.PatientID = f"BENCH{study_index:04d}"
    ds.AccessionNumber = f"BENCH{study_index:04d}"
    ds.InstanceNumber = number
    ds.SeriesNumber = 1
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = generate_uid()


def build(name: str, count: int, out_dir: Path, chunks: int = 4) -> Workload:
    """Write ``count`` re-identified copies of the ``name`` source CT, split into ``chunks`` studies."""
    template = dcmread(source_path(name))
    sizes = [count // chunks + (1 if index < count % chunks else 0) for index in range(chunks)]
    all_chunks: list[tuple[Path, ...]] = []
    study_uids: list[str] = []
    for study_index, size in enumerate(sizes):
        if not size:
            continue
        study_uid, series_uid = generate_uid(), generate_uid()
        folder = out_dir / name / f"study{study_index}"
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for number in range(1, size + 1):
            _reidentify(template, study_uid, series_uid, generate_uid(), study_index, number)
            path = folder / f"{number:05d}.dcm"
            template.save_as(path, enforce_file_format=True)
            paths.append(path)
        all_chunks.append(tuple(paths))
        study_uids.append(study_uid)
    file_bytes = all_chunks[0][0].stat().st_size
    return Workload(name, tuple(all_chunks), tuple(study_uids), file_bytes)


def build_multiframe(out_dir: Path, target_bytes: int = 500 * 10**6) -> Workload:
    """One multi-frame instance of about ``target_bytes``, streamed to disk one frame at a time.

    The frame is the 512x512 16-bit CT of ``693_UNCR.dcm``; the instance is stored as
    Multi-frame Grayscale Word Secondary Capture (PS3.3 A.8.4) in Explicit VR Little Endian.
    """
    source = dcmread(source_path("large"))
    frame = source.PixelData
    frames = max(1, target_bytes // len(frame))
    ds = Dataset()
    for element in source:
        if element.tag < _PIXEL_DATA_TAG:
            ds.add(element)
    ds.file_meta = source.file_meta
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MULTIFRAME_WORD_SC
    ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_WORD_SC
    ds.NumberOfFrames = frames
    study_uid = generate_uid()
    _reidentify(ds, study_uid, generate_uid(), generate_uid(), 99, 1)
    folder = out_dir / "huge"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "multiframe.dcm"
    ds.save_as(path, enforce_file_format=True)
    length = len(frame) * frames
    with open(path, "ab") as handle:
        handle.write(struct.pack("<HH", 0x7FE0, 0x0010) + b"OW\x00\x00" + struct.pack("<I", length))
        for _ in range(frames):
            handle.write(frame)
    return Workload("huge", ((path,),), (study_uid,), path.stat().st_size)
