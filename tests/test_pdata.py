"""P-DATA-TF PDUs read as views (router/dicom/pdata.py): the same PDVs as pynetdicom's decoder,
pynetdicom's own decoder for anything else, and data sets stored byte for byte over real
associations."""

from __future__ import annotations

import itertools
import logging
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.dsutils import decode
from pynetdicom.fsm import StateMachine
from pynetdicom.pdu import P_DATA_TF
from pynetdicom.pdu_primitives import P_DATA
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from router.dicom import pdata
from router.dicom.guard import GuardedAssociationSocket
from router.dicom.status import StoreStatus
from router.part10 import dataset_offset
from router.server import RouterServer
from tests.dicom_bytes import (
    CT_IMAGE_STORAGE,
    RawAssociation,
    c_store_command,
    first_answer,
    identifiers,
    p_data_tf,
    pdv,
)
from tests.dicom_helpers import archived_file, make_dataset, write_part10


def _pynetdicom_pdvs(pdu: bytes) -> list[tuple[int, bytes]]:
    decoded = P_DATA_TF()
    decoded.decode(pdu)
    return [(context_id, bytes(value)) for context_id, value in decoded.to_primitive().presentation_data_value_list]


WELL_FORMED = [
    pytest.param(p_data_tf(pdv(b"\x08\x00\x16\x00", command=True, last=True)), id="one-command-pdv"),
    pytest.param(
        p_data_tf(pdv(b"C" * 40, command=True, last=True), pdv(b"D" * 301, command=False, last=False, context_id=3)),
        id="command-and-data-set",
    ),
    pytest.param(
        p_data_tf(
            pdv(b"", command=False, last=False, context_id=255),  # only the control header
            pdv(bytes(range(256)) * 4, command=False, last=False, context_id=255),
            pdv(b"\x00", command=False, last=True, context_id=255),
        ),
        id="three-data-set-pdvs",
    ),
]


@pytest.mark.parametrize("pdu", WELL_FORMED)
def test_a_p_data_tf_is_read_as_views_of_the_pdvs_pynetdicom_reads(pdu: bytes) -> None:
    received = bytearray(pdu)  # as the DUL hands it over
    decoded = pdata.decode_pdata(received)
    assert decoded is not None
    assert all(isinstance(value, memoryview) for _, value in decoded.items)
    assert [(context_id, bytes(value)) for context_id, value in decoded.items] == _pynetdicom_pdvs(pdu)
    primitive = decoded.to_primitive()
    assert [(context_id, bytes(value)) for context_id, value in primitive.presentation_data_value_list] == (
        _pynetdicom_pdvs(pdu)
    )
    # views, not copies: the value of the last PDV starts where its item's header ends
    last = decoded.items[-1][1]
    assert last.obj is received and len(last) == struct.unpack(">I", pdu[-len(last) - 5 : -len(last) - 1])[0] - 1


ONE_PDV = pdv(b"\x08\x00\x16\x00", command=True, last=True)
LEFT_TO_PYNETDICOM = [
    pytest.param(b"\x01\x00" + ONE_PDV[:4] + ONE_PDV, id="not-a-p-data-tf"),
    pytest.param(p_data_tf(), id="no-pdv"),
    pytest.param(p_data_tf(struct.pack(">IB", 0, 1)), id="item-length-0"),
    pytest.param(p_data_tf(struct.pack(">IB", 1, 1)), id="item-without-control-header"),
    pytest.param(p_data_tf(ONE_PDV[:-1]), id="item-runs-past-the-pdu"),
    pytest.param(p_data_tf(ONE_PDV, b"\x00\x00\x00"), id="bytes-after-the-last-item"),
    pytest.param(b"\x04\x00" + struct.pack(">I", len(ONE_PDV) + 1) + ONE_PDV, id="pdu-length-not-the-bytes"),
]


@pytest.mark.parametrize("context_id", [1, 127, 255])
@pytest.mark.parametrize("value", [b"\x03", b"\x03" + bytes(range(256)) * 3, b"\x02" + b"\x00" * 65_537])
def test_a_p_data_tf_of_one_item_encodes_to_pynetdicoms_bytes(context_id: int, value: bytes) -> None:
    """The C-STORE-RSP the DUL thread sends directly (router.dicom.store_codec, lever 49)."""
    primitive = P_DATA()
    primitive.presentation_data_value_list.append((context_id, value))
    assert pdata.encode_pdata_tf(context_id, value) == P_DATA_TF(primitive).encode()


@pytest.mark.parametrize("pdu", LEFT_TO_PYNETDICOM)
def test_a_pdu_it_does_not_take_is_left_to_pynetdicom(pdu: bytes) -> None:
    assert pdata.decode_pdata(bytearray(pdu)) is None


# ----------------------------------------------------------------------------- over the network


@dataclass
class Viewed:
    """What :func:`pdata.decode_pdata` read as views: the number of PDVs of each P-DATA-TF, and
    the buffer each was read from."""

    counts: list[int] = field(default_factory=list)
    buffers: list[bytearray | bytes] = field(default_factory=list)


@pytest.fixture
def read_as_views(monkeypatch: pytest.MonkeyPatch) -> Viewed:
    """Each P-DATA-TF this module decoded (a spy around the real reader)."""
    seen = Viewed()
    real = pdata.decode_pdata

    def spy(pdu: bytearray | bytes) -> pdata.ReceivedPData | None:
        decoded = real(pdu)
        if decoded is not None:
            seen.counts.append(len(decoded.items))
            seen.buffers.append(pdu)
        return decoded

    monkeypatch.setattr(pdata, "decode_pdata", spy)
    return seen


@pytest.fixture
def whole_pdus(monkeypatch: pytest.MonkeyPatch) -> list[bytearray]:
    """Each PDU the listener's guarded socket read in one buffer (a spy around the real read)."""
    seen: list[bytearray] = []
    real = GuardedAssociationSocket.read_pdu

    def spy(self: GuardedAssociationSocket) -> bytearray:
        seen.append(real(self))
        return seen[-1]

    monkeypatch.setattr(GuardedAssociationSocket, "read_pdu", spy)
    return seen


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_512_kib_data_set_in_several_pdus_is_stored_byte_for_byte(
    server: RouterServer, tmp_path: Path, read_as_views: Viewed, whole_pdus: list[bytearray]
) -> None:
    assert pdata.installed()
    dataset = make_dataset(Rows=512, Columns=512, PixelData=bytes(range(256)) * 2048)
    source = write_part10(dataset, tmp_path / "in.dcm")
    ae = AE(ae_title="PDATA_SCU")
    meta = dcmread(source, stop_before_pixels=True).file_meta
    ae.requested_contexts = [build_context(CT_IMAGE_STORAGE, [str(meta.TransferSyntaxUID)])]
    assoc = ae.associate("127.0.0.1", server.ports[0], ae_title="ROUTER")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(source).Status) == StoreStatus.SUCCESS
    finally:
        assoc.release()
    stored = archived_file(server, dataset.SOPInstanceUID)
    assert stored.read_bytes()[dataset_offset(stored) :] == source.read_bytes()[dataset_offset(source) :]
    # the router offers 256 KiB PDUs (listener.max_pdu_length): the command set, then the
    # 524,288 bytes of Pixel Data and the rest of the data set in three; and the C-STORE-RSP,
    # which this process's SCU read the same way
    assert read_as_views.counts == [1, 1, 1, 1, 1]
    # the router's four P-DATA-TFs were decoded from the very buffers its socket read them into
    # (header and body together, lever 41): no copy in between
    decoded = read_as_views.buffers
    p_data_reads = [pdu for pdu in whole_pdus if pdu[:1] == b"\x04"]
    assert len(p_data_reads) == 4 and all(any(pdu is buffer for buffer in decoded) for pdu in p_data_reads)
    assert sum(len(pdu) for pdu in p_data_reads[1:]) > 512 * 1024


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_command_set_and_its_data_set_in_one_pdu_arearchived_file(
    server: RouterServer, read_as_views: Viewed
) -> None:
    """Several PDVs in one P-DATA-TF (PS3.8 section 9.3.5): the command set, then the data set in
    three fragments, the views of one buffer."""
    sop = "1.2.826.0.1.3680043.9.7433.3.40"
    body = identifiers(sop, "1.2.826.0.1.3680043.9.7433.1.40", "1.2.826.0.1.3680043.9.7433.2.40")
    cut = [0, len(body) // 3, 2 * len(body) // 3, len(body)]
    fragments = [pdv(body[start:end], command=False, last=end == len(body)) for start, end in itertools.pairwise(cut)]
    raw = RawAssociation(server.ports[0])
    try:
        assert raw.associate(max_pdu=0) == 0x02
        raw.send(p_data_tf(pdv(c_store_command(CT_IMAGE_STORAGE, sop), command=True, last=True), *fragments))
        kind, answer = raw.read_pdu()
    finally:
        raw.close()
    _assert_stored_as_sent(server, sop, body, kind, answer)
    assert read_as_views.counts == [4]


def _assert_stored_as_sent(server: RouterServer, sop: str, body: bytes, kind: int, answer: bytes) -> None:
    """The answer was a C-STORE-RSP with Success and the archived data set is ``body``, byte for byte."""
    assert kind == 0x04
    assert decode(BytesIO(answer[6:]), True, True).Status == StoreStatus.SUCCESS
    stored = archived_file(server, sop)
    assert stored.read_bytes()[dataset_offset(stored) :] == body


@pytest.fixture
def verification_scp() -> Iterator[tuple[AE, list[object]]]:
    """A pynetdicom Verification SCP in this process (where the router's patches are installed),
    with a handler bound to EVT_PDU_RECV that records the class of each PDU it is given."""
    pdata.install()
    seen: list[object] = []
    ae = AE(ae_title="ECHO_SCP")
    ae.add_supported_context(Verification)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_PDU_RECV, lambda event: seen.append(type(event.pdu)))]
    )
    try:
        yield ae, seen
    finally:
        server.shutdown()


@pytest.mark.network
def test_with_a_handler_for_received_pdus_pynetdicom_decodes_them(
    verification_scp: tuple[AE, list[object]], read_as_views: Viewed
) -> None:
    scp, seen = verification_scp
    port = scp._servers[0].server_address[1]
    scu = AE(ae_title="ECHO_SCU")
    scu.add_requested_context(Verification)
    assoc = scu.associate("127.0.0.1", port, ae_title="ECHO_SCP")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_echo().Status) == 0x0000  # the echo response, read by the SCU as views
    finally:
        assoc.release()
    assert P_DATA_TF in seen  # the SCP's handler got pynetdicom's own PDU
    assert read_as_views.counts == [1]  # only the SCU's read of the response went through this module


def test_a_pdu_of_more_items_than_it_views_is_left_to_pynetdicom() -> None:
    """Thousands of tiny PDVs in one PDU cost a view object each (40 times the PDU's size with
    max_pdu_length = 0, found by a hostile-peer trial): past MAX_VIEWED_ITEMS, pynetdicom decodes."""
    tiny = pdv(b"", command=False, last=False)
    at_most = p_data_tf(*[tiny] * pdata.MAX_VIEWED_ITEMS)
    decoded = pdata.decode_pdata(bytearray(at_most))
    assert decoded is not None and len(decoded.items) == pdata.MAX_VIEWED_ITEMS == 64
    assert pdata.decode_pdata(bytearray(p_data_tf(*[tiny] * (pdata.MAX_VIEWED_ITEMS + 1)))) is None


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    "pdu",
    [
        pytest.param(p_data_tf(struct.pack(">IB", 0, 1)), id="item-length-0"),
        pytest.param(p_data_tf(ONE_PDV[:-1]), id="item-runs-past-the-pdu"),
        pytest.param(p_data_tf(ONE_PDV, b"\x00\x00\x00"), id="bytes-after-the-last-item"),
    ],
)
def test_an_undecodable_pdu_is_one_warning_and_an_a_abort(
    server: RouterServer, caplog: pytest.LogCaptureFixture, pdu: bytes
) -> None:
    """pynetdicom logged two ERROR lines for each ("Unable to decode the received PDU data" and
    the exception's type), which a peer could repeat at will (found by a hostile-peer trial)."""
    caplog.set_level(logging.INFO)
    kind, body, local_port = first_answer(server.ports[0], pdu)
    assert (kind, body[2:4]) == (0x07, b"\x02\x00")  # A-ABORT, service provider, no reason given
    problems = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(problems) == 1, problems
    name, level, message = problems[0]
    assert (name, level) == ("router.dicom.pdata", "WARNING")
    assert message.startswith(f"P-DATA-TF from 'RAW_SCU' at 127.0.0.1:{local_port} could not be decoded (")
    assert message.endswith("); A-ABORT sent")


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_p_data_tf_in_sta6_goes_to_the_dimse_layer_without_the_state_machine(
    server: RouterServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Action DT-2 taken as the PDU is read (pdata._delivers_at_once): the listener's state
    machine sees no Evt10, every instance is stored and answered, and the SCU in this process
    (pynetdicom's own reader) still runs its responses through its state machine."""
    events: list[tuple[bool, str]] = []
    real = StateMachine.do_action

    def spy(self: StateMachine, event: str) -> None:
        events.append((self.dul.assoc.is_acceptor, event))
        real(self, event)

    monkeypatch.setattr(StateMachine, "do_action", spy)
    ae = AE(ae_title="PDATA_SCU")
    ae.requested_contexts = [build_context(CT_IMAGE_STORAGE, ["1.2.840.10008.1.2.1"])]  # Explicit VR LE
    datasets = [make_dataset() for _ in range(3)]
    assoc = ae.associate("127.0.0.1", server.ports[0], ae_title="ROUTER")
    assert assoc.is_established
    try:
        for index, dataset in enumerate(datasets):
            source = write_part10(dataset, tmp_path / f"{index}.dcm")
            assert int(assoc.send_c_store(source).Status) == StoreStatus.SUCCESS
    finally:
        assoc.release()
    for dataset in datasets:
        assert archived_file(server, dataset.SOPInstanceUID).exists()
    listener = [event for acceptor, event in events if acceptor]
    assert "Evt10" not in listener
    assert listener.count("Evt12") == 1  # the A-RELEASE-RQ still went through it
    assert [event for acceptor, event in events if not acceptor].count("Evt10") == 3  # the responses


# ------------------------------------------------ the next PDU of a data set read at once (lever 58)
@pytest.fixture
def read_on(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """What :func:`pdata._reads_on` answered after each P-DATA-TF handed to the DIMSE layer at
    once (a spy around the real check)."""
    seen: list[bool] = []
    real = pdata._reads_on

    def spy(dul: object, socket: object) -> bool:
        seen.append(real(dul, socket))  # type: ignore[arg-type]
        return seen[-1]

    monkeypatch.setattr(pdata, "_reads_on", spy)
    return seen


@pytest.mark.network
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("pause_after", [None, 3], ids=["all-waiting", "peer-pauses-mid-data-set"])
def test_the_pdus_of_a_data_set_already_waiting_are_read_at_once(
    server: RouterServer, read_on: list[bool], pause_after: int | None
) -> None:
    """A command set and its data set in ten P-DATA-TF PDUs, sent in one write: the DUL thread
    reads each next PDU of the data set as soon as the one before is written (the bytes are
    there), and goes back to its reactor once the message is complete. A peer that pauses in the
    middle is waited for by the reactor, and the rest read at once again when it comes."""
    sop = "1.2.826.0.1.3680043.9.7433.3.58"
    body = identifiers(
        sop,
        "1.2.826.0.1.3680043.9.7433.1.58",
        "1.2.826.0.1.3680043.9.7433.2.58",
        tail=struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, 10_240) + bytes(range(256)) * 40,
    )
    size = -(-len(body) // 10)
    pieces = [body[start : start + size] for start in range(0, len(body), size)]
    assert len(pieces) == 10
    pdus = [p_data_tf(pdv(c_store_command(CT_IMAGE_STORAGE, sop), command=True, last=True))]
    pdus += [p_data_tf(pdv(piece, command=False, last=index == 9)) for index, piece in enumerate(pieces)]
    raw = RawAssociation(server.ports[0])
    try:
        assert raw.associate(max_pdu=0) == 0x02
        if pause_after is None:
            raw.send(b"".join(pdus))
        else:
            raw.send(b"".join(pdus[: 1 + pause_after]))
            deadline = time.monotonic() + 5  # the router has read what came and found nothing more
            while len(read_on) <= pause_after and time.monotonic() < deadline:
                time.sleep(0.01)
            raw.send(b"".join(pdus[1 + pause_after :]))
        kind, answer = raw.read_pdu()
    finally:
        raw.close()
    _assert_stored_as_sent(server, sop, body, kind, answer)
    # after the command PDU and each data set PDU but the last, True while the next is waiting;
    # the check after the last comes once its response is sent (found by the trial: read too early)
    if pause_after is None:
        expected = [True] * 10 + [False]
    else:
        expected = [True] * pause_after + [False] + [True] * (9 - pause_after) + [False]
    deadline = time.monotonic() + 5
    while len(read_on) < len(expected) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert read_on == expected
