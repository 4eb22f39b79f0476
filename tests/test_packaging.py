"""Package data (importlib.resources) and the [http] and [logging] config keys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import router
from router.cli.demo import DEFAULT_DEMO_CONFIG, DEFAULT_SAMPLES, sample_studies
from router.config import CONFIG_DIR, Settings, load_settings, settings_from_mapping
from router.errors import ConfigError
from router.resources import PACKAGED_CONFIG_DIR, PACKAGED_SAMPLES_DIR, packaged_path
from router.services.reference import ReferenceData
from tests.conftest import REPO


def test_data_files_are_found_inside_the_package() -> None:
    package = Path(router.__file__).parent
    assert package / "data" / "config" == PACKAGED_CONFIG_DIR
    assert CONFIG_DIR == PACKAGED_CONFIG_DIR
    assert (
        packaged_path("config", "imlc_membership.csv").read_bytes()
        == (REPO / "config" / "imlc_membership.csv").read_bytes()
    )
    defaults = Settings()
    assert defaults.imlc.membership_file == package / "data" / "config" / "imlc_membership.csv"
    assert defaults.billing.cpt_map == package / "data" / "config" / "cpt_map_2026.csv"
    reference = ReferenceData(defaults.imlc.membership_file, defaults.billing.cpt_map)
    assert reference.imlc().as_of.year >= 2026
    assert reference.cpt_map().version == "2026"


def test_demo_roster_and_studies_are_package_data() -> None:
    assert DEFAULT_DEMO_CONFIG == PACKAGED_CONFIG_DIR / "demo"
    assert DEFAULT_SAMPLES == PACKAGED_SAMPLES_DIR
    assert sorted(p.name for p in DEFAULT_DEMO_CONFIG.glob("*.csv")) == [
        "facilities.csv",
        "orders.csv",
        "radiologists.csv",
        "roster.csv",
    ]
    cases = sample_studies(PACKAGED_SAMPLES_DIR)
    assert [(ae, case.name, len(files)) for ae, case, files in cases][:2] == [
        ("CT_ISLAND", "territory_pr", 2),
        ("CT_NORTH", "facility_tx", 3),
    ]
    assert sum(len(files) for _, _, files in cases) == sum(1 for _ in (REPO / "sample_dicom").glob("*/*/*.dcm"))


def test_a_config_path_still_overrides_the_packaged_file(tmp_path: Path) -> None:
    own = tmp_path / "imlc_2027.csv"
    own.write_bytes((PACKAGED_CONFIG_DIR / "imlc_membership.csv").read_bytes())
    settings = settings_from_mapping({"imlc": {"membership_file": "imlc_2027.csv"}}, base_dir=tmp_path)
    assert settings.imlc.membership_file == own
    assert settings.billing.cpt_map == PACKAGED_CONFIG_DIR / "cpt_map_2026.csv"
    with pytest.raises(ConfigError, match=r"imlc\.membership_file: file not found"):
        settings_from_mapping({"imlc": {"membership_file": "missing.csv"}}, base_dir=tmp_path)


def test_http_and_logging_format_keys() -> None:
    settings = settings_from_mapping(
        {"http": {"enabled": True, "host": "0.0.0.0", "port": 9100}, "logging": {"format": "json"}}
    )
    assert (settings.http.enabled, settings.http.host, settings.http.port) == (True, "0.0.0.0", 9100)
    assert settings.logging.format == "json"
    defaults = Settings()
    assert (defaults.http.enabled, defaults.http.host, defaults.http.port) == (False, "127.0.0.1", 9464)
    assert defaults.logging.format == "text"
    with pytest.raises(ConfigError, match=r"http\.port: port 70000 is out of range"):
        settings_from_mapping({"http": {"port": 70000}})
    with pytest.raises(ConfigError, match=r"logging\.format: must be one of text, json, got 'xml'"):
        settings_from_mapping({"logging": {"format": "xml"}})
    with pytest.raises(ConfigError, match=r"http\.path: unknown key"):
        settings_from_mapping({"http": {"path": "/x"}})


def test_deploy_postgresql_example_is_a_valid_config_once_placeholders_are_filled(tmp_path: Path) -> None:
    text = (REPO / "deploy" / "router.postgresql.toml").read_text(encoding="utf-8")
    filled = re.sub(r"<([^<>]*)>", lambda match: match.group(1).strip(), text)
    assert "<" not in filled
    config = tmp_path / "router.toml"
    config.write_text(filled, encoding="utf-8")
    settings = load_settings(config)
    assert settings.database_url == "postgresql+psycopg://router:password@db.example.org:5432/router"
    assert settings.paths.archive == Path("/srv/dicom/archive")
    assert (settings.http.enabled, settings.logging.format, settings.listener.workers) == (True, "json", 2)


def test_systemd_unit_runs_serve_with_the_config_and_a_safe_umask() -> None:
    unit = (REPO / "deploy" / "router.service").read_text(encoding="utf-8")
    lines = {line.partition("=")[0]: line.partition("=")[2] for line in unit.splitlines() if "=" in line[:40]}
    assert lines["ExecStart"] == "/opt/router/bin/router serve"
    assert lines["Environment"] == "ROUTER_CONFIG=/etc/router/router.toml"
    assert lines["UMask"] == "0027"
    assert lines["KillSignal"] == "SIGTERM"
    assert lines["User"] == "router"
