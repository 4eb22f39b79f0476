"""Configuration: defaults, the example file, and bad values refused with one line and exit 2."""

from __future__ import annotations

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
    assert settings.routing.use_patient_address is True


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
        ({"licensure": {"telehealth_registration_states": ["AE"]}}, "licensure.telehealth_registration_states[0]", "not a US"),
        ({"listener": {"max_pdu_length": 100}}, "listener.max_pdu_length", "unlimited"),
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
    result = subprocess.run([sys.executable, "-m", "router", "--config", str(config), "db", "status"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: config listener.ae_title: AE title 'WAY_TOO_LONG_AE_TITLE' is longer than 16 characters"]
    assert "Traceback" not in result.stderr


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config = tmp_path / "router.toml"
    config.write_text('[listener]\nport = 0\nbogus = 1\n')
    result = subprocess.run([sys.executable, "-m", "router", "db", "status"], capture_output=True, text=True, env={"ROUTER_CONFIG": str(config), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 2
    assert "listener.bogus: unknown key" in result.stderr
