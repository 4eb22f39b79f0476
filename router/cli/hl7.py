"""``router hl7 send`` (a real MLLP client) and ``router orders list/show``."""

from __future__ import annotations

import ssl
from pathlib import Path

import click

from router.cli.context import CliContext
from router.cli.output import emit_fields, emit_json, emit_table
from router.domain.enums import OrderStatus
from router.errors import RouterError
from router.hl7.mllp import MllpError, send_message
from router.services.orders import OrderService


@click.group("hl7")
def hl7_group() -> None:
    """HL7 v2 over MLLP: orders and signed reports from the RIS and the reporting system."""


@hl7_group.command("send")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True, help="MLLP listener host.")
@click.option("--port", type=click.IntRange(1, 65535), help="MLLP listener port. Default: hl7.port of the config.")
@click.option("--timeout", type=click.FloatRange(0.1, 600), default=30.0, show_default=True, help="Seconds to wait.")
@click.option(
    "--tls-ca",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Send over TLS, trusting the listener certificates this CA file (PEM) signed.",
)
@click.option(
    "--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Client certificate (PEM)."
)
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), help="Its private key (PEM).")
@click.option("--server-name", help="Name to check the listener certificate against. Default: --host.")
@click.pass_obj
def send(
    obj: CliContext,
    file: Path,
    host: str,
    port: int | None,
    timeout: float,
    tls_ca: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    server_name: str | None,
) -> None:
    """Send the HL7 v2 message in FILE over MLLP and print the ACK.

    Line feeds in FILE are sent as the segment separator CR. Exit 0 when MSA-1 is AA, 1 when
    the message was refused (AE/AR) or could not be sent. --tls-ca sends over TLS (with
    --tls-cert/--tls-key when the listener requires client certificates).
    """
    payload = file.read_bytes().replace(b"\r\n", b"\r").replace(b"\n", b"\r")
    target = port or obj.settings.hl7.port
    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("give --tls-cert and --tls-key together")
    if tls_cert is not None and tls_ca is None:
        raise click.UsageError("--tls-cert needs --tls-ca (the CA that signed the listener certificate)")
    context = None
    if tls_ca is not None:
        try:
            context = ssl.create_default_context(cafile=str(tls_ca))
            if tls_cert is not None and tls_key is not None:
                context.load_cert_chain(str(tls_cert), str(tls_key))
        except (ssl.SSLError, OSError) as exc:
            raise RouterError(f"cannot use the TLS files: {exc}") from exc
    try:
        ack = send_message(host, target, payload, timeout=timeout, tls=context, server_name=server_name)
    except (OSError, MllpError) as exc:
        raise RouterError(f"cannot send to {host}:{target}: {exc}") from exc
    text = ack.decode("utf-8", errors="replace")
    click.echo(text.replace("\r", "\n").rstrip("\n"))
    msa = next((segment for segment in text.split("\r") if segment.startswith("MSA")), "")
    code = msa[4:6] if len(msa) >= 6 else ""
    if code != "AA":
        raise RouterError(f"the message was not accepted (MSA-1 {code or 'missing'})")


@click.group("orders")
def orders_group() -> None:
    """Orders received from the RIS (ORM^O01, OMI^O23), by accession number."""


@orders_group.command("list")
@click.option("--status", type=click.Choice(OrderStatus.values()), help="Only orders in this state.")
@click.option("--limit", type=click.IntRange(1, 100_000), default=1000, show_default=True, help="At most this many.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (an array of orders).")
@click.pass_obj
def list_orders(obj: CliContext, status: str | None, limit: int, as_json: bool) -> None:
    """List orders, newest first."""
    app = obj.app()
    rows = OrderService(app.sessions, app.clock).list(OrderStatus(status) if status else None, limit)
    if as_json:
        emit_json(rows)
        return
    emit_table(
        "Orders",
        ["accession", "status", "priority", "CPT", "ICD-10", "referring NPI", "facility", "class", "study"],
        [
            (
                row["accession_number"],
                row["status"],
                row["priority"],
                ",".join(item["code"] for item in row["procedures"]),
                ",".join(item["code"] for item in row["diagnoses"]),
                row["referring_npi"],
                row["ordering_facility"],
                row["patient_class"],
                row["study_instance_uid"],
            )
            for row in rows
        ],
    )


@orders_group.command("show")
@click.argument("accession")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def show_order(obj: CliContext, accession: str, as_json: bool) -> None:
    """Show the order with accession number ACCESSION."""
    app = obj.app()
    row = OrderService(app.sessions, app.clock).show(accession)
    if as_json:
        emit_json(row)
        return
    emit_fields(f"Order {accession}", list(row.items()))


def register(cli: click.Group) -> None:
    """Add ``hl7`` and ``orders`` to the root group."""
    cli.add_command(hl7_group)
    cli.add_command(orders_group)
