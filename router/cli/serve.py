"""``router serve``: run the listener, routing timer and forwarder until SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import threading
from typing import Any

import click

from router.cli.context import CliContext
from router.server import RouterServer


@click.command("serve")
@click.option("--port", type=click.IntRange(0, 65535), help="Override listener.port (0 picks a free port).")
@click.option("--host", help="Override listener.host.")
@click.option("--workers", type=click.IntRange(1, 64), help="Override listener.workers (receiving processes sharing the port).")
@click.pass_obj
def serve(obj: CliContext, port: int | None, host: str | None, workers: int | None) -> None:
    """Receive studies over DICOM (C-STORE SCP), route them and forward them; upgrades an empty database.

    SIGTERM or Ctrl-C drains: no new associations, those in flight finish (up to
    listener.drain_timeout seconds), then the process exits 0.
    """
    changes: dict[str, Any] = {}
    if port is not None:
        changes["port"] = port
    if host is not None:
        changes["host"] = host
    if workers is not None:
        changes["workers"] = workers
    if changes:
        obj.settings = obj.settings.replace("listener", **changes)
    app = obj.app(upgrade=True)
    server = RouterServer(app)
    stop = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        server.start()
        report = server.recovery_report
        if report is not None and not report.clean_previous_shutdown:
            click.echo(
                f"recovered after an unclean shutdown: {len(report.indexed)} file(s) indexed, "
                f"{len(report.quarantined)} quarantined, {len(report.missing_files)} row(s) without a file",
                err=True,
            )
        click.echo(
            f"router {app.settings.listener.ae_title} listening on {app.settings.listener.host} "
            f"port(s) {', '.join(str(p) for p in server.ports)}; data in {app.settings.paths.data_dir}",
            err=True,
        )
        while not stop.wait(0.5):
            pass
        click.echo("draining associations...", err=True)
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo("stopped", err=True)


def register(cli: click.Group) -> None:
    """Add ``serve`` to the root group."""
    cli.add_command(serve)
