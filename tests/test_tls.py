"""DICOM TLS (PS3.15 Annex B.1): a throwaway CA made at test time, the real listener, real SCUs.

The router serves TLS on its own port (``[listener.tls]``), alongside or instead of the plain
one. With ``require_client_cert`` a sender must present a certificate signed by ``ca_file``;
without one, or with one from another CA, the handshake fails and nothing is stored. A client
that never completes a handshake (plain DICOM, or a silent TCP connection) is handled in its own
thread: it cannot block the accept loop.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pydicom import dcmread
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification
from sqlalchemy import select

from router.app import RouterApp
from router.config import Settings, TlsSettings
from router.db.models import Instance
from router.errors import ConfigError
from router.node import tls_context
from router.server import RouterServer
from tests.conftest import DCMTK_STORESCU, make_settings
from tests.dicom_helpers import make_dataset, write_part10

pytestmark = pytest.mark.network


# --------------------------------------------------------------------------- throwaway PKI
@dataclass(frozen=True)
class Pem:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


def _key() -> rsa.RSAPrivateKey:
    # RSA: DCMTK's default BCP 195 profile offers ECDHE-RSA / DHE-RSA suites only.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write(directory: Path, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey) -> Pem:
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
        )
    )
    return Pem(cert_path, key_path)


def make_ca(directory: Path, name: str) -> tuple[Pem, x509.Certificate, rsa.RSAPrivateKey]:
    """A self-signed CA valid from yesterday for a week."""
    key = _key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, name, cert, key), cert, key


def make_leaf(directory: Path, name: str, ca_cert: x509.Certificate, ca_key: rsa.RSAPrivateKey, *, server: bool) -> Pem:
    """A certificate signed by the CA: a server one (SAN 127.0.0.1, ::1, localhost) or a client one."""
    key = _key()
    now = dt.datetime.now(dt.UTC)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
    return _write(directory, name, builder.sign(ca_key, hashes.SHA256()), key)


@dataclass(frozen=True)
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem
    rogue_client: Pem  # signed by other_ca


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, ca_cert, ca_key = make_ca(directory, "Router Test CA")
    other_ca, other_cert, other_key = make_ca(directory, "Some Other CA")
    return Pki(
        ca=ca,
        server=make_leaf(directory, "router", ca_cert, ca_key, server=True),
        client=make_leaf(directory, "modality", ca_cert, ca_key, server=False),
        other_ca=other_ca,
        rogue_client=make_leaf(directory, "rogue", other_cert, other_key, server=False),
    )


def client_context(pki: Pki, cert: Pem | None) -> ssl.SSLContext:
    """What a sender uses: trusts the router's CA, checks the host name, presents ``cert`` if given."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki.ca.cert))
    if cert is not None:
        context.load_cert_chain(str(cert.cert), str(cert.key))
    return context


# --------------------------------------------------------------------------- router under test
def _tls_settings(
    tmp_path: Path,
    database_url: str,
    pki: Pki,
    *,
    plain: bool = True,
    require_client_cert: bool = False,
    with_ca: bool = True,
    acse_timeout: float = 30.0,
) -> Settings:
    settings = make_settings(tmp_path, database_url).replace("listener", enabled=plain, acse_timeout=acse_timeout)
    tls = TlsSettings(
        enabled=True,
        port=0,
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        ca_file=pki.ca.cert if with_ca else None,
        require_client_cert=require_client_cert,
    )
    return settings.replace("listener", tls=tls)


def _serve(settings: Settings) -> Iterator[RouterServer]:
    app = RouterApp.open(settings, upgrade=True)
    server = RouterServer(app)
    try:
        server.start()
        yield server
    finally:
        server.stop(drain_timeout=2)
        app.close()


@pytest.fixture
def tls_server(tmp_path: Path, database_url: str, pki: Pki) -> Iterator[RouterServer]:
    """Plain and TLS ports, client certificates optional (verified against the CA when given)."""
    yield from _serve(_tls_settings(tmp_path, database_url, pki))


@pytest.fixture
def mtls_server(tmp_path: Path, database_url: str, pki: Pki) -> Iterator[RouterServer]:
    """TLS only (the plain port off), a client certificate from the CA required."""
    yield from _serve(_tls_settings(tmp_path, database_url, pki, plain=False, require_client_cert=True))


def _associate(port: int, tls: tuple[ssl.SSLContext, str] | None, calling_ae: str = "TLS_SCU"):
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    return ae.associate("127.0.0.1", port, ae_title="ROUTER", tls_args=tls)


def _store_over(port: int, tls: tuple[ssl.SSLContext, str] | None, path: Path) -> int | None:
    """Associate (over TLS if given) and C-STORE one file; the status, or None if no association."""
    assoc = _associate(port, tls)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(dcmread(path))
        return int(status.Status) if "Status" in status else None
    finally:
        assoc.release()


def _stored(server: RouterServer) -> dict[str, Path]:
    with server.app.sessions() as session:
        rows = list(session.scalars(select(Instance)))
    return {row.sop_instance_uid: server.app.archive.path(row.relative_path) for row in rows}


# --------------------------------------------------------------------------- tests
def test_ports_are_bound_plain_first_then_tls(tls_server: RouterServer) -> None:
    plain, tls = tls_server.ports
    assert plain > 0 and tls > 0 and plain != tls
    servers = tls_server.listener.servers  # type: ignore[union-attr]
    assert [server.ssl_context is not None for server in servers] == [False, True]
    assert [int(server.socket.getsockname()[1]) for server in servers] == [plain, tls]


def test_tls_only_listener_has_one_port(mtls_server: RouterServer) -> None:
    (port,) = mtls_server.ports
    assert port > 0
    assert mtls_server.listener.servers[0].ssl_context is not None  # type: ignore[union-attr]


@pytest.mark.parametrize("server_hostname", ["127.0.0.1", "localhost"])
def test_store_over_tls_with_a_client_certificate(
    mtls_server: RouterServer, pki: Pki, tmp_path: Path, server_hostname: str
) -> None:
    ds = make_dataset()
    path = write_part10(ds, tmp_path / "ct.dcm")
    port = mtls_server.ports[0]
    assert _store_over(port, (client_context(pki, pki.client), server_hostname), path) == 0x0000
    stored = _stored(mtls_server)
    assert list(stored) == [ds.SOPInstanceUID]
    assert stored[ds.SOPInstanceUID].is_file()
    assert str(dcmread(stored[ds.SOPInstanceUID]).PatientID) == "SYN-0001"


def test_store_over_tls_without_a_client_certificate_when_none_is_required(
    tls_server: RouterServer, pki: Pki, tmp_path: Path
) -> None:
    ds = make_dataset()
    path = write_part10(ds, tmp_path / "ct.dcm")
    assert _store_over(tls_server.ports[1], (client_context(pki, None), "localhost"), path) == 0x0000
    assert list(_stored(tls_server)) == [ds.SOPInstanceUID]
    # and the plain port serves alongside it
    other = make_dataset()
    assert _store_over(tls_server.ports[0], None, write_part10(other, tmp_path / "plain.dcm")) == 0x0000
    assert set(_stored(tls_server)) == {ds.SOPInstanceUID, other.SOPInstanceUID}


@pytest.mark.parametrize(
    ("who", "required"),
    [
        ("no client certificate", True),
        ("client certificate from another CA", True),
        ("client certificate from another CA", False),  # a certificate given is verified even if optional
    ],
)
def test_tls_sender_is_refused(tmp_path: Path, database_url: str, pki: Pki, who: str, required: bool) -> None:
    settings = _tls_settings(tmp_path, database_url, pki, plain=False, require_client_cert=required)
    for server in _serve(settings):
        port = server.ports[0]
        cert = None if who == "no client certificate" else pki.rogue_client
        path = write_part10(make_dataset(), tmp_path / "refused.dcm")
        assert _store_over(port, (client_context(pki, cert), "localhost"), path) is None
        assert _stored(server) == {}
        # the listener keeps serving the right senders afterwards
        good = make_dataset()
        assert (
            _store_over(port, (client_context(pki, pki.client), "localhost"), write_part10(good, tmp_path / "g.dcm"))
            == 0
        )
        assert list(_stored(server)) == [good.SOPInstanceUID]


def test_client_certificates_are_checked_against_ca_file_only(
    tmp_path: Path, database_url: str, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The system trust store (here pointed at another CA) must not vouch for senders."""
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.other_ca.cert))
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path / "no-such-dir"))
    settings = _tls_settings(tmp_path, database_url, pki, plain=False, require_client_cert=True)
    for server in _serve(settings):
        path = write_part10(make_dataset(), tmp_path / "rogue.dcm")
        assert _store_over(server.ports[0], (client_context(pki, pki.rogue_client), "localhost"), path) is None
        assert _stored(server) == {}
    app = RouterApp.open(settings, upgrade=True)
    try:
        context = tls_context(app)
        assert context is not None
        assert [dict(item[0] for item in ca["subject"])["commonName"] for ca in context.get_ca_certs()] == [
            "Router Test CA"
        ]
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.minimum_version >= ssl.TLSVersion.TLSv1_2
    finally:
        app.close()


@pytest.mark.parametrize(
    ("require", "with_ca", "mode"),
    [(True, True, ssl.CERT_REQUIRED), (False, True, ssl.CERT_OPTIONAL), (False, False, ssl.CERT_NONE)],
)
def test_tls_context_verify_mode(tmp_path: Path, pki: Pki, require: bool, with_ca: bool, mode: ssl.VerifyMode) -> None:
    settings = _tls_settings(
        tmp_path, f"sqlite:///{tmp_path / 'r.db'}", pki, require_client_cert=require, with_ca=with_ca
    )
    app = RouterApp.open(settings, upgrade=True)
    try:
        context = tls_context(app)
        assert context is not None and context.verify_mode == mode
        assert len(context.get_ca_certs()) == (1 if with_ca else 0)
    finally:
        app.close()


def test_tls_context_with_an_unreadable_key_is_a_config_error(tmp_path: Path, pki: Pki) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    settings = _tls_settings(tmp_path, f"sqlite:///{tmp_path / 'r.db'}", pki)
    settings = settings.replace(
        "listener", tls=TlsSettings(enabled=True, port=0, cert_file=pki.server.cert, key_file=bad)
    )
    app = RouterApp.open(settings, upgrade=True)
    try:
        with pytest.raises(ConfigError, match=r"listener\.tls"):
            tls_context(app)
    finally:
        app.close()


def test_plain_client_on_the_tls_port_fails_cleanly(tls_server: RouterServer, pki: Pki, tmp_path: Path) -> None:
    _, tls_port = tls_server.ports
    started = time.monotonic()
    assoc = _associate(tls_port, None)  # its ACSE timeout is 10 s
    assert not assoc.is_established
    assert time.monotonic() - started < 5  # hung up on at once, not left to time out
    assert _stored(tls_server) == {}
    ds = make_dataset()
    assert (
        _store_over(tls_port, (client_context(pki, pki.client), "localhost"), write_part10(ds, tmp_path / "a.dcm")) == 0
    )
    assert list(_stored(tls_server)) == [ds.SOPInstanceUID]


def test_stalled_tcp_client_on_the_tls_port_does_not_block_others(tmp_path: Path, database_url: str, pki: Pki) -> None:
    settings = _tls_settings(tmp_path, database_url, pki, require_client_cert=True, acse_timeout=6.0)
    for server in _serve(settings):
        tls_port = server.ports[1]
        stalled = [socket.create_connection(("127.0.0.1", tls_port), timeout=15) for _ in range(3)]
        try:
            started = time.monotonic()
            ds = make_dataset()
            path = write_part10(ds, tmp_path / "a.dcm")
            assert _store_over(tls_port, (client_context(pki, pki.client), "localhost"), path) == 0x0000
            # served while the stalled handshakes are still open: it did not wait for their timeout
            # (an ordering, not a wall-clock bound, so a loaded machine cannot make it fail)
            for sock in stalled:
                sock.setblocking(False)
                with pytest.raises(BlockingIOError):
                    sock.recv(1)
                sock.settimeout(15)
            assert list(_stored(server)) == [ds.SOPInstanceUID]
            # and the stalled ones are hung up on after the handshake timeout (acse_timeout)
            for sock in stalled:
                assert sock.recv(1) == b""
            assert time.monotonic() - started >= 5.5
        finally:
            for sock in stalled:
                sock.close()
        # none of them ever became an association, so a drain has nothing to wait for
        assert server.listener is not None and server.listener.active_associations() == 0


def test_stalled_clients_do_not_hold_up_a_drain(tmp_path: Path, database_url: str, pki: Pki) -> None:
    settings = _tls_settings(tmp_path, database_url, pki, acse_timeout=30.0)
    app = RouterApp.open(settings, upgrade=True)
    server = RouterServer(app)
    server.start()
    plain_port, tls_port = server.ports
    sockets = [socket.create_connection(("127.0.0.1", port), timeout=10) for port in (plain_port, tls_port)]
    try:
        time.sleep(0.3)
        started = time.monotonic()
        assert server.stop(drain_timeout=5) is True
        assert time.monotonic() - started < 2
    finally:
        for sock in sockets:
            sock.close()
        app.close()


def test_connect_and_close_without_a_pdu_leaves_no_association(tls_server: RouterServer) -> None:
    """A TCP health check (connect, close) must not linger as an association for acse_timeout."""
    for port in tls_server.ports:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    time.sleep(0.5)
    assert tls_server.listener is not None and tls_server.listener.active_associations() == 0


# --------------------------------------------------------------------------- DCMTK
def _dcmtk_has_tls() -> bool:
    if DCMTK_STORESCU is None:
        return False
    result = subprocess.run([DCMTK_STORESCU, "--help"], capture_output=True, text=True, timeout=30)
    return "--enable-tls" in result.stdout


@pytest.mark.skipif(not _dcmtk_has_tls(), reason="DCMTK storescu without TLS support")
@pytest.mark.parametrize(("client", "ok"), [("client", True), ("rogue_client", False)])
def test_dcmtk_storescu_over_tls(mtls_server: RouterServer, pki: Pki, tmp_path: Path, client: str, ok: bool) -> None:
    ds = make_dataset()
    path = write_part10(ds, tmp_path / "dcmtk.dcm")
    pem: Pem = getattr(pki, client)
    result = subprocess.run(
        [
            DCMTK_STORESCU,
            "+tls",
            str(pem.key),
            str(pem.cert),
            "+cf",
            str(pki.ca.cert),
            "-aet",
            "DCMTK_TLS",
            "-aec",
            "ROUTER",
            "127.0.0.1",
            str(mtls_server.ports[0]),
            str(path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if ok:
        assert result.returncode == 0, result.stdout + result.stderr
        assert list(_stored(mtls_server)) == [ds.SOPInstanceUID]
    else:
        assert result.returncode != 0
        assert _stored(mtls_server) == {}
