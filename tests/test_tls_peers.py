"""DICOM TLS towards destinations and calling AE titles bound to client certificates (issue 12).

Forwarding: a real pynetdicom TLS SCP with a certificate from a throwaway CA (the one
tests/test_tls.py builds) receives files sent by :class:`router.dicom.scu.Forwarder`, as
``router serve`` builds it from ``[forwarding.tls]``. Binding: the real listener on its TLS port
lets a bound calling AE title in only with the certificate it is bound to.
"""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.sop_class import CTImageStorage

from router.config import ForwardingTlsSettings, Settings
from router.dicom.scu import Destination, Forwarder, SendError
from router.server import RouterServer, forwarder
from tests.conftest import make_settings
from tests.dicom_helpers import make_dataset, rejection_of, write_part10
from tests.test_tls import Pem, Pki, _associate, _serve, _tls_settings, client_context, make_ca, make_leaf
from tests.test_tls import pki as pki  # the module-scoped fixture, shared

pytestmark = pytest.mark.network


@dataclasses.dataclass
class TlsScp:
    port: int
    received: list[str]


@pytest.fixture
def tls_scp(pki: Pki) -> Iterator[TlsScp]:
    """A reader's workstation: a pynetdicom C-STORE SCP on 127.0.0.1 over TLS only."""
    received: list[str] = []

    def on_store(event: evt.Event) -> int:
        received.append(str(event.dataset.SOPInstanceUID))
        return 0x0000

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(pki.server.cert), str(pki.server.key))
    ae = AE(ae_title="READER")
    ae.add_supported_context(CTImageStorage, ["1.2.840.10008.1.2.1"])
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, ssl_context=context, evt_handlers=[(evt.EVT_C_STORE, on_store)]
    )
    try:
        yield TlsScp(int(server.server_address[1]), received)
    finally:
        ae.shutdown()


def _forwarding_settings(tmp_path: Path, **tls: object) -> Settings:
    settings = make_settings(tmp_path, f"sqlite:///{tmp_path / 'router.db'}")
    return settings.replace("forwarding", tls=ForwardingTlsSettings(**tls))  # type: ignore[arg-type]


def test_destination_parses_the_tls_form() -> None:
    destination = Destination.parse("tls://READER@[::1]:2762")
    assert (destination.ae_title, destination.host, destination.port, destination.tls) == ("READER", "::1", 2762, True)
    assert str(destination) == "tls://READER@[::1]:2762"
    assert Destination.parse("READER@ws.example.org:104").tls is False


def test_forwarding_over_tls_to_a_real_scp(tls_scp: TlsScp, pki: Pki, tmp_path: Path) -> None:
    ds = make_dataset()
    path = write_part10(ds, tmp_path / "ct.dcm")
    send = forwarder(_forwarding_settings(tmp_path, ca_file=pki.ca.cert))
    assert send([path], f"tls://READER@127.0.0.1:{tls_scp.port}", "ROUTER") == [True]
    assert tls_scp.received == [ds.SOPInstanceUID]


def test_destination_listed_in_config_goes_over_tls(tls_scp: TlsScp, pki: Pki, tmp_path: Path) -> None:
    ds = make_dataset()
    path = write_part10(ds, tmp_path / "ct.dcm")
    settings = _forwarding_settings(tmp_path, ca_file=pki.ca.cert, destinations=(f"127.0.0.1:{tls_scp.port}",))
    assert forwarder(settings)([path], f"READER@127.0.0.1:{tls_scp.port}", "ROUTER") == [True]
    assert tls_scp.received == [ds.SOPInstanceUID]


@pytest.mark.parametrize("case", ["untrusted CA", "host name not in the certificate", "no TLS context"])
def test_forwarding_over_tls_refuses_what_it_cannot_verify(
    tls_scp: TlsScp, pki: Pki, tmp_path: Path, case: str
) -> None:
    path = write_part10(make_dataset(), tmp_path / "ct.dcm")
    host = "127.0.0.1"
    if case == "untrusted CA":
        send = forwarder(_forwarding_settings(tmp_path, ca_file=pki.other_ca.cert))
    elif case == "host name not in the certificate":
        send = forwarder(_forwarding_settings(tmp_path, ca_file=pki.ca.cert))
        host = "127.0.0.2"  # the server certificate names 127.0.0.1, ::1 and localhost
    else:
        send = Forwarder(None)
    with pytest.raises(SendError):
        send([path], f"tls://READER@{host}:{tls_scp.port}", "ROUTER")
    assert tls_scp.received == []


# --------------------------------------------------------------------------- AE title binding
@pytest.fixture(scope="module")
def workstation(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Pem:
    """A client certificate from the router's CA, but for another name than the modality's."""
    directory = tmp_path_factory.mktemp("pki-extra")
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    ca_cert = x509.load_pem_x509_certificate(pki.ca.cert.read_bytes())
    ca_key = serialization.load_pem_private_key(pki.ca.key.read_bytes(), password=None)
    assert make_ca  # the same PKI helpers as tests/test_tls.py
    return make_leaf(directory, "workstation", ca_cert, ca_key, server=False)  # type: ignore[arg-type]


@pytest.fixture
def bound_server(tmp_path: Path, pki: Pki) -> Iterator[RouterServer]:
    """Plain and TLS ports; calling AE title MODALITY is bound to the certificate named "modality"."""
    settings = _tls_settings(tmp_path, f"sqlite:///{tmp_path / 'router.db'}", pki)
    tls = dataclasses.replace(settings.listener.tls, ae_title_subjects=("MODALITY=modality",))
    yield from _serve(settings.replace("listener", tls=tls))


def _store(port: int, tls: tuple[ssl.SSLContext, str] | None, calling_ae: str, tmp_path: Path) -> bool:
    assoc = _associate(port, tls, calling_ae=calling_ae)
    if not assoc.is_established:
        assert rejection_of(assoc) == (1, 1, 3)  # permanent, by the service user: calling AE title not recognised
        return False
    try:
        status = assoc.send_c_store(dcmread(write_part10(make_dataset(), tmp_path / f"{calling_ae}.dcm")))
        return int(status.Status) == 0
    finally:
        assoc.release()


def test_bound_calling_ae_title_needs_its_certificate(
    bound_server: RouterServer, pki: Pki, workstation: Pem, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plain, tls_port = bound_server.ports
    modality = (client_context(pki, pki.client), "localhost")
    other = (client_context(pki, workstation), "localhost")
    assert _store(tls_port, modality, "MODALITY", tmp_path)
    assert not _store(tls_port, other, "MODALITY", tmp_path)  # right CA, wrong name
    assert not _store(tls_port, (client_context(pki, None), "localhost"), "MODALITY", tmp_path)
    assert not _store(plain, None, "MODALITY", tmp_path)  # no TLS at all
    assert _store(tls_port, other, "WORKSTATION", tmp_path)  # an unbound AE title is not affected
    assert _store(plain, None, "OTHER", tmp_path)
    rejections = [r.getMessage() for r in caplog.records if "ae_title_subjects" in r.getMessage()]
    assert len(rejections) == 3
    assert all("'MODALITY'" in message for message in rejections)
    assert "bound to 'modality'; the client certificate names ['workstation']" in rejections[0]


def test_binding_config_is_checked() -> None:
    from router.config import settings_from_mapping
    from router.errors import ConfigError

    with pytest.raises(ConfigError, match="ae_title_subjects"):
        settings_from_mapping({"listener": {"tls": {"ae_title_subjects": ["MODALITY"]}}})
    with pytest.raises(ConfigError, match=r"forwarding\.tls\.destinations"):
        settings_from_mapping({"forwarding": {"tls": {"destinations": ["ws.example.org"]}}})
