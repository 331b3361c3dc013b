"""PredictionLogger: journal first, store later; outages, leftovers, feedback, both durability modes.

In-process tests on a real store (SQLite and PostgreSQL through the ``store`` fixtures). The
crash tests with real server processes and SIGKILL are in ``test_crash.py``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from mnistops.errors import JournalError, NotFoundError, StoreError
from mnistops.service import log_writer
from mnistops.service.journal_format import encode_framed
from mnistops.service.logger import PredictionLogger
from mnistops.store.predictions import PredictionRecord, PredictionStore, ShadowRecord
from mnistops.store.records import FeedbackRecord


class FlakyStore(PredictionStore):
    """A real store whose writes (and ping) fail while ``down`` is set (optionally after committing)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.down = threading.Event()
        self.commit_then_fail = False  # a commit whose acknowledgement was lost
        self.failures = 0

    def insert_many(
        self,
        records: Sequence[PredictionRecord],
        shadows: Sequence[ShadowRecord] = (),
        feedback: Sequence[FeedbackRecord] = (),
    ) -> int:
        if self.down.is_set():
            if self.commit_then_fail:
                super().insert_many(records, shadows, feedback)
            self.failures += 1
            raise StoreError("simulated outage")
        return super().insert_many(records, shadows, feedback)

    def ping(self) -> bool:
        return not self.down.is_set() and super().ping()


def run_async(coro: Coroutine[Any, Any, Any]) -> Any:
    """``asyncio.run`` in a thread of its own: this thread may already have a loop (Playwright's)."""
    out: dict[str, Any] = {}

    def main() -> None:
        try:
            out["value"] = asyncio.run(coro)
        except BaseException as exc:
            out["error"] = exc

    t = threading.Thread(target=main)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out.get("value")


def records(n: int, seed: int = 0) -> list[PredictionRecord]:
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(10), n).astype(np.float32)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    return [PredictionRecord.create(images[i], probs[i], "1", latency_ms=1.0) for i in range(n)]


def wait_for(cond: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll until cond() holds (a generous deadline, not a timing assertion)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.01)
    return cond()


def wal_files(journal_dir: Path) -> list[Path]:
    """Every journal segment file under the journal directory (all slots)."""
    return sorted(journal_dir.rglob("*.wal"))


def stored_ids(store: PredictionStore) -> list[str]:
    return list(store.latest(10**6).ids)


@pytest.mark.parametrize("durability", ["process", "power"])
def test_everything_logged_is_stored_in_order_then_the_journal_is_gone(
    store: PredictionStore, tmp_path: Path, durability: str
) -> None:
    recs = records(300)
    logger = PredictionLogger(store, tmp_path / "j", durability=durability, batch_size=64, flush_seconds=0.01)  # type: ignore[arg-type]

    async def serve() -> None:  # 200 concurrent requests, then sequential ones
        await asyncio.gather(*(logger.log([r]) for r in recs[:200]))
        for r in recs[200:250]:
            await logger.log([r])

    run_async(serve())
    logger.log_blocking(recs[250:])
    logger.submit_shadow(ShadowRecord.create(recs[0].id, "2", recs[0].probs))
    assert wal_files(tmp_path / "j")  # journaled before the store has them
    logger.close()
    assert stored_ids(store) == [r.id for r in recs]  # all, once, in journal order
    assert store.count_shadow("2") == 1
    assert logger.write_errors == 0 and logger.spill_backlog == 0 and logger.queue_depth == 0
    assert wal_files(tmp_path / "j") == []  # everything committed: nothing left to replay
    with pytest.raises(StoreError):
        logger.log_blocking(recs[:1])


def test_concurrent_requests_share_journal_writes(store: PredictionStore, tmp_path: Path) -> None:
    logger = PredictionLogger(store, tmp_path / "j")
    writes: list[int] = []
    on_write = logger._writer.on_write

    def counting(lsn: int, items: list[object]) -> None:
        writes.append(len(items))
        on_write(lsn, items)  # type: ignore[arg-type]

    logger._journal._on_write = counting  # type: ignore[assignment]
    recs = records(64)

    async def serve() -> None:
        await asyncio.gather(*(logger.log([r]) for r in recs))

    run_async(serve())
    logger.close()
    assert sum(writes) == 64 and len(writes) < 64  # group commit: one write for many requests
    assert sorted(stored_ids(store)) == sorted(r.id for r in recs)


def test_power_mode_syncs_before_answering_and_commits_durably(
    store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if store_url.startswith("postgresql"):  # a server whose sessions default to asynchronous commit
        url = make_url(store_url)
        url = url.update_query_dict({"options": url.query["options"] + " -csynchronous_commit=off"})
        store_url = url.render_as_string(hide_password=False)
    store = PredictionStore(store_url)
    synced: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: (synced.append(fd), real(fd))[1])
    logger = PredictionLogger(store, tmp_path / "j", durability="power")
    logger.log_blocking(records(3))
    assert synced  # the answer came after an fdatasync
    run_async(logger.log(records(2, seed=1)))
    logger.close()
    assert store.count() == 5
    # commits are power-safe too (committed segments get deleted): whatever the default
    with store._engine.connect() as conn:
        if store.is_sqlite:
            assert conn.execute(text("PRAGMA synchronous")).scalar() == 2  # FULL, not NORMAL
        else:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == "on"
    store.close()


def test_flush_and_feedback_on_a_prediction_only_in_the_journal(
    store: PredictionStore, tmp_path: Path
) -> None:
    logger = PredictionLogger(store, tmp_path / "j", batch_size=10_000, flush_seconds=60)
    rec = records(1)[0]
    logger.log_blocking([rec])
    assert store.count() == 0 and logger.is_pending(rec.id)  # the 60 s batching delay holds it
    assert logger.add_feedback(rec.id, 4) == "recorded"
    assert logger.add_feedback(rec.id, 4) == "unchanged"  # the journaled label counts
    assert logger.add_feedback(rec.id, 6) == "recorded"  # a correction
    with pytest.raises(NotFoundError):
        logger.add_feedback("never-served", 1)
    assert logger.flush(timeout=20)  # does not wait for the batching delay
    assert store.get(rec.id).true_label == 6 and not logger.is_pending(rec.id)
    assert logger.add_feedback(rec.id, 6) == "unchanged"  # now from the store
    logger.close()


@pytest.mark.parametrize("commit_then_fail", [False, True])
def test_outage_keeps_rows_in_the_journal_then_replays_exactly_once(
    store_url: str, tmp_path: Path, commit_then_fail: bool
) -> None:
    store = FlakyStore(store_url)
    logger = PredictionLogger(
        store, tmp_path / "j", batch_size=16, flush_seconds=0.01, min_backoff=0.02, max_backoff=0.1
    )
    recs = records(120)
    logger.log_blocking(recs[:40])
    assert logger.flush(timeout=20) and store.count() == 40

    store.commit_then_fail = commit_then_fail
    store.down.set()
    for r in recs[40:100]:
        logger.log_blocking([r])  # still accepted: journaled
    assert logger.add_feedback(recs[50].id, 2) == "recorded"  # feedback for a row not in the store
    assert wait_for(lambda: not logger.healthy and logger.spill_backlog > 0)
    assert logger.write_errors >= 1 and store.failures >= 1
    if not commit_then_fail:
        assert store.count() == 40

    store.down.clear()  # the store is back: the writer replays from disk on its own
    assert wait_for(lambda: logger.spill_backlog == 0 and logger.healthy)
    logger.log_blocking(recs[100:])
    logger.close()
    ids = stored_ids(store)
    assert sorted(ids) == sorted(r.id for r in recs) and len(ids) == len(set(ids)) == 120
    assert store.get(recs[50].id).true_label == 2
    assert wal_files(tmp_path / "j") == []


def test_close_during_outage_leaves_the_journal_for_the_next_start(store_url: str, tmp_path: Path) -> None:
    store = FlakyStore(store_url)
    store.down.set()
    logger = PredictionLogger(store, tmp_path / "j", min_backoff=10, max_backoff=10)
    recs = records(30)
    logger.log_blocking(recs)
    assert logger.add_feedback(recs[3].id, 9) == "recorded"
    logger.close()  # does not wait out the 10 s backoff
    assert store.count() == 0 and wal_files(tmp_path / "j")

    # next process start, the store still down: the leftover rows are known before any replay
    logger2 = PredictionLogger(store, tmp_path / "j", min_backoff=0.02, max_backoff=0.05)
    assert logger2.is_pending(recs[0].id) and logger2.spill_backlog == 31
    assert logger2.add_feedback(recs[4].id, 1) == "recorded"  # its prediction is only on disk
    assert logger2.add_feedback(recs[3].id, 9) == "unchanged"  # the journaled label counts
    store.down.clear()  # the leftover segment is replayed first, then the new feedback
    assert logger2.flush(timeout=20)
    logger2.close()
    assert sorted(stored_ids(store)) == sorted(r.id for r in recs)
    assert store.get(recs[3].id).true_label == 9 and store.get(recs[4].id).true_label == 1
    assert wal_files(tmp_path / "j") == []


def test_segments_rotate_and_are_deleted_once_committed(store: PredictionStore, tmp_path: Path) -> None:
    logger = PredictionLogger(store, tmp_path / "j", segment_bytes=8192, batch_size=8, flush_seconds=0.001)
    recs = records(200)  # ~900 bytes a row: ~25 segments
    for r in recs:
        logger.log_blocking([r])
    assert logger.flush(timeout=20)
    assert wait_for(lambda: len(wal_files(tmp_path / "j")) <= 1)  # only the active segment is left
    logger.close()
    assert sorted(stored_ids(store)) == sorted(r.id for r in recs)


def test_a_writer_far_behind_reads_back_from_the_journal_instead_of_growing(
    store: PredictionStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(log_writer, "MAX_QUEUED_ROWS", 10)
    logger = PredictionLogger(store, tmp_path / "j", batch_size=10_000, flush_seconds=60)
    recs = records(100)
    peak = 0
    for r in recs:
        logger.log_blocking([r])
        peak = max(peak, logger.queue_depth)
    assert peak <= 11  # the in-memory copy stays bounded
    assert logger.flush(timeout=20)
    logger.close()
    assert stored_ids(store) == [r.id for r in recs]  # all, once, still in order
    assert logger.write_errors == 0 and wal_files(tmp_path / "j") == []


def test_dead_siblings_slots_are_taken_over_and_replayed(store: PredictionStore, tmp_path: Path) -> None:
    down = FlakyStore(store.url.render_as_string(hide_password=False))
    down.down.set()
    alive = PredictionLogger(store, tmp_path / "j")  # slot 0, keeps running
    dead = [PredictionLogger(down, tmp_path / "j", min_backoff=10) for _ in range(2)]  # slots 1, 2
    assert [lg._journal.slot.name for lg in (alive, *dead)] == ["0", "1", "2"]
    recs = records(40)
    for lg, part in zip(dead, (recs[:20], recs[20:]), strict=True):
        lg.log_blocking(part)
        lg.close()  # "dies" with its rows only in its journal slot
    restarted = PredictionLogger(store, tmp_path / "j")  # takes slot 1 and adopts unlocked slot 2
    assert restarted._journal.slot.name == "1"
    assert restarted.flush(timeout=20)
    for lg in (alive, restarted):
        lg.close()
    assert sorted(stored_ids(store)) == sorted(r.id for r in recs)
    assert wal_files(tmp_path / "j") == []


def test_a_torn_final_write_left_by_a_crash_loses_only_that_record(
    store: PredictionStore, tmp_path: Path
) -> None:
    recs = records(5)
    seg = tmp_path / "j" / "0" / "0000000001.wal"
    seg.parent.mkdir(parents=True)
    whole = encode_framed(list(recs))
    seg.write_bytes(whole[: len(whole) - 300])  # the crash cut the last write short
    logger = PredictionLogger(store, tmp_path / "j")
    assert logger.flush(timeout=20)
    logger.close()
    assert sorted(stored_ids(store)) == sorted(r.id for r in recs[:4])
    assert wal_files(tmp_path / "j") == []


def test_a_failed_journal_write_is_not_acknowledged(
    store: PredictionStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logger = PredictionLogger(store, tmp_path / "j")
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: (_ for _ in ()).throw(OSError(28, "No space")))
    with pytest.raises(JournalError):
        logger.log_blocking(records(1))
    with pytest.raises(JournalError):
        run_async(logger.log(records(1, seed=1)))
    monkeypatch.setattr(os, "write", real_write)  # disk space is back: a fresh segment
    ok = records(2, seed=2)
    logger.log_blocking(ok)
    logger.close()
    assert sorted(stored_ids(store)) == sorted(r.id for r in ok)


def test_concurrent_threads_keep_their_order(store: PredictionStore, tmp_path: Path) -> None:
    logger = PredictionLogger(store, tmp_path / "j", batch_size=32, flush_seconds=0.005)
    per_thread = [records(100, seed=s) for s in range(6)]
    start = threading.Barrier(len(per_thread))

    def work(recs: list[PredictionRecord]) -> None:
        start.wait()
        for r in recs:
            logger.log_blocking([r])

    threads = [threading.Thread(target=work, args=(r,)) for r in per_thread]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    logger.close()
    ids = stored_ids(store)
    assert len(ids) == 600 and set(ids) == {r.id for rs in per_thread for r in rs}
    pos = {i: k for k, i in enumerate(ids)}
    for rs in per_thread:  # each thread's rows keep their relative order
        assert [pos[r.id] for r in rs] == sorted(pos[r.id] for r in rs)


def test_real_lock_outage_on_sqlite(tmp_path: Path) -> None:
    path = tmp_path / "p.db"
    store = PredictionStore(f"sqlite:///{path}", busy_timeout_ms=20)
    store.migrate()
    logger = PredictionLogger(store, tmp_path / "j", min_backoff=0.02, max_backoff=0.05)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")  # another process holding the database past busy_timeout
    recs = records(50)
    try:
        logger.log_blocking(recs)
        assert wait_for(lambda: logger.spill_backlog == 50 and logger.write_errors >= 1)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert wait_for(lambda: logger.spill_backlog == 0)
    logger.close()
    assert sorted(stored_ids(store)) == sorted(r.id for r in recs)
