"""Nothing accepted is lost: SIGTERM under load, and the store going away under load.

The real service runs as a subprocess (``python -m mnistops serve``) on the session's trained
model; several client threads send predictions on keep-alive connections and remember every
``prediction_id`` answered with 200. Afterwards the test opens the same prediction store and
checks each of those ids is there (exactly once). No timing thresholds: only counts.
"""

from __future__ import annotations

import http.client
import json
import signal
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from live_server import LiveServer, RegistryHome, make_registry, post_json

from mnistops.store.predictions import PredictionStore

pytestmark = pytest.mark.slow

THREADS = 6
# uvicorn re-raises the captured SIGTERM after its graceful shutdown: -15 is a clean exit too
CLEAN_EXIT = (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def registry_home(
    tmp_path_factory: pytest.TempPathFactory, cached_data_dir: Path, trained_model_dir: Path
) -> RegistryHome:
    """One MLflow store with the session model registered as champion (shared by both tests)."""
    return make_registry(tmp_path_factory.mktemp("durability"), cached_data_dir, trained_model_dir, 1)


@pytest.fixture(scope="module")
def bodies(mnist_test_data: tuple[torch.Tensor, torch.Tensor]) -> list[bytes]:
    """Request bodies: 64 real MNIST test digits as ``{"pixels": ...}``."""
    x, _ = mnist_test_data
    return [json.dumps({"pixels": x[i].tolist(), "client": "durability"}).encode() for i in range(64)]


class Load:
    """Client threads posting predictions until told to stop or the server goes away."""

    def __init__(self, port: int, bodies: list[bytes], per_thread: int, pause: float = 0.0) -> None:
        self.port, self.bodies, self.per_thread, self.pause = port, bodies, per_thread, pause
        self.ok_ids: list[str] = []
        self.failed: list[int] = []  # non-200 statuses (transport errors end a thread instead)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(THREADS)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()

    def join(self, timeout: float = 60.0) -> None:
        """Wait for every client thread."""
        for t in self._threads:
            t.join(timeout)

    @property
    def n_ok(self) -> int:
        """200s so far."""
        with self._lock:
            return len(self.ok_ids)

    def _run(self, k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            for i in range(self.per_thread):
                if self.stop.is_set():
                    return
                try:
                    status, body = post_json(conn, "/v1/predict", self.bodies[(k * 7 + i) % len(self.bodies)])
                except (OSError, http.client.HTTPException):
                    return  # server shutting down: connection refused/closed; that request was not accepted
                with self._lock:
                    if status == 200:
                        self.ok_ids.append(body["prediction_id"])
                    else:
                        self.failed.append(status)
                if self.pause:
                    time.sleep(self.pause)
        finally:
            conn.close()


def wait_for(cond: Callable[[], bool], timeout: float, what: str, server: LiveServer) -> None:
    """Poll ``cond`` every 0.2 s; fail with the server log if it stays false."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}\n{server.log()}")
        time.sleep(0.2)


def stored_ids(db: Path) -> list[str]:
    """Every prediction id in the store (duplicates would show up twice)."""
    store = PredictionStore(f"sqlite:///{db}")
    try:
        return [str(i) for i in store.after(0).ids]
    finally:
        store.close()


def test_sigterm_under_load_loses_no_accepted_prediction(
    registry_home: RegistryHome, bodies: list[bytes], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    # a huge batch and a long flush interval keep every accepted row in the in-memory queue
    # until shutdown, so this really tests the SIGTERM flush, not a lucky early write
    env = registry_home.env(home, log_batch_size="100000", log_flush_seconds="120")
    server = LiveServer(env, home)
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
    assert queued_at_kill > 0  # rows were still in memory when SIGTERM arrived
    assert not load.failed, load.failed
    ids = stored_ids(home / "predictions.db")
    assert len(load.ok_ids) >= 120
    missing = set(load.ok_ids) - set(ids)
    assert not missing, f"{len(missing)} of {len(load.ok_ids)} accepted predictions lost"
    # every row once (a response cut off by the shutdown may be logged without reaching the client)
    assert len(ids) == len(set(ids)) >= len(load.ok_ids)


def test_store_unavailable_mid_run_spills_and_replays(
    registry_home: RegistryHome, bodies: list[bytes], tmp_path: Path
) -> None:
    home = tmp_path / "home"
    db = home / "predictions.db"
    server = LiveServer(registry_home.env(home), home)
    locker: sqlite3.Connection | None = None
    try:
        server.wait_ready()
        with Load(server.port, bodies, per_thread=10_000, pause=0.05) as load:
            wait_for(lambda: db.exists() and len(stored_ids(db)) > 0, 60, "first rows in the store", server)
            # the store goes away: an exclusive write lock held longer than the service's
            # busy timeout (5 s) makes every insert fail with "database is locked"
            locker = sqlite3.connect(db, timeout=30, isolation_level=None)
            locker.execute("BEGIN EXCLUSIVE")
            ok_before = load.n_ok
            checks: dict[str, int] = {}

            def degraded() -> bool:
                checks.update(server.get("/readyz")[1]["checks"])
                return checks["spill_backlog"] > 0 and checks["write_errors"] > 0

            wait_for(degraded, 45, "/readyz to report the spill backlog", server)
            served_while_down = load.n_ok - ok_before
            locker.execute("ROLLBACK")  # the store is back
            locker.close()
            locker = None
            n = load.n_ok
            wait_for(lambda: load.n_ok >= n + 20, 30, "more predictions after recovery", server)
        wait_for(
            lambda: (c := server.get("/readyz")[1]["checks"])["spill_backlog"] == 0 and c["queue_depth"] == 0,
            45,
            "the spill file to be replayed",
            server,
        )
        rc = server.terminate()
    finally:
        if locker is not None:
            locker.close()
        server.terminate()
    assert rc in CLEAN_EXIT, server.log()
    assert served_while_down > 0  # predictions kept succeeding while the store was locked
    assert not load.failed, load.failed
    ids = stored_ids(db)
    assert set(load.ok_ids) <= set(ids), f"{len(set(load.ok_ids) - set(ids))} accepted predictions lost"
    assert len(ids) == len(set(ids)) == len(load.ok_ids)  # replay wrote each row exactly once
    assert not (home / "spill" / "predictions.jsonl").read_text().strip()  # truncated after replay
