"""Cross-process locks on files under ``<home>/locks`` (promotions, rollbacks, registrations, retraining).

A registry alias move is several registry calls plus an audit row; two processes interleaving
them could leave ``champion`` and ``previous-champion`` pointing at the wrong versions. Every
such sequence runs under :func:`locked`. The lock is an OS advisory lock (``fcntl``), so it is
released automatically if the holder dies. It only protects processes sharing one filesystem:
several hosts against one PostgreSQL/remote registry would need a database lock instead.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from mnistops.errors import ConfigError, LockTimeoutError
from mnistops.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0  # seconds; a promotion takes well under a second
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def lock_path(settings: Settings, name: str) -> Path:
    """Path of the lock file ``<home>/locks/<name>.lock`` (not created here).

    Raises:
        ConfigError: ``name`` is not a plain identifier (it becomes a file name).
    """
    if not _NAME.match(name):
        raise ConfigError(f"invalid lock name {name!r}")
    return settings.home / "locks" / f"{name}.lock"


@contextmanager
def locked(settings: Settings, name: str = "registry", timeout: float = DEFAULT_TIMEOUT) -> Iterator[Path]:
    """Hold the cross-process lock ``name`` for the duration of the ``with`` block.

    Args:
        settings: where the lock folder lives (``settings.home``).
        name: lock name; one file per name.
        timeout: seconds to wait before giving up.

    Yields:
        The lock file path.

    Raises:
        LockTimeoutError: another process held the lock for longer than ``timeout``.
    """
    path = lock_path(settings, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    # thread_local=False: the lock belongs to the process, so a worker thread may release it
    lock = FileLock(path, timeout=timeout, thread_local=False)
    t0 = time.monotonic()
    try:
        lock.acquire()
    except Timeout as exc:
        raise LockTimeoutError(
            f"lock {name!r} ({path}) still held by another process after {timeout:.0f}s"
        ) from exc
    waited = time.monotonic() - t0
    if waited > 1.0:
        log.info("waited %.1fs for lock %s", waited, name)
    try:
        yield path
    finally:
        lock.release()


class LeaderLease:
    """Exclusive leadership of a role (one active controller) across processes.

    Interface used by the roles; the implementation here is the one-machine one (an OS file lock
    held for the leader's life, released by the kernel if the process dies). The PostgreSQL
    implementation holds ``pg_try_advisory_lock`` on a dedicated connection for the leader's life.

    Args:
        settings: ``home`` (lock folder) and ``database`` (which implementation applies).
        name: what is led, e.g. ``"controller"``.
    """

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings, self.name = settings, name
        self._lock: FileLock | None = None

    def try_acquire(self) -> bool:
        """Become the leader if nobody is; never blocks. True if this process now leads."""
        if self._lock is not None and self._lock.is_locked:
            return True
        path = lock_path(self.settings, f"leader-{self.name}")
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(path, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            return False
        self._lock = lock
        return True

    def held(self) -> bool:
        """True while this process still leads (call before every step it takes as the leader)."""
        return self._lock is not None and self._lock.is_locked

    def release(self) -> None:
        """Step down (idempotent)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None
