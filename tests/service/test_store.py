"""PredictionStore on SQLite and PostgreSQL: round trips, feedback, windows, alerts, jobs, schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import Connection, text
from store_rows import make_records

from mnistops.errors import InputError, NotFoundError, StoreError
from mnistops.store import schema
from mnistops.store.predictions import MonitorWindow, PredictionRecord, PredictionStore, ShadowRecord


def test_round_trip_is_exact(store: PredictionStore) -> None:
    rec = make_records(1)[0]
    assert store.insert_many([rec]) == 1
    got = store.get(rec.id)
    assert got == rec  # all columns, seq excluded from equality
    assert got.image == rec.image and len(got.image) == 784
    assert got.probs == rec.probs
    assert got.seq == 1 and store.max_seq() == 1
    assert got.label == int(np.argmax(rec.probs)) and got.served_by == "champion"


def test_insert_skips_existing_ids(store: PredictionStore) -> None:
    recs = make_records(3)
    assert store.insert_many(recs[:2]) == 2
    assert store.insert_many(recs) == 1  # replay of two known ids + one new
    assert store.count() == 3
    w = store.latest(10)
    assert list(w.ids) == [r.id for r in recs]


def test_get_unknown_raises_not_found(store: PredictionStore) -> None:
    with pytest.raises(NotFoundError):
        store.get("nope")


def test_feedback_idempotent_and_404(store: PredictionStore) -> None:
    rec = make_records(1)[0]
    store.insert_many([rec])
    assert store.add_feedback(rec.id, 3) == "recorded"
    assert store.add_feedback(rec.id, 3) == "unchanged"
    assert store.get(rec.id).true_label == 3
    assert store.add_feedback(rec.id, 5) == "recorded"  # a correction overwrites
    got = store.get(rec.id)
    assert got.true_label == 5 and got.feedback_ts is not None
    assert store.count(labelled=True) == 1
    with pytest.raises(NotFoundError):
        store.add_feedback("missing-id", 1)
    with pytest.raises(InputError):
        store.add_feedback(rec.id, 10)


def test_window_queries_are_ordered(store: PredictionStore) -> None:
    recs = make_records(10)
    for chunk in (recs[:4], recs[4:7], recs[7:]):
        store.insert_many(chunk)
    store.insert_many(make_records(2, seed=1, version="2", t0=2000.0))
    images = np.stack([np.frombuffer(r.image, np.uint8).reshape(28, 28) for r in recs])

    full = store.window(1, 10)
    assert len(full) == 10 and list(full.seqs) == list(range(1, 11))
    np.testing.assert_array_equal(full.images, images)
    np.testing.assert_array_equal(full.probs, np.array([r.probs for r in recs], dtype=np.float32))
    assert full.images.dtype == np.uint8 and full.probs.shape == (10, 10)
    assert list(full.true_labels) == [-1] * 10 and not full.has_feedback.any()

    assert list(store.window(3, 5).seqs) == [3, 4, 5]  # both ends inclusive
    assert list(store.after(4, limit=3).seqs) == [5, 6, 7]
    latest = store.latest(3)
    assert list(latest.seqs) == [10, 11, 12] and list(latest.model_versions) == ["1", "2", "2"]
    assert list(store.latest(5, model_version="1").seqs) == [6, 7, 8, 9, 10]
    assert np.all(np.diff(store.latest(12).ts) != 0)
    assert len(store.window(100, 200)) == 0 and store.window(100, 200).images.shape == (0, 28, 28)

    for i in (1, 4, 8):
        store.add_feedback(recs[i].id, i % 10)
    lab = store.labelled()
    assert list(lab.ids) == [recs[i].id for i in (1, 4, 8)] and list(lab.true_labels) == [1, 4, 8]
    assert list(store.labelled(since_seq=2).seqs) == [5, 9]
    assert list(store.labelled(limit=2).seqs) == [5, 9]  # the newest two, oldest first
    assert len(store.labelled(model_version="2")) == 0
    assert store.count(model_version="2") == 2 and store.max_seq() == 12


def test_shadow_pairs(store: PredictionStore) -> None:
    recs = make_records(4)
    shadows = [ShadowRecord.create(r.id, "2", np.roll(np.array(r.probs), 1)) for r in recs[:3]]
    store.insert_many(recs, shadows)
    store.insert_many([], shadows)  # replay: ignored
    store.add_feedback(recs[0].id, 7)
    pairs = store.shadow_pairs("2")
    assert len(pairs) == 3 and store.count_shadow("2") == 3
    assert list(pairs.prediction_ids) == [r.id for r in recs[:3]]
    np.testing.assert_array_equal(pairs.shadow_labels, (pairs.champion_labels + 1) % 10)
    assert list(pairs.true_labels) == [7, -1, -1]
    assert len(store.shadow_pairs("2", limit=1)) == 1 and len(store.shadow_pairs("9")) == 0


def test_alert_dedup_and_lifecycle(store: PredictionStore) -> None:
    a, created = store.open_alert("drift", "warning", "KS drift", labels={"detector": "ks"}, now=10.0)
    assert created and a.state == "firing" and a.labels == {"detector": "ks"}
    again, created2 = store.open_alert("drift", "warning", "KS drift", labels={"detector": "ks"})
    assert not created2 and again.id == a.id
    other, created3 = store.open_alert("drift", "critical", "MMD", labels={"detector": "mmd"})
    assert created3 and other.id != a.id
    assert {e.id for e in store.list_alerts(state="firing")} == {a.id, other.id}

    resolved = store.resolve_alert(a.fingerprint, now=20.0)
    assert resolved is not None and resolved.state == "resolved" and resolved.resolved_at == 20.0
    assert store.resolve_alert(a.fingerprint) is None  # nothing firing any more
    reopened, created4 = store.open_alert("drift", "warning", "KS drift", labels={"detector": "ks"})
    assert created4 and reopened.id not in (a.id, other.id)
    assert [e.id for e in store.list_alerts()] == [reopened.id, other.id, a.id]  # newest first
    assert [e.id for e in store.list_alerts(state="resolved")] == [a.id]


def test_monitor_windows(store: PredictionStore) -> None:
    for i in range(4):
        w = MonitorWindow(
            window=i,
            end_seq=(i + 1) * 100,
            end_ts=float(i),
            n=100,
            model_version="1",
            results={"ks": {"score": 0.1 * i, "p_value": None, "drifted": i == 3}},
            drifted=i == 3,
            estimated_accuracy=0.9,
            estimated_lower=0.85,
            estimated_upper=0.95,
        )
        assert store.insert_window(w).id is not None
    last2 = store.latest_windows(2)
    assert [w.window for w in last2] == [2, 3]
    assert last2[1].results["ks"]["drifted"] is True and last2[1].drifted
    assert last2[0].realized_accuracy is None and last2[0].estimated_lower == 0.85
    last = store.last_window()
    assert last is not None and last.end_seq == 400


def test_migrations_idempotent_and_forward(store_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    v = schema.latest_version()
    s1 = PredictionStore(store_url)
    assert s1.schema_version() == v
    s1.insert_many(make_records(2))
    s1.close()
    s2 = PredictionStore(store_url)  # reopen: nothing recreated, data kept
    assert s2.schema_version() == v and s2.count() == 2
    s2.close()

    calls: list[int] = []

    def add_notes(conn: Connection) -> None:
        calls.append(1)
        conn.execute(text("ALTER TABLE predictions ADD COLUMN note VARCHAR"))

    monkeypatch.setattr(schema, "UPGRADES", [*schema.UPGRADES, add_notes])
    s3 = PredictionStore(store_url)
    assert s3.schema_version() == v + 1 and calls == [1] and s3.count() == 2
    s3.close()
    s4 = PredictionStore(store_url)
    assert s4.schema_version() == v + 1 and calls == [1]  # not re-run
    s4.close()
    monkeypatch.setattr(schema, "UPGRADES", [])
    with pytest.raises(StoreError, match="newer"):
        PredictionStore(store_url).migrate()


def test_locked_sqlite_raises_store_error(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    PredictionStore(f"sqlite:///{path}").migrate()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        store = PredictionStore(f"sqlite:///{path}", busy_timeout_ms=50)
        with pytest.raises(StoreError, match="locked"):
            store.insert_many(make_records(1))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.insert_many(make_records(1)) == 1  # usable again once the lock is gone


def test_unreachable_postgres_raises_store_error() -> None:
    store = PredictionStore("postgresql://nobody@127.0.0.1:1/none", connect_timeout_s=2)
    assert not store.ping()
    with pytest.raises(StoreError, match="prediction store"):
        store.count()


def test_bad_record_rejected() -> None:
    with pytest.raises(InputError):
        PredictionRecord.create(np.zeros((27, 28), np.uint8), np.full(10, 0.1), "1", 1.0)
    with pytest.raises(InputError):
        PredictionRecord.create(np.zeros((28, 28), np.uint8), np.full(9, 0.1), "1", 1.0)
