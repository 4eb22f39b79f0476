"""``router hl7 send`` (a real MLLP client) and ``router orders list/show`` through click."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from hl7_helpers import order_v23
from test_hl7_mllp import hl7_server  # noqa: F401 - the fixture

from router.cli import cli
from router.server import RouterServer

pytestmark = pytest.mark.network


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def _config(server: RouterServer, tmp_path: Path) -> Path:
    config = tmp_path / "cli.toml"
    settings = server.app.settings
    config.write_text(
        f'[paths]\ndata_dir = "{settings.paths.data_dir}"\n[database]\nurl = "{settings.database_url}"\n'
        f'[logging]\nlevel = "WARNING"\n[hl7]\nport = {server.hl7_port}\n'
    )
    return config


def test_send_prints_the_ack_and_orders_list_and_show(hl7_server: RouterServer, tmp_path: Path) -> None:  # noqa: F811
    config = _config(hl7_server, tmp_path)
    message = tmp_path / "order.hl7"
    # As saved by an editor: segments on lines ending in LF.
    message.write_bytes(order_v23("ACC-CLI-1", "CLI-1").replace(b"\r", b"\n"))
    result = CliRunner().invoke(cli, ["--config", str(config), "hl7", "send", str(message)])
    assert result.exit_code == 0, result.output
    assert "MSA|AA|CLI-1" in result.stdout
    listed = CliRunner().invoke(cli, ["--config", str(config), "orders", "list", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.stdout)
    assert (row["accession_number"], row["status"], row["priority"], row["referring_npi"]) == (
        "ACC-CLI-1",
        "active",
        "stat",
        "1234567893",
    )
    assert [p["code"] for p in row["procedures"]] == ["71260", "CHEST"]
    shown = CliRunner().invoke(cli, ["--config", str(config), "orders", "show", "ACC-CLI-1", "--json"])
    assert json.loads(shown.stdout)["diagnoses"][0]["code"] == "R07.9"
    missing = CliRunner().invoke(cli, ["--config", str(config), "orders", "show", "NOPE"])
    assert missing.exit_code == 1 and missing.stderr.strip() == "error: no order with accession number 'NOPE'"


def test_send_of_a_refused_message_exits_1_with_the_nak(hl7_server: RouterServer, tmp_path: Path) -> None:  # noqa: F811
    config = _config(hl7_server, tmp_path)
    message = tmp_path / "adt.hl7"
    message.write_bytes(b"MSH|^~\\&|ADT|NORTH|ROUTER||2026||ADT^A01|ADT-1|P|2.4\rPID|1\r")
    result = CliRunner().invoke(cli, ["--config", str(config), "hl7", "send", str(message)])
    assert result.exit_code == 1
    assert r"MSA|AR|ADT-1|unsupported message type ADT\S\A01" in result.stdout  # ^ escaped in MSA-3
    assert result.stderr.strip() == "error: the message was not accepted (MSA-1 AR)"


def test_send_to_a_closed_port_is_one_line(tmp_path: Path) -> None:
    message = tmp_path / "m.hl7"
    message.write_bytes(order_v23("A", "B"))
    result = CliRunner().invoke(cli, ["hl7", "send", str(message), "--port", "1"])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot send to 127.0.0.1:1:") and "Traceback" not in result.output
