"""Cross-process, cross-host locks: promotions, rollbacks, registrations, and role leadership.

A registry alias move is several registry calls plus an audit row; two processes interleaving
them could leave ``champion`` and ``previous-champion`` pointing at the wrong versions. Every
such sequence runs under :func:`locked`. Which lock depends on ``settings.database``:

- PostgreSQL: a session advisory lock on a dedicated connection (:mod:`.advisory`), so processes
  on any host that share the database serialise; the server frees it if the holder dies.
- SQLite (one machine): an OS file lock under ``<home>/locks``, freed by the kernel if the holder
  dies; it protects only processes that share that folder.

:class:`LeaderLease` gives one process the leadership of a role (one active controller) on the
same two mechanisms, held for the leader's life instead of one block.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Protocol

from filelock import FileLock, Timeout
from sqlalchemy import Connection
from sqlalchemy.exc import SQLAlchemyError

from mnistops.errors import ConfigError, LockTimeoutError
from mnistops.settings import Settings
from mnistops.store import advisory
from mnistops.store.engine import normalize_url

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0  # seconds; a promotion takes well under a second
HELD_CHECK_SECONDS = 1.0  # LeaderLease.held() asks PostgreSQL at most this often
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def _check_name(name: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"invalid lock name {name!r}")
    return name


def uses_postgres(settings: Settings) -> bool:
    """True if locks of these settings are PostgreSQL advisory locks (else file locks)."""
    return normalize_url(settings.database).drivername.startswith("postgresql")


def lock_path(settings: Settings, name: str) -> Path:
    """Path of the lock file ``<home>/locks/<name>.lock`` (not created here; SQLite only).

    Raises:
        ConfigError: ``name`` is not a plain identifier (it becomes a file name).
    """
    return settings.home / "locks" / f"{_check_name(name)}.lock"


@contextmanager
def locked(settings: Settings, name: str = "registry", timeout: float = DEFAULT_TIMEOUT) -> Iterator[None]:
    """Hold the cross-process lock ``name`` for the duration of the ``with`` block.

    Args:
        settings: ``database`` picks the mechanism; ``home`` holds the lock files on SQLite.
        name: lock name (a plain identifier).
        timeout: seconds to wait before giving up; 0 = try once.

    Raises:
        LockTimeoutError: another process held the lock for longer than ``timeout``.
        StoreError: PostgreSQL unreachable.
        ConfigError: invalid ``name``.
    """
    _check_name(name)
    if uses_postgres(settings):
        with advisory.session_lock(settings.database, name, timeout):
            yield
        return
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
        yield
    finally:
        lock.release()


class _Lease(Protocol):
    def try_acquire(self) -> bool: ...
    def held(self) -> bool: ...
    def release(self) -> None: ...


class _FileLease:
    """Leadership as an OS file lock held open (one machine)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock: FileLock | None = None

    def try_acquire(self) -> bool:
        if self._lock is not None and self._lock.is_locked:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(self.path, timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            return False
        self._lock = lock
        return True

    def held(self) -> bool:
        return self._lock is not None and self._lock.is_locked

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None


class _PgLease:
    """Leadership as a session advisory lock on a dedicated connection (any host).

    The lock lives as long as the connection: a dead leader's session ends and frees it; a
    leader whose connection breaks has lost it, which :meth:`held` notices within
    ``HELD_CHECK_SECONDS`` plus the TCP timeout of :mod:`.advisory`.
    """

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self._conn: Connection | None = None
        self._checked = 0.0
        self._mutex = threading.Lock()  # one connection, used by whichever thread asks

    def try_acquire(self) -> bool:
        if self.held():
            return True
        with self._mutex:
            try:
                conn = advisory.connect(self.url)
            except SQLAlchemyError as exc:
                log.warning("leader lease %s: database unavailable: %s", self.name, exc)
                return False
            try:
                got = advisory.try_lock(conn, self.name)
            except SQLAlchemyError as exc:
                log.warning("leader lease %s: %s", self.name, exc)
                got = False
            if not got:
                with suppress(SQLAlchemyError):
                    conn.close()
                return False
            self._conn, self._checked = conn, time.monotonic()
            return True

    def held(self) -> bool:
        with self._mutex:
            if self._conn is None:
                return False
            if time.monotonic() - self._checked < HELD_CHECK_SECONDS:
                return True
            try:
                ok = advisory.holds(self._conn, self.name)
            except SQLAlchemyError as exc:
                log.warning("leader lease %s lost: %s", self.name, exc)
                ok = False
            if ok:
                self._checked = time.monotonic()
            else:
                self._close()
            return ok

    def release(self) -> None:
        with self._mutex:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            with suppress(SQLAlchemyError):
                self._conn.close()  # ends the session: the lock goes with it
            self._conn = None


class LeaderLease:
    """Exclusive leadership of a role (one active controller) across processes and hosts.

    PostgreSQL: ``pg_try_advisory_lock`` held on a dedicated connection for the leader's life
    (lost connection = lost leadership). SQLite: an OS file lock held open, freed by the kernel
    if the process dies.

    Args:
        settings: ``database`` (which implementation applies) and ``home`` (lock folder on SQLite).
        name: what is led, e.g. ``"controller"``.

    Raises:
        ConfigError: ``name`` is not a plain identifier.
    """

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings, self.name = settings, name
        key = f"leader-{_check_name(name)}"
        self._impl: _Lease = (
            _PgLease(settings.database, key)
            if uses_postgres(settings)
            else _FileLease(lock_path(settings, key))
        )

    def try_acquire(self) -> bool:
        """Become the leader if nobody is; never blocks for long. True if this process now leads."""
        return self._impl.try_acquire()

    def held(self) -> bool:
        """True while this process still leads (call before every step it takes as the leader)."""
        return self._impl.held()

    def release(self) -> None:
        """Step down (idempotent)."""
        self._impl.release()
