"""Nothing acknowledged is lost: SIGKILL and SIGTERM under load, and the store going away.

The real service runs as a subprocess (``python -m mnistops serve``) on the session's trained
model; client threads send predictions (and feedback) on keep-alive connections and remember
every ``prediction_id`` answered 200. Afterwards the test opens the same prediction store and
checks each of those ids is there, exactly once, with the last label accepted for it. No timing
thresholds: only counts.
"""

from __future__ import annotations

import json
import signal
import sqlite3
from pathlib import Path

import pytest
import torch
from live_server import LiveServer, Load, RegistryHome, make_registry, wait_for

from mnistops.store.predictions import PredictionStore

pytestmark = pytest.mark.slow

# uvicorn re-raises the captured SIGTERM after its graceful shutdown: -15 is a clean exit too
CLEAN_EXIT = (0, -signal.SIGTERM)
# writer settings that keep every row out of the store until shutdown: a test then knows the
# rows it checks came through the journal (or the SIGTERM flush), not from a lucky early commit
HOLD_IN_MEMORY = {"log_batch_size": "100000", "log_flush_seconds": "120"}


@pytest.fixture(scope="module")
def registry_home(
    tmp_path_factory: pytest.TempPathFactory, cached_data_dir: Path, trained_model_dir: Path
) -> RegistryHome:
    """One MLflow store with the session model registered as champion (shared by the module)."""
    return make_registry(tmp_path_factory.mktemp("durability"), cached_data_dir, trained_model_dir, 1)


@pytest.fixture(scope="module")
def bodies(mnist_test_data: tuple[torch.Tensor, torch.Tensor]) -> list[bytes]:
    """Request bodies: 64 real MNIST test digits as ``{"pixels": ...}``."""
    x, _ = mnist_test_data
    return [json.dumps({"pixels": x[i].tolist(), "client": "durability"}).encode() for i in range(64)]


def stored(url: str) -> tuple[list[str], dict[str, int]]:
    """(every prediction id in the store, duplicates included; true label by id)."""
    store = PredictionStore(url)
    try:
        w = store.after(0)
        return [str(i) for i in w.ids], {
            str(i): int(t) for i, t in zip(w.ids, w.true_labels, strict=True) if t >= 0
        }
    finally:
        store.close()


def drained(server: LiveServer) -> bool:
    """/readyz says no journaled row is waiting for the store (neither in memory nor on disk)."""
    checks = server.get("/readyz")[1]["checks"]
    return bool(checks["spill_backlog"] == 0 and checks["queue_depth"] == 0)


def journal_files(home: Path) -> list[Path]:
    """Segment files left in a home's journal."""
    return sorted((home / "journal").rglob("*.wal"))


@pytest.mark.parametrize("durability", ["process", "power"])
def test_sigkill_under_load_loses_no_acknowledged_prediction_or_feedback(
    registry_home: RegistryHome, bodies: list[bytes], tmp_path: Path, store_url: str, durability: str
) -> None:
    home = tmp_path / "home"
    base = {"database_url": store_url, "durability": durability}
    # small segments: the journal rotates many times under this load
    server = LiveServer(
        registry_home.env(home, **base, **HOLD_IN_MEMORY, journal_segment_bytes="65536"), home
    )
    try:
        server.wait_ready()
        with Load(server.port, bodies, per_thread=100_000, threads=8, feedback_every=5) as load:
            wait_for(lambda: load.n_ok >= 300 and len(load.labels) >= 20, 90, "300 predictions", server)
            rc = server.kill()  # while the client threads keep sending
            load.join()
    finally:
        server.terminate()
    assert rc == -signal.SIGKILL
    assert not load.failed, load.failed
    ids, _ = stored(store_url)
    assert not set(load.ok_ids) & set(ids)  # nothing acknowledged had reached the store yet
    assert len(journal_files(home)) > 1

    restarted = LiveServer(registry_home.env(home, **base), home)  # same home: same journal
    try:
        restarted.wait_ready()
        wait_for(lambda: drained(restarted), 60, "the journal to be replayed", restarted)
        rc = restarted.terminate()
    finally:
        restarted.terminate()
    assert rc in CLEAN_EXIT, restarted.log()
    ids, labels = stored(store_url)
    missing = set(load.ok_ids) - set(ids)
    assert not missing, f"{len(missing)} of {len(load.ok_ids)} acknowledged predictions lost"
    assert len(ids) == len(set(ids)) >= len(load.ok_ids)  # each once (an unanswered one may be there too)
    wrong = {
        pid: (labels.get(pid), label)
        for pid, label in load.labels.items()
        if labels.get(pid) not in (label, load.maybe_labels.get(pid))
    }
    assert not wrong, f"{len(wrong)} of {len(load.labels)} acknowledged feedback labels lost: {wrong}"
    assert journal_files(home) == []  # everything replayed and committed


def test_sigterm_under_load_loses_no_acknowledged_prediction(
    registry_home: RegistryHome, bodies: list[bytes], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    server = LiveServer(registry_home.env(home, **HOLD_IN_MEMORY), home)
    try:
        server.wait_ready()
        with Load(server.port, bodies, per_thread=80) as load:
            wait_for(lambda: load.n_ok >= 120, 60, "120 predictions", server)
            _, ready = server.get("/readyz")
            queued_at_kill = ready["checks"]["queue_depth"]
            rc = server.terminate()  # while the client threads keep sending
            load.join()
    finally:
        server.terminate()
    assert rc in CLEAN_EXIT, server.log()
    assert queued_at_kill > 0  # rows were not in the store yet when SIGTERM arrived
    assert not load.failed, load.failed
    ids, _ = stored(f"sqlite:///{home / 'predictions.db'}")
    assert len(load.ok_ids) >= 120
    missing = set(load.ok_ids) - set(ids)
    assert not missing, f"{len(missing)} of {len(load.ok_ids)} accepted predictions lost"
    # every row once (a response cut off by the shutdown may be logged without reaching the client)
    assert len(ids) == len(set(ids)) >= len(load.ok_ids)
    assert journal_files(home) == []  # the shutdown committed everything: nothing to replay


def test_store_unavailable_mid_run_keeps_serving_and_replays(
    registry_home: RegistryHome, bodies: list[bytes], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    db = home / "predictions.db"
    url = f"sqlite:///{db}"
    server = LiveServer(registry_home.env(home), home)
    locker: sqlite3.Connection | None = None
    try:
        server.wait_ready()
        with Load(server.port, bodies, per_thread=10_000, pause=0.05) as load:
            wait_for(lambda: db.exists() and len(stored(url)[0]) > 0, 60, "first rows in the store", server)
            # the store goes away: an exclusive write lock held longer than the service's
            # busy timeout (5 s) makes every insert fail with "database is locked"
            locker = sqlite3.connect(db, timeout=30, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            ok_before = load.n_ok
            checks: dict[str, int] = {}

            def degraded() -> bool:
                checks.update(server.get("/readyz")[1]["checks"])
                return checks["spill_backlog"] > 0 and checks["write_errors"] > 0

            wait_for(degraded, 45, "/readyz to report the journal backlog", server)
            served_while_down = load.n_ok - ok_before
            locker.execute("ROLLBACK")  # the store is back
            locker.close()
            locker = None
            n = load.n_ok
            wait_for(lambda: load.n_ok >= n + 20, 30, "more predictions after recovery", server)
        wait_for(lambda: drained(server), 45, "the journal backlog to be replayed", server)
        rc = server.terminate()
    finally:
        if locker is not None:
            locker.close()
        server.terminate()
    assert rc in CLEAN_EXIT, server.log()
    assert served_while_down > 0  # predictions kept succeeding while the store was locked
    assert not load.failed, load.failed
    ids, _ = stored(url)
    assert set(load.ok_ids) <= set(ids), f"{len(set(load.ok_ids) - set(ids))} accepted predictions lost"
    assert len(ids) == len(set(ids)) == len(load.ok_ids)  # replay wrote each row exactly once
    assert journal_files(home) == []
