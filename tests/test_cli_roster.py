"""The roster commands through click (CliRunner) and once as a real process.

Exit codes: 0 ok, 1 an error the admin can act on (one ``error: ...`` line, never a
traceback), 2 bad usage (e.g. a date not written YYYY-MM-DD).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from roster_fixtures import NPI_A, NPI_B, NPI_C, add_study, study_state

from router.app import RouterApp
from router.cli import cli
from router.config import load_settings
from router.domain.enums import StudyStatus
from router.timeutil import local_date, utcnow

ROSTER_GROUPS = ("radiologists", "licenses", "imlc", "facilities", "privileges", "audit", "shifts", "credentials")
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI installs a stderr handler on the root logger; CliRunner's stderr dies with the test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)


def write_config(tmp_path: Path, database_url: str, extra: str = "") -> Path:
    config = tmp_path / "router.toml"
    config.write_text(
        f'[paths]\ndata_dir = "{tmp_path / "var"}"\n\n[database]\nurl = "{database_url}"\n\n[logging]\nlevel = "WARNING"\n{extra}',
        encoding="utf-8",
    )
    return config


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    """A config file for a fresh database, upgraded with `router db upgrade`."""
    path = write_config(tmp_path, database_url)
    result = CliRunner().invoke(cli, ["--config", str(path), "db", "upgrade"])
    assert result.exit_code == 0, result.output
    return path


def run(config: Path, *args: str, input: str | None = None) -> Result:
    result = CliRunner().invoke(cli, ["--config", str(config), *args], input=input)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    return result


def ok(config: Path, *args: str, input: str | None = None) -> Result:
    result = run(config, *args, input=input)
    assert result.exit_code == 0, result.output
    return result


def as_json(result: Result) -> Any:
    return json.loads(result.stdout)


def _walk(command: click.Command, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from _walk(sub, (*path, name))


# --------------------------------------------------------------------------- help


def test_every_command_has_help_text() -> None:
    missing = [" ".join(path) for path, command in _walk(cli) if not (command.help or "").strip()]
    assert missing == []
    names = {path[0] for path, _ in _walk(cli) if path}
    assert set(ROSTER_GROUPS) <= names


def test_every_roster_option_has_help_and_help_runs() -> None:
    for path, command in _walk(cli):
        if not path or path[0] not in ROSTER_GROUPS:
            continue
        undocumented = [
            param.name for param in command.params if isinstance(param, click.Option) and not (param.help or "").strip()
        ]
        assert undocumented == [], path
        result = CliRunner().invoke(cli, [*path, "--help"])
        assert result.exit_code == 0 and (command.help or "").split()[0] in result.output, path


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("radiologists", "add", "--npi", "1234567890", "--name", "X^Y"),
            "error: NPI 1234567890 fails the check digit (expected 3)",
        ),
        (("radiologists", "add", "--npi", "12345", "--name", "X^Y"), "error: NPI must be 10 digits"),
        (("radiologists", "show", NPI_B), f"error: no radiologist with NPI {NPI_B}"),
        (
            ("licenses", "add", "--npi", NPI_C, "--state", "ZZ", "--number", "1", "--expires", "2027-01-01"),
            "error: unknown state 'ZZ' (not a US licensing jurisdiction)",
        ),
        (
            ("licenses", "add", "--npi", NPI_B, "--state", "TX", "--number", "1", "--expires", "2027-01-01"),
            f"error: no radiologist with NPI {NPI_B}",
        ),
        (
            (
                "licenses",
                "add",
                "--npi",
                NPI_C,
                "--state",
                "TX",
                "--number",
                "1",
                "--expires",
                "2027-01-01",
                "--issued",
                "2027-01-02",
            ),
            "error: license expires 2027-01-01 before it is issued 2027-01-02",
        ),
        (
            ("radiologists", "add", "--npi", NPI_C, "--name", "Again^Jane"),
            f"error: NPI {NPI_C} is already on the roster",
        ),
        (
            ("radiologists", "set", NPI_C, "--spl", "AE"),
            "error: unknown SPL state 'AE' (not a US licensing jurisdiction)",
        ),
        (
            ("facilities", "add", "--ae-title", "A_VERY_LONG_AE_TITLE", "--state", "TX"),
            "error: AE title 'A_VERY_LONG_AE_TITLE' is longer than 16 characters",
        ),
        (
            ("facilities", "add", "--ae-title", "CT_NORTH", "--state", "TX", "--timezone", "Mars/Base"),
            "error: unknown time zone 'Mars/Base' (expected an IANA name such as America/Chicago)",
        ),
        (
            ("licenses", "set-status", "--npi", NPI_C, "--state", "CO", "--status", "active"),
            f"error: NPI {NPI_C} holds no license in CO",
        ),
    ],
)
def test_actionable_errors_are_one_line_with_exit_1(config: Path, args: tuple[str, ...], message: str) -> None:
    ok(config, "radiologists", "add", "--npi", NPI_C, "--name", "Doe^Jane")
    result = run(config, *args)
    assert result.exit_code == 1
    assert result.stderr.splitlines() == [message]
    assert result.stdout == ""


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("licenses", "add", "--npi", NPI_C, "--state", "TX", "--number", "1", "--expires", "2027-6-30"), "--expires"),
        (("licenses", "add", "--npi", NPI_C, "--state", "TX", "--number", "1", "--expires", "2027-02-30"), "--expires"),
        (
            (
                "licenses",
                "set-status",
                "--npi",
                NPI_C,
                "--state",
                "TX",
                "--status",
                "suspended",
                "--since",
                "yesterday",
                "--yes",
            ),
            "--since",
        ),
        (
            (
                "privileges",
                "grant",
                "--npi",
                NPI_C,
                "--facility",
                "CT_NORTH",
                "--from",
                "2026/01/01",
                "--until",
                "2027-01-01",
            ),
            "--from",
        ),
        (("radiologists", "set", NPI_C, "--loq-issued", "15.06.2026"), "--loq-issued"),
        (("radiologists", "set", NPI_C, "--destination", "READER:104"), "--destination"),
        (
            (
                "licenses",
                "add",
                "--npi",
                NPI_C,
                "--state",
                "TX",
                "--number",
                "1",
                "--expires",
                "2027-01-01",
                "--pathway",
                "compact",
            ),
            "--pathway",
        ),
        (("radiologists", "set", NPI_C), None),
        (("privileges", "revoke"), None),
        (
            (
                "licenses",
                "set-status",
                "--npi",
                NPI_C,
                "--state",
                "TX",
                "--status",
                "suspended",
                "--in-lieu-of-discipline",
            ),
            None,
        ),
    ],
)
def test_bad_usage_exits_2(config: Path, args: tuple[str, ...], option: str | None) -> None:
    result = run(config, *args)
    assert result.exit_code == 2
    error_lines = result.stderr.splitlines()
    assert len(error_lines) == 1 and error_lines[0].startswith("error: "), result.stderr  # one line, no usage block
    assert error_lines[0].endswith(f" {' '.join(args[:2])} --help`)")  # the command's help
    if option is not None:
        assert f"Invalid value for '{option}'" in error_lines[0]
    if option in {"--expires", "--since", "--from", "--loq-issued"}:
        assert "is not a date in YYYY-MM-DD form" in error_lines[0]


# --------------------------------------------------------------------------- the workflow


def test_roster_workflow_with_json_and_audit(config: Path) -> None:
    ok(
        config,
        "facilities",
        "add",
        "--ae-title",
        "CT_NORTH",
        "--state",
        "TX",
        "--name",
        "North",
        "--timezone",
        "America/Chicago",
        "--alias",
        "North Texas Imaging",
    )
    added = as_json(
        ok(config, "radiologists", "add", "--npi", NPI_C, "--name", "Doe^Jane", "--email", "jane@example.org", "--json")
    )
    assert (added["action"], added["key"], added["changed"], added["record"]["name"], added["rerouted"]) == (
        "radiologist.add",
        NPI_C,
        True,
        "Doe^Jane",
        [],
    )
    line = ok(
        config,
        "licenses",
        "add",
        "--npi",
        NPI_C,
        "--state",
        "tx",
        "--number",
        "ABC123",
        "--expires",
        "2027-06-30",
        "--issued",
        "2020-01-01",
    ).stdout
    assert line == f"added license TX-ABC123 (full, active, expires 2027-06-30) for {NPI_C}\n"
    ok(config, "radiologists", "set", NPI_C, "--spl", "TX", "--mqsa", "--destination", "READER1@10.1.2.3:104")
    listed = as_json(ok(config, "radiologists", "list", "--json"))
    assert [(r["npi"], r["spl_state"], r["mqsa_qualified"], r["destination"], r["licenses"]) for r in listed] == [
        (NPI_C, "TX", True, "READER1@10.1.2.3:104", 1)
    ]
    licenses = as_json(ok(config, "licenses", "list", "--state", "TX", "--json"))
    assert [(x["npi"], x["number"], x["pathway"], x["status"], x["issued"], x["expires"]) for x in licenses] == [
        (NPI_C, "ABC123", "full", "active", "2020-01-01", "2027-06-30")
    ]
    suspended = as_json(
        ok(
            config,
            "licenses",
            "set-status",
            "--npi",
            NPI_C,
            "--state",
            "TX",
            "--status",
            "suspended",
            "--since",
            "2026-10-02",
            "--yes",
            "--json",
        )
    )
    assert (suspended["record"]["status"], suspended["record"]["status_since"]) == ("suspended", "2026-10-02")
    shown = as_json(ok(config, "radiologists", "show", NPI_C, "--json"))
    assert shown["disciplinary_actions"] == [
        {
            "state": "TX",
            "license_number": "ABC123",
            "action": "suspended",
            "action_date": "2026-10-02",
            "recorded_at": shown["disciplinary_actions"][0]["recorded_at"],
        }
    ]
    facility = as_json(ok(config, "facilities", "show", "CT_NORTH", "--json"))
    assert (facility["state"], facility["timezone"], facility["aliases"], facility["study_count"]) == (
        "TX",
        "America/Chicago",
        ["NORTH TEXAS IMAGING"],
        0,
    )
    audit = as_json(ok(config, "audit", "list", "--json", "--limit", "2"))
    assert [(row["action"], row["entity_key"]) for row in audit] == [
        ("license.set_status", f"{NPI_C}/TX"),
        ("radiologist.set", NPI_C),
    ]
    assert audit[0]["old_values"] == {"status": "active", "status_since": None}
    assert (
        audit[0]["new_values"]["status"] == "suspended"
        and audit[0]["new_values"]["disciplinary_action"]["action_date"] == "2026-10-02"
    )
    assert audit[0]["os_user"] and audit[0]["at"].endswith("Z")
    table = ok(config, "audit", "list", "--key", f"{NPI_C}/TX").stdout
    assert "license.set_status" in table and "radiologist.add" not in table
    assert "Doe^Jane" in ok(config, "radiologists", "list").stdout
    cleared = as_json(
        ok(config, "radiologists", "set", NPI_C, "--spl", "none", "--email", "NONE", "--no-destination", "--json")
    )["record"]
    assert (cleared["spl_state"], cleared["email"], cleared["destination"], cleared["mqsa_qualified"]) == (
        None,
        None,
        None,
        True,
    )
    assert ok(config, "radiologists", "set", NPI_C, "--spl", "none").stdout == f"radiologist {NPI_C}: nothing changed\n"


def test_confirmation_for_destructive_commands(config: Path) -> None:
    ok(config, "radiologists", "add", "--npi", NPI_C, "--name", "Doe^Jane")
    ok(config, "licenses", "add", "--npi", NPI_C, "--state", "TX", "--number", "A1", "--expires", "2027-06-30")
    refused = run(config, "radiologists", "deactivate", NPI_C, input="n\n")
    assert refused.exit_code == 1 and "Aborted" in refused.stderr
    assert as_json(ok(config, "radiologists", "show", NPI_C, "--json"))["active"] is True
    assert (
        run(config, "licenses", "set-status", "--npi", NPI_C, "--state", "TX", "--status", "revoked").exit_code == 1
    )  # end of input: no
    assert as_json(ok(config, "licenses", "list", "--json"))[0]["status"] == "active"
    assert ok(config, "radiologists", "deactivate", NPI_C, input="y\n").stdout.endswith(
        f"deactivated radiologist {NPI_C}\n"
    )
    assert (
        ok(config, "radiologists", "deactivate", NPI_C, "--yes").stdout == f"radiologist {NPI_C} is already inactive\n"
    )
    assert ok(config, "radiologists", "activate", NPI_C).stdout == f"activated radiologist {NPI_C}\n"
    # back to active needs no confirmation
    ok(config, "licenses", "set-status", "--npi", NPI_C, "--state", "TX", "--status", "expired", "--yes")
    assert ok(config, "licenses", "set-status", "--npi", NPI_C, "--state", "TX", "--status", "active").exit_code == 0
    ok(config, "facilities", "add", "--ae-title", "CT_NORTH", "--state", "TX")
    assert run(config, "facilities", "remove", "CT_NORTH", input="n\n").exit_code == 1
    assert [f["ae_title"] for f in as_json(ok(config, "facilities", "list", "--json"))] == ["CT_NORTH"]
    ok(
        config,
        "privileges",
        "grant",
        "--npi",
        NPI_C,
        "--facility",
        "CT_NORTH",
        "--from",
        "2026-01-01",
        "--until",
        "2027-01-01",
    )
    assert (
        run(config, "facilities", "remove", "CT_NORTH", "--yes").stderr
        == "error: facility CT_NORTH has 1 privilege grant(s); revoke them, or remove with --force to delete them\n"
    )
    assert run(config, "privileges", "revoke", "1", input="n\n").exit_code == 1
    assert as_json(ok(config, "privileges", "list", "--json"))[0]["revoked_on"] is None
    revoked = ok(
        config, "privileges", "revoke", "--npi", NPI_C, "--facility", "CT_NORTH", "--on", "2026-12-01", "--yes"
    )
    assert revoked.stdout == f"revoked privilege 1 ({NPI_C}/CT_NORTH) from 2026-12-01\n"
    ok(config, "facilities", "remove", "CT_NORTH", "--force", "--yes")
    assert as_json(ok(config, "facilities", "list", "--json")) == []
    # unknown records are reported before any question is asked (no input given: no prompt read)
    missing = run(config, "facilities", "remove", "CT_NORTH")
    assert (missing.exit_code, missing.stderr, missing.stdout) == (1, "error: no facility with AE title CT_NORTH\n", "")
    missing = run(config, "privileges", "revoke", "99")
    assert (missing.exit_code, missing.stderr, missing.stdout) == (1, "error: no privilege with id 99\n", "")


def test_roster_change_reroutes_and_prints_one_line_per_study(config: Path) -> None:
    ok(config, "facilities", "add", "--ae-title", "CT_NORTH", "--state", "TX")
    ok(config, "radiologists", "add", "--npi", NPI_A, "--name", "Reader^A")
    ok(config, "radiologists", "add", "--npi", NPI_B, "--name", "Reader^B")
    with RouterApp.open(load_settings(config)) as app:
        add_study(app, "1.2.826.0.1.1")
        add_study(app, "1.2.826.0.1.2")
        app.routing.route_due()
    added = ok(
        config, "licenses", "add", "--npi", NPI_A, "--state", "TX", "--number", "T1", "--expires", "2030-01-01"
    ).stdout.splitlines()
    assert added[1:] == [f"study 1.2.826.0.1.1: assigned to {NPI_A}", f"study 1.2.826.0.1.2: assigned to {NPI_A}"]
    ok(config, "licenses", "add", "--npi", NPI_B, "--state", "TX", "--number", "T2", "--expires", "2030-01-01")
    document = as_json(
        ok(
            config,
            "licenses",
            "set-status",
            "--npi",
            NPI_A,
            "--state",
            "TX",
            "--status",
            "suspended",
            "--yes",
            "--json",
        )
    )
    assert sorted(
        (r["study_instance_uid"], r["status"], r["assigned_npi"], r["previous_npi"]) for r in document["rerouted"]
    ) == [
        ("1.2.826.0.1.1", "assigned", NPI_B, NPI_A),
        ("1.2.826.0.1.2", "assigned", NPI_B, NPI_A),
    ]
    lines = ok(config, "radiologists", "deactivate", NPI_B, "--yes").stdout.splitlines()
    assert lines == [
        f"deactivated radiologist {NPI_B}",
        f"study 1.2.826.0.1.1: held (no_eligible_radiologist), withdrawn from {NPI_B}",
        f"study 1.2.826.0.1.2: held (no_eligible_radiologist), withdrawn from {NPI_B}",
    ]
    with RouterApp.open(load_settings(config)) as app:
        assert study_state(app, "1.2.826.0.1.1")["status"] is StudyStatus.HELD


def test_saved_change_whose_re_evaluation_fails_exits_1_with_a_warning(tmp_path: Path, database_url: str) -> None:
    membership = tmp_path / "imlc.csv"
    shutil.copy(REPO / "config" / "imlc_membership.csv", membership)
    config = write_config(tmp_path, database_url, f'\n[imlc]\nmembership_file = "{membership}"\n')
    ok(config, "db", "upgrade")
    ok(config, "facilities", "add", "--ae-title", "CT_NORTH", "--state", "TX")
    ok(config, "radiologists", "add", "--npi", NPI_A, "--name", "Reader^A")
    with RouterApp.open(load_settings(config)) as app:
        add_study(app, "1.2.826.0.1.1")
        app.routing.route_due()
    original = membership.read_bytes()
    membership.write_text("not,the,membership,file\n")  # broken after start-up: parsing fails
    result = run(
        config, "licenses", "add", "--npi", NPI_A, "--state", "TX", "--number", "T1", "--expires", "2030-01-01"
    )
    assert result.exit_code == 1
    assert result.stdout == f"added license TX-T1 (full, active, expires 2030-01-01) for {NPI_A}\n"
    assert result.stderr.startswith("warning: change saved, but studies were not re-evaluated: imlc.csv")
    assert result.stderr.rstrip().endswith(
        "run `router studies recheck` (a running server rechecks every routing.recheck_interval seconds)"
    )
    assert [row["state"] for row in as_json(ok(config, "licenses", "list", "--json"))] == ["TX"]
    with RouterApp.open(load_settings(config)) as app:
        assert study_state(app, "1.2.826.0.1.1")["status"] is StudyStatus.HELD
    # the file is fixed: the recheck the warning names assigns the held study
    membership.write_bytes(original)
    lines = ok(config, "studies", "recheck").stdout.splitlines()
    assert lines == [
        f"study 1.2.826.0.1.1: assigned to NPI {NPI_A} (TX)",
        "rechecked: 0 withdrawn from a reader no longer eligible, 1 held study assigned, 0 held",
    ]


# --------------------------------------------------------------------------- import / export


def test_import_is_all_or_nothing_and_export_round_trips(config: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "npi,name,license_state,license_number,pathway,status,issued,expires\n"
        f"{NPI_A},Reader^A,TX,T1,full,active,,2029-01-01\n"
        f"{NPI_B},Reader^B,TX,T2,full,active,2029-02-01,2029-01-01\n",
        encoding="utf-8",
    )
    result = run(config, "radiologists", "import", str(bad), "--yes")
    assert result.exit_code == 1
    assert result.stderr == "error: line 3: license expires 2029-01-01 before it is issued 2029-02-01\n"
    assert as_json(ok(config, "radiologists", "list", "--json")) == []
    demo = REPO / "config" / "demo" / "roster.csv"
    assert run(config, "radiologists", "import", str(demo), input="n\n").exit_code == 1
    assert as_json(ok(config, "radiologists", "list", "--json")) == []
    imported = ok(config, "radiologists", "import", str(demo), input="y\n")
    assert (
        "imported roster.csv: 10 license rows; 5 radiologists added, 0 updated; 10 licenses added, 0 updated, 0 unchanged"
        in imported.stdout
    )
    exported = ok(config, "radiologists", "export").stdout
    assert sorted(exported.splitlines()) == sorted(demo.read_text(encoding="utf-8").splitlines())
    target = tmp_path / "out.csv"
    written = ok(config, "radiologists", "export", str(target))
    assert (
        target.read_text(encoding="utf-8") == exported and written.stderr == f"exported 10 license rows to {target}\n"
    )
    again = as_json(ok(config, "radiologists", "import", str(target), "--json"))
    assert (again["licenses_unchanged"], again["licenses_added"], again["dry_run"]) == (10, 0, True)


# --------------------------------------------------------------------------- IMLC data


def _membership(tmp_path: Path, as_of: dt.date) -> Path:
    path = tmp_path / "imlc.csv"
    path.write_text(
        f"# as_of: {as_of.isoformat()}\nstate,status,effective_date,note,source\nCO,spl,2016-01-01,,csg\nCT,non_spl,2022-01-01,,x\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(("age", "exit_code"), [(0, 0), (180, 0), (181, 1)])
def test_imlc_check_warns_when_data_is_older_than_max_age(tmp_path: Path, age: int, exit_code: int) -> None:
    today = local_date(utcnow(), "UTC")
    as_of = today - dt.timedelta(days=age)
    config = write_config(
        tmp_path,
        f"sqlite:///{tmp_path / 'unused.db'}",
        f'\n[imlc]\nmembership_file = "{_membership(tmp_path, as_of)}"\nmax_age_days = 180\n',
    )
    result = run(config, "imlc", "check")
    assert result.exit_code == exit_code
    if exit_code:
        assert result.stdout == ""
        assert result.stderr.startswith(
            f"warning: IMLC membership data as_of {as_of.isoformat()} is 181 days old (limit 180)"
        )
        assert len(result.stderr.splitlines()) == 1
    else:
        assert result.stdout == f"ok: IMLC membership data as_of {as_of.isoformat()} is {age} days old (limit 180)\n"


def test_imlc_show_json_and_table(tmp_path: Path) -> None:
    membership = _membership(tmp_path, dt.date(2026, 11, 29))
    config = write_config(
        tmp_path, f"sqlite:///{tmp_path / 'unused.db'}", f'\n[imlc]\nmembership_file = "{membership}"\n'
    )
    document = as_json(ok(config, "imlc", "show", "--json"))
    assert (document["as_of"], document["file"]) == ("2026-11-29", str(membership))
    assert [(m["state"], m["status"], m["effective_date"]) for m in document["members"]] == [
        ("CO", "spl", "2016-01-01"),
        ("CT", "non_spl", "2022-01-01"),
    ]
    assert ok(config, "imlc", "show").stdout.startswith("IMLC membership as_of 2026-11-29 (")
    missing = write_config(
        tmp_path, f"sqlite:///{tmp_path / 'unused.db'}", f'\n[imlc]\nmembership_file = "{tmp_path / "nope.csv"}"\n'
    )
    result = run(missing, "imlc", "check")
    assert result.exit_code == 2  # refused at start-up, like every other bad config value
    assert result.stderr.strip().splitlines() == [
        f"error: config imlc.membership_file: file not found: {tmp_path / 'nope.csv'} (a relative path is read from the config file's folder)"
    ]


# --------------------------------------------------------------------------- a real process


def test_console_script_as_a_process(tmp_path: Path) -> None:
    config = write_config(tmp_path, f"sqlite:///{tmp_path / 'router.db'}")
    env = {**os.environ, "ROUTER_CONFIG": str(config)}

    def router(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "router", *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )

    assert router("db", "upgrade").returncode == 0
    added = router("radiologists", "add", "--npi", NPI_C, "--name", "Doe^Jane")
    assert (added.returncode, added.stdout) == (0, f"added radiologist {NPI_C} (Doe^Jane)\n")
    bad_state = router("licenses", "add", "--npi", NPI_C, "--state", "XX", "--number", "1", "--expires", "2027-01-01")
    assert (bad_state.returncode, bad_state.stderr, bad_state.stdout) == (
        1,
        "error: unknown state 'XX' (not a US licensing jurisdiction)\n",
        "",
    )
    bad_date = router("licenses", "add", "--npi", NPI_C, "--state", "TX", "--number", "1", "--expires", "30/06/2027")
    assert bad_date.returncode == 2 and "Traceback" not in bad_date.stderr
    assert bad_date.stderr == (
        "error: Invalid value for '--expires': '30/06/2027' is not a date in YYYY-MM-DD form"
        " (see `router licenses add --help`)\n"
    )
    listed = router("radiologists", "list", "--json")
    assert listed.returncode == 0 and [row["npi"] for row in json.loads(listed.stdout)] == [NPI_C]


def test_export_to_a_missing_folder_is_one_line(config: Path, tmp_path: Path) -> None:
    target = tmp_path / "no" / "such" / "out.csv"
    result = run(config, "radiologists", "export", str(target))
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [f"error: No such file or directory: {target}"]


def test_adding_an_expired_or_future_license_says_so(config: Path) -> None:
    ok(config, "radiologists", "add", "--npi", NPI_A, "--name", "Reader^A")
    old = ok(config, "licenses", "add", "--npi", NPI_A, "--state", "NV", "--number", "N-1", "--expires", "2020-01-01")
    assert old.stderr == "note: license NV-N-1 expired on 2020-01-01; it makes no one eligible (recorded for history)\n"
    future = ok(
        config,
        "licenses",
        "add",
        "--npi",
        NPI_A,
        "--state",
        "UT",
        "--number",
        "U-1",
        "--issued",
        "2099-01-01",
        "--expires",
        "2099-12-31",
    )
    assert future.stderr == "note: license UT-U-1 is valid from 2099-01-01; it counts from that day\n"
    current = ok(
        config, "licenses", "add", "--npi", NPI_A, "--state", "TX", "--number", "T-1", "--expires", "2099-12-31"
    )
    assert current.stderr == ""


def test_names_with_control_characters_are_refused(config: Path) -> None:
    result = run(config, "radiologists", "add", "--npi", NPI_A, "--name", "Doe^Jane\nINJECTED")
    assert (result.exit_code, result.stderr) == (
        1,
        "error: name must not contain control characters (line breaks, tabs...)\n",
    )


def test_validation_comes_before_the_confirmation_question(config: Path) -> None:
    for args, message in [
        (("radiologists", "deactivate", "1999999996"), "error: NPI 1999999996 fails the check digit (expected 2)\n"),
        (("radiologists", "deactivate", NPI_B), f"error: no radiologist with NPI {NPI_B}\n"),
    ]:
        result = run(config, *args)
        assert (result.exit_code, result.stderr) == (1, message)
    ok(config, "radiologists", "add", "--npi", NPI_A, "--name", "Reader^A")
    result = run(config, "licenses", "set-status", "--npi", NPI_A, "--state", "NV", "--status", "revoked")
    assert (result.exit_code, result.stderr) == (1, f"error: radiologist {NPI_A} holds no license in NV\n")


def test_export_to_stdout_with_a_dash_and_never_over_a_file_silently(config: Path, tmp_path: Path) -> None:
    ok(config, "radiologists", "add", "--npi", NPI_A, "--name", "Reader^A")
    ok(config, "licenses", "add", "--npi", NPI_A, "--state", "TX", "--number", "T-1", "--expires", "2099-12-31")
    dashed = ok(config, "radiologists", "export", "-").stdout
    assert dashed.splitlines()[0] == "npi,name,license_state,license_number,pathway,status,issued,expires"
    assert not (Path.cwd() / "-").exists()
    target = tmp_path / "keep.csv"
    target.write_text("precious\n")
    refused = run(config, "radiologists", "export", str(target))
    assert (refused.exit_code, refused.stderr, target.read_text()) == (
        1,
        f"error: {target} exists; give --force to overwrite it\n",
        "precious\n",
    )
    ok(config, "radiologists", "export", str(target), "--force")
    assert target.read_text() == dashed


def test_list_limits_and_audit_entities_are_checked(config: Path) -> None:
    assert run(config, "studies", "list", "--limit", "9223372036854775808").exit_code == 2
    assert run(config, "audit", "list", "--entity", "bogus").exit_code == 2
    assert ok(config, "audit", "list", "--entity", "study", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ("X@h:104:5", "bad destination host 'h:104'"),
        ("X@h:\u0967\u0968\u0969", "bad destination port"),
        ("X@999.1.1.1:104", "bad destination host '999.1.1.1'"),
        ("X@-h:104", "bad destination host '-h'"),
    ],
)
def test_nonsense_destinations_are_refused(config: Path, destination: str, message: str) -> None:
    ok(config, "radiologists", "add", "--npi", NPI_A, "--name", "Reader^A")
    result = run(config, "radiologists", "set", NPI_A, "--destination", destination)
    assert result.exit_code != 0 and message in result.output + result.stderr


def test_names_must_not_hold_a_backslash_or_unicode_line_separator(config: Path) -> None:
    for name, message in (("Bad\\Name", "backslash"), ("A\u2028B", "control characters")):
        result = run(config, "radiologists", "add", "--npi", NPI_A, "--name", name)
        assert result.exit_code == 1 and message in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--bogus",), "No such option '--bogus'"),
        (("nosuchcommand",), "No such command 'nosuchcommand'"),
        (("--data-dir",), "Option '--data-dir' requires an argument"),
    ],
)
def test_root_usage_mistakes_are_one_line(args: tuple[str, ...], message: str) -> None:
    result = CliRunner().invoke(cli, list(args))
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stderr.rstrip().endswith("--help`)")
