"""``router nodes``: the ``router serve`` nodes sharing this database (docs/scale-out.md)."""

from __future__ import annotations

import click

from router.cli.context import CliContext
from router.cli.output import emit_json, emit_table
from router.services.cluster import ClusterService


@click.group("nodes")
def nodes_group() -> None:
    """Nodes of a cluster sharing one database and archive: ids and heartbeats."""


@nodes_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.pass_obj
def list_nodes(obj: CliContext, as_json: bool) -> None:
    """List every node that ran against this database, with its last heartbeat (UTC).

    A node is alive while its heartbeat is younger than ``node.lease_seconds`` and it has not
    stopped; the claims of a node that is not alive are taken over by the others.
    """
    app = obj.app()
    nodes = ClusterService(app.sessions, app.node_id or "cli", app.settings.node.lease_seconds, app.clock).nodes()
    if as_json:
        emit_json([node.to_json() for node in nodes])
        return
    emit_table(
        "Nodes",
        ["node id", "host", "pid", "started (UTC)", "heartbeat (UTC)", "state"],
        [
            (
                node.node_id,
                node.hostname,
                node.pid,
                f"{node.started_at:%Y-%m-%d %H:%M:%S}",
                f"{node.heartbeat_at:%Y-%m-%d %H:%M:%S}",
                "alive" if node.alive else ("stopped" if node.stopped_at else "silent"),
            )
            for node in nodes
        ],
    )


def register(cli: click.Group) -> None:
    """Add ``nodes`` to the root group."""
    cli.add_command(nodes_group)
