"""Retention on SQLite and PostgreSQL: age and count limits, keep rules, Parquet round trip, guards."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from store_rows import evaluated_up_to, make_records, shadow_of

from mnistops.errors import ConfigError
from mnistops.settings import Settings
from mnistops.store.archive import archive_files, batch_table, iter_records, read_archive, write_batch
from mnistops.store.predictions import PredictionStore
from mnistops.store.retention import Retention, RetentionPolicy
from mnistops.store.retention_service import retention_service

T0 = 1000.0
NOW = T0 + 10_000.0  # every row of make_records(n < 9000) is older than the feedback grace


def seqs(store: PredictionStore) -> list[int]:
    return [int(s) for s in store.after(0).seqs]


def pruner(store: PredictionStore, challenger: str | None = None, **policy: object) -> Retention:
    base = RetentionPolicy(feedback_grace_seconds=3600.0, batch_rows=7)
    return Retention(store, replace(base, **policy), challenger=lambda: challenger, clock=lambda: NOW)


def test_nothing_without_a_limit_or_before_the_first_window(store: PredictionStore) -> None:
    store.insert_many(make_records(20))
    report = pruner(store).run()
    assert report.plan is None and "no limit" in report.reason
    report = pruner(store, max_rows=5).run()
    assert report.plan is None and "monitor" in report.reason
    assert len(seqs(store)) == 20
    store.insert_window(evaluated_up_to(store.max_seq()))
    assert pruner(store, max_rows=50).run().reason == "no prunable rows"  # under the limit
    assert pruner(store, max_rows=5).run().pruned == 15


def test_age_limit(store: PredictionStore) -> None:
    store.insert_many(make_records(100))
    store.insert_window(evaluated_up_to(store.max_seq()))
    before = seqs(store)
    # rows are T0 + i; NOW - age = T0 + 40: rows 0..39 are too old
    report = pruner(store, max_age_seconds=NOW - T0 - 40).run()
    assert report.pruned == 40 and report.skipped == 0
    assert seqs(store) == before[40:]
    assert len(report.delete_ms) == 6  # batches of 7 rows
    assert "pruned 40 predictions" in report.summary()


def test_count_limit_keeps_the_newest(store: PredictionStore) -> None:
    store.insert_many(make_records(50))
    store.insert_window(evaluated_up_to(store.max_seq()))
    before = seqs(store)
    assert pruner(store, max_rows=12).run().pruned == 38
    assert seqs(store) == before[-12:]
    assert pruner(store, max_rows=12).run().pruned == 0  # idempotent


def test_keep_rules(store: PredictionStore) -> None:
    canary = make_records(3, seed=1, version="9", served_by="canary")  # answered by the challenger
    young = make_records(5, seed=2, t0=NOW - 60)  # may still get feedback
    recs = make_records(60)
    shadows = [shadow_of(recs[i], "9") for i in (2, 3)] + [shadow_of(recs[4], "8")]
    store.insert_many(canary + young + recs, shadows)
    store.insert_window(evaluated_up_to(store.get(recs[49].id).seq or 0))  # recs[50:] not evaluated
    report = pruner(store, challenger="9", max_rows=1).run()
    unevaluated = {r.id for r in recs[50:]} | {r.id for r in young}
    assert set(store.after(0).ids) == unevaluated | {r.id for r in canary} | {recs[2].id, recs[3].id}
    assert report.pruned == 60 - 2 - 10
    assert store.count_shadow("9") == 2 and store.count_shadow("8") == 0  # shadows go with their rows
    # once the challenger is decided, its rows are prunable like any other
    pruner(store, challenger=None, max_rows=1).run()
    assert set(store.after(0).ids) == unevaluated
    assert store.count_shadow("9") == 0


def test_parquet_round_trip(store: PredictionStore, tmp_path: Path) -> None:
    recs = make_records(30)
    store.insert_many(recs, [shadow_of(recs[3], "5"), shadow_of(recs[3], "6"), shadow_of(recs[10], "5")])
    store.add_feedback(recs[7].id, 4, now=T0 + 8)
    store.insert_window(evaluated_up_to(store.max_seq()))
    stored = {r.id: store.get(r.id) for r in recs}
    report = pruner(store, max_rows=5, archive_dir=tmp_path / "archive").run()
    assert report.pruned == 25 and len(report.files) == 4
    assert [p.name for p in archive_files(tmp_path / "archive")] == [p.name for p in report.files]
    assert (
        report.files[0].name
        == f"predictions-{stored[recs[0].id].seq:012d}-{stored[recs[6].id].seq:012d}.parquet"
    )
    back = list(iter_records(read_archive(tmp_path / "archive")))
    assert [rec for rec, _ in back] == [stored[r.id] for r in recs[:25]]  # every column, exactly
    assert [rec.seq for rec, _ in back] == [stored[r.id].seq for r in recs[:25]]
    shadows = {rec.id: sh for rec, sh in back}
    assert sorted(s.model_version for s in shadows[recs[3].id]) == ["5", "6"]
    assert shadows[recs[10].id][0].probs == shadow_of(recs[10], "5").probs
    assert store.count_shadow("5") == 0 and store.count_shadow("6") == 0


def test_feedback_arriving_during_a_batch_keeps_its_row(store: PredictionStore, tmp_path: Path) -> None:
    recs = make_records(10)
    store.insert_many(recs)
    store.insert_window(evaluated_up_to(store.max_seq()))
    r = pruner(store, max_rows=1, batch_rows=100)
    plan, _ = r.plan()
    assert plan is not None
    rows, shadows = r._read_batch(plan, 0, 100)
    write_batch(tmp_path, batch_table(rows, shadows, archived_at=1.0))
    store.add_feedback(recs[2].id, 3)  # after the read: the archived copy has no label
    gone, _ = r._delete(rows, shadows)
    assert recs[2].id not in gone and len(gone) == 8
    assert store.get(recs[2].id).true_label == 3
    r2 = pruner(store, max_rows=1, archive_dir=tmp_path)
    assert r2.run().pruned == 1
    archived = {rec.id: rec for rec, _ in iter_records(read_archive(tmp_path))}
    assert len(archived) == 9 and archived[recs[2].id].true_label == 3  # the copy archived last wins


def test_interrupted_batch_reuses_its_file_and_collisions_get_a_suffix(
    store: PredictionStore, tmp_path: Path
) -> None:
    recs = make_records(10)
    store.insert_many(recs)
    store.insert_window(evaluated_up_to(store.max_seq()))
    r = pruner(store, max_rows=1, batch_rows=100, archive_dir=tmp_path)
    plan, _ = r.plan()
    assert plan is not None
    rows, shadows = r._read_batch(plan, 0, 100)
    first = write_batch(tmp_path, batch_table(rows, shadows, archived_at=1.0))  # then "crash"
    report = r.run()
    assert report.pruned == 9 and report.files == [first]  # same name: nothing lost by replacing it
    assert len(archive_files(tmp_path)) == 1
    # a file holding rows the new batch does not hold is never replaced
    again = write_batch(tmp_path, batch_table([rows[0], rows[-1]], {}, archived_at=2.0))  # same range
    assert again.name.endswith(".1.parquet")
    assert pq.read_table(first).num_rows == 9
    assert len(read_archive(tmp_path)) == 9


def test_dry_run_counts_and_deletes_nothing(store: PredictionStore) -> None:
    store.insert_many(make_records(20))
    store.insert_window(evaluated_up_to(store.max_seq()))
    report = pruner(store, max_rows=8).run(dry_run=True)
    assert report.candidates == 12 and report.pruned == 0
    assert "would prune 12" in report.summary()
    assert len(seqs(store)) == 20


def test_unmonitored_rows_are_prunable_when_no_monitor_runs(store: PredictionStore) -> None:
    store.insert_many(make_records(20))
    assert pruner(store, max_rows=8, keep_unmonitored=False).run().pruned == 12


def test_policy_from_settings_and_service(store: PredictionStore, tmp_path: Path) -> None:
    s = Settings(
        home=tmp_path, retention_max_rows=3, retention_batch_rows=50, retention_interval_seconds=0.05
    )
    assert RetentionPolicy.from_settings(s).max_rows == 3
    assert retention_service(Settings(home=tmp_path), store, challenger=lambda: None) is None
    with pytest.raises(ConfigError):
        RetentionPolicy(batch_rows=100_000)
    store.insert_many(make_records(10))
    store.insert_window(evaluated_up_to(store.max_seq()))
    svc = retention_service(s, store, challenger=lambda: None)
    assert svc is not None
    svc.start()
    try:
        for _ in range(100):
            if svc.last_report is not None:
                break
            svc.stopping.wait(0.05)
    finally:
        svc.stop()
    assert svc.last_report is not None and svc.last_report.pruned == 7
    assert store.count() == 3 and svc.health().errors == 0


def test_batches_shrink_while_deletes_are_slow(store: PredictionStore) -> None:
    store.insert_many(make_records(200))
    store.insert_window(evaluated_up_to(store.max_seq()))
    slow = pruner(store, max_rows=1, batch_rows=64, target_delete_ms=0.0)  # every delete is "slow"
    report = slow.run()
    assert report.pruned == 199
    assert len(report.delete_ms) == 1 + 1 + 1 + (199 - 64 - 32 - 16) // 10 + 1  # 64, 32, 16, then 10s
