"""The Python floor (benchmarks/floor_scp.py), the instrument docs/benchmarks.md measures the
router against: it must really store what it acknowledges, or its numbers mean nothing."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from tests.dicom_helpers import free_port

FLOOR = Path(__file__).resolve().parent.parent / "benchmarks" / "floor_scp.py"


def _start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(FLOOR), str(port), str(tmp_path / "out"), *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "listening"
    return proc, port


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)


@pytest.mark.parametrize(
    "extra", [(), ("--router-work",), ("--router-intake",)], ids=["floor", "router-work", "router-intake"]
)
def test_floor_stores_every_acknowledged_instance(tmp_path: Path, extra: tuple[str, ...]) -> None:
    proc, port = _start(tmp_path, *extra)
    try:
        ae = AE(ae_title="FLOORTEST")
        ae.add_requested_context(Verification)
        ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        source = dcmread(get_testdata_file("CT_small.dcm"))
        sent = {}
        assoc = ae.associate("127.0.0.1", port)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        for _ in range(3):
            source.SOPInstanceUID = generate_uid()
            status = assoc.send_c_store(source)
            assert status.Status == 0x0000
            sent[source.SOPInstanceUID] = source.PixelData
        assoc.release()
        assert assoc.is_released
    finally:
        _stop(proc)

    stored = {path.name: path for path in (tmp_path / "out").rglob("*") if path.is_file()}
    assert sorted(stored) == sorted(f"{uid}.dcm" for uid in sent)
    for uid, pixels in sent.items():
        written = dcmread(stored[f"{uid}.dcm"])
        assert written.file_meta.MediaStorageSOPInstanceUID == uid
        assert written.SOPInstanceUID == uid
        assert written.PixelData == pixels
    if extra == ("--router-intake",):  # the router's archive layout and index
        assert {path.parent.parent.name for path in stored.values()} == {source.StudyInstanceUID}
        with sqlite3.connect(tmp_path / "router-data" / "router.db") as index:
            rows = index.execute("SELECT sop_instance_uid FROM instances").fetchall()
        assert sorted(row[0] for row in rows) == sorted(sent)
    elif extra:
        with sqlite3.connect(tmp_path / "router.db") as index:
            rows = index.execute("SELECT sop_instance_uid FROM instances").fetchall()
            studies = index.execute("SELECT instance_count FROM studies").fetchall()
        assert sorted(row[0] for row in rows) == sorted(sent)
        assert studies == [(3,)]
    else:
        with sqlite3.connect(tmp_path / "index.db") as index:
            rows = index.execute("SELECT uid, size FROM instance").fetchall()
        sizes = {uid.rstrip(b"\0").decode(): size for uid, size in rows}
        assert sorted(sizes) == sorted(sent)
        for uid, size in sizes.items():
            encoded = (tmp_path / "out" / f"{uid}.dcm").read_bytes()
            meta_length = int.from_bytes(encoded[140:144], "little")  # (0002,0000), PS3.10 7.1
            assert size == len(encoded) - 144 - meta_length  # the data set's bytes, as received
