"""The bare pynetdicom C-STORE SCP: the one-process ceiling for a pynetdicom receiver.

It keeps pynetdicom's default settings (maximum PDU 16382 bytes, data sets held in memory, no
TCP_NODELAY), writes the received bytes (File Meta Information + data set as received, the form
pynetdicom's documentation recommends for fast storage) to a file, fsyncs it and answers
Success. Nothing else: no decoding, no index, no rename, no directory fsync.

Usage: ``python benchmarks/bare_scp.py PORT OUTPUT_DIR`` (listens on 127.0.0.1 only). Prints
``listening`` on stdout once bound; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading

from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification


def main(argv: list[str]) -> int:
    port, out_dir = int(argv[1]), argv[2]
    os.makedirs(out_dir, exist_ok=True)
    counter = itertools.count()

    def on_store(event: evt.Event) -> int:
        path = os.path.join(out_dir, f"{next(counter):08d}.dcm")
        with open(path, "wb") as handle:
            handle.write(event.encoded_dataset(include_meta=True))
            handle.flush()
            os.fsync(handle.fileno())
        return 0x0000

    ae = AE(ae_title="BARE")
    ae.supported_contexts = AllStoragePresentationContexts
    ae.add_supported_context(Verification)
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print("listening", flush=True)
    while not stop.wait(0.5):
        pass
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
