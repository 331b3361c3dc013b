"""PostgreSQL advisory locks on dedicated connections: the cross-host side of :mod:`.lock`.

A session-level advisory lock belongs to one server connection and dies with it, so each lock
gets a connection of its own (no pool: closing it ends the session and frees the lock, even when
an unlock could not be sent). Keys use the two-``int4`` form ``(NAMESPACE, hash(name))``, a key
space apart from the single-``bigint`` key of the migration lock. Advisory locks are per
database: every schema and every deployment on one database shares them.

Dead peers: the client side gives up on a connection whose sent data stays unacknowledged for
``TCP_USER_TIMEOUT_MS``; the server side drops a silent client after its keepalives fail
(``SERVER_KEEPALIVE``: ~16 s), later than the client notices, so a partitioned leader learns it
lost the lease before another process can take it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from tenacity import Retrying, retry_if_exception_type, stop_after_delay, wait_exponential

from mnistops.errors import LockTimeoutError, StoreError
from mnistops.store.engine import normalize_url

log = logging.getLogger(__name__)

NAMESPACE = 0x6D6E6F70  # "mnop": first key of every mnistops advisory lock (fits a positive int4)
TCP_USER_TIMEOUT_MS = 5000
CONNECT_ARGS = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 2,
    "tcp_user_timeout": TCP_USER_TIMEOUT_MS,
}
SERVER_KEEPALIVE = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "2", "tcp_keepalives_count": "3"}
_LOCK_NOT_AVAILABLE = "55P03"  # SQLSTATE of a wait that hit lock_timeout
_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def lock_key(name: str) -> tuple[int, int]:
    """``(NAMESPACE, 31-bit hash of name)``: stable across processes, hosts and Python versions."""
    digest = hashlib.blake2b(name.encode(), digest_size=4).digest()
    return NAMESPACE, int.from_bytes(digest, "big") & 0x7FFFFFFF


def _engine(url: str) -> Engine:
    with _ENGINES_LOCK:
        if url not in _ENGINES:
            _ENGINES[url] = create_engine(
                normalize_url(url),
                poolclass=NullPool,
                isolation_level="AUTOCOMMIT",
                connect_args=CONNECT_ARGS,
            )
        return _ENGINES[url]


def connect(url: str) -> Connection:
    """A dedicated autocommit connection with keepalives on both ends.

    Raises:
        SQLAlchemyError: the server is unreachable.
    """
    conn = _engine(url).connect()
    try:  # one round trip for the server-side keepalives
        calls = ", ".join(f"set_config('{k}', :v{i}, false)" for i, k in enumerate(SERVER_KEEPALIVE))
        conn.execute(text(f"SELECT {calls}"), {f"v{i}": v for i, v in enumerate(SERVER_KEEPALIVE.values())})
    except SQLAlchemyError:
        conn.close()
        raise
    return conn


def try_lock(conn: Connection, name: str) -> bool:
    """Take the session lock ``name`` if free; never waits."""
    a, b = lock_key(name)
    return bool(conn.execute(text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": a, "b": b}).scalar())


def holds(conn: Connection, name: str) -> bool:
    """True if this session holds the lock ``name`` (one round trip; raises if the connection died)."""
    a, b = lock_key(name)
    q = text(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND pid = pg_backend_pid() AND classid = CAST(:a AS oid) AND objid = CAST(:b AS oid)"
        " AND objsubid = 2)"
    )
    return bool(conn.execute(q, {"a": a, "b": b}).scalar())


def _wait_lock(conn: Connection, name: str, timeout: float) -> None:
    a, b = lock_key(name)
    if timeout <= 0:
        if not try_lock(conn, name):
            raise LockTimeoutError(f"lock {name!r} (PostgreSQL advisory {a},{b}) held by another process")
        return
    # lock_timeout bounds the server-side wait (woken the moment the holder lets go)
    conn.execute(text("SELECT set_config('lock_timeout', :v, false)"), {"v": f"{int(timeout * 1000)}ms"})
    try:
        conn.execute(text("SELECT pg_advisory_lock(:a, :b)"), {"a": a, "b": b})
    except DBAPIError as exc:
        if getattr(exc.orig, "sqlstate", None) == _LOCK_NOT_AVAILABLE:
            raise LockTimeoutError(
                f"lock {name!r} (PostgreSQL advisory {a},{b}) still held by another process"
                f" after {timeout:.0f}s"
            ) from exc
        raise


@contextmanager
def session_lock(url: str, name: str, timeout: float) -> Iterator[None]:
    """Hold the advisory lock ``name`` on a dedicated connection for the ``with`` block.

    Connecting is retried (a restarting server) within the same ``timeout``.

    Raises:
        LockTimeoutError: another session held it for longer than ``timeout``.
        StoreError: the database stayed unreachable.
    """
    t0 = time.monotonic()
    try:
        conn = _connect_retrying(url, max(timeout, 1.0))
    except SQLAlchemyError as exc:
        raise StoreError(f"lock {name!r}: database unavailable: {exc.__class__.__name__}: {exc}") from exc
    try:
        try:
            _wait_lock(conn, name, timeout)
        except LockTimeoutError:
            raise
        except SQLAlchemyError as exc:
            raise StoreError(f"lock {name!r}: {exc.__class__.__name__}: {exc}") from exc
        waited = time.monotonic() - t0
        if waited > 1.0:
            log.info("waited %.1fs for lock %s", waited, name)
        yield
    finally:
        # closing ends the session, which frees the lock (no separate unlock to fail)
        with contextlib.suppress(SQLAlchemyError):
            conn.close()


def _connect_retrying(url: str, budget: float) -> Connection:
    for attempt in Retrying(
        retry=retry_if_exception_type(SQLAlchemyError),
        wait=wait_exponential(multiplier=0.1, max=2.0),
        stop=stop_after_delay(budget),
        reraise=True,
    ):
        with attempt:
            return connect(url)
    raise AssertionError("unreachable")  # Retrying either returns or re-raises
