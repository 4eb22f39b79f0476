"""Routing and ingest rates of 1 and 3 `router serve` nodes on one PostgreSQL (docs/scale-out.md).

    . .venv/bin/activate
    python benchmarks/scale_out.py                 # 1 and 3 nodes, 40 studies x 10 instances each
    python benchmarks/scale_out.py --studies 80 --nodes 1 3

For each node count: a fresh PostgreSQL schema, N `router serve` processes sharing it and one
archive folder (forwarding off, so routing is measured alone), one reader licensed in the exam
state. Ingest: three sender threads (``--senders``), each
sending its share of every study's instances over one pynetdicom association to one node, round
robin over the nodes (the instances of a study are spread over all of them); the rate is
instances acknowledged per second of wall time (8 KB of pixels each). Routing: ``stable_seconds`` is a day, so
nothing is routed during ingest; then every study is made due at once (its ``last_received_at``
moved back) and the rate is studies decided per second from that moment to the last routing
decision's ``decided_at`` (the nodes' timers poll every 0.1 s).
Prints one JSON line per node count. Numbers depend on the machine and its load: note both.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE
from sqlalchemy import create_engine, func, select, text, update
from sqlalchemy.engine import make_url

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from router.app import RouterApp  # noqa: E402
from router.config import load_settings  # noqa: E402
from router.db.models import RoutingDecision, Study  # noqa: E402
from router.domain.enums import StudyStatus  # noqa: E402

DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
NPI = "1000000012"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _dataset(study: str, series: str, number: int) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study
    ds.SeriesInstanceUID = series
    ds.Modality = "CT"
    ds.StudyDate = "20261129"
    ds.AccessionNumber = f"BENCH{number:05d}"
    ds.Rows = ds.Columns = 64
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = os.urandom(64 * 64 * 2)  # 8 KB of pixels
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _send(port: int, datasets: list[Dataset]) -> None:
    ae = AE(ae_title="CT_NORTH")
    ae.add_requested_context(CTImageStorage, [ExplicitVRLittleEndian])
    assoc = ae.associate("127.0.0.1", port, ae_title="ROUTER")
    assert assoc.is_established, "association refused"
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            assert status and status.Status == 0x0000, status
    finally:
        assoc.release()


def _wait(predicate, timeout: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("benchmark step did not finish in time")
        time.sleep(0.1)


def run(nodes: int, studies: int, per_study: int, base_url: str, senders: int = 3) -> dict[str, object]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = create_engine(base_url)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(base_url).update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(False)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="router-scale-") as tmp:
            root = Path(tmp)
            ports = [_free_port() for _ in range(nodes)]
            configs = []
            for index, port in enumerate(ports):
                config = root / f"node{index}.toml"
                config.write_text(
                    f'[listener]\nhost = "127.0.0.1"\nport = {port}\n'
                    f'[paths]\ndata_dir = "{root / f"node{index}"}"\narchive_dir = "{root / "archive"}"\n'
                    f'[database]\nurl = "{url}"\n[node]\nid = "bench-{index}"\n'
                    "[routing]\nstable_seconds = 86400.0\npoll_interval = 0.1\n"
                    '[forwarding]\nenabled = false\n[logging]\nlevel = "WARNING"\n'
                )
                configs.append(config)
            for config in configs:
                processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "router", "--config", str(config), "serve"],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                        cwd=REPO,
                    )
                )

            def listening() -> bool:
                for port in ports:
                    try:
                        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    except OSError:
                        return False
                return True

            _wait(listening, 60)
            with RouterApp.open(load_settings(configs[0])) as app:
                app.roster.facilities.add("CT_NORTH", "TX", "bench", name="Bench")
                app.roster.radiologists.add(NPI, "Bench^Reader", "bench")
                app.roster.licenses.add(NPI, "TX", "TX-BENCH", dt.date(2030, 1, 1), "bench")
                uids = [(generate_uid(), generate_uid()) for _ in range(studies)]
                shares: list[list[Dataset]] = [[] for _ in range(senders)]
                count = 0
                for study, series in uids:
                    for _ in range(per_study):
                        shares[count % senders].append(_dataset(study, series, count))
                        count += 1
                started = time.monotonic()
                threads = [threading.Thread(target=_send, args=(ports[i % nodes], shares[i])) for i in range(senders)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
                ingest_seconds = time.monotonic() - started

                # Every study due at once: the nodes' timers (stable_seconds is a day) take them all now.
                with app.sessions.begin() as session:
                    session.execute(update(Study).values(last_received_at=app.clock() - dt.timedelta(days=2)))
                due_at = app.clock()

                def routed() -> bool:
                    with app.sessions() as session:
                        return (
                            session.scalar(select(func.count(Study.id)).where(Study.status == StudyStatus.ASSIGNED))
                            == studies
                        )

                _wait(routed, 120)
                with app.sessions() as session:
                    last = session.scalar(select(func.max(RoutingDecision.decided_at)))
            routing_seconds = max((last - due_at).total_seconds(), 1e-3)
            return {
                "nodes": nodes,
                "studies": studies,
                "instances": count,
                "sender_associations": senders,
                "ingest_instances_per_s": round(count / ingest_seconds, 1),
                "routing_studies_per_s": round(studies / routing_seconds, 1),
                "load_average_1m": os.getloadavg()[0],
                "cpus": os.cpu_count(),
            }
    finally:
        for process in processes:
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3], help="node counts to measure")
    parser.add_argument("--studies", type=int, default=40, help="studies per run")
    parser.add_argument("--per-study", type=int, default=10, help="instances per study")
    parser.add_argument("--senders", type=int, default=3, help="parallel sender associations, spread over the nodes")
    parser.add_argument("--url", default=os.environ.get("ROUTER_TEST_DATABASE_URL", DEFAULT_URL), help="PostgreSQL")
    args = parser.parse_args()
    for nodes in args.nodes:
        print(json.dumps(run(nodes, args.studies, args.per_study, args.url, args.senders)), flush=True)


if __name__ == "__main__":
    main()
