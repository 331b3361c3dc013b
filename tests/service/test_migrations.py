"""Alembic migrations of the operational database, on SQLite and PostgreSQL.

A fresh database reaches head and matches ``schema.metadata``; databases made by earlier code
(the release at 2f3e9e4 with its hand-written runner at version 1, the interim runner at
version 2 of ca84d66) are upgraded with their data intact; re-opening is a no-op; concurrent
first uses migrate once; a revision from newer code is refused. The earlier code runs as it
was released, from ``git archive`` of its commit, in its own interpreter.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Column, Connection, create_engine, inspect, text
from typer.testing import CliRunner

from mnistops.errors import StoreError
from mnistops.store import audit, revisions, schema
from mnistops.store.jobs import JobQueue
from mnistops.store.predictions import PredictionStore

REPO = Path(__file__).resolve().parents[2]
RELEASED, INTERIM = "2f3e9e4", "ca84d66"  # hand-written runner at schema_version 1 / 2

# Runs inside the old code (its src first on PYTHONPATH): fills every released table a little.
SEED = """
import json, sys
import numpy as np
url, layout, with_audit = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
if layout == "monitor":  # the release: mnistops.monitor.store + mnistops.audit
    from mnistops.monitor.store import MonitorWindow, PredictionRecord, PredictionStore, ShadowRecord
    from mnistops import audit
else:  # the interim layout: mnistops.store.*
    from mnistops.store.predictions import MonitorWindow, PredictionRecord, PredictionStore, ShadowRecord
    from mnistops.store import audit
s = PredictionStore(url)
s.migrate()
rng = np.random.default_rng(0)
recs = [PredictionRecord.create(rng.integers(0, 256, (28, 28), dtype=np.uint8), np.full(10, 0.1),
                                "1", latency_ms=1.0 + i, ts=1000.0 + i, client="c") for i in range(3)]
s.insert_many(recs, [ShadowRecord.create(recs[0].id, "2", np.eye(10)[4], latency_ms=2.0)])
s.add_feedback(recs[1].id, 7)
s.open_alert("DriftDetected", "warning", "drift", labels={"window": 1})
s.open_alert("AccuracyDrop", "critical", "drop")
s.resolve_alert(s.list_alerts()[0].fingerprint)
s.insert_window(MonitorWindow(window=1, end_seq=3, end_ts=1002.0, n=3, model_version="1",
                              results={"ks": {"drifted": True}}, drifted=True, estimated_accuracy=0.9))
job = s.create_job("drift", details={"window": 1})
s.update_job(job.id, state="running", append_log="epoch 1\\n")
if with_audit:
    for frm, to in ((None, "1"), ("1", "2")):
        audit.record(url, "mnist-classifier", audit.AuditEvent(
            time=audit.now(), action="promote", from_version=frm, to_version=to, reason="r", actor="a"))
print(json.dumps({"ids": [r.id for r in recs], "job": job.id}))
"""


@pytest.fixture(scope="session")
def old_code(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``src`` folders of the released and the interim commit, extracted once per session."""
    out: dict[str, Path] = {}
    for commit in (RELEASED, INTERIM):
        try:
            tar = subprocess.run(
                ["git", "-C", str(REPO), "archive", commit, "src"], capture_output=True, check=True
            ).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            pytest.skip(f"needs a git checkout with commit {commit}: {e}")
        dest = tmp_path_factory.mktemp(f"code-{commit}")
        subprocess.run(["tar", "-x", "-C", str(dest)], input=tar, check=True)
        out[commit] = dest / "src"
    return out


def _seed_with(src: Path, url: str, layout: str, with_audit: bool = True) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    res = subprocess.run(
        [sys.executable, "-c", SEED, url, layout, "1" if with_audit else "0"],
        env=env,
        cwd=src,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
    return out


def _same_default(ctx: Any, ic: Column[Any], mc: Column[Any], idef: str | None, mdef: Any, rdef: Any) -> Any:
    if ctx.dialect.name != "sqlite" or idef is None or rdef is None:
        return None  # Alembic's own comparison
    # SQLite reflects DEFAULT '' as "('')" and DEFAULT 'x' as "'x'"; compare the literal values
    return idef.strip("()'\"") != str(rdef).strip("()'\"")


def schema_diff(url: str) -> list[Any]:
    """Differences between the database at ``url`` and ``schema.metadata`` (empty = identical)."""
    engine = create_engine(PredictionStore(url).url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": _same_default}
            )
            return list(compare_metadata(ctx, schema.metadata))
    finally:
        engine.dispose()


def _add_job(s: PredictionStore, trigger: str) -> None:
    # a raw row: JobQueue.submit would (rightly) return the active job instead of a second one
    with s._tx(write=True) as conn:
        conn.execute(
            schema.retrain_jobs.insert().values(state="queued", trigger=trigger, created_at=0.0, details={})
        )


def _jobs(s: PredictionStore) -> list[Any]:
    return JobQueue(s).list()


def _legacy_version(url: str) -> int:
    engine = create_engine(PredictionStore(url).url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT version FROM schema_version")).scalar_one())
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = create_engine(PredictionStore(url).url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_fresh_database_reaches_head_and_matches_schema(store_url: str) -> None:
    s = PredictionStore(store_url)
    assert s.migrate() == revisions.head() == s.schema_revision()
    s.close()
    assert schema_diff(store_url) == []
    assert "schema_version" not in _tables(store_url)


def test_reopening_changes_nothing(store_url: str) -> None:
    s1 = PredictionStore(store_url)
    _add_job(s1, "manual")
    s1.close()
    s2 = PredictionStore(store_url)
    assert s2.schema_revision() == revisions.head()
    assert [j.trigger for j in _jobs(s2)] == ["manual"]
    with s2._tx(write=False) as conn:
        assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    s2.close()


@pytest.mark.parametrize("with_audit", [True, False], ids=["audited", "never-promoted"])
def test_released_database_upgrades_with_data_intact(
    store_url: str, old_code: dict[str, Path], with_audit: bool
) -> None:
    seeded = _seed_with(old_code[RELEASED], store_url, "monitor", with_audit)
    assert ("promotion_events" in _tables(store_url)) == with_audit  # made on first promotion only
    assert _legacy_version(store_url) == 1
    s = PredictionStore(store_url)
    assert s.migrate() == revisions.head()
    assert schema_diff(store_url) == []
    assert "schema_version" not in _tables(store_url)
    assert s.count() == 3 and list(s.latest(10).ids) == seeded["ids"]
    assert s.get(seeded["ids"][1]).true_label == 7
    pairs = s.shadow_pairs("2")
    assert list(pairs.shadow_labels) == [4] and list(pairs.prediction_ids) == seeded["ids"][:1]
    assert sorted((a.rule, a.state) for a in s.list_alerts()) == [
        ("AccuracyDrop", "resolved"),
        ("DriftDetected", "firing"),
    ]
    window = s.last_window()
    assert window is not None and window.results == {"ks": {"drifted": True}} and window.drifted
    job = JobQueue(s).get(seeded["job"])
    assert (job.state, job.log, job.details) == ("running", "epoch 1\n", {"window": 1})
    with s._tx(write=False) as conn:
        lease = conn.execute(text("SELECT lease_owner, attempts FROM retrain_jobs")).one()
    assert tuple(lease) == (None, 0)  # the new columns' defaults on old rows
    history = [(e.from_version, e.to_version) for e in audit.history(store_url, "mnist-classifier")]
    assert history == ([(None, "1"), ("1", "2")] if with_audit else [])
    s.close()


def test_interim_v2_database_is_stamped_not_rerun(store_url: str, old_code: dict[str, Path]) -> None:
    seeded = _seed_with(old_code[INTERIM], store_url, "store")
    assert _legacy_version(store_url) == 2
    s = PredictionStore(store_url)
    assert s.migrate() == revisions.head()  # 0002 re-run would fail on the existing lease columns
    assert schema_diff(store_url) == []
    assert s.count() == 3 and JobQueue(s).get(seeded["job"]).state == "running"
    assert len(audit.history(store_url, "mnist-classifier")) == 2
    s.close()


def test_downgrade_and_upgrade_again(store_url: str) -> None:
    s = PredictionStore(store_url)
    _add_job(s, "manual")
    with s._write_engine.begin() as conn:
        command.downgrade(revisions.config(conn), "0001")
        assert revisions.current(conn) == "0001"
        assert "timeline" not in inspect(conn).get_table_names()
    s.close()
    s2 = PredictionStore(store_url)
    assert s2.migrate() == revisions.head() and _jobs(s2)[0].trigger == "manual"
    s2.close()
    assert schema_diff(store_url) == []


def _migrate_in_child(url: str, go: Any) -> None:
    go.wait(60)
    s = PredictionStore(url)
    s.migrate()
    _add_job(s, "race")


def test_concurrent_first_use_migrates_once(store_url: str) -> None:
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    procs = [ctx.Process(target=_migrate_in_child, args=(store_url, go)) for _ in range(3)]
    for p in procs:
        p.start()
    go.set()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    s = PredictionStore(store_url)
    assert s.schema_revision() == revisions.head() and len(_jobs(s)) == 3
    s.close()
    assert schema_diff(store_url) == []


def _set_revision(conn: Connection, rev: str) -> None:
    conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": rev})


def test_newer_revision_is_refused(store_url: str) -> None:
    s = PredictionStore(store_url)
    s.migrate()
    with s._write_engine.begin() as conn:
        _set_revision(conn, "9999")
    s.close()
    with pytest.raises(StoreError, match="newer mnistops"):
        PredictionStore(store_url).migrate()
    with pytest.raises(StoreError, match="9999"):
        PredictionStore(store_url).count()


def test_unknown_legacy_version_is_refused(store_url: str) -> None:
    engine = create_engine(PredictionStore(store_url).url)
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE schema_version (version INTEGER NOT NULL, applied_at FLOAT)"))
        conn.execute(text("INSERT INTO schema_version VALUES (3, 0)"))
    engine.dispose()
    with pytest.raises(StoreError, match="schema_version 3"):
        PredictionStore(store_url).migrate()


def test_cli_store_migrate_and_current(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from mnistops.cli import app
    from mnistops.settings import get_settings

    monkeypatch.setenv("MNISTOPS_DATABASE_URL", store_url)
    get_settings.cache_clear()
    try:
        runner = CliRunner()
        before = runner.invoke(app, ["store", "current"])
        assert before.exit_code == 0 and "none" in before.output
        res = runner.invoke(app, ["store", "migrate"])
        assert res.exit_code == 0 and revisions.head() in res.output
        after = runner.invoke(app, ["store", "current"])
        assert after.exit_code == 0 and revisions.head() in after.output and "head" in after.output
    finally:
        get_settings.cache_clear()
