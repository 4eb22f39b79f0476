"""The event-driven waits that replace pynetdicom's 1 ms polling (router/dicom/reactor.py)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

from router.dicom import reactor
from router.server import RouterServer
from tests.dicom_helpers import make_dataset, write_part10

pytestmark = pytest.mark.network


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_installed_by_the_listener(server: RouterServer) -> None:
    assert reactor.installed()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_no_wake_up_is_lost_when_an_scu_in_the_same_process_waits_for_responses(
    server: RouterServer, tmp_path: Path
) -> None:
    """Regression: an SCU's send_c_store waits in Queue.get while its paused reactor also waited
    on the same queue; a response woke the reactor instead and the sender sat out its whole
    DIMSE timeout (then found the response and reported Success). So the check is that no
    round trip runs into the 3 s timeout: a normal one takes milliseconds."""
    paths = [write_part10(make_dataset(), tmp_path / f"{i}.dcm") for i in range(120)]
    _config.STORE_SEND_CHUNKED_DATASET = True
    ae = AE(ae_title="FAST_SCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 3
    meta = dcmread(paths[0], stop_before_pixels=True).file_meta
    ae.requested_contexts = [build_context(str(meta.MediaStorageSOPClassUID), [str(meta.TransferSyntaxUID)])]
    statuses = []
    slowest = 0.0
    for batch in (paths[:40], paths[40:80], paths[80:]):
        assoc = ae.associate("127.0.0.1", server.ports[0], ae_title="ROUTER")
        assert assoc.is_established
        for path in batch:
            started = time.monotonic()
            status = assoc.send_c_store(path)
            slowest = max(slowest, time.monotonic() - started)
            statuses.append(int(status.Status) if "Status" in status else None)
        assoc.release()
    assert statuses == [0x0000] * 120
    assert slowest < 2.5, f"a C-STORE round trip waited {slowest:.1f} s: a wake-up was lost"
