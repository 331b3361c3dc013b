"""The cross-process registry lock: mutual exclusion between processes, timeout, name checks."""

from __future__ import annotations

import multiprocessing as mp
import time
from pathlib import Path

import pytest

from mnistops.errors import ConfigError, LockTimeoutError
from mnistops.settings import Settings
from mnistops.store.lock import lock_path, locked

ROUNDS = 20


def _increment(home: str, counter: str, rounds: int) -> None:
    """Non-atomic read-modify-write: loses updates unless the lock serialises it."""
    settings = Settings(home=Path(home))
    path = Path(counter)
    for _ in range(rounds):
        with locked(settings, "counter", timeout=60):
            value = int(path.read_text())
            time.sleep(0.002)  # widen the race window so a missing lock would show
            path.write_text(str(value + 1))


def _hold(home: str, ready: object, release: object) -> None:
    settings = Settings(home=Path(home))
    with locked(settings, "held"):
        ready.set()  # type: ignore[attr-defined]
        release.wait(60)  # type: ignore[attr-defined]


def test_two_processes_never_interleave(tmp_path: Path) -> None:
    counter = tmp_path / "counter.txt"
    counter.write_text("0")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_increment, args=(str(tmp_path), str(counter), ROUNDS)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert int(counter.read_text()) == 2 * ROUNDS


def test_timeout_raises_lock_timeout_error(tmp_path: Path) -> None:
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(tmp_path), ready, release))
    holder.start()
    try:
        assert ready.wait(60), "holder never acquired the lock"
        with (
            pytest.raises(LockTimeoutError, match="held"),
            locked(Settings(home=tmp_path), "held", timeout=0.2),
        ):
            pass
    finally:
        release.set()
        holder.join(60)
    # released by the holder: now it is free
    with locked(Settings(home=tmp_path), "held", timeout=5) as path:
        assert path == lock_path(Settings(home=tmp_path), "held") and path.exists()


def test_lock_names_are_plain_file_names(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        lock_path(Settings(home=tmp_path), "../escape")
