"""Files the router creates are not world-readable whatever the caller's umask (tested under
umask 000, the CLI as a real process); JSON log lines when ``[logging] format = "json"``."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from router.cli import SAFE_UMASK, restrict_umask
from tests.conftest import DCMTK_STORESCU, SAMPLES
from tests.dicom_helpers import free_port

pytestmark = [pytest.mark.network]


def _modes(root: Path) -> dict[str, int]:
    """``{relative path: permission bits}`` of everything under ``root`` (root included)."""
    found = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        found[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return found


def test_restrict_umask_adds_the_safe_bits_and_keeps_a_stricter_one() -> None:
    previous = os.umask(0)
    try:
        assert restrict_umask() == SAFE_UMASK == 0o027
        os.umask(0o077)
        assert restrict_umask() == 0o077
        os.umask(0o002)
        assert restrict_umask() == 0o027
    finally:
        os.umask(previous)


@pytest.mark.skipif(DCMTK_STORESCU is None, reason="DCMTK storescu not installed")
def test_serve_under_umask_000_creates_nothing_world_readable(tmp_path: Path) -> None:
    port = free_port()
    data_dir = tmp_path / "var"
    config = tmp_path / "router.toml"
    config.write_text(
        "\n".join(
            [
                "[listener]",
                'host = "127.0.0.1"',
                f"port = {port}",
                "workers = 2",
                "[paths]",
                f'data_dir = "{data_dir}"',
                "[routing]",
                "stable_seconds = 0.3",
                "poll_interval = 0.1",
                "[logging]",
                'format = "json"',
            ]
        )
        + "\n"
    )
    process = subprocess.Popen(
        ["/bin/sh", "-c", 'umask 000 && exec "$0" -m router --config "$1" serve', sys.executable, str(config)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, "router serve exited early"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                    break
            except OSError:
                assert time.monotonic() < deadline, "router serve did not listen"
                time.sleep(0.1)
        files = sorted((SAMPLES / "ER_SOUTH" / "institution_address_ok").glob("*.dcm"))
        sent = subprocess.run(
            [DCMTK_STORESCU, "-aet", "ER_SOUTH", "-aec", "ROUTER", "127.0.0.1", str(port), *map(str, files)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert sent.returncode == 0, sent.stderr
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr

    modes = _modes(data_dir)
    assert {"router.db", "serve.lock", "archive", "archive/.incoming"} <= set(modes)
    stored = [name for name in modes if name.endswith(".dcm")]
    assert len(stored) == 2
    world = {name: oct(mode) for name, mode in modes.items() if mode & 0o007}
    assert world == {}, f"world-accessible: {world}"
    group_writable = {name: oct(mode) for name, mode in modes.items() if mode & 0o020}
    assert group_writable == {}
    assert modes["router.db"] == 0o600  # created owner-only by the engine (it holds patient location)
    assert modes["archive"] == 0o750
    assert all(modes[name] in (0o600, 0o640) for name in stored)

    # [logging] format = "json": every log line is one JSON object; the click messages are plain.
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(r["logger"] == "router.server" and r["message"].startswith("listening as ROUTER") for r in records)
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert all(r["time"].endswith("+00:00") for r in records)
