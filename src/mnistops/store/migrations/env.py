"""Alembic environment of the operational database (run by Alembic, never imported).

:meth:`mnistops.store.engine.Database.migrate` builds the Alembic ``Config`` in code and hands over
an open connection (``config.attributes["connection"]``) inside its own transaction, which already
holds the migration lock; nothing here opens a connection or commits. SQLite gets batch mode
(``ALTER TABLE`` there cannot change most things in place: batch operations copy the table).

A new revision: edit ``store/schema.py``, then from the repository root::

    python -c "from mnistops.store.revisions import new_revision; new_revision('what changed')"

and review the generated file in ``versions/`` (autogenerate misses renames and data moves).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from mnistops.store import schema


def run_migrations_online() -> None:
    """Run the pending revisions on the connection the caller opened."""
    conn = context.config.attributes.get("connection")
    if not isinstance(conn, Connection):
        raise RuntimeError("mnistops migrations run through Database.migrate() (no alembic.ini)")
    context.configure(
        connection=conn,
        target_metadata=schema.metadata,
        render_as_batch=conn.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise RuntimeError("offline (--sql) mode is not supported: migrate a live database")
run_migrations_online()
