"""A real S3-compatible server on 127.0.0.1 for tests (moto's standalone server speaks the S3
HTTP protocol), and a receiving SCP that keeps the data set bytes it is sent."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
from moto.server import ThreadedMotoServer
from pynetdicom import AE, AllStoragePresentationContexts, evt

from router.part10 import dataset_offset
from tests.dicom_helpers import free_port

ACCESS_KEY = "testing-access"
SECRET_KEY = "testing-secret"


class S3Server:
    """moto's S3 server on a free loopback port, with a bucket of its own (moto keeps objects in
    process memory, shared by its servers); :meth:`stop` and :meth:`start` again (same port,
    same objects) simulate an outage."""

    def __init__(self) -> None:
        self.port = free_port()
        self.bucket = f"router-archive-{uuid.uuid4().hex[:12]}"
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server: ThreadedMotoServer | None = None

    def start(self) -> None:
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                assert time.monotonic() < deadline, "S3 server did not start"
                time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
        )

    def objects(self) -> dict[str, bytes]:
        """Every object in the bucket: key -> bytes."""
        client = self.client()
        keys = [item["Key"] for item in client.list_objects_v2(Bucket=self.bucket).get("Contents", [])]
        return {key: client.get_object(Bucket=self.bucket, Key=key)["Body"].read() for key in keys}


class RecordingScp:
    """A reader's C-STORE SCP that keeps the data set bytes of every instance it receives."""

    def __init__(self, ae_title: str = "READER") -> None:
        self.received: dict[str, bytes] = {}  # SOP Instance UID -> data set bytes
        self.syntaxes: dict[str, str] = {}  # SOP Instance UID -> transfer syntax it came in
        self._lock = threading.Lock()
        ae = AE(ae_title=ae_title)
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self._store)])
        self.port = int(self.server.server_address[1])
        self.destination = f"{ae_title}@127.0.0.1:{self.port}"

    def _store(self, event: evt.Event) -> int:
        try:
            path = Path(event.dataset_path)  # chunked reception (the router's process-wide setting)
            data = path.read_bytes()[dataset_offset(path) :]
        except (AttributeError, TypeError):  # received in memory (no dataset_path)
            data = event.request.DataSet.getvalue()
        with self._lock:
            self.received[str(event.request.AffectedSOPInstanceUID)] = data
            self.syntaxes[str(event.request.AffectedSOPInstanceUID)] = str(event.context.transfer_syntax)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def dataset_bytes(path: Path) -> bytes:
    """The data set bytes of a Part 10 file (what travels in a C-STORE)."""
    return path.read_bytes()[dataset_offset(path) :]


def wait_for(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)
