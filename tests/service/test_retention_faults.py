"""Retention under faults, on SQLite and PostgreSQL: a real `mnistops store prune` SIGKILLed between
a batch's archive and its delete; a writer that keeps writing while a prune runs."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from store_rows import evaluated_up_to, make_records

from mnistops.store.archive import archive_files, read_archive
from mnistops.store.predictions import PredictionStore
from mnistops.store.retention import Retention, RetentionPolicy

REPO = Path(__file__).resolve().parents[2]


class BlockedWriters:
    """Reads of the prediction log while every write to it waits (a prune stops at its delete)."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)

    @contextmanager
    def held(self) -> Iterator[BlockedWriters]:
        if self.url.drivername.startswith("sqlite"):
            con = sqlite3.connect(str(self.url.database), isolation_level=None)
            con.execute("BEGIN IMMEDIATE")  # the database's one write lock; WAL readers go on
            self._seqs = lambda: {r[0] for r in con.execute("SELECT seq FROM predictions")}
            try:
                yield self
            finally:
                con.execute("ROLLBACK")
                con.close()
            return
        engine = create_engine(self.url)
        with engine.connect() as conn:
            conn.execute(text("LOCK TABLE predictions IN SHARE MODE"))  # blocks DELETE, not SELECT
            self._seqs = lambda: set(conn.execute(text("SELECT seq FROM predictions")).scalars())
            try:
                yield self
            finally:
                conn.rollback()
        engine.dispose()

    def seqs(self) -> set[int]:
        """Seqs in the log now (inside :meth:`held`)."""
        return self._seqs()


def prune_env(url: str, tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNISTOPS_")}
    env.update(
        MNISTOPS_HOME=str(tmp / "home"),
        MNISTOPS_DATABASE_URL=url,
        MNISTOPS_TRACKING_URI=f"sqlite:///{tmp / 'mlflow.db'}",  # no challenger registered
        MNISTOPS_RETENTION_MAX_ROWS="1",
        MNISTOPS_RETENTION_BATCH_ROWS="10",
        MNISTOPS_RETENTION_ARCHIVE_DIR=str(tmp / "archive"),
        PYTHONPATH=str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    return env


def wait_for(cond: object, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"prune exited ({proc.returncode}) too early:\n{out}")
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        time.sleep(0.002)


@pytest.mark.slow
def test_sigkill_between_archive_and_delete_loses_nothing(store_url: str, tmp_path: Path) -> None:
    store = PredictionStore(store_url)
    store.insert_many(make_records(2000))
    store.insert_window(evaluated_up_to(store.max_seq()))
    original = {int(s) for s in store.after(0).seqs}
    archive, env = tmp_path / "archive", prune_env(store_url, tmp_path)
    cmd = [sys.executable, "-m", "mnistops", "store", "prune", "--once"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: archive_files(archive), proc, timeout=120)
        with BlockedWriters(store_url).held() as db:
            stuck: list[Path] = []

            def archived_not_deleted() -> bool:
                present = db.seqs()
                stuck[:] = [f for f in archive_files(archive) if set(_seqs(f)) <= present]
                return bool(stuck)

            wait_for(archived_not_deleted, proc, timeout=4)  # the prune waits at its delete
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stored = {int(s) for s in store.after(0).seqs}
    assert set(_seqs(stuck[0])) <= stored  # archived, still in the database
    assert original <= stored | set(read_archive(archive).column("seq").to_pylist())  # nothing lost
    # the re-run finishes the job and writes the interrupted batch under the same name
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "pruned" in done.stdout
    assert {int(s) for s in store.after(0).seqs} == {max(original)}
    back = read_archive(archive).column("seq").to_pylist()
    assert back == sorted(original - {max(original)})  # each pruned row exactly once
    assert not list(archive.glob(stuck[0].name.replace(".parquet", ".*.parquet")))
    store.close()


def _seqs(path: Path) -> list[int]:
    return [int(s) for s in pq.read_table(path, columns=["seq"]).column("seq").to_pylist()]


def test_a_writer_keeps_writing_during_a_prune(store_url: str, tmp_path: Path) -> None:
    store = PredictionStore(store_url)
    store.insert_many(make_records(4000))
    store.insert_window(evaluated_up_to(store.max_seq()))
    stop, lock = threading.Event(), threading.Lock()
    commits: list[tuple[float, float]] = []
    errors: list[BaseException] = []

    def write() -> None:
        # the API's log writer: small batches of fresh predictions, one transaction each
        writer = PredictionStore(store_url)
        k = 0
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                writer.insert_many(make_records(16, seed=k, t0=time.time()))
            except BaseException as e:
                errors.append(e)
                return
            with lock:
                commits.append((t0, time.monotonic()))
            k += 1
            time.sleep(0.002)
        writer.close()

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    policy = RetentionPolicy(max_age_seconds=3600.0, batch_rows=200, archive_dir=tmp_path / "archive")
    try:
        time.sleep(0.1)
        start = time.monotonic()
        report = Retention(store, policy).run()
        end = time.monotonic()
        time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
    assert not errors
    assert report.pruned == 4000 and len(report.files) == len(report.delete_ms) >= 20
    during = [c for c in commits if start <= c[0] and c[1] <= end]
    assert len(during) >= 5, f"only {len(during)} writer commits during a {end - start:.2f} s prune"
    assert store.count() == 16 * len(commits)  # every write landed, none pruned
    assert len(read_archive(tmp_path / "archive")) == 4000
    store.close()
