"""The audit log's "who" (issue 12): the real account of the process, whatever LOGNAME or USER
say, and an optional ``router --as NAME`` recorded beside it, never instead of it."""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.cli import cli

REAL_USER = pwd.getpwuid(os.getuid()).pw_name
NPI = "1234567893"


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "router.toml"
    path.write_text(f'[paths]\ndata_dir = "{tmp_path / "var"}"\n[database]\nurl = "{database_url}"\n')
    result = CliRunner().invoke(cli, ["--config", str(path), "db", "upgrade"])
    assert result.exit_code == 0, result.output
    return path


def _run(config: Path, *args: str, env: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    # a fixed width: the table wraps "(as Dr. Ada Admin)" in a narrow one (pytest-xdist's workers
    # pass on a COLUMNS of 80)
    return CliRunner().invoke(cli, ["--config", str(config), *args], env={"COLUMNS": "200", **(env or {})})


def test_who_is_the_real_account_not_the_environment(config: Path) -> None:
    spoofed = {"LOGNAME": "mallory", "USER": "mallory", "LNAME": "mallory", "USERNAME": "mallory"}
    result = _run(config, "radiologists", "add", "--npi", NPI, "--name", "Doe^Jane", env=spoofed)
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(_run(config, "audit", "list", "--json").stdout)
    assert entry["os_user"] == REAL_USER != "mallory"
    assert entry["acting_as"] is None


def test_as_name_is_recorded_beside_the_account(config: Path) -> None:
    result = _run(
        config,
        "--as",
        "Dr. Ada Admin",
        "radiologists",
        "add",
        "--npi",
        NPI,
        "--name",
        "Doe^Jane",
        env={"LOGNAME": "mallory"},
    )
    assert result.exit_code == 0, result.output
    (entry,) = json.loads(_run(config, "audit", "list", "--json").stdout)
    assert (entry["os_user"], entry["acting_as"]) == (REAL_USER, "Dr. Ada Admin")
    assert f"{REAL_USER} (as Dr. Ada Admin)" in _run(config, "audit", "list").stdout


@pytest.mark.parametrize("name", ["", "   ", "x" * 129, "bad\nname"])
def test_bad_as_name_is_a_usage_error(config: Path, name: str) -> None:
    result = _run(config, "--as", name, "radiologists", "list")
    assert result.exit_code == 2
    assert "--as" in result.output
    assert "Traceback" not in result.output
