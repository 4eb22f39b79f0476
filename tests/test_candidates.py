"""Rank-then-evaluate routing picks exactly the reader a full evaluation of the roster picks."""

from __future__ import annotations

import datetime as dt
import random
import shutil
from pathlib import Path

from router.app import RouterApp
from router.config import Settings
from router.db.models import Assignment, License, Radiologist, RoutingDecision, Study
from router.domain.assignment import choose_reader
from router.domain.eligibility_facts import StudyFacts
from router.domain.enums import LicensePathway, LicenseStatus, StudyStatus
from router.domain.licensure import evaluate_readers
from router.domain.npi import npi_check_digit
from router.services.candidates import judge
from router.services.facts import load_readers

STATES = ("TX", "OK", "CO", "NM")
DAY = dt.date(2026, 11, 29)
NOW = dt.datetime(2026, 11, 29, 15, tzinfo=dt.UTC)


def _npi(index: int) -> str:
    first = f"1{index:08d}"
    return first + str(npi_check_digit(first))


def _fill(app: RouterApp, rng: random.Random) -> None:
    with app.sessions.begin() as session:
        study = Study(
            study_instance_uid="1.2.3",
            status=StudyStatus.ASSIGNED,
            first_received_at=NOW,
            last_received_at=NOW,
            instance_count=0,
            size_bytes=0,
            needs_review=False,
        )
        session.add(study)
        session.flush()
        decision = RoutingDecision(
            study_id=study.id, decided_at=NOW, trigger="test", outcome=StudyStatus.ASSIGNED, candidates=[]
        )
        session.add(decision)
        session.flush()
        for index in range(rng.randint(0, 14)):
            reader = Radiologist(
                npi=_npi(index),
                name=f"R^{index}",
                active=rng.random() > 0.15,
                created_at=NOW,
                spl_state=rng.choice((None, "CO", "TX")),
                mqsa_qualified=rng.random() > 0.5,
            )
            session.add(reader)
            session.flush()
            for state in rng.sample(STATES, rng.randint(0, 3)):
                issued = DAY - dt.timedelta(days=rng.randint(-3, 900))
                session.add(
                    License(
                        radiologist_id=reader.id,
                        state=state,
                        number=f"{state}-{index}",
                        pathway=rng.choice((LicensePathway.FULL, LicensePathway.FULL, LicensePathway.IMLC)),
                        status=rng.choice(
                            (
                                LicenseStatus.ACTIVE,
                                LicenseStatus.ACTIVE,
                                LicenseStatus.ACTIVE,
                                LicenseStatus.SUSPENDED,
                                LicenseStatus.EXPIRED,
                            )
                        ),
                        issued=issued,
                        expires=DAY + dt.timedelta(days=rng.randint(-3, 400)),
                        in_lieu_of_discipline=False,
                    )
                )
            for load in range(rng.randint(0, 3)):  # workload: one current assignment per study
                past = Study(
                    study_instance_uid=f"1.2.4.{index}.{load}",
                    status=StudyStatus.ASSIGNED,
                    first_received_at=NOW,
                    last_received_at=NOW,
                    instance_count=0,
                    size_bytes=0,
                    needs_review=False,
                )
                session.add(past)
                session.flush()
                session.add(
                    Assignment(
                        study_id=past.id,
                        radiologist_id=reader.id,
                        decision_id=decision.id,
                        license_state="TX",
                        license_number="x",
                        assigned_at=NOW - dt.timedelta(hours=rng.randint(1, 500)),
                        assigned_by="t",
                        completed_at=NOW if rng.random() > 0.5 else None,
                    )
                )


def test_lazy_choice_equals_full_evaluation(tmp_path: Path) -> None:
    rng = random.Random(20261129)
    template = Settings().with_data_dir(tmp_path / "template")
    RouterApp.open(template, upgrade=True).close()  # ledgers are append-only: a fresh copy per roster
    outcomes = []
    for round_ in range(40):
        data_dir = tmp_path / f"round{round_}"
        data_dir.mkdir()
        shutil.copy(tmp_path / "template" / "router.db", data_dir / "router.db")
        app = RouterApp.open(template.with_data_dir(data_dir))
        rules = app.routing.rules()
        _fill(app, rng)
        study = StudyFacts(exam_state="TX", modalities=frozenset(rng.choice((("CT",), ("MG",)))))
        with app.sessions() as session:
            judgement = judge(session, study, DAY, rules)
            readers = load_readers(session)
        full = choose_reader(evaluate_readers(readers, study, DAY, rules), {r.radiologist_id: r for r in readers})
        assert (judgement.chosen.npi if judgement.chosen else None) == (full.npi if full else None)
        recorded = {record["npi"] for record in judgement.records} | set(judgement.not_evaluated)
        licensed = {r.npi for r in readers if any(lic.state == "TX" for lic in r.licenses)}
        assert recorded == licensed  # every licensed reader is accounted for, once
        assert not ({record["npi"] for record in judgement.records} & set(judgement.not_evaluated))
        outcomes.append(judgement.chosen is not None)
        app.close()
    assert any(outcomes) and not all(outcomes)  # both branches were exercised
