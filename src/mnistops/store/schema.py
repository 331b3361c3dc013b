"""Tables of the monitoring store and their forward migrations.

The tables below always describe the LATEST schema. A fresh database is created from them and
stamped with :func:`latest_version`; an existing database at version ``v`` runs ``UPGRADES[v-1:]``
(``UPGRADES[i]`` upgrades version ``i + 1`` to ``i + 2``). So a schema change means: edit the table
here AND append an upgrade that brings an existing database to the same shape.

``predictions.seq`` is the integer primary key (it must be for SQLite to autoincrement it) and the
uuid ``id`` is UNIQUE; seqs only grow but can have gaps (conflicts and rollbacks consume values).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
)

metadata = MetaData()

# SQLite only autoincrements "INTEGER PRIMARY KEY" (an alias of the rowid); PostgreSQL gets BIGSERIAL.
_SEQ = BigInteger().with_variant(Integer, "sqlite")

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, nullable=False),
    Column("applied_at", Float, nullable=False),
)

predictions = Table(
    "predictions",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("id", String, nullable=False, unique=True),
    Column("ts", Float, nullable=False, index=True),
    Column("model_version", String, nullable=False, index=True),
    Column("image", LargeBinary, nullable=False),  # 784 uint8, row-major 28x28
    Column("probs", LargeBinary, nullable=False),  # 10 float32 little-endian
    Column("label", SmallInteger, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("latency_ms", Float, nullable=False),
    Column("client", String, nullable=True),
    Column("served_by", String, nullable=False, server_default="champion"),
    Column("true_label", SmallInteger, nullable=True),
    Column("feedback_ts", Float, nullable=True),
    sqlite_autoincrement=True,  # never reuse a seq after deletes: windows rely on growing seqs
)
Index(
    "ix_predictions_labelled_seq",
    predictions.c.seq,
    sqlite_where=predictions.c.true_label.is_not(None),
    postgresql_where=predictions.c.true_label.is_not(None),
)

shadow_predictions = Table(
    "shadow_predictions",
    metadata,
    # no foreign key: a shadow row may be committed in the same batch as (or before) its prediction
    Column("prediction_id", String, primary_key=True),
    Column("model_version", String, primary_key=True),
    Column("ts", Float, nullable=False),
    Column("probs", LargeBinary, nullable=False),
    Column("label", SmallInteger, nullable=False),
    Column("confidence", Float, nullable=False),
    Column("latency_ms", Float, nullable=True),
)

alert_events = Table(
    "alert_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("rule", String, nullable=False, index=True),
    Column("severity", String, nullable=False),
    Column("state", String, nullable=False),
    Column("started_at", Float, nullable=False),
    Column("resolved_at", Float, nullable=True),
    Column("summary", Text, nullable=False, server_default=""),
    Column("labels", JSON, nullable=False),
    Column("fingerprint", String, nullable=False, index=True),
)
# At most one firing event per fingerprint, even with concurrent writers (dedup is a DB invariant).
Index(
    "uq_alert_events_firing",
    alert_events.c.fingerprint,
    unique=True,
    sqlite_where=alert_events.c.state == "firing",
    postgresql_where=alert_events.c.state == "firing",
)

monitor_windows = Table(
    "monitor_windows",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("window", Integer, nullable=False, index=True),
    Column("end_seq", BigInteger, nullable=False),
    Column("end_ts", Float, nullable=False),
    Column("n", Integer, nullable=False),
    Column("model_version", String, nullable=False),
    Column("results", JSON, nullable=False),
    Column("drifted", Boolean, nullable=False, server_default="0"),
    Column("estimated_accuracy", Float, nullable=True),
    Column("estimated_lower", Float, nullable=True),
    Column("estimated_upper", Float, nullable=True),
    Column("realized_accuracy", Float, nullable=True),
    Column("created_at", Float, nullable=False),
)

retrain_jobs = Table(
    "retrain_jobs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("state", String, nullable=False, index=True),
    Column("trigger", String, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("version", String, nullable=True),
    Column("log", Text, nullable=False, server_default=""),
    Column("error", Text, nullable=True),
    Column("details", JSON, nullable=False),
)

Upgrade = Callable[[Connection], None]

# UPGRADES[i] takes an existing database from version i + 1 to i + 2 (runs inside one transaction).
UPGRADES: list[Upgrade] = []


def latest_version() -> int:
    """Schema version this code writes (1 + number of upgrades)."""
    return 1 + len(UPGRADES)
