"""The C-STORE SCU (forwarding's sender) against a destination that aborts the association:
it gives up at once instead of waiting out its DIMSE timeout for every file left, and the
forwarding error says the instances were not answered, not that they were refused."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, _config, evt

from router.dicom import reactor
from router.dicom.scu import Destination, Forwarder, SendError, send_files
from router.dicom.store_codec import encode_file_meta
from router.services.forwarding import _send_error
from tests.dicom_bytes import data_set_beginning_with_file_meta_elements
from tests.dicom_helpers import CT_IMAGE_STORAGE, make_dataset, write_part10
from tests.s3_helpers import RecordingScp

pytestmark = pytest.mark.network

#: A-ABORT PDU (PS3.8 section 9.3.8): source 2 (service provider), reason 0 (not specified).
A_ABORT = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 0])
P_DATA_TF = 0x04


class AbortingDestination:
    """A pynetdicom C-STORE SCP behind a relay that answers the first P-DATA-TF PDU from the
    sender with an A-ABORT and then keeps the connection open, reading and discarding."""

    def __init__(self) -> None:
        ae = AE(ae_title="READER")
        ae.supported_contexts = AllStoragePresentationContexts
        self._server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda _: 0)])
        self._scp_port = int(self._server.server_address[1])
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.aborted = threading.Event()
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._relay, daemon=True).start()

    def _relay(self) -> None:
        client, _ = self._listener.accept()
        upstream = socket.create_connection(("127.0.0.1", self._scp_port))
        self._sockets += [client, upstream]
        threading.Thread(target=self._copy, args=(upstream, client), daemon=True).start()
        while data := client.recv(65536):
            if data[0] == P_DATA_TF:
                client.sendall(A_ABORT)
                self.aborted.set()
                while client.recv(65536):
                    pass
                return
            upstream.sendall(data)

    @staticmethod
    def _copy(source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it; close alone does not
            sock.close()
        self._server.shutdown()


@pytest.fixture
def aborting() -> Iterator[AbortingDestination]:
    reactor.install()  # as in the router's process, where forwarding runs
    destination = AbortingDestination()
    yield destination
    destination.close()


def _files(tmp_path: Path, count: int) -> list[Path]:
    return [write_part10(make_dataset(), tmp_path / f"{index}.dcm") for index in range(count)]


def test_send_files_stops_at_an_abort_instead_of_waiting_out_the_timeout(
    tmp_path: Path, aborting: AbortingDestination
) -> None:
    files = _files(tmp_path, 3)
    started = time.monotonic()
    results = send_files(files, Destination("READER", "127.0.0.1", aborting.port), timeout=8.0)
    elapsed = time.monotonic() - started
    assert aborting.aborted.is_set()
    assert [(result.path, result.status) for result in results] == [(path, None) for path in files]
    # Before: the second C-STORE went out while the association thread had not yet seen the
    # abort, and waited the whole DIMSE timeout (8 s here, 30 s when forwarding) for an answer.
    assert elapsed < 4.0, f"took {elapsed:.1f} s"


def test_forwarder_answers_only_for_what_the_destination_answered(
    tmp_path: Path, aborting: AbortingDestination
) -> None:
    assert Forwarder()(_files(tmp_path, 2), f"READER@127.0.0.1:{aborting.port}", "ROUTER") == []


def test_the_forwarding_error_tells_refused_from_not_answered() -> None:
    assert _send_error(2, [True, True]) is None
    assert _send_error(3, [True, False, False]) == "2 of 3 instance(s) refused"
    assert _send_error(3, []) == ("3 of 3 instance(s) not answered (the association was aborted, closed or timed out)")
    assert _send_error(4, [False, True]) == (
        "1 of 4 instance(s) refused; 2 of 4 instance(s) not answered (the association was aborted, closed or timed out)"
    )


SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def test_a_file_the_destination_has_no_context_for_is_skipped_and_the_others_are_still_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the router's listener makes pynetdicom accept any storage SOP class, process-wide
    # (router.dicom.scp): this workstation, in the same test process, must not
    monkeypatch.setattr(_config, "UNRESTRICTED_STORAGE_SERVICE", False)
    received: list[str] = []
    ae = AE(ae_title="READER")
    ae.add_supported_context(CT_IMAGE_STORAGE, ExplicitVRLittleEndian)  # CT only, as some workstations are
    server = ae.start_server(
        ("127.0.0.1", 0),
        block=False,
        evt_handlers=[(evt.EVT_C_STORE, lambda event: received.append(str(event.request.AffectedSOPInstanceUID)) or 0)],
    )
    try:
        port = int(server.server_address[1])
        datasets = [make_dataset(), make_dataset(SOPClassUID=SECONDARY_CAPTURE), make_dataset()]
        files = [write_part10(ds, tmp_path / f"{index}.dcm") for index, ds in enumerate(datasets)]
        results = send_files(files, Destination("READER", "127.0.0.1", port), timeout=8.0)
        assert [(result.status, result.refused_context is not None) for result in results] == [
            (0x0000, False),
            (None, True),
            (0x0000, False),
        ]
        assert received == [str(datasets[0].SOPInstanceUID), str(datasets[2].SOPInstanceUID)]
        # forwarding records the two accepted instances and counts the other as refused
        assert Forwarder()(files, f"READER@127.0.0.1:{port}", "ROUTER") == [True, False, True]
        # only what it takes no context for: refused too, not "no answer" (pynetdicom aborts
        # an association with no accepted context; it was a SendError before)
        only = send_files(files[1:2], Destination("READER", "127.0.0.1", port), timeout=8.0)
        assert [(result.status, result.refused_context) for result in only] == [
            (None, "no presentation context accepted for it")
        ]
        assert Forwarder()(files[1:2], f"READER@127.0.0.1:{port}", "ROUTER") == [False]
        assert len(received) == 4
    finally:
        server.shutdown()


def test_a_rejection_and_a_silent_peer_are_told_apart(tmp_path: Path) -> None:
    files = _files(tmp_path, 1)
    ae = AE(ae_title="READER")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.require_called_aet = True  # the router calls it by another AE title: rejected
    server = ae.start_server(("127.0.0.1", 0), block=False)
    silent = socket.create_server(("127.0.0.1", 0))  # takes the connection, never answers
    try:
        with pytest.raises(SendError, match=r"^association with OTHER@127\.0\.0\.1:\d+ was rejected$"):
            send_files(files, Destination("OTHER", "127.0.0.1", int(server.server_address[1])), timeout=5.0)
        with pytest.raises(
            SendError,
            match=r"^association with READER@127\.0\.0\.1:\d+ was not established: no answer within 1 s, "
            r"or the connection was closed or aborted$",
        ):
            send_files(files, Destination("READER", "127.0.0.1", silent.getsockname()[1]), timeout=1.0)
    finally:
        silent.close()
        server.shutdown()


def test_a_data_set_beginning_with_group_0002_elements_is_sent_as_stored(tmp_path: Path) -> None:
    """The File Meta Information ends at its group length (PS3.10 section 7.1): group 0002
    elements a sender put at the start of its data set belong to the data set. pynetdicom's
    split of the file took them as File Meta and sent the data set without them, under the
    transfer syntax they named (found by a trial: the readers refused or mislabelled it)."""
    sop, study, series = "1.2.826.0.1.3680043.10.8.1", "1.2.826.0.1.3680043.10.8.2", "1.2.826.0.1.3680043.10.8.3"
    data_set = data_set_beginning_with_file_meta_elements(sop, study, series)
    path = tmp_path / "stored.dcm"
    path.write_bytes(encode_file_meta(CT_IMAGE_STORAGE, sop, ExplicitVRLittleEndian, "CT_NORTH") + data_set)
    reader = RecordingScp()
    try:
        (result,) = send_files([path], Destination("READER", "127.0.0.1", reader.port))
    finally:
        reader.stop()
    assert result.status == 0x0000
    assert reader.syntaxes == {sop: ExplicitVRLittleEndian}
    assert reader.received == {sop: data_set}
