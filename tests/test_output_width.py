"""Output for people fits an 80-column terminal: short UIDs (``--wide`` for whole ones), cells
wrapped between words, held studies in capitals, an empty list says so."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from router.cli import cli
from router.cli.output import _fit_widths, label, short_uid

pytestmark = pytest.mark.network

UID = re.compile(r"\b2\.25\.\d{20,}\b")


def _run(*args: str, columns: int = 80) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), env={"COLUMNS": str(columns)})
    return result.exit_code, result.stdout, result.stderr


def _widest(text: str) -> int:
    return max((len(line) for line in text.splitlines()), default=0)


def test_short_uid_and_labels() -> None:
    uid = "2.25.52363803775343680567003609012925912065"
    assert short_uid(uid) == "…012925912065"
    assert short_uid(uid, wide=True) == uid
    assert short_uid("1.2.3") == "1.2.3"
    assert short_uid(None) is None
    assert label("no_eligible_radiologist") == "no eligible radiologist"


def test_fit_widths_never_breaks_short_words() -> None:
    lines = [["id", "note"], ["1", "a rather long note " * 5], ["1234567890123", "x"]]
    assert _fit_widths(lines, 200) == [None, None]
    widths = _fit_widths(lines, 30)
    assert widths[0] == 13  # the identifier keeps its width; the text wraps
    assert sum(w for w in widths if w) <= 30
    # even the longest words do not fit: the column with the longest word gives way first
    assert _fit_widths([["identifier", "supercalifragilistic"]], 20) == [10, 10]


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data_dir = tmp_path_factory.mktemp("narrow") / "demo"
    code, out, err = _run("demo", "--data-dir", str(data_dir), "--stable-seconds", "0.5")
    assert code == 0, err
    return data_dir, out


def test_demo_fits_80_columns(demo_run: tuple[Path, str]) -> None:
    _, out = demo_run
    assert _widest(out) <= 80, out
    assert not UID.search(out)  # no UID at all in the compact demo tables
    assert "HELD" in out
    # identifiers, licenses and codes are never broken across lines
    for token in ("OK-OKSYN-10012", "TX-TXSYN-10012", "Reader^Avery", "71260-26", "SYNACC0001", "R06.02", "2026-"):
        assert token in out
    assert "Hold reasons and location conflicts" in out
    assert "no state: no exam state" in out


def test_studies_list_fits_80_columns_and_wide_shows_whole_uids(demo_run: tuple[Path, str]) -> None:
    data_dir, _ = demo_run
    code, out, err = _run("--data-dir", str(data_dir), "studies", "list")
    assert code == 0, err
    assert _widest(out) <= 80, out
    assert not UID.search(out)
    uids = {row for row in re.findall(r"…\d{12}", out)}
    assert len(uids) == 8
    held = [line for line in out.splitlines() if " HELD " in f" {line} "]
    assert len(held) == 4  # no state, two residence-only studies (use_patient_address is off), PR
    assert "no eligible" in out and "radiologist" in out
    assert "--wide shows them whole" in out

    code, wide, _ = _run("--data-dir", str(data_dir), "studies", "list", "--wide")
    assert code == 0
    whole = set(UID.findall(wide))
    assert len(whole) == 8
    assert {"…" + uid[-12:] for uid in whole} == uids
    assert "--wide shows them whole" not in wide

    code, json_out, _ = _run("--data-dir", str(data_dir), "studies", "list", "--json")
    assert set(UID.findall(json_out)) == whole


def test_empty_lists_say_so(demo_run: tuple[Path, str]) -> None:
    data_dir, _ = demo_run
    assert _run("--data-dir", str(data_dir), "studies", "list", "--status", "receiving")[:2] == (
        0,
        "no receiving studies\n",
    )
    code, out, _ = _run("--data-dir", str(data_dir), "ledger", "infrastructure", "--from", "2999-01-01")
    assert (code, out) == (0, "no infrastructure records from 2999-01-01 to today\n")
    code, out, _ = _run("--data-dir", str(data_dir), "ledger", "professional", "--until", "2000-01-01")
    assert (code, out) == (0, "no professional records from the start to 2000-01-01\n")


def test_ledgers_fit_80_columns(demo_run: tuple[Path, str]) -> None:
    data_dir, _ = demo_run
    for ledger in ("professional", "infrastructure"):
        code, out, err = _run("--data-dir", str(data_dir), "ledger", ledger)
        assert code == 0, err
        assert _widest(out) <= 80, out
        assert not UID.search(out)
        code, wide, _ = _run("--data-dir", str(data_dir), "ledger", ledger, "--wide")
        assert len(set(UID.findall(wide))) == (4 if ledger == "professional" else 8)
    code, out, _ = _run("--data-dir", str(data_dir), "ledger", "professional")
    assert "71260-26" in out and "77067-26" in out  # the orders' CPT codes, billed from the signed reports
