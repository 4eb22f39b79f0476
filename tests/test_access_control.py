"""Only the right senders: calling AE titles and peer addresses are checked at association time.

A sender outside ``[listener] allowed_calling_ae_titles`` (when the list is on) gets an
A-ASSOCIATE-RJ with result "rejected-permanent" (1), source "DICOM UL service-user" (1) and
diagnostic "calling-AE-title-not-recognized" (3) (PS3.8 section 9.3.4, Table 9-21); a registered
facility's AE title is allowed once the routing timer refreshes the list. A peer outside
``allowed_addresses`` is disconnected before any DICOM PDU is exchanged.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification
from sqlalchemy import select

from router.app import RouterApp
from router.config import Settings
from router.db.models import Instance
from router.dicom.listener import RouterAssociationServer
from router.server import RouterServer
from tests.conftest import DCMTK_STORESCU, make_settings
from tests.dicom_helpers import make_dataset, rejection_of, send_paths, write_part10

pytestmark = pytest.mark.network

#: A-ASSOCIATE-RJ (PS3.8 Table 9-21): rejected-permanent, DICOM UL service-user, calling AE not recognized
CALLING_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x03)


def _start(tmp_path: Path, database_url: str, **listener: object) -> Iterator[RouterServer]:
    # A long poll interval: the background timer never refreshes the list during a test, so
    # only an explicit ``server.tick()`` does (the test shows the tick is what lets a title in).
    settings: Settings = make_settings(tmp_path, database_url, poll_interval=3600.0).replace("listener", **listener)
    app = RouterApp.open(settings, upgrade=True)
    server = RouterServer(app)
    try:
        server.start()
        yield server
    finally:
        server.stop(drain_timeout=2)
        app.close()


@pytest.fixture
def mod_a_only(tmp_path: Path, database_url: str) -> Iterator[RouterServer]:
    """A router that lets in MOD_A (and registered facilities) only."""
    yield from _start(tmp_path, database_url, allowed_calling_ae_titles=("MOD_A",))


def _echo(port: int, calling_ae: str, host: str = "127.0.0.1") -> tuple[str, tuple[int, int, int] | None, int | None]:
    """Associate and C-ECHO; returns (outcome, (result, source, diagnostic) if rejected, echo status)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate(host, port, ae_title="ROUTER")
    if assoc.is_established:
        status = assoc.send_c_echo()
        assoc.release()
        return "established", None, int(status.Status) if "Status" in status else None
    rejection = rejection_of(assoc)
    if rejection is not None:
        return "rejected", rejection, None
    return ("aborted" if assoc.is_aborted else "failed"), None, None


def _instances(server: RouterServer) -> list[Instance]:
    with server.app.sessions() as session:
        return list(session.scalars(select(Instance)))


# --------------------------------------------------------------------------- calling AE titles
@pytest.mark.parametrize(
    ("calling_ae", "expected"),
    [
        ("MOD_A", ("established", None, 0x0000)),
        ("OTHER", ("rejected", CALLING_AE_NOT_RECOGNIZED, None)),
        ("MOD_B", ("rejected", CALLING_AE_NOT_RECOGNIZED, None)),  # one character off
        ("mod_a", ("rejected", CALLING_AE_NOT_RECOGNIZED, None)),  # AE titles are case-sensitive
        ("MOD_A_2", ("rejected", CALLING_AE_NOT_RECOGNIZED, None)),  # a prefix match is not a match
    ],
)
def test_only_listed_calling_ae_titles_associate(mod_a_only: RouterServer, calling_ae: str, expected: tuple) -> None:
    assert _echo(mod_a_only.ports[0], calling_ae) == expected


def test_listed_sender_stores_and_refused_sender_stores_nothing(mod_a_only: RouterServer, tmp_path: Path) -> None:
    ds = make_dataset()
    path = write_part10(ds, tmp_path / "a.dcm")
    assert send_paths(mod_a_only.ports[0], [path], calling_ae="MOD_A") == [0x0000]
    (row,) = _instances(mod_a_only)
    assert (row.sop_instance_uid, row.calling_ae_title) == (ds.SOPInstanceUID, "MOD_A")
    assert mod_a_only.app.archive.path(row.relative_path).is_file()

    other = write_part10(make_dataset(), tmp_path / "b.dcm")
    with pytest.raises(AssertionError, match="association refused"):
        send_paths(mod_a_only.ports[0], [other], calling_ae="OTHER")
    assert [r.sop_instance_uid for r in _instances(mod_a_only)] == [ds.SOPInstanceUID]


def test_registered_facility_is_allowed_after_the_timer_ticks_and_refused_after_removal(
    mod_a_only: RouterServer,
) -> None:
    port = mod_a_only.ports[0]
    assert _echo(port, "CT_NORTH")[:2] == ("rejected", CALLING_AE_NOT_RECOGNIZED)
    mod_a_only.app.roster.facilities.add("CT_NORTH", "TX", "tester", name="North Texas Imaging")
    # Registered, but the listener's list is refreshed by the timer, not by the roster change.
    assert _echo(port, "CT_NORTH")[:2] == ("rejected", CALLING_AE_NOT_RECOGNIZED)
    mod_a_only.tick()
    assert _echo(port, "CT_NORTH") == ("established", None, 0x0000)
    assert _echo(port, "MOD_A") == ("established", None, 0x0000)  # the configured title stays
    assert _echo(port, "OTHER")[:2] == ("rejected", CALLING_AE_NOT_RECOGNIZED)
    mod_a_only.app.roster.facilities.remove("CT_NORTH", "tester")
    mod_a_only.tick()
    assert _echo(port, "CT_NORTH")[:2] == ("rejected", CALLING_AE_NOT_RECOGNIZED)
    assert _echo(port, "MOD_A") == ("established", None, 0x0000)


def test_registered_facility_does_not_close_an_open_listener(tmp_path: Path, database_url: str) -> None:
    """With the list empty everyone is allowed, and registering a facility must not change that."""
    for server in _start(tmp_path, database_url):
        port = server.ports[0]
        for title in ("ANYONE", "OTHER", "MOD_A"):
            assert _echo(port, title) == ("established", None, 0x0000)
        server.app.roster.facilities.add("CT_NORTH", "TX", "tester")
        server.tick()
        assert server.listener is not None and server.listener.ae.require_calling_aet == []
        for title in ("ANYONE", "CT_NORTH"):
            assert _echo(port, title) == ("established", None, 0x0000)


def test_list_is_on_even_when_the_facility_list_cannot_be_read_at_start(tmp_path: Path, database_url: str) -> None:
    """A database that is down at start-up must not leave the listener open to every sender."""
    settings = make_settings(tmp_path, database_url, poll_interval=3600.0).replace(
        "listener", allowed_calling_ae_titles=("MOD_A",)
    )
    app = RouterApp.open(settings, upgrade=True)
    app.roster.facilities.add("CT_NORTH", "TX", "tester")
    server = RouterServer(app)  # its services hold the working session factory
    real_sessions = app.sessions

    def broken_sessions() -> None:
        raise RuntimeError("database down")

    app.sessions = broken_sessions  # type: ignore[assignment]  # only the allow-list refresh sees it
    try:
        server.start()
        port = server.ports[0]
        assert _echo(port, "OTHER")[:2] == ("rejected", CALLING_AE_NOT_RECOGNIZED)
        assert _echo(port, "CT_NORTH")[:2] == ("rejected", CALLING_AE_NOT_RECOGNIZED)  # not known yet
        assert _echo(port, "MOD_A") == ("established", None, 0x0000)
        app.sessions = real_sessions
        server.tick()
        assert _echo(port, "CT_NORTH") == ("established", None, 0x0000)
        app.sessions = broken_sessions  # type: ignore[assignment]
        server.tick()
        # down again: the last list read is kept
        assert _echo(port, "CT_NORTH") == ("established", None, 0x0000)
        assert _echo(port, "OTHER")[:2] == ("rejected", CALLING_AE_NOT_RECOGNIZED)
    finally:
        app.sessions = real_sessions
        server.stop(drain_timeout=2)
        app.close()


@pytest.mark.skipif(DCMTK_STORESCU is None, reason="DCMTK storescu not installed")
@pytest.mark.parametrize(("calling_ae", "refused"), [("OTHER", True), ("MOD_A", False)])
def test_dcmtk_storescu_with_a_disallowed_title_exits_non_zero(
    mod_a_only: RouterServer, tmp_path: Path, calling_ae: str, refused: bool
) -> None:
    path = write_part10(make_dataset(), tmp_path / "x.dcm")
    result = subprocess.run(
        [DCMTK_STORESCU, "-aet", calling_ae, "-aec", "ROUTER", "127.0.0.1", str(mod_a_only.ports[0]), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if refused:
        assert result.returncode != 0
        assert "Calling AE Title Not Recognized" in result.stdout + result.stderr
        assert _instances(mod_a_only) == []
    else:
        assert result.returncode == 0, result.stderr
        assert len(_instances(mod_a_only)) == 1


# --------------------------------------------------------------------------- peer addresses
def _closed_without_a_pdu(port: int, host: str = "127.0.0.1") -> bool:
    """Connect a raw TCP socket, send nothing: True if the router hangs up without sending anything."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as raw:
        raw.settimeout(1.0)  # a refused peer is closed at once; an admitted one waits for a PDU
        raw.connect((host, port))
        try:
            data = raw.recv(16)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False  # still open: the router is waiting for an A-ASSOCIATE-RQ
        return data == b""


@pytest.mark.parametrize(
    ("allowed", "host", "admitted"),
    [
        (("10.0.0.0/8",), "127.0.0.1", False),
        (("127.0.0.2",), "127.0.0.1", False),  # one address off
        (("127.0.0.0/8",), "127.0.0.1", True),
        (("10.0.0.0/8", "127.0.0.1"), "127.0.0.1", True),  # one of several
        (("127.0.0.1/32",), "127.0.0.1", True),
    ],
)
def test_allowed_addresses_on_an_ipv4_listener(
    tmp_path: Path,
    database_url: str,
    allowed: tuple[str, ...],
    host: str,
    admitted: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    for server in _start(tmp_path, database_url, allowed_addresses=allowed):
        port = server.ports[0]
        with caplog.at_level(logging.WARNING, logger="router.dicom.listener"):
            assert _closed_without_a_pdu(port, host) is (not admitted)
            outcome = _echo(port, "ANY_SCU", host)
        # refused: the TCP connection is closed under the requestor, no A-ASSOCIATE-RJ is sent
        assert outcome == (("established", None, 0x0000) if admitted else ("aborted", None, None))
        refusals = [r for r in caplog.records if "allowed_addresses" in r.getMessage()]
        assert len(refusals) == (0 if admitted else 2)


@pytest.mark.parametrize(
    ("allowed", "host", "admitted"),
    [
        (("127.0.0.0/8",), "127.0.0.1", True),  # IPv4 peer seen as ::ffff:127.0.0.1, mapped back
        (("127.0.0.0/8",), "::1", False),  # IPv6 loopback is not 127.0.0.0/8
        (("::1",), "::1", True),
        (("::1",), "127.0.0.1", False),
        (("::ffff:127.0.0.1",), "127.0.0.1", False),  # compare as IPv4: write the IPv4 form
        (("::/0", "0.0.0.0/0"), "127.0.0.1", True),
    ],
)
def test_allowed_addresses_on_a_dual_stack_listener(
    tmp_path: Path, database_url: str, allowed: tuple[str, ...], host: str, admitted: bool
) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    for server in _start(tmp_path, database_url, host="::", allowed_addresses=allowed):
        port = server.ports[0]
        assert _closed_without_a_pdu(port, host) is (not admitted)
        assert _echo(port, "ANY_SCU", host) == (("established", None, 0x0000) if admitted else ("aborted", None, None))


@pytest.mark.parametrize(
    ("peer", "allowed"),
    [
        ("127.0.0.1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", False),
        ("::1", False),
        ("fe80::1%eth0", False),
        ("not-an-address", False),
        ("", False),
    ],
)
def test_verify_request_maps_ipv4_mapped_peers(peer: str, allowed: bool) -> None:
    server = RouterAssociationServer.__new__(RouterAssociationServer)  # no socket needed
    server.allowed_networks = (ipaddress.ip_network("127.0.0.0/8"),)
    assert server.address_allowed((peer, 1234)) is allowed


def test_verify_request_with_no_networks_allows_everyone() -> None:
    server = RouterAssociationServer.__new__(RouterAssociationServer)
    server.allowed_networks = ()
    assert server.address_allowed(("203.0.113.9", 1)) is True


# --------------------------------------------------------------------------- called AE title, and the log
CALLED_AE_NOT_RECOGNIZED = (0x01, 0x01, 0x07)


def _echo_calling(port: int, called_ae: str) -> tuple[str, tuple[int, int, int] | None]:
    ae = AE(ae_title="MOD_A")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title=called_ae)
    if assoc.is_established:
        assoc.release()
        return "established", None
    rejection = rejection_of(assoc)
    return ("rejected", rejection) if rejection is not None else ("aborted" if assoc.is_aborted else "failed", None)


def test_called_ae_title_is_accepted_as_sent_by_default(mod_a_only: RouterServer) -> None:
    assert _echo_calling(mod_a_only.ports[0], "ANYTHING") == ("established", None)


def test_called_ae_title_is_checked_when_required_and_every_refusal_is_logged(
    tmp_path: Path, sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="router.dicom.listener")
    for server in _start(tmp_path, sqlite_url, allowed_calling_ae_titles=("MOD_A",), require_called_ae_title=True):
        port = server.ports[0]
        assert _echo_calling(port, "ROUTER") == ("established", None)
        assert _echo_calling(port, "PACS") == ("rejected", CALLED_AE_NOT_RECOGNIZED)
        assert _echo(port, "OTHER")[:2] == ("rejected", CALLING_AE_NOT_RECOGNIZED)
        deadline = time.monotonic() + 5
        while len([r for r in caplog.records if "rejected" in r.getMessage()]) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    messages = [
        r.getMessage() for r in caplog.records if r.name == "router.dicom.listener" and "rejected" in r.getMessage()
    ]
    assert [re.sub(r":\d+ ", ":PORT ", m) for m in messages] == [
        "association from 'MOD_A' at 127.0.0.1:PORT calling 'PACS' rejected: called AE title 'PACS' is not ours ('ROUTER'; listener.require_called_ae_title)",
        "association from 'OTHER' at 127.0.0.1:PORT calling 'ROUTER' rejected: calling AE title not in listener.allowed_calling_ae_titles nor a registered facility",
    ]
