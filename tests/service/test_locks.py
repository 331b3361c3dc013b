"""Locks and the leader lease with real processes, on SQLite (file locks) and PostgreSQL.

On PostgreSQL every process gets its own ``MNISTOPS_HOME``, so nothing but the advisory lock in
the shared database can serialise them (as on separate hosts); on SQLite they share one home
(file locks work on one machine only). Killed holders are killed with SIGKILL.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from mnistops.errors import LockTimeoutError
from mnistops.settings import Settings
from mnistops.store import advisory
from mnistops.store.lock import HELD_CHECK_SECONDS, LeaderLease, locked

ROUNDS = 20
CTX = mp.get_context("spawn")


def _settings(base: Path, url: str, who: str) -> Settings:
    """Settings of one process: a home of its own on PostgreSQL, the shared one on SQLite."""
    home = base / who if url.startswith("postgresql") else base / "shared"
    return Settings(home=home, database_url=url)


def _increment(base: str, url: str, who: str, counter: str, rounds: int) -> None:
    """Non-atomic read-modify-write: loses updates unless the lock serialises it."""
    settings = _settings(Path(base), url, who)
    path = Path(counter)
    for _ in range(rounds):
        with locked(settings, "counter", timeout=60):
            value = int(path.read_text())
            time.sleep(0.002)  # widen the race window so a missing lock would show
            path.write_text(str(value + 1))


def _hold_lock(base: str, url: str, ready: Any, release: Any) -> None:
    with locked(_settings(Path(base), url, "holder"), "held"):
        ready.set()
        release.wait(120)


def _hold_until_killed(base: str, url: str, ready: Any) -> None:
    # sleeps instead of waiting on an Event: a process killed inside Event.wait() would make the
    # parent's Event.set() wait forever for it to wake
    with locked(_settings(Path(base), url, "holder"), "held"):
        ready.set()
        while True:
            time.sleep(0.2)


def _lead(base: str, url: str, ready: Any) -> None:
    lease = LeaderLease(_settings(Path(base), url, "leader"), "controller")
    assert lease.try_acquire()
    ready.set()
    while lease.held():  # until SIGKILL
        time.sleep(0.2)


def _start(target: Any, *args: Any) -> Any:
    p = CTX.Process(target=target, args=args)
    p.start()
    return p


def test_two_processes_never_interleave(store_url: str, tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    counter.write_text("0")
    procs = [_start(_increment, str(tmp_path), store_url, w, str(counter), ROUNDS) for w in "ab"]
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert int(counter.read_text()) == 2 * ROUNDS


def test_timeout_then_free_after_release(store_url: str, tmp_path: Path) -> None:
    ready, release = CTX.Event(), CTX.Event()
    holder = _start(_hold_lock, str(tmp_path), store_url, ready, release)
    mine = _settings(tmp_path, store_url, "me")
    try:
        assert ready.wait(60), "holder never acquired the lock"
        with pytest.raises(LockTimeoutError, match="held"), locked(mine, "held", timeout=0.3):
            pass
        with pytest.raises(LockTimeoutError, match="held"), locked(mine, "held", timeout=0):
            pass
    finally:
        release.set()
        holder.join(60)
    assert holder.exitcode == 0
    other = _settings(tmp_path, store_url, "other")
    # held by us now: a second holder (another session / file handle) is refused
    with locked(mine, "held", timeout=5), pytest.raises(LockTimeoutError), locked(other, "held", timeout=0):
        pass


def test_killed_holder_frees_the_lock(store_url: str, tmp_path: Path) -> None:
    ready = CTX.Event()
    holder = _start(_hold_until_killed, str(tmp_path), store_url, ready)
    try:
        assert ready.wait(60), "holder never acquired the lock"
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(30)
        with locked(_settings(tmp_path, store_url, "me"), "held", timeout=15):
            pass  # the server / kernel freed it when the holder died
    finally:
        if holder.is_alive():
            holder.kill()
    assert holder.exitcode == -signal.SIGKILL


def _acquire_within(lease: LeaderLease, seconds: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        if lease.try_acquire():
            return time.monotonic() - t0
        time.sleep(0.1)
    raise AssertionError(f"lease not acquired within {seconds}s")


def test_leader_fails_over_after_sigkill(store_url: str, tmp_path: Path) -> None:
    ready = CTX.Event()
    leader = _start(_lead, str(tmp_path), store_url, ready)
    standby = LeaderLease(_settings(tmp_path, store_url, "standby"), "controller")
    try:
        assert ready.wait(60), "leader never acquired the lease"
        assert not standby.try_acquire() and not standby.held()
        os.kill(leader.pid, signal.SIGKILL)
        took = _acquire_within(standby, 15)
        assert standby.held()
        print(f"standby took over {took:.2f}s after SIGKILL")
    finally:
        if leader.is_alive():
            leader.kill()
        leader.join(30)
        standby.release()
    assert not standby.held()
    again = LeaderLease(_settings(tmp_path, store_url, "third"), "controller")
    assert again.try_acquire()  # released: free for the next one
    again.release()


@pytest.mark.parametrize("store_url", ["postgres"], indirect=True)
@pytest.mark.postgres
def test_lost_connection_is_lost_leadership(store_url: str, tmp_path: Path) -> None:
    lease = LeaderLease(_settings(tmp_path, store_url, "a"), "controller")
    standby = LeaderLease(_settings(tmp_path, store_url, "b"), "controller")
    assert lease.try_acquire() and lease.held()
    a, b = advisory.lock_key("leader-controller")
    admin = create_engine(store_url)
    try:
        with admin.begin() as conn:  # the server drops the leader's session (as a failover would)
            killed = conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
                    " AND classid = CAST(:a AS oid) AND objid = CAST(:b AS oid) AND objsubid = 2"
                ),
                {"a": a, "b": b},
            ).all()
        assert [tuple(r) for r in killed] == [(True,)]
        assert standby.try_acquire()
        time.sleep(HELD_CHECK_SECONDS + 0.1)  # held() answers from its last check for up to this long
        assert not lease.held()
        assert not lease.try_acquire()  # the standby leads now
    finally:
        standby.release()
        lease.release()
        admin.dispose()
