"""Alembic glue of the operational database: configuration in code, revision checks, legacy stamps.

The revisions live in ``store/migrations/versions`` (shipped with the package); no ``alembic.ini``
is needed at run time. Everything here runs on a connection the caller opened inside its own
transaction, which already holds the migration lock (see :meth:`.engine.Database.migrate`), so
checking the revision, adopting a legacy database and upgrading are one atomic step.

Databases made before Alembic carry a ``schema_version`` table written by the hand-written runner:
version 1 is the released schema (revision ``0001``), version 2 the interim control-plane schema
(revision ``0002``). Such a database is brought to that revision, stamped, and loses the table.
"""

from __future__ import annotations

import threading
from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text

from mnistops.errors import StoreError

SCRIPT_LOCATION = "mnistops.store:migrations"
LEGACY_TABLE = "schema_version"
# schema_version of the pre-Alembic runner -> the revision with the same tables
LEGACY_REVISIONS = {1: "0001", 2: "0002"}


def config(conn: Connection | None = None) -> Config:
    """An Alembic ``Config`` for our revisions, bound to ``conn`` (read by ``migrations/env.py``)."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    cfg.attributes["connection"] = conn
    return cfg


@cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(config())


def head() -> str:
    """The newest revision this code knows."""
    rev = _script().get_current_head()
    if rev is None:  # only if the package lost its versions/ folder
        raise StoreError("no schema revisions found in the mnistops package")
    return rev


def known() -> set[str]:
    """Every revision this code knows."""
    return {s.revision for s in _script().walk_revisions()}


def current(conn: Connection) -> str | None:
    """The revision stamped in the database (None: not under Alembic yet).

    Raises:
        StoreError: several heads (branched revisions: not something this code writes).
    """
    heads = MigrationContext.configure(conn).get_current_heads()
    if len(heads) > 1:
        raise StoreError(f"database has several schema heads {sorted(heads)}; expected one")
    return heads[0] if heads else None


def check_known(rev: str | None) -> None:
    """Refuse a database stamped with a revision this code does not have.

    Raises:
        StoreError: ``rev`` is unknown (a newer mnistops migrated the database).
    """
    if rev is not None and rev not in known():
        raise StoreError(
            f"database schema is at revision {rev!r}, which this code does not know (newest: {head()!r}):"
            " a newer mnistops migrated it; upgrade mnistops"
        )


ALEMBIC_LOCK = threading.RLock()  # see upgrade()


def upgrade(conn: Connection) -> str:
    """Bring the database on ``conn`` to the head revision; return it.

    Raises:
        StoreError: unknown revision, or a pre-Alembic ``schema_version`` this code does not know.
    """
    rev = current(conn)
    check_known(rev)
    if rev is None and inspect(conn).has_table(LEGACY_TABLE):
        _adopt_legacy(conn)
    if current(conn) != head():
        # Alembic's `context`/`op` proxies are module globals: two upgrades at once in one process
        # (two stores, or a store's writer thread) would tear each other's proxies down
        with ALEMBIC_LOCK:
            command.upgrade(config(conn), "head")
    return head()


def _adopt_legacy(conn: Connection) -> None:
    version = conn.execute(text(f"SELECT max(version) FROM {LEGACY_TABLE}")).scalar()
    # an empty table: the released runner crashed between creating and stamping it (its v1)
    target = LEGACY_REVISIONS.get(1 if version is None else int(version))
    if target is None:
        raise StoreError(
            f"database has pre-Alembic schema_version {version}, which this code does not know:"
            " a newer mnistops created it; upgrade mnistops"
        )
    cfg = config(conn)
    # 0001 creates only the released tables that are missing (promotion_events appeared on the
    # first promotion); a version-2 database already has 0002's shape and is only stamped
    command.upgrade(cfg, "0001")
    if target != "0001":
        command.stamp(cfg, target)
    conn.execute(text(f"DROP TABLE {LEGACY_TABLE}"))


def new_revision(message: str) -> None:
    """Write a new revision file from the difference between ``schema.py`` and the head (developers).

    Runs against a scratch SQLite database migrated to head; review the generated file.
    """
    import tempfile

    from sqlalchemy import create_engine

    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/scratch.db")
        with engine.begin() as conn:
            command.upgrade(config(conn), "head")
            command.revision(config(conn), message, autogenerate=True, rev_id=f"{len(known()) + 1:04d}")
        engine.dispose()
