"""The Python floor: the least CPU a Python C-STORE SCP can spend while keeping the router's promises.

Issue 14 asks the router for 1.2x Orthanc's rate with four associations. In those cells the
machine is busy and the rate follows CPU per instance, so the question behind the last missing
cell is how little CPU per instance any receiver written in Python can spend. This receiver is
that lower bound, written for the measurement only: no pynetdicom, no pydicom, no validation, no
limits, no routing; it trusts its peer completely and must never face a real one.

What it keeps of the router's promises, in the router's order (``IntakeService.store``): each
data set written to a spool file with its SHA-256, the file fsynced, the index row written and
the file renamed into the archive folder in one SQLite transaction, the commit (WAL,
``synchronous=NORMAL``, as the router's receiving processes since lever 46), the folder fsynced,
and only then the C-STORE-RSP Success. What it leaves out, unless ``--router-work``: the header read (patient's
state, study and series UIDs) and the study, series and sender rows. Always left out: the
study folders (one flat folder), the File Meta Information's optional items, the group commit,
everything about security, logging and metrics.

Shape: one process per core sharing one listening socket (``fork`` after ``bind``), one thread
per association, PDUs read with ``recv_into`` into one buffer per association, data fragments
written with ``os.write``. PS3.8 9.3 (PDU layouts) and PS3.7 9.3.1, 9.3.5 (C-STORE, C-ECHO).

Usage: ``python benchmarks/floor_scp.py PORT OUTPUT_DIR [--router-work | --router-intake]``
(127.0.0.1 only; prints ``listening`` once bound; stops on SIGTERM or SIGINT). The harness runs
it as receiver ``python-floor``; with ``--router-work`` (the router's header read and index
statements on top: :class:`RouterWork`) as ``python-floor-router-work``; with
``--router-intake`` (the router's header read and whole intake service: :class:`RouterIntake`)
as ``python-floor-router-intake``.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import sqlite3
import struct
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

MAX_PDU = 262144  # offered to the sender, as the router's default listener.max_pdu_length
EXPLICIT_LE = b"1.2.840.10008.1.2.1"
IMPLICIT_LE = b"1.2.840.10008.1.2"
IMPLEMENTATION_UID = b"1.2.826.0.1.3680043.9.7433.1.99"


def _recv_into(sock: socket.socket, view: memoryview) -> None:
    got = 0
    while got < len(view):
        count = sock.recv_into(view[got:])
        if not count:
            raise EOFError
        got += count


def _item(kind: int, payload: bytes) -> bytes:
    return struct.pack(">BxH", kind, len(payload)) + payload


def _accept(request: bytes, syntaxes_by_context: dict[int, bytes]) -> bytes:
    """The A-ASSOCIATE-AC for an A-ASSOCIATE-RQ body: every presentation context accepted with
    Explicit VR Little Endian if proposed, else Implicit, else the first proposed (recorded in
    ``syntaxes_by_context``)."""
    items = [_item(0x10, b"1.2.840.10008.3.1.1.1")]
    offset = 68
    while offset + 4 <= len(request):
        kind, length = request[offset], struct.unpack_from(">H", request, offset + 2)[0]
        body = request[offset + 4 : offset + 4 + length]
        offset += 4 + length
        if kind != 0x20:
            continue
        syntaxes, sub = [], 4
        while sub + 4 <= len(body):
            sub_kind, sub_length = body[sub], struct.unpack_from(">H", body, sub + 2)[0]
            if sub_kind == 0x40:
                syntaxes.append(body[sub + 4 : sub + 4 + sub_length].rstrip(b"\0 "))
            sub += 4 + sub_length
        chosen = next((uid for uid in (EXPLICIT_LE, IMPLICIT_LE) if uid in syntaxes), syntaxes[0])
        syntaxes_by_context[body[0]] = chosen
        items.append(_item(0x21, bytes((body[0], 0, 0, 0)) + _item(0x40, chosen)))
    user = _item(0x51, struct.pack(">I", MAX_PDU)) + _item(0x52, IMPLEMENTATION_UID) + _item(0x55, b"FLOOR")
    items.append(_item(0x50, user))
    body = struct.pack(">HH", 1, 0) + request[4:36] + bytes(32) + b"".join(items)
    return struct.pack(">BxI", 0x02, len(body)) + body


def _file_meta(sop_class: bytes, sop_instance: bytes, syntax: bytes) -> bytes:
    """Preamble, prefix and File Meta Information (Explicit VR Little Endian, PS3.10 7.1)."""

    def explicit(element: int, vr: bytes, value: bytes) -> bytes:
        if len(value) % 2:
            value += b"\0"
        if vr == b"OB":
            return struct.pack("<HH2sHI", 2, element, vr, 0, len(value)) + value
        return struct.pack("<HH2sH", 2, element, vr, len(value)) + value

    body = b"".join(
        (
            explicit(0x0001, b"OB", b"\0\1"),
            explicit(0x0002, b"UI", sop_class.rstrip(b"\0")),
            explicit(0x0003, b"UI", sop_instance.rstrip(b"\0")),
            explicit(0x0010, b"UI", syntax),
            explicit(0x0012, b"UI", IMPLEMENTATION_UID),
        )
    )
    return bytes(128) + b"DICM" + explicit(0x0000, b"UL", struct.pack("<I", len(body))) + body


def _element(group_element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", 0, group_element, len(value)) + value


def _command(encoded: bytes) -> dict[int, bytes]:
    """A command set's elements (Implicit VR Little Endian, PS3.7 6.3.1) by element number."""
    found, offset = {}, 0
    while offset + 8 <= len(encoded):
        _, element, length = struct.unpack_from("<HHI", encoded, offset)
        found[element] = encoded[offset + 8 : offset + 8 + length]
        offset += 8 + length
    return found


def _response(context_id: int, command: dict[int, bytes]) -> bytes:
    field = struct.unpack("<H", command[0x0100])[0]
    parts = [_element(0x0002, command[0x0002]), _element(0x0100, struct.pack("<H", field | 0x8000))]
    parts += [_element(0x0120, command[0x0110]), _element(0x0800, b"\x01\x01"), _element(0x0900, b"\0\0")]
    if field == 0x0001:
        parts.append(_element(0x1000, command[0x1000]))
    body = b"".join(parts)
    rsp = struct.pack("<HHI", 0, 0, 4) + struct.pack("<I", len(body)) + body
    return struct.pack(">BxIIBB", 0x04, len(rsp) + 6, len(rsp) + 2, context_id, 0x03) + rsp


class Store:
    """One process's archive folder, spool folder and index connection (one writer at a time)."""

    def __init__(
        self, out_dir: str, router_work: RouterWork | None = None, router_intake: RouterIntake | None = None
    ) -> None:
        self.out_dir, self.spool_dir = out_dir, os.path.join(out_dir, "..", "spool")
        self.router_work, self.router_intake = router_work, router_intake
        os.makedirs(self.spool_dir, exist_ok=True)
        self.folder_fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
        self.index = sqlite3.connect(os.path.join(out_dir, "..", "index.db"), check_same_thread=False, timeout=30)
        self.index.execute("PRAGMA journal_mode=WAL")
        self.index.execute("PRAGMA synchronous=NORMAL")
        self.index.execute("CREATE TABLE IF NOT EXISTS instance (uid TEXT PRIMARY KEY, sha256 BLOB, size INTEGER)")
        self.index.commit()
        self.lock = threading.Lock()

    def open_spool(self) -> tuple[int, str]:
        if self.router_intake is not None:
            path = str(self.router_intake.app.archive.new_temp_path(".dcm"))
        else:
            path = os.path.join(self.spool_dir, f"rx-{os.urandom(8).hex()}.dcm")
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path

    def keep(self, fd: int, spool: str, uid: bytes, digest: bytes, size: int) -> None:
        """Close ``fd`` after its fsync; rename the file into the archive folder inside the index
        transaction, commit, then fsync the folder: the router's order (``IntakeService.store``).
        With ``--router-intake`` the router's intake service does all of it."""
        if self.router_intake is not None:
            file_size = os.fstat(fd).st_size
            os.close(fd)
            self.router_intake.store(spool, digest.hex(), file_size)
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        name = uid.rstrip(b"\0").decode() + ".dcm"

        def place() -> None:
            os.rename(spool, os.path.join(self.out_dir, name))

        if self.router_work is not None:
            self.router_work.index(spool, name, digest, size, place)
        else:
            with self.lock:
                self.index.execute("INSERT OR REPLACE INTO instance VALUES (?, ?, ?)", (uid, digest, size))
                place()
                self.index.commit()
        os.fsync(self.folder_fd)


class RouterWork:
    """``--router-work``: the router's own per-instance work on top of the floor, for the
    measurement of what a lean receive path would still spend. The header read by the router's
    :func:`~router.dicom.extract.read_header` and the router's index statements
    (:class:`~router.db.instance_index.InstanceIndex`, study, series, instance and sender rows)
    in one SQLite transaction per instance through the router's engine (``BEGIN IMMEDIATE``,
    ``synchronous=NORMAL`` as its receiving processes), instead of the floor's one-row table."""

    def __init__(self, database: str) -> None:
        from sqlalchemy import event

        from router.db.engine import make_engine
        from router.db.instance_index import IndexRow, InstanceIndex
        from router.dicom.extract import read_header
        from router.timeutil import utcnow

        self.engine = make_engine(f"sqlite:///{database}")
        event.listen(self.engine, "connect", lambda raw, _record: raw.execute("PRAGMA synchronous=NORMAL"))
        self.indexer = InstanceIndex(self.engine.dialect)
        self.read_header, self.row, self.clock = read_header, IndexRow, utcnow

    @staticmethod
    def create_schema(database: str) -> None:
        from router.app import RouterApp
        from router.config import Settings

        settings = Settings().with_data_dir(Path(database).parent).replace("database", url=f"sqlite:///{database}")
        RouterApp.open(settings, upgrade=True).close()

    def index(self, spool: str, name: str, digest: bytes, size: int, place: Callable[[], None]) -> None:
        """Read the header, then in one transaction: the index rows, ``place()``, the commit."""
        header = self.read_header(Path(spool))
        # IntakeService._index's row, less the study evidence beyond two columns (the header's
        # other values bind as NULL) and the patient-location encryption: the same statements.
        row = self.row(
            study_instance_uid=header.study_instance_uid,
            series_instance_uid=header.series_instance_uid,
            sop_instance_uid=header.sop_instance_uid,
            sop_class_uid=header.sop_class_uid,
            transfer_syntax_uid=header.transfer_syntax_uid,
            relative_path=name,
            size_bytes=size,
            dataset_sha256=digest.hex(),
            calling_ae_title="FLOOR",
            peer_address="127.0.0.1",
            received_at=self.clock(),
            modality=header.modality,
            series_body_part=header.body_part,
            series_description=header.series_description,
            evidence={"accession_number": header.accession_number, "study_date": header.study_date},
        )
        with self.engine.begin() as connection:
            self.indexer.record(connection, row)
            place()


class RouterIntake:
    """``--router-intake``: the router's header read and its whole intake service on top of the
    floor (:meth:`IntakeService.store`: file fsync, study folder, index rows with the rename in the
    group commit's transaction, folder fsync), into the router's archive layout under the output
    folder. What is left out is only the DICOM layer: pynetdicom, the codec, the handler's checks,
    metrics and the main process."""

    def __init__(self, out_dir: str) -> None:
        from router.app import RouterApp
        from router.dicom.extract import read_header
        from router.services.intake import Sender

        self.app = RouterApp.open(self.settings(out_dir))
        self.app.archive.prepare()
        self.read_header, self.sender = read_header, Sender("FLOOR", "127.0.0.1")

    @staticmethod
    def settings(out_dir: str) -> Any:
        from router.config import Settings

        settings = Settings().with_data_dir(Path(out_dir).parent / "router-data")
        return settings.replace("paths", archive_dir=Path(out_dir))

    @classmethod
    def create_schema(cls, out_dir: str) -> None:
        from router.app import RouterApp

        RouterApp.open(cls.settings(out_dir), upgrade=True).close()

    def store(self, spool: str, digest_hex: str, file_size: int) -> None:
        path = Path(spool)
        self.app.intake.store(self.read_header(path), path, self.sender, (digest_hex, file_size))


def _serve(sock: socket.socket, store: Store) -> None:
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    header = bytearray(6)
    buffer = bytearray(MAX_PDU)
    command = bytearray()
    fd, spool, digest, size = -1, "", hashlib.sha256(), 0
    syntaxes: dict[int, bytes] = {}
    try:
        while True:
            _recv_into(sock, memoryview(header))
            kind, length = header[0], struct.unpack_from(">I", header, 2)[0]
            if length > len(buffer):
                buffer = bytearray(length)
            body = memoryview(buffer)[:length]
            _recv_into(sock, body)
            if kind == 0x01:
                sock.sendall(_accept(bytes(body), syntaxes))
                continue
            if kind == 0x05:
                sock.sendall(b"\x06\x00\x00\x00\x00\x04\x00\x00\x00\x00")
                return
            if kind != 0x04:
                return
            offset = 0
            while offset < length:
                item_length = struct.unpack_from(">I", body, offset)[0]
                context_id, control = body[offset + 4], body[offset + 5]
                value = body[offset + 6 : offset + 4 + item_length]
                offset += 4 + item_length
                if control & 0x01:
                    command += value
                    if not control & 0x02:
                        continue
                    fields = _command(bytes(command))
                    command.clear()
                    if fields[0x0800] == b"\x01\x01":  # no data set follows: C-ECHO
                        sock.sendall(_response(context_id, fields))
                    else:
                        fd, spool = store.open_spool()
                        os.write(fd, _file_meta(fields[0x0002], fields[0x1000], syntaxes[context_id]))
                        digest, size = hashlib.sha256(), 0
                    continue
                os.write(fd, value)
                digest.update(value)
                size += len(value)
                if control & 0x02:
                    kept, fd = fd, -1  # keep() closes it, whatever happens
                    store.keep(kept, spool, fields[0x1000], digest.digest(), size)
                    sock.sendall(_response(context_id, fields))
    except (EOFError, ConnectionError):
        return
    finally:
        if fd >= 0:
            os.close(fd)
        sock.close()


def _accept_loop(listener: socket.socket, out_dir: str, mode: str | None) -> None:
    work = RouterWork(os.path.join(out_dir, "..", "router.db")) if mode == "--router-work" else None
    store = Store(out_dir, work, RouterIntake(out_dir) if mode == "--router-intake" else None)
    while True:
        connection, _ = listener.accept()
        threading.Thread(target=_serve, args=(connection, store), daemon=True).start()


def main(argv: list[str]) -> int:
    mode = argv[3] if len(argv) > 3 else None
    if mode not in (None, "--router-work", "--router-intake"):
        raise SystemExit(f"unknown option {mode}")
    port, out_dir = (int(argv[1]), os.path.abspath(argv[2]))
    os.makedirs(out_dir, exist_ok=True)
    if mode == "--router-work":
        RouterWork.create_schema(os.path.join(out_dir, "..", "router.db"))
    elif mode == "--router-intake":
        RouterIntake.create_schema(out_dir)
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    Store(out_dir)  # the index table exists before the processes race to make it
    children = []
    for _ in range((os.cpu_count() or 1) - 1):
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _accept_loop(listener, out_dir, mode)
            os._exit(0)
        children.append(pid)

    def _stop(_signum: int, _frame: object) -> None:
        for child in children:
            os.kill(child, signal.SIGTERM)
        os._exit(0)

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    print("listening", flush=True)
    _accept_loop(listener, out_dir, mode)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
