"""MLLP over TLS: the HL7 listener with a server certificate and required client certificates."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hl7_helpers import ack_fields, order_v23
from test_tls import Pki, client_context, pki  # noqa: F401 - the module-scoped PKI fixture

from router.app import RouterApp
from router.cli import cli
from router.config import Settings
from router.hl7.mllp import MllpError, send_message
from router.server import RouterServer

pytestmark = pytest.mark.network


@pytest.fixture
def mllps_server(settings: Settings, pki: Pki) -> Iterator[RouterServer]:  # noqa: F811
    settings = settings.replace(
        "hl7",
        enabled=True,
        host="127.0.0.1",
        port=0,
        tls=True,
        cert_file=pki.server.cert,
        key_file=pki.server.key,
        ca_file=pki.ca.cert,
        timeout=5.0,
    )
    app = RouterApp.open(settings, upgrade=True)
    server = RouterServer(app)
    server.start()
    try:
        yield server
    finally:
        server.stop(drain_timeout=2)
        app.close()


def test_order_over_tls_with_a_client_certificate(mllps_server: RouterServer, pki: Pki) -> None:  # noqa: F811
    assert mllps_server.hl7_port is not None
    ack = send_message(
        "127.0.0.1", mllps_server.hl7_port, order_v23("ACC-TLS", "TLS-1"), tls=client_context(pki, pki.client)
    )
    assert ack_fields(ack) == ("AA", "TLS-1", "")


def test_tls_without_a_client_certificate_or_in_plain_is_refused(mllps_server: RouterServer, pki: Pki) -> None:  # noqa: F811
    port = mllps_server.hl7_port
    assert port is not None
    with pytest.raises((ssl.SSLError, OSError, MllpError)):
        send_message("127.0.0.1", port, order_v23("ACC-X", "TLS-2"), timeout=5, tls=client_context(pki, None))
    with pytest.raises((OSError, MllpError)):
        send_message("127.0.0.1", port, order_v23("ACC-Y", "TLS-3"), timeout=5)
    # nothing was accepted
    ok = send_message("127.0.0.1", port, order_v23("ACC-Z", "TLS-4"), tls=client_context(pki, pki.client))
    assert ack_fields(ok)[0] == "AA"


def test_hl7_send_cli_over_tls(mllps_server: RouterServer, pki: Pki, tmp_path: Path) -> None:  # noqa: F811
    port = mllps_server.hl7_port
    assert port is not None
    message = tmp_path / "order.hl7"
    message.write_bytes(order_v23("ACC-CLI-TLS", "TLS-CLI-1").replace(b"\r", b"\n"))
    base = ["hl7", "send", str(message), "--port", str(port), "--server-name", "localhost"]
    tls = ["--tls-ca", str(pki.ca.cert), "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)]
    result = CliRunner().invoke(cli, [*base, *tls])
    assert result.exit_code == 0, result.output
    assert "MSA|AA|TLS-CLI-1" in result.stdout
    for args, message_text in (
        ([*base, "--tls-cert", str(pki.client.cert), "--tls-ca", str(pki.ca.cert)], "give --tls-cert and --tls-key"),
        ([*base, "--tls-cert", str(pki.client.cert), "--tls-key", str(pki.client.key)], "--tls-cert needs --tls-ca"),
        ([*base, "--tls-ca", str(pki.other_ca.cert)], "cannot send to 127.0.0.1"),  # listener not trusted
        ([*base, "--tls-ca", str(message)], "cannot use the TLS files"),
    ):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code != 0 and message_text in result.stderr, (args, result.output)
        assert "Traceback" not in result.output
