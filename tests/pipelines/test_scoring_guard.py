"""The publish guard end to end on the synthetic clinic: issue 16's two incidents, made in
the source the night after the scored list, stop the next list with the clinics, programs
and counts named; an operator's acceptance publishes it with the reason kept; a normal
night, and the first list ever, publish without a word."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, create_engine, func, select, update

from retention.clinic import contract
from retention.clock import FixedClock
from retention.db.engines import source_engine, store_engine
from retention.pipelines.cli import main
from retention.pipelines.commands.common import Context
from retention.pipelines.etl import EtlResult, run_etl
from retention.pipelines.nightly import run_slot
from retention.pipelines.scoring import ScoreResult, run_scoring
from retention.publish_guard import Acceptance, PublishRefused
from retention.settings import EtlSettings, Settings, parse_etl
from retention.store import tables
from retention.store.lists import latest_publication
from retention.store.runs import list_runs
from retention.store.status import service_status
from tests.conftest import AS_OF, Scored, make_settings
from tests.support.apps import copied_store

NIGHT = AS_OF + timedelta(days=1)
# When the clinic's EHR changed the rows: the evening before the night's run.
EVENING = datetime.combine(AS_OF, time(20))
# Issue 16's first incident: the EHR codes outpatient "OP", and the mapping was typed "0P".
TYPO = {"codes": {"episodes": {"program": {"0P": "outpatient"}}}}


def at_night(day: date) -> FixedClock:
    """The nightly slot of ``day``."""
    return FixedClock(datetime.combine(day, time(2, 30)))


def copy_sqlite(url: str, path: Path) -> str:
    """A copy of a SQLite database (through the backup API); returns its URL."""
    with sqlite3.connect(url.removeprefix("sqlite:///")) as src, sqlite3.connect(path) as dst:
        src.backup(dst)
    return f"sqlite:///{path}"


def opened(etl: EtlSettings) -> EtlSettings:
    """The ETL's quarantine limits opened wide: the guard is the last line of defence and
    must stop what gets past them, whatever the ETL's own limits would have caught."""
    wide: dict[str, Any] = {f.name: 1.0 for f in fields(etl) if f.name.endswith("quarantine_share")}
    return replace(etl, **wide)


@dataclass
class Night:
    """Private copies of the scored clinic's source and store, for the nights after it."""

    settings: Settings
    source: Engine  # writable: the test plays the clinic's EHR
    store: Engine
    scored: Scored

    def etl(self, etl: EtlSettings, day: date = NIGHT) -> EtlResult:
        source = source_engine(self.settings.source_url)  # read-only, as the job reads it
        try:
            return run_etl(source, self.store, day, etl, clock=at_night(day))
        finally:
            source.dispose()

    def score(self, accept: Acceptance | None = None, day: date = NIGHT) -> ScoreResult:
        return run_scoring(
            self.settings,
            self.store,
            self.scored.model,
            self.scored.catalogue,
            day,
            clock=at_night(day),
            accept=accept,
        )

    def count(
        self,
        as_of: date,
        clinic: str | None = None,
        program: str | None = None,
        tier: str | None = None,
    ) -> int:
        """Rows of the list published for ``as_of`` (of a clinic, program, tier)."""
        s = tables.scores
        query = select(func.count()).select_from(s).where(s.c.as_of == as_of)
        for column, value in (("clinic_id", clinic), ("program", program), ("tier", tier)):
            if value is not None:
                query = query.where(s.c[column] == value)
        with self.store.connect() as conn:
            return int(conn.execute(query).scalar_one())

    def open_episodes(self, day: date, clinic: str) -> int:
        """Episodes whose features the ETL stored for ``day``: what the list would hold."""
        f = tables.features
        with self.store.connect() as conn:
            return int(
                conn.execute(
                    select(func.count())
                    .select_from(f)
                    .where(f.c.as_of == day, f.c.clinic_id == clinic)
                ).scalar_one()
            )

    def clinics(self) -> list[str]:
        s = tables.scores
        with self.store.connect() as conn:
            return sorted(conn.execute(select(s.c.clinic_id).distinct()).scalars())

    def runs(self, n: int = 5) -> list[dict[str, Any]]:
        with self.store.connect() as conn:
            return list_runs(conn, n)


@pytest.fixture
def night(scored: Scored, tmp_path: Path) -> Iterator[Night]:
    source_url = copy_sqlite(scored.settings.source_url, tmp_path / "clinic.db")
    settings = copied_store(scored.settings, tmp_path).with_overrides(source_url=source_url)
    source, store_db = create_engine(source_url), store_engine(settings.store_url)
    yield Night(settings, source, store_db, scored)
    source.dispose()
    store_db.dispose()


def quarantine_outpatient(source: Engine) -> EtlSettings:
    """Issue 16's first incident: the EHR re-codes outpatient episodes "OP" (touching
    them), and the mapping that should read it has a typo; returns the ETL settings."""
    e = contract.TABLES["episodes"]
    with source.begin() as conn:
        conn.execute(
            update(e).where(e.c.program == "outpatient").values(program="OP", updated_at=EVENING)
        )
    return opened(parse_etl(TYPO))


def unmap_attendance(source: Engine, share: float = 0.24) -> int:
    """Issue 16's second incident: an EHR upgrade records attendance under a code nobody
    mapped, migrating the most recent attended sessions, ``share`` of all appointments.
    Returns how many it re-coded."""
    a = contract.TABLES["appointments"]
    with source.begin() as conn:
        total = conn.execute(select(func.count()).select_from(a)).scalar_one()
        recent = (
            select(a.c.appointment_id)
            .where(a.c.status == "attended")
            .order_by(a.c.scheduled_at.desc())
            .limit(round(share * total))
        )
        return int(
            conn.execute(
                update(a)
                .where(a.c.appointment_id.in_(recent))
                .values(status="ATT-V2", updated_at=EVENING)
            ).rowcount
        )


def refusal_of(night: Night) -> str:
    """Score the night, which must be refused; the refusal's message."""
    with pytest.raises(PublishRefused) as refused:
        night.score()
    return str(refused.value)


@pytest.mark.slow
def test_a_program_quarantined_by_a_mapping_typo_stops_the_list(night: Night) -> None:
    """Guards issue 16's first incident: a program's episodes quarantined thin the clinic;
    the run names each clinic and program that moved with its counts, publishes nothing,
    and the last list stays served, stale once a night has passed."""
    extracted = night.etl(quarantine_outpatient(night.source))
    message = refusal_of(night)

    named = 0
    for clinic in night.clinics():
        before, program = night.count(AS_OF, clinic), night.count(AS_OF, clinic, "outpatient")
        after = night.open_episodes(NIGHT, clinic)
        assert after == before - program, clinic  # nothing else moved overnight
        if program >= 8:
            assert f"  {clinic} / outpatient: open episodes {program} -> 0 (-100%)" in message
            named += 1
        if before - after >= 8 and before - after > 0.25 * before:
            assert f"  {clinic}: open episodes {before} -> {after} (" in message
            named += 1
        else:
            assert f"  {clinic}: open episodes" not in message
    assert named >= 2 and "clinic-south / outpatient" in message
    assert extracted.rows_quarantined >= night.count(AS_OF, program="outpatient")
    assert "publish_max_change_share (25%)" in message
    assert f'retention score --as-of {NIGHT} --accept-change "reason"' in message

    assert night.count(NIGHT) == 0
    run = night.runs(1)[0]
    assert (run["kind"], run["status"]) == ("score", "failed")
    assert run["error"] == f"PublishRefused: {message}"
    with night.store.connect() as conn:
        latest = latest_publication(conn)
        status = service_status(conn, NIGHT + timedelta(days=1))
    assert latest is not None and latest["as_of"] == AS_OF
    assert status.stale and any(
        f"score run (run {run['run_id']}) failed" in p for p in status.problems
    )


@pytest.mark.slow
def test_unmapped_attendance_that_swells_the_high_tier_stops_the_list_until_accepted(
    night: Night,
) -> None:
    """Guards issue 16's second incident: 24 % of appointments quarantined leave every
    episode open but raise the high tier; the refusal's counts are the list that the
    operator's acceptance then publishes, with the reason, who and when in the run.

    This clinic's three sites hold 23, 34 and 60 open episodes and 1, 3 and 1 of them high:
    the incident takes them to 5, 8 and 8, tripling each high tier but by fewer than the
    default ``publish_min_change`` of 8, so the guard is set as such a small clinic would
    set it (4)."""
    night = replace(night, settings=night.settings.with_overrides(publish_min_change=4))
    recoded = unmap_attendance(night.source)
    night.etl(opened(EtlSettings()))
    message = refusal_of(night)
    assert "open episodes" not in message  # the list is as long: its high tier is not
    assert night.count(NIGHT) == 0

    accept = Acceptance("EHR upgrade: attendance re-coded, checked with the clinic", "ops")
    result = night.score(accept)
    assert result.scored == night.count(NIGHT) == night.count(AS_OF)
    assert result.guard is not None and result.guard.moves
    lines = [m.describe() for m in result.guard.moves]
    assert all(m.measure == "high" and m.after > m.before for m in result.guard.moves)
    for move in result.guard.moves:  # the refusal's counts are the lists' own
        assert (move.before, move.after) == (
            night.count(AS_OF, move.clinic_id, move.program, "high"),
            night.count(NIGHT, move.clinic_id, move.program, "high"),
        )
    assert [f"  {line}" for line in lines] == message.splitlines()[1 : 1 + len(lines)]
    detail = night.runs(1)[0]["detail"]
    assert (
        '"accepted": {"at": "2026-06-02T02:30:00", "by": "ops", "reason": "EHR upgrade' in detail
        and '"refused": false' in detail
    )
    assert recoded > 0


@pytest.mark.slow
def test_the_command_refuses_accepts_with_a_reason_and_runs_shows_both(
    night: Night,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Guards `retention score --accept-change` and `retention runs`: the refusal and the
    acceptance (who, when, why, what moved) are on record; the accepted list is the next
    night's baseline, so the same clinic publishes again without a word."""
    etl = night.etl(quarantine_outpatient(night.source))
    assert etl.rows_quarantined
    config = tmp_path / "cfg.toml"
    config.write_text(
        "".join(
            f'{k} = "{getattr(night.settings, k)}"\n'
            for k in ("source_url", "store_url", "models_dir", "reasons_file")
        )
    )
    monkeypatch.setenv("LOGNAME", "ops-anna")
    clock = FixedClock(datetime.combine(NIGHT, time(8, 15)))

    def retention(*args: str) -> Any:
        return CliRunner().invoke(
            main, ["--config", str(config), *args], obj=Context(config_path=None, clock=clock)
        )

    refused = retention("score", "--as-of", str(NIGHT))
    assert refused.exit_code == 1
    assert "clinic-south / outpatient: open episodes" in refused.stderr
    assert "--accept-change" in refused.stderr
    assert retention("score", "--as-of", str(NIGHT), "--accept-change", "  ").exit_code == 2
    reason = "outpatient re-coded OP in the EHR; mapping fixed tomorrow"
    accepted = retention("score", "--as-of", str(NIGHT), "--accept-change", reason)
    assert accepted.exit_code == 0, accepted.output
    assert "accepted by ops-anna" in accepted.stderr
    assert "clinic-south / outpatient: open episodes" in accepted.stderr

    runs = retention("runs", "--limit", "3")
    assert runs.exit_code == 0, runs.output
    out = runs.stdout
    assert f"error: PublishRefused: the list for {NIGHT} was not published" in out
    assert f"accepted by ops-anna at 2026-06-02T08:15:00: {reason}" in out
    assert out.index("accepted by") < out.index("error: PublishRefused")  # newest first
    assert "        clinic-south / outpatient: open episodes" in out

    tomorrow = NIGHT + timedelta(days=1)
    night.etl(opened(parse_etl(TYPO)), tomorrow)
    result = night.score(day=tomorrow)
    assert result.guard is not None and result.guard.baseline == NIGHT
    assert not result.guard.moves and night.count(tomorrow) == night.count(NIGHT)


@pytest.mark.slow
def test_a_normal_next_night_publishes_without_complaint(night: Night) -> None:
    """Guards against a guard that stops ordinary nights: sessions recorded, a discharge,
    new bookings; the ETL's own limits as configured."""
    a, e = contract.TABLES["appointments"], contract.TABLES["episodes"]
    start, end = datetime.combine(AS_OF, time()), datetime.combine(NIGHT, time())
    with night.source.begin() as conn:
        today = conn.execute(
            select(a.c.appointment_id, a.c.scheduled_at)
            .where(a.c.scheduled_at >= start, a.c.scheduled_at < end)
            .order_by(a.c.appointment_id)
        ).all()
        for n, (appointment_id, when) in enumerate(today):
            conn.execute(
                update(a)
                .where(a.c.appointment_id == appointment_id)
                .values(
                    status="no_show" if n % 3 == 0 else "attended",
                    updated_at=when + timedelta(hours=2),
                )
            )
        closing = (
            conn.execute(
                select(e.c.episode_id)
                .where(e.c.discharged_on.is_(None), e.c.admitted_on < AS_OF)
                .order_by(e.c.episode_id)
            )
            .scalars()
            .first()
        )
        conn.execute(
            update(e)
            .where(e.c.episode_id == closing)
            .values(discharged_on=AS_OF, discharge_reason="completed", updated_at=EVENING)
        )
    assert today and closing is not None
    night.etl(EtlSettings())
    result = night.score()
    assert result.guard is not None and result.guard.baseline == AS_OF
    assert not result.guard.exceeded
    assert result.scored == night.count(NIGHT) == night.count(AS_OF) - 1
    detail = night.runs(1)[0]["detail"]
    assert '"moves": []' in detail and '"refused": false' in detail


def test_the_first_list_ever_has_nothing_to_compare_with(scored: Scored) -> None:
    with scored.store.connect() as conn:
        first = min(
            (r for r in list_runs(conn, 50) if r["kind"] == "score"), key=lambda r: r["run_id"]
        )
    assert first["status"] == "succeeded"
    assert '"publish_guard": {"baseline": null' in first["detail"]


@pytest.mark.slow
def test_the_nightly_job_fails_loudly_and_keeps_the_last_list(
    scored: Scored,
    tmp_path: Path,
) -> None:
    """Guards the nightly run: a thinned list fails the run at once (no retry, nothing
    published), with the ETL's work kept for an operator's `--accept-change`."""
    copy_sqlite(scored.settings.source_url, tmp_path / "clinic.db")
    copy_sqlite(scored.settings.store_url, tmp_path / "store.db")
    shutil.copytree(scored.settings.models_dir, tmp_path / "models")
    settings = make_settings(tmp_path)
    source = create_engine(settings.source_url)
    settings = settings.with_overrides(etl=quarantine_outpatient(source))
    source.dispose()
    waits: list[float] = []
    with pytest.raises(PublishRefused, match="clinic-south / outpatient: open episodes"):
        run_slot(settings, NIGHT, sleep=waits.append)
    assert waits == []
    store_db = store_engine(settings.store_url)
    with store_db.connect() as conn:
        runs = list_runs(conn, 2)
        latest = latest_publication(conn)
    store_db.dispose()
    assert [(r["kind"], r["status"]) for r in runs] == [("score", "failed"), ("etl", "succeeded")]
    assert runs[0]["error"].startswith(f"PublishRefused: the list for {NIGHT} was not published")
    assert "clinic-south / outpatient: open episodes" in runs[0]["error"]
    assert latest is not None and latest["as_of"] == AS_OF
