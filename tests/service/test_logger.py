"""PredictionLogger: nothing submitted is lost, outages spill and replay exactly once, threads are safe."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest

from mnistops.errors import NotFoundError, StoreError
from mnistops.service.logger import PredictionLogger
from mnistops.service.spill import SpillFile
from mnistops.store.predictions import PredictionRecord, PredictionStore, ShadowRecord


def records(n: int, seed: int = 0) -> list[PredictionRecord]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(10), n).astype(np.float32)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return [PredictionRecord.create(images[i], probs[i], "1", latency_ms=1.0) for i in range(n)]


class FlakyStore(PredictionStore):
    """A real store whose writes fail while ``down`` is set (optionally after committing)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.down = threading.Event()
        self.commit_then_fail = False  # simulates a commit whose acknowledgement was lost
        self.failures = 0

    def insert_many(self, records: Sequence[PredictionRecord], shadows: Sequence[ShadowRecord] = ()) -> int:
        if self.down.is_set():
            if self.commit_then_fail:
                super().insert_many(records, shadows)
            self.failures += 1
            raise StoreError("simulated outage")
        return super().insert_many(records, shadows)


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll until cond() holds (a generous deadline, not a timing assertion)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def stored_ids(store: PredictionStore) -> list[str]:
    return list(store.latest(10**6).ids)


def test_everything_submitted_is_stored_after_close(store: PredictionStore, tmp_path: Path) -> None:
    recs = records(300)
    logger = PredictionLogger(store, tmp_path / "spill.jsonl", batch_size=64, flush_seconds=0.01)
    for r in recs:
        logger.submit(r)
    logger.submit_shadow(ShadowRecord.create(recs[0].id, "2", recs[0].probs))
    logger.close()
    assert stored_ids(store) == [r.id for r in recs]  # all, once, in submission order
    assert store.count_shadow("2") == 1
    assert logger.write_errors == 0 and logger.spill_backlog == 0 and logger.queue_depth == 0
    with pytest.raises(StoreError):
        logger.submit(recs[0])


def test_flush_commits_pending(store: PredictionStore, tmp_path: Path) -> None:
    logger = PredictionLogger(store, tmp_path / "spill.jsonl", batch_size=10_000, flush_seconds=60)
    recs = records(5)
    for r in recs:
        logger.submit(r)
    assert logger.flush(timeout=20)  # does not wait for the 60 s batching delay
    assert store.count() == 5 and not logger.is_pending(recs[0].id)
    logger.close()


def test_feedback_on_queued_prediction(store: PredictionStore, tmp_path: Path) -> None:
    logger = PredictionLogger(store, tmp_path / "spill.jsonl", batch_size=10_000, flush_seconds=60)
    rec = records(1)[0]
    logger.submit(rec)
    assert logger.add_feedback(rec.id, 4) == "recorded"  # flushed first, then labelled
    assert store.get(rec.id).true_label == 4
    with pytest.raises(NotFoundError):
        logger.add_feedback("never-submitted", 1)
    logger.close()


@pytest.mark.parametrize("commit_then_fail", [False, True])
def test_outage_spills_then_replays_exactly_once(
    store_url: str, tmp_path: Path, commit_then_fail: bool
) -> None:
    store = FlakyStore(store_url)
    spill = tmp_path / "spill" / "predictions.jsonl"
    logger = PredictionLogger(
        store, spill, batch_size=16, flush_seconds=0.01, min_backoff=0.02, max_backoff=0.1
    )
    recs = records(120)
    for r in recs[:40]:
        logger.submit(r)
    assert logger.flush(timeout=20) and store.count() == 40

    store.commit_then_fail = commit_then_fail
    store.down.set()
    for r in recs[40:100]:
        logger.submit(r)
    assert logger.flush(timeout=20)  # spilled counts as done
    assert not logger.healthy and logger.write_errors >= 1 and store.failures >= 1
    assert logger.spill_backlog > 0 and SpillFile(spill).count() == logger.spill_backlog
    if not commit_then_fail:
        assert store.count() == 40

    store.down.clear()  # store is back: the thread replays on its own
    assert wait_for(lambda: logger.spill_backlog == 0 and logger.healthy)
    for r in recs[100:]:
        logger.submit(r)
    logger.close()
    ids = stored_ids(store)
    assert sorted(ids) == sorted(r.id for r in recs) and len(ids) == len(set(ids)) == 120
    assert SpillFile(spill).count() == 0


def test_close_during_outage_keeps_spill_for_next_start(store_url: str, tmp_path: Path) -> None:
    store = FlakyStore(store_url)
    spill = tmp_path / "spill.jsonl"
    store.down.set()
    logger = PredictionLogger(store, spill, min_backoff=10, max_backoff=10)
    recs = records(30)
    for r in recs:
        logger.submit(r)
    logger.close()
    assert store.count() == 0 and SpillFile(spill).count() == 30

    store.down.clear()  # next process start: leftover spill is replayed first
    logger2 = PredictionLogger(store, spill)
    assert logger2.spill_backlog == 30
    logger2.close()
    assert sorted(stored_ids(store)) == sorted(r.id for r in recs) and SpillFile(spill).count() == 0


def test_torn_spill_line_is_skipped(store: PredictionStore, tmp_path: Path) -> None:
    spill = tmp_path / "spill.jsonl"
    recs = records(3)
    SpillFile(spill).append(recs[:2])
    with spill.open("a") as f:
        f.write('{"kind":"prediction","id":"torn')  # crash mid-append
    SpillFile(spill).append(recs[2:])  # must start on a fresh line
    logger = PredictionLogger(store, spill)
    logger.close()
    assert sorted(stored_ids(store)) == sorted(r.id for r in recs)


def test_concurrent_submitters(store: PredictionStore, tmp_path: Path) -> None:
    logger = PredictionLogger(store, tmp_path / "spill.jsonl", batch_size=32, flush_seconds=0.005)
    per_thread = [records(100, seed=s) for s in range(6)]
    start = threading.Barrier(len(per_thread))

    def work(recs: list[PredictionRecord]) -> None:
        start.wait()
        for r in recs:
            logger.submit(r)

    threads = [threading.Thread(target=work, args=(r,)) for r in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.close()
    ids = stored_ids(store)
    assert len(ids) == 600 and set(ids) == {r.id for rs in per_thread for r in rs}
    for rs in per_thread:  # each thread's records keep their relative order
        pos = {i: k for k, i in enumerate(ids)}
        assert [pos[r.id] for r in rs] == sorted(pos[r.id] for r in rs)


def test_real_lock_outage_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = PredictionStore(f"sqlite:///{path}", busy_timeout_ms=20)
    store.migrate()
    logger = PredictionLogger(store, tmp_path / "spill.jsonl", min_backoff=0.02, max_backoff=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the database past busy_timeout
    recs = records(50)
    try:
        for r in recs:
            logger.submit(r)
        assert logger.flush(timeout=20)
        assert logger.spill_backlog == 50 and logger.write_errors >= 1
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert wait_for(lambda: logger.spill_backlog == 0)
    logger.close()
    assert sorted(stored_ids(store)) == sorted(r.id for r in recs)
