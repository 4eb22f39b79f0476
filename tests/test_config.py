"""Configuration: defaults, the example file, and bad values refused with one line and exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from router.config import CONFIG_DIR, Settings, load_settings, settings_from_mapping
from router.errors import ConfigError

EXAMPLE = CONFIG_DIR / "router.example.toml"


def test_defaults_are_the_documented_ones() -> None:
    settings = load_settings(None)
    assert settings.listener.ae_title == "ROUTER"
    assert settings.listener.port == 11112
    assert settings.paths.data_dir == Path("./var")
    assert settings.paths.archive == Path("./var/archive")
    assert settings.database_url.endswith("/var/router.db")
    assert settings.routing.stable_seconds == 30.0
    assert settings.routing.timezone == "UTC"
    assert settings.routing.use_patient_address is False  # provisional source: off by default (issue 13)


def test_example_file_documents_every_key_and_matches_the_defaults() -> None:
    example = load_settings(EXAMPLE)
    defaults = Settings()
    assert example.listener == defaults.listener
    assert example.routing == defaults.routing
    assert example.billing == defaults.billing  # relative data file paths resolve to config/
    assert example.imlc == defaults.imlc
    assert example.forwarding == defaults.forwarding
    assert example.database == defaults.database
    text = EXAMPLE.read_text()
    import dataclasses

    for section in dataclasses.fields(Settings):
        assert f"[{section.name}]" in text
        for key in dataclasses.fields(getattr(defaults, section.name)):
            if key.name == "tls":
                continue
            assert f"{key.name} =" in text or f"# {key.name} =" in text, f"{section.name}.{key.name} undocumented"


@pytest.mark.parametrize(
    ("mapping", "key", "fragment"),
    [
        ({"listener": {"ae_title": "A" * 17}}, "listener.ae_title", "longer than 16"),
        ({"listener": {"ae_title": "BAD\\AE"}}, "listener.ae_title", "backslash"),
        ({"listener": {"port": 70000}}, "listener.port", "out of range"),
        ({"listener": {"port": -1}}, "listener.port", "out of range"),
        ({"listener": {"prot": 104}}, "listener.prot", "unknown key"),
        ({"listner": {}}, "listner", "unknown section"),
        ({"routing": {"stable_seconds": "30"}}, "routing.stable_seconds", "must be a number"),
        ({"routing": {"timezone": "Mars/Olympus"}}, "routing.timezone", "unknown IANA"),
        ({"listener": {"allowed_addresses": ["10.0.0.300"]}}, "listener.allowed_addresses[0]", "not an IP"),
        ({"listener": {"tls": {"enabled": True}}}, "listener.tls.cert_file", "required"),
        (
            {"licensure": {"telehealth_registration_states": ["AE"]}},
            "licensure.telehealth_registration_states[0]",
            "not a US",
        ),
        ({"listener": {"max_pdu_length": 100}}, "listener.max_pdu_length", "unlimited"),
        ({"routing": {"poll_interval": float("inf")}}, "routing.poll_interval", "finite"),
        ({"routing": {"stable_seconds": float("nan")}}, "routing.stable_seconds", "finite"),
        ({"listener": {"network_timeout": 1e300}}, "listener.network_timeout", "at most 31536000 seconds"),
        ({"database": {"busy_timeout": float("-inf")}}, "database.busy_timeout", "finite"),
        ({"routing": {"recheck_interval": 0}}, "routing.recheck_interval", "greater than zero"),
        (
            {"billing": {"storage_cents_per_gib_month": 10**12}},
            "billing.storage_cents_per_gib_month",
            "at most 1000000 cents",
        ),
        ({"imlc": {"membership_file": "."}}, "imlc.membership_file", "is not a file"),
    ],
)
def test_bad_values_name_the_key(mapping: dict, key: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(mapping)
    assert caught.value.key == key
    assert fragment in str(caught.value)


def test_boundaries_accepted() -> None:
    settings = settings_from_mapping({"listener": {"ae_title": "A" * 16, "port": 65535, "max_pdu_length": 0}})
    assert settings.listener.ae_title == "A" * 16 and settings.listener.port == 65535


def test_bad_config_exits_2_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text('[listener]\nae_title = "WAY_TOO_LONG_AE_TITLE"\n')
    result = subprocess.run(
        [sys.executable, "-m", "router", "--config", str(config), "db", "status"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: config listener.ae_title: AE title 'WAY_TOO_LONG_AE_TITLE' is longer than 16 characters"
    ]
    assert "Traceback" not in result.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text("[listener]\nport = 0\nbogus = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "router", "db", "status"],
        capture_output=True,
        text=True,
        env={"ROUTER_CONFIG": str(config), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 2
    assert "listener.bogus: unknown key" in result.stderr


def test_example_copied_elsewhere_still_finds_the_data_files(tmp_path: Path) -> None:
    """The README says to copy the example; its data-file keys must not then point next to the copy."""
    copy = tmp_path / "router.toml"
    copy.write_text(EXAMPLE.read_text())
    settings = load_settings(copy)
    assert settings.imlc.membership_file == CONFIG_DIR / "imlc_membership.csv"
    assert settings.billing.cpt_map == CONFIG_DIR / "cpt_map_2026.csv"


@pytest.mark.parametrize("key", ["imlc.membership_file", "billing.cpt_map"])
def test_missing_data_file_is_refused_at_start_up(tmp_path: Path, key: str) -> None:
    section, name = key.split(".")
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({section: {name: "missing.csv"}}, base_dir=tmp_path)
    assert caught.value.key == key
    assert (
        str(caught.value)
        == f"{key}: file not found: {tmp_path / 'missing.csv'} (a relative path is read from the config file's folder)"
    )


def test_unreadable_config_file_is_one_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "router", "--config", str(tmp_path / "nope.toml"), "db", "status"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: config: file not found: {tmp_path / 'nope.toml'}"]


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        ("notaurl", "database.url 'notaurl' cannot be used: Could not parse SQLAlchemy URL"),
        ("nosuchdialect://x@y/z", "database.url 'nosuchdialect://x@y/z' cannot be used: Can't load plugin"),
        (
            "postgresql+psycopg://postgres:secret@127.0.0.1:1/test",
            "cannot connect to postgresql+psycopg://postgres:***@127.0.0.1:1/test:",
        ),
        (
            "postgresql+psycopg://postgres@127.0.0.1:1/test?password=secret",
            "cannot connect to postgresql+psycopg://postgres@127.0.0.1:1/test?password=HIDDEN:",
        ),
        ("postgresql+psycopg://u:secret@h:abc/x", "database.url 'postgresql+psycopg:...' cannot be used:"),
    ],
)
@pytest.mark.parametrize("command", [["db", "status"], ["db", "upgrade"], ["studies", "list"], ["serve"]])
def test_unusable_database_is_one_line(tmp_path: Path, url: str, fragment: str, command: list[str]) -> None:
    config = tmp_path / "router.toml"
    config.write_text(f'[database]\nurl = "{url}"\n[listener]\nport = 0\n')
    result = subprocess.run(
        [sys.executable, "-m", "router", "--config", str(config), *command], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and fragment in lines[0]
    assert "secret" not in result.stderr


def test_mistyped_data_dir_creates_nothing(tmp_path: Path) -> None:
    wrong = tmp_path / "no" / "such" / "dir"
    result = subprocess.run(
        [sys.executable, "-m", "router", "--data-dir", str(wrong), "studies", "list"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: no database at {wrong / 'router.db'}: run `router db upgrade` first, or check --data-dir, paths.data_dir and database.url"
    ]
    assert not (tmp_path / "no").exists()


def test_data_dir_that_cannot_be_created_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = subprocess.run(
        [sys.executable, "-m", "router", "--data-dir", str(blocker / "var"), "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: cannot create the folder of {blocker / 'var' / 'router.db'}: Not a directory"
    ]


def test_workers_default_to_the_cores_this_process_may_use_at_most_8(tmp_path: Path) -> None:
    cores = len(os.sched_getaffinity(0))
    assert Settings().listener.workers == min(cores, 8)
    config = tmp_path / "router.toml"
    config.write_text("[listener]\nworkers = 1\n")
    assert load_settings(config).listener.workers == 1
