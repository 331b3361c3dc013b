"""The one database layer: engines, SQLite pragmas, transactions, migrations (Alembic).

Every module that talks SQL goes through a :class:`Database`; one engine per URL and process is
shared by all of them (:func:`database` gives the process-wide instance).

SQLite (embedded default) runs in WAL mode so the monitor can read while the service writes;
write transactions start with ``BEGIN IMMEDIATE`` so read-then-write code waits on
``busy_timeout`` instead of failing with SQLITE_BUSY on lock upgrade. PostgreSQL is reached
through psycopg 3 (``postgresql+psycopg://``). Every driver error surfaces as :class:`StoreError`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic.util import CommandError
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from mnistops.errors import ConfigError, StoreError
from mnistops.store import revisions

_WRITE_OPTION = "mnistops_write"
_PG_MIGRATION_LOCK = 0x6D6E6973  # advisory lock key: serializes concurrent migrations on one server
# one engine (one pool) per (URL, options) and process, shared by every Database on that URL
_ENGINES: dict[tuple[str, int, int], Engine] = {}
_DATABASES: dict[str, Database] = {}
_CACHE_LOCK = threading.Lock()


def normalize_url(url: str) -> URL:
    """Parse a database URL; plain ``postgresql://`` / ``postgres://`` get the psycopg 3 driver.

    Raises:
        ConfigError: not a URL, or neither SQLite nor PostgreSQL.
    """
    try:
        u = make_url(url)
    except ArgumentError as e:
        raise ConfigError(f"invalid database URL {url!r}: {e}") from e
    if u.drivername in ("postgresql", "postgres"):
        u = u.set(drivername="postgresql+psycopg")
    if u.drivername.split("+")[0] not in ("sqlite", "postgresql"):
        raise ConfigError(f"unsupported database {u.drivername!r}: use sqlite:/// or postgresql+psycopg://")
    return u


def _store_error(e: SQLAlchemyError | CommandError, where: str) -> StoreError:
    orig = getattr(e, "orig", None) or e
    msg = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    err = StoreError(f"database ({where}): {type(orig).__name__}: {msg}")
    err.__cause__ = e
    return err


def _sqlite_engine(url: URL, busy_timeout_ms: int) -> Engine:
    db = url.database
    if db and db != ":memory:" and not db.startswith("file:"):
        Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # pysqlite's implicit BEGIN handling is unreliable; we emit BEGIN ourselves (hook below)
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cur.execute("PRAGMA synchronous=NORMAL")  # durable across app crashes; WAL keeps it consistent
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


def _shared_engine(url: URL, busy_timeout_ms: int, connect_timeout_s: int) -> Engine:
    if url.drivername.startswith("sqlite") and url.database in (None, "", ":memory:"):
        return _sqlite_engine(url, busy_timeout_ms)  # a private in-memory database: never shared
    key = (url.render_as_string(hide_password=False), busy_timeout_ms, connect_timeout_s)
    with _CACHE_LOCK:
        if key not in _ENGINES:
            if url.drivername.startswith("sqlite"):
                _ENGINES[key] = _sqlite_engine(url, busy_timeout_ms)
            else:
                _ENGINES[key] = create_engine(
                    url, pool_pre_ping=True, connect_args={"connect_timeout": connect_timeout_s}
                )
        return _ENGINES[key]


def database(url: str) -> Database:
    """The process-wide :class:`Database` of ``url`` (for modules without a store of their own).

    Raises:
        ConfigError: not a SQLite or PostgreSQL URL.
    """
    key = normalize_url(url).render_as_string(hide_password=False)
    with _CACHE_LOCK:
        db = _DATABASES.get(key)
    if db is None:
        db = Database(url)  # outside the lock: the constructor takes it for the engine
        with _CACHE_LOCK:
            db = _DATABASES.setdefault(key, db)
    return db


class Database:
    """Engine, transactions and schema management (base class of :class:`PredictionStore`).

    Nothing connects on construction: the schema is created or upgraded on first use (or by
    :meth:`migrate`), so a service can start while its database is still down.
    """

    def __init__(self, url: str, *, busy_timeout_ms: int = 5000, connect_timeout_s: int = 5) -> None:
        self.url = normalize_url(url)
        self.is_sqlite = self.url.drivername.startswith("sqlite")
        self._where = self.url.render_as_string(hide_password=True)
        self._schema_lock = threading.Lock()
        self._schema_ready = False
        self._engine = _shared_engine(self.url, busy_timeout_ms, connect_timeout_s)
        # same pool; the option makes the "begin" hook emit BEGIN IMMEDIATE on SQLite
        self._write_engine: Engine = self._engine.execution_options(**{_WRITE_OPTION: True})

    # --- transactions -----------------------------------------------------------------------
    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Connection]:
        """One transaction (committed on success); driver errors become :class:`StoreError`."""
        self.migrate()
        try:
            with (self._write_engine if write else self._engine).begin() as conn:
                yield conn
        except SQLAlchemyError as e:
            raise _store_error(e, self._where) from e

    def ping(self) -> bool:
        """True if the database answers a trivial query (never raises)."""
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            return True
        except SQLAlchemyError:
            return False

    def close(self) -> None:
        """Close pooled connections (the store can still be used; it reconnects)."""
        self._engine.dispose()

    # --- schema -----------------------------------------------------------------------------
    def migrate(self) -> str:
        """Bring the schema to the newest revision; idempotent and safe across processes.

        A first read checks the stamped revision; only if it is behind does a write transaction
        take the migration lock (PostgreSQL: ``pg_advisory_xact_lock``; SQLite: ``BEGIN
        IMMEDIATE``), check again and upgrade, all in that one transaction.

        Returns:
            The Alembic revision now in the database.

        Raises:
            StoreError: database unreachable, or its revision is unknown to this code (newer).
        """
        if self._schema_ready:
            return revisions.head()
        with self._schema_lock:
            if not self._schema_ready:
                try:
                    self._migrate()
                except (SQLAlchemyError, CommandError) as e:
                    raise _store_error(e, self._where) from e
                self._schema_ready = True
        return revisions.head()

    def _migrate(self) -> None:
        with self._engine.connect() as conn:
            rev = revisions.current(conn)
        revisions.check_known(rev)
        if rev == revisions.head():
            return
        with self._write_engine.begin() as conn:
            if not self.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
            revisions.upgrade(conn)

    def schema_revision(self) -> str | None:
        """The Alembic revision stamped in the database, without migrating (None: not stamped).

        Raises:
            StoreError: database unreachable.
        """
        try:
            with self._engine.connect() as conn:
                return revisions.current(conn)
        except SQLAlchemyError as e:
            raise _store_error(e, self._where) from e
