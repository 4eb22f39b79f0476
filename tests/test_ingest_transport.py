"""The transport under stress, over real sockets: PDU sizes, associations aborted or stalled in the
middle of a data set, and a 500 MB instance streamed to disk by a separate server process
(issue 3: "Association aborted mid-transfer, a sender that stalls past the timeouts: nothing
partial kept, the listener keeps serving"; "Large objects ... are streamed to disk")."""

from __future__ import annotations

import contextlib
import copy
import hashlib
import math
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.presentation import build_context
from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from router.db.models import Instance, Study
from router.dicom.spool import STAGE_BYTES
from router.dicom.status import StoreStatus
from router.part10 import dataset_offset
from router.server import RouterServer
from tests.conftest import DCMTK_STORESCU, REPO, make_settings, running_router
from tests.dicom_bytes import (
    A_ABORT,
    CT_IMAGE_STORAGE,
    RawAssociation,
    associate_rq,
    c_store_command,
    dataset_bytes,
    explicit,
    identifiers,
    p_data,
)
from tests.dicom_helpers import make_dataset, send_paths, write_part10

pytestmark = pytest.mark.network

MULTIFRAME_CT = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage


@contextlib.contextmanager
def running_server(tmp_path: Path, **listener: object) -> Iterator[RouterServer]:
    """A router server on SQLite with the given ``[listener]`` overrides."""
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'router.db'}")
    if listener:
        settings = settings.replace("listener", **listener)
    with running_router(settings) as server:
        yield server


def _rows(server: RouterServer, model: type) -> list:
    with server.app.sessions() as session:
        return list(session.scalars(select(model)))


def _archive_files(server: RouterServer) -> list[Path]:
    """Every file in the archive outside the incoming folder."""
    root = server.app.archive.root
    return sorted(p for p in root.rglob("*") if p.is_file() and server.app.archive.incoming not in p.parents)


def _wait_for(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``condition()`` held (polling every 10 ms); ``inf`` if it never did."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.01)
    return float("inf")


def _incoming(server: RouterServer) -> list[Path]:
    return list(server.app.archive.incoming.iterdir())


def _instance_of_size(tmp_path: Path, megabytes: float, name: str = "big.dcm") -> Path:
    ds = make_dataset()
    ds.add_new(0x00090010, "LO", "ACME")
    ds.add_new(0x00091010, "OB", os.urandom(int(megabytes * (1 << 20))))
    return write_part10(ds, tmp_path / name)


def _assert_keeps_serving(server: RouterServer, tmp_path: Path) -> None:
    """A following association stores an instance, and it is the only one indexed."""
    ds = make_dataset()
    path = write_part10(ds, tmp_path / "after.dcm")
    assert send_paths(server.ports[0], [path]) == [StoreStatus.SUCCESS]
    assert [row.sop_instance_uid for row in _rows(server, Instance)] == [ds.SOPInstanceUID]


# ----------------------------------------------------------------------------- PDU sizes
def _send_counting_pdus(port: int, path: Path, scu_max_pdu: int) -> tuple[int, int, int]:
    """Send one file; returns (status, P-DATA-TF PDUs sent, largest PDU-length field sent, in bytes)."""
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="PDU_SCU")  # (AE.maximum_pdu_size is the acceptor's; a requestor passes max_pdu)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    ae.requested_contexts = [build_context(CT_IMAGE_STORAGE, [ExplicitVRLittleEndian])]
    sent: list[int] = []

    def on_pdu(event: evt.Event) -> None:
        if isinstance(event.pdu, P_DATA_TF):
            sent.append(len(event.pdu) - 6)  # the PDU-length field: without type, reserved, length

    assoc = ae.associate(
        "127.0.0.1", port, ae_title="ROUTER", max_pdu=scu_max_pdu, evt_handlers=[(evt.EVT_PDU_SENT, on_pdu)]
    )
    assert assoc.is_established
    assert assoc.requestor.maximum_length == scu_max_pdu
    try:
        status = assoc.send_c_store(path)
    finally:
        assoc.release()
    return int(status.Status), len(sent), max(sent)


@pytest.mark.parametrize(
    ("scu_max_pdu", "router_max_pdu"),
    [
        pytest.param(0, 262_144, id="sender-unlimited"),
        pytest.param(0, 0, id="both-unlimited"),
        pytest.param(16_384, 4_096, id="router-4096"),  # ~1 MB in 4 KB fragments
        pytest.param(4_096, 262_144, id="sender-4096"),
    ],
)
def test_pdu_sizes_including_zero_meaning_unlimited(tmp_path: Path, scu_max_pdu: int, router_max_pdu: int) -> None:
    source = _instance_of_size(tmp_path, 1.0)
    data_set_length = len(dataset_bytes(source))
    # Each P-DATA-TF carries one PDV: 4-byte item length, context ID, control header, data
    # (PS3.8 section 9.3.5); the router's Maximum Length bounds the PDU-length field, 0 = none.
    if router_max_pdu == 0:
        fragments, largest_expected = 1, data_set_length + 6
    else:
        fragments, largest_expected = math.ceil(data_set_length / (router_max_pdu - 6)), router_max_pdu
    with running_server(tmp_path, max_pdu_length=router_max_pdu) as server:
        status, pdus, largest = _send_counting_pdus(server.ports[0], source, scu_max_pdu)
        assert status == StoreStatus.SUCCESS
        assert (pdus, largest) == (1 + fragments, largest_expected)  # one command PDU, then the data set
        (row,) = _rows(server, Instance)
        assert dataset_bytes(server.app.archive.path(row.relative_path)) == dataset_bytes(source)


# ----------------------------------------------------------------------------- aborts
def _start_partial_store(server: RouterServer, payload_bytes: int = 200 * 1024) -> RawAssociation:
    """Associate and send a C-STORE command and two data set fragments (not the last), each in
    a PDU within the router's Maximum Length (262,144 bytes by default): more than a spool
    file's staging buffer, so part of the data set is on disk."""
    raw = RawAssociation(server.ports[0])
    assert raw.associate(max_pdu=0) == 0x02  # A-ASSOCIATE-AC
    sop = generate_uid()
    head = identifiers(sop, generate_uid(), generate_uid())
    blob = explicit(0x00090010, b"LO", b"ACME") + struct.pack("<HH2sHI", 0x0009, 0x1010, b"OB", 0, 64 << 20)
    raw.start_c_store(CT_IMAGE_STORAGE, sop, head + blob + b"\x00" * payload_bytes)
    raw.send(p_data(b"\x00" * payload_bytes, command=False, last=False))
    # The first staging buffer's worth is on disk in the incoming folder (router.dicom.spool).
    assert _wait_for(lambda: any(p.stat().st_size >= STAGE_BYTES for p in _incoming(server)), 5) < 5
    return raw


def _abort_pdu(raw: RawAssociation) -> None:
    raw.send(A_ABORT)
    raw.close()


def _tcp_close(raw: RawAssociation) -> None:
    raw.close()


def _tcp_reset(raw: RawAssociation) -> None:
    raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    raw.close()


@pytest.mark.parametrize("stop", [_abort_pdu, _tcp_close, _tcp_reset], ids=["A-ABORT", "FIN", "RST"])
def test_association_ended_mid_transfer_keeps_nothing_partial(
    tmp_path: Path, stop: Callable[[RawAssociation], None]
) -> None:
    with running_server(tmp_path) as server:
        raw = _start_partial_store(server)
        stop(raw)
        # removed when the connection closes, not at the next start or after a stale age
        assert _wait_for(lambda: _incoming(server) == [], 5) < 2
        assert _wait_for(lambda: server.listener.active_associations() == 0, 5) < 5
        assert _rows(server, Instance) == []
        assert _rows(server, Study) == []
        assert _archive_files(server) == []
        _assert_keeps_serving(server, tmp_path)


@pytest.mark.skipif(DCMTK_STORESCU is None, reason="DCMTK storescu not installed")
def test_dcmtk_storescu_killed_mid_send(tmp_path: Path) -> None:
    source = _instance_of_size(tmp_path, 64)
    # Small PDUs slow the transfer so the kill lands in the middle of it.
    with running_server(tmp_path, max_pdu_length=4096) as server:
        sender = subprocess.Popen(
            [DCMTK_STORESCU, "-aet", "DCMTK_SCU", "-aec", "ROUTER", "127.0.0.1", str(server.ports[0]), str(source)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            assert _wait_for(lambda: any(p.stat().st_size > (4 << 20) for p in _incoming(server)), 30) < 30
        finally:
            sender.send_signal(signal.SIGKILL)
            returncode = sender.wait(10)
        assert returncode == -signal.SIGKILL  # it was still sending
        assert _wait_for(lambda: _incoming(server) == [], 5) < 2
        assert _rows(server, Instance) == []
        assert _archive_files(server) == []
        _assert_keeps_serving(server, tmp_path)


# ----------------------------------------------------------------------------- stalls
TIMEOUTS = {"acse_timeout": 1.0, "dimse_timeout": 1.0, "network_timeout": 1.5}


def _silent(raw: RawAssociation) -> None:
    pass


def _half_associate_rq(raw: RawAssociation) -> None:
    raw.send(associate_rq()[:20])  # the PDU header and a little of its body


def _associated(raw: RawAssociation) -> None:
    assert raw.associate() == 0x02


def _command_only(raw: RawAssociation) -> None:
    _associated(raw)
    raw.send(p_data(c_store_command(CT_IMAGE_STORAGE, generate_uid()), command=True, last=True))


def _between_fragments(raw: RawAssociation) -> None:
    _associated(raw)
    raw.start_c_store(CT_IMAGE_STORAGE, generate_uid(), identifiers(generate_uid(), generate_uid(), generate_uid()))


def _inside_a_pdu(raw: RawAssociation) -> None:
    _between_fragments(raw)
    pdu = p_data(b"\x00" * 8000, command=False, last=False)
    raw.send(pdu[:1000])  # the header promises 8006 bytes; 994 come


@pytest.mark.parametrize(
    ("stall", "limit"),
    [
        pytest.param(_silent, TIMEOUTS["acse_timeout"], id="connect-and-say-nothing"),
        pytest.param(_half_associate_rq, TIMEOUTS["network_timeout"], id="inside-A-ASSOCIATE-RQ"),
        pytest.param(_associated, TIMEOUTS["network_timeout"], id="associated-then-nothing"),
        pytest.param(_command_only, TIMEOUTS["network_timeout"], id="command-without-data-set"),
        pytest.param(_between_fragments, TIMEOUTS["network_timeout"], id="between-data-set-fragments"),
        pytest.param(_inside_a_pdu, TIMEOUTS["network_timeout"], id="inside-a-P-DATA-PDU"),
    ],
)
def test_stalled_sender_is_dropped_within_the_timeout(
    tmp_path: Path, stall: Callable[[RawAssociation], None], limit: float
) -> None:
    with running_server(tmp_path, **TIMEOUTS) as server:
        raw = RawAssociation(server.ports[0])
        try:
            stall(raw)
            waited = raw.seconds_until_closed(limit + 10)
        finally:
            raw.close()
        assert limit - 0.2 <= waited <= limit + 1.5  # the configured timeout, not a default (30 s, 120 s)
        assert _wait_for(lambda: server.listener.active_associations() == 0, 5) < 5
        assert _wait_for(lambda: _incoming(server) == [], 5) < 1
        assert _rows(server, Instance) == []
        assert _archive_files(server) == []
        _assert_keeps_serving(server, tmp_path)


# ----------------------------------------------------------------------------- 500 MB
def _write_multiframe(path: Path, frames: int, rows: int, columns: int) -> tuple[str, int, str]:
    """A multi-frame Part 10 file written without holding its pixels in memory.

    Returns (SOP Instance UID, file size in bytes, SHA-256 of the data set bytes).
    """
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MULTIFRAME_CT
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.AccessionNumber = "BIG-1"
    ds.NumberOfFrames = frames
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MULTIFRAME_CT
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.save_as(path, enforce_file_format=True)
    length = frames * rows * columns * 2
    digest = hashlib.sha256(dataset_bytes(path))
    header = struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, length)
    frame = bytes(range(256)) * (rows * columns * 2 // 256)
    with open(path, "ab") as handle:
        handle.write(header)
        digest.update(header)
        for _ in range(frames):
            handle.write(frame)
            digest.update(frame)
    return str(ds.SOPInstanceUID), path.stat().st_size, digest.hexdigest()


def _vm_hwm_mb(pid: int) -> float:
    """Peak resident set size of a process so far, in MiB (Linux /proc/<pid>/status VmHWM)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match, "no VmHWM in /proc (not Linux?)"
    return int(match.group(1)) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_500_mb_instance_is_streamed_to_disk_by_a_separate_server_process(tmp_path: Path) -> None:
    frames, rows, columns = 500, 512, 1024  # 500 frames of 1 MiB: 524,288,000 bytes of pixels
    source = tmp_path / "multiframe.dcm"
    sop, size, sha256 = _write_multiframe(source, frames, rows, columns)
    assert size > 500 * 1_000_000
    data_dir = tmp_path / "var"
    config = tmp_path / "router.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{data_dir}"\n[routing]\nstable_seconds = 3600.0\n[forwarding]\nenabled = false\n'
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "router", "--config", str(config), "serve", "--host", "127.0.0.1", "--port", "0"],
        cwd=REPO,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stderr is not None
        port = None
        deadline = time.monotonic() + 30
        while port is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            found = re.search(r"port\(s\) (\d+)", line)
            port = int(found.group(1)) if found else None
        assert port, "router serve did not report its port"
        before_mb = _vm_hwm_mb(server.pid)
        sender = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from pathlib import Path; from tests.dicom_helpers import send_paths; "
                "print(send_paths(int(sys.argv[1]), [Path(sys.argv[2])])[0])",
                str(port),
                str(source),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert sender.returncode == 0, sender.stderr[-2000:]
        peak_mb = _vm_hwm_mb(server.pid)
        print(
            f"\nrouter serve peak RSS: {before_mb:.0f} MiB at start, {peak_mb:.0f} MiB after a {size / 2**20:.0f} MiB instance"
        )
        assert int(sender.stdout.strip()) == StoreStatus.SUCCESS
        assert peak_mb < 300
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    assert server.returncode == 0
    engine = create_engine(f"sqlite:///{data_dir / 'router.db'}")
    try:
        with Session(engine) as session:
            (row,) = session.scalars(select(Instance)).all()
            study = session.scalars(select(Study)).one()
    finally:
        engine.dispose()
    assert row.sop_instance_uid == sop
    assert row.sop_class_uid == MULTIFRAME_CT
    stored = data_dir / "archive" / row.relative_path
    assert row.size_bytes == stored.stat().st_size
    # the file meta is the listener's own; the data set is the sender's, every byte of it
    assert stored.stat().st_size - dataset_offset(stored) == size - dataset_offset(source)
    assert row.dataset_sha256 == sha256
    assert study.accession_number == "BIG-1"
    assert [p for p in (data_dir / "archive" / ".incoming").rglob("*") if p.is_file()] == []


def _context_results(body: bytes) -> dict[int, int]:
    """Presentation context ID -> result from an A-ASSOCIATE-AC body (PS3.8 section 9.3.3)."""
    results, offset = {}, 68  # protocol version, reserved, AE titles, reserved
    while offset + 4 <= len(body):
        kind, _, length = struct.unpack(">BBH", body[offset : offset + 4])
        if kind == 0x21:
            results[body[offset + 4]] = body[offset + 6]
        offset += 4 + length
    return results


@pytest.mark.parametrize(
    ("sop_class", "transfer_syntax", "result"),
    [
        pytest.param(CT_IMAGE_STORAGE, "1.2.840.10008.1.2.1", 0x00, id="CT-explicit-LE-accepted"),
        pytest.param(
            "1.2.826.0.1.3680043.9.7433.99.1", "1.2.840.10008.1.2.4.90", 0x00, id="private-class-J2K-accepted"
        ),
        pytest.param("", "1.2.840.10008.1.2.1", 0x03, id="empty-abstract-syntax"),
        pytest.param("CT IMAGE", "1.2.840.10008.1.2.1", 0x03, id="not-a-UID"),
        pytest.param(CT_IMAGE_STORAGE, "1.2.3.4.5.6.7", 0x04, id="unknown-transfer-syntax"),
        # pynetdicom took this one for storage (its class name differs from pydicom's keyword)
        pytest.param("1.2.840.10008.5.1.4.31", "1.2.840.10008.1.2", 0x03, id="modality-worklist-find"),
        pytest.param("1.2.840.10008.5.1.4.1.2.1.1", "1.2.840.10008.1.2", 0x03, id="patient-root-find"),
        pytest.param("1.2.840.10008.1.20.1", "1.2.840.10008.1.2", 0x03, id="storage-commitment"),
        pytest.param("1.2.840.10008.1.1", "1.2.840.10008.1.2", 0x00, id="verification-accepted"),
    ],
)
def test_contexts_with_malformed_or_unknown_syntaxes_are_refused(
    server: RouterServer, sop_class: str, transfer_syntax: str, result: int
) -> None:
    raw = RawAssociation(server.ports[0])
    try:
        raw.send(associate_rq(sop_class=sop_class, transfer_syntax=transfer_syntax))
        kind, body = raw.read_pdu()
        assert kind == 0x02  # A-ASSOCIATE-AC: the association stands, the context is answered
        assert _context_results(body) == {1: result}
        raw.send(A_ABORT)
    finally:
        raw.sock.close()
    assert send_paths(
        server.ports[0], [write_part10(make_dataset(), server.app.archive.root.parent / "after.dcm")]
    ) == [0x0000]


def _context_snapshot(contexts: list) -> list[tuple]:
    return [
        (cx.context_id, cx.abstract_syntax, tuple(cx.transfer_syntax), cx.scu_role, cx.scp_role, cx.result)
        for cx in contexts
    ]


def test_associations_share_the_servers_contexts_and_leave_them_as_they_were(server: RouterServer) -> None:
    """pynetdicom deep-copies the supported contexts for each association (two thirds of an
    association's set-up CPU); the router hands each association the server's own list. The
    negotiation must only read it: after an association that proposed storage, verification,
    a refused and a narrowed context, the list is unchanged, and a later change to the AE's
    contexts does not reach it."""
    assert server.listener is not None
    listening = server.listener.servers[0]
    before = _context_snapshot(listening.contexts)
    assert len(before) > 100  # every storage SOP class plus Verification
    assert copy.deepcopy(listening.contexts) is listening.contexts

    seen: list[list] = []

    def remember(event: object) -> None:
        seen.append(event.assoc.acceptor.supported_contexts)  # type: ignore[attr-defined]

    listening.bind(evt.EVT_ACCEPTED, remember)
    try:
        ae = AE(ae_title="SHARECHECK")
        ae.add_requested_context(CT_IMAGE_STORAGE, ["1.2.3.4.5.6.7", ExplicitVRLittleEndian])
        ae.add_requested_context("1.2.840.10008.1.1")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.4", ["1.2.3.4.5.6.7"])
        assoc = ae.associate("127.0.0.1", server.ports[0], ae_title="ROUTER")
        assert assoc.is_established
        results = {cx.abstract_syntax: cx.result for cx in assoc.accepted_contexts + assoc.rejected_contexts}
        assoc.release()
    finally:
        listening.unbind(evt.EVT_ACCEPTED, remember)
    assert results == {CT_IMAGE_STORAGE: 0x00, "1.2.840.10008.1.1": 0x00, "1.2.840.10008.5.1.4.1.1.4": 0x04}
    assert len(seen) == 1 and seen[0] is listening.contexts
    assert _context_snapshot(listening.contexts) == before

    server.listener.ae.add_supported_context(CT_IMAGE_STORAGE, ["1.2.3.4.5.6.7"])
    assert _context_snapshot(listening.contexts) == before


def test_set_uid_cache_hands_back_conformant_uids_and_leaves_the_rest_to_pynetdicom(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The association PDUs' ``set_uid`` (router.dicom.negotiation): a conformant UID is decoded
    once and the same immutable object handed back; a non-conformant one is warned about every
    time, as pynetdicom does; one pynetdicom refuses (over 64 characters) raises every time."""
    import pynetdicom.pdu_items as items
    import pynetdicom.presentation as presentation

    from router.dicom import negotiation
    from router.dicom.scp import STORAGE_TRANSFER_SYNTAXES

    assert negotiation.install(frozenset(STORAGE_TRANSFER_SYNTAXES))
    set_uid = items.set_uid
    assert presentation.set_uid is set_uid
    first = set_uid(b"1.2.840.10008.1.2.1", "Transfer Syntax Name")
    again = set_uid(b"1.2.840.10008.1.2.1", "Transfer Syntax Name")
    assert first == "1.2.840.10008.1.2.1" and again is first
    with caplog.at_level("WARNING", logger="pynetdicom"):
        odd = [set_uid(b"1.2.03.4", "Abstract Syntax Name") for _ in range(2)]
    assert odd == ["1.2.03.4", "1.2.03.4"] and odd[0] is not odd[1]
    # the value itself is withheld once the router's log filter is on (router.logsafety)
    warned = [r.getMessage() for r in caplog.records if "Non-conformant" in r.getMessage()]
    assert len(warned) == 2
    assert all(message.startswith("Non-conformant 'Abstract Syntax Name' value ") for message in warned)
    for _ in range(2):
        with pytest.raises(ValueError, match="Invalid 'Abstract Syntax Name' value"):
            set_uid(b"1." + b"2" * 70, "Abstract Syntax Name")
    # pynetdicom's own parameter order, by keyword too: (value, name, allow_empty, allow_none, validate)
    with pytest.raises(ValueError, match="must not be an empty str"):
        set_uid(b"", "Abstract Syntax Name", allow_empty=False)
    assert set_uid(None, "Abstract Syntax Name", allow_empty=False) is None
    with pytest.raises(TypeError, match="must be str, bytes or UID"):
        set_uid(None, "Abstract Syntax Name", allow_none=False)


@pytest.mark.parametrize(
    ("context_id", "result", "transfer_syntax"),
    [
        (1, 0x00, "1.2.840.10008.1.2.1"),  # odd length: no padding in association PDUs
        (255, 0x00, "1.2.840.10008.1.2"),
        (3, 0x03, "1.2.840.10008.1.2"),  # refused: the proposed syntax echoed
        (7, 0x04, "1.2.840.10008.1.2.4.201"),
        (9, 0x00, "1.2.826.0.1.3680043.8.1055.1.99.12345678901234567890"),
    ],
)
def test_accepted_context_items_encode_to_pynetdicoms_bytes(context_id: int, result: int, transfer_syntax: str) -> None:
    from pynetdicom.pdu_items import PresentationContextItemAC, TransferSyntaxSubItem

    from router.dicom import negotiation
    from router.dicom.scp import STORAGE_TRANSFER_SYNTAXES

    assert negotiation.install(frozenset(STORAGE_TRANSFER_SYNTAXES))
    item = PresentationContextItemAC()
    item.presentation_context_id, item.result_reason = context_id, result
    sub_item = TransferSyntaxSubItem()
    sub_item.transfer_syntax_name = transfer_syntax
    item.transfer_syntax_sub_item = [sub_item]
    expected = negotiation._PYNETDICOM_CONTEXT_AC_ENCODE(item)
    assert negotiation.encode_presentation_context_ac(context_id, result, transfer_syntax) == expected
    assert item.encode() == expected
    assert len(expected) == len(item)  # the item length pynetdicom sums into the PDU length


def test_a_whole_association_accept_encodes_as_pynetdicom_encodes_it() -> None:
    """An A-ASSOCIATE-AC for storescu's 128 contexts: the same bytes with the direct item encoder;
    an item without its one transfer syntax is left to pynetdicom."""
    from pynetdicom.pdu import A_ASSOCIATE_AC
    from pynetdicom.pdu_items import PresentationContextItemAC

    from router.dicom import negotiation
    from router.dicom.scp import STORAGE_TRANSFER_SYNTAXES

    assert negotiation.install(frozenset(STORAGE_TRANSFER_SYNTAXES))
    ae = AE(ae_title="ROUTER")
    for index in range(128):
        ae.add_requested_context(f"1.2.840.10008.5.1.4.1.1.{index + 1}", ["1.2.840.10008.1.2.1"])
    pdu = A_ASSOCIATE_AC()
    pdu.variable_items.append(_application_context_item())
    for number, context in enumerate(ae.requested_contexts):
        item = PresentationContextItemAC()
        item.presentation_context_id, item.result_reason = 2 * number + 1, number % 5
        item.from_primitive(_with_result(context, 2 * number + 1, number % 5))
        pdu.variable_items.append(item)
    empty = PresentationContextItemAC()
    empty.presentation_context_id, empty.result_reason = 255, 0x04
    pdu.variable_items.append(empty)
    fast = pdu.encode()
    PresentationContextItemAC.encode, saved = (
        negotiation._PYNETDICOM_CONTEXT_AC_ENCODE,
        PresentationContextItemAC.encode,
    )
    try:
        slow = pdu.encode()
    finally:
        PresentationContextItemAC.encode = saved
    assert fast == slow
    assert len(fast) > 128 * 27


def _application_context_item() -> object:
    from pynetdicom.pdu_items import ApplicationContextItem

    item = ApplicationContextItem()
    item.application_context_name = "1.2.840.10008.3.1.1.1"
    return item


def _with_result(context: object, context_id: int, result: int) -> object:
    context = copy.deepcopy(context)
    context.context_id, context.result = context_id, result  # type: ignore[attr-defined]
    return context
