"""Database plumbing of the monitoring store: engines, SQLite pragmas, transactions, migrations.

SQLite (embedded default) runs in WAL mode so the monitor can read while the service writes;
write transactions start with ``BEGIN IMMEDIATE`` so read-then-write code waits on
``busy_timeout`` instead of failing with SQLITE_BUSY on lock upgrade. PostgreSQL is reached
through psycopg 3 (``postgresql+psycopg://``). Every driver error surfaces as :class:`StoreError`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, inspect, select, text, update
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from mnistops.errors import ConfigError, StoreError
from mnistops.store import schema

_WRITE_OPTION = "mnistops_write"
_PG_MIGRATION_LOCK = 0x6D6E6973  # advisory lock key: serializes concurrent migrations on one server


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


def _store_error(e: SQLAlchemyError, where: str) -> StoreError:
    orig = getattr(e, "orig", None) or e
    msg = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    err = StoreError(f"prediction store ({where}): {type(orig).__name__}: {msg}")
    err.__cause__ = e
    return err


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
        if self.is_sqlite:
            self._engine = self._sqlite_engine(busy_timeout_ms)
        else:
            self._engine = create_engine(
                self.url, pool_pre_ping=True, connect_args={"connect_timeout": connect_timeout_s}
            )
        # same pool; the option makes the "begin" hook emit BEGIN IMMEDIATE on SQLite
        self._write_engine: Engine = self._engine.execution_options(**{_WRITE_OPTION: True})

    def _sqlite_engine(self, busy_timeout_ms: int) -> Engine:
        db = self.url.database
        if db and db != ":memory:" and not db.startswith("file:"):
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            self.url, connect_args={"timeout": busy_timeout_ms / 1000, "check_same_thread": False}
        )

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
    def migrate(self) -> int:
        """Create the schema or run forward upgrades; idempotent and safe across processes.

        Returns:
            The schema version now in the database.

        Raises:
            StoreError: database unreachable, or its schema is newer than this code.
        """
        if self._schema_ready:
            return schema.latest_version()
        with self._schema_lock:
            if not self._schema_ready:
                try:
                    with self._write_engine.begin() as conn:
                        self._migrate(conn)
                except SQLAlchemyError as e:
                    raise _store_error(e, self._where) from e
                self._schema_ready = True
        return schema.latest_version()

    def _migrate(self, conn: Connection) -> None:
        if not self.is_sqlite:
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATION_LOCK})
        latest = schema.latest_version()
        now = time.time()
        if not inspect(conn).has_table(schema.schema_version.name):
            schema.metadata.create_all(conn)  # fresh database: current tables, stamped latest
            conn.execute(insert(schema.schema_version).values(version=latest, applied_at=now))
            return
        current = conn.execute(select(schema.schema_version.c.version)).scalar()
        if current is None:  # table created but never stamped (crash between statements on SQLite)
            schema.metadata.create_all(conn)
            conn.execute(insert(schema.schema_version).values(version=latest, applied_at=now))
            return
        if current > latest:
            raise StoreError(
                f"database schema v{current} is newer than this code (v{latest}): upgrade mnistops"
            )
        for upgrade in schema.UPGRADES[current - 1 :]:
            upgrade(conn)
        if current < latest:
            conn.execute(update(schema.schema_version).values(version=latest, applied_at=now))

    def schema_version(self) -> int:
        """Version stamped in the database (after migrating)."""
        with self._tx(write=False) as conn:
            return int(conn.execute(select(schema.schema_version.c.version)).scalar_one())
