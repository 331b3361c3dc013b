"""Tables of the operational database: the one description of the LATEST schema.

Databases get this shape through the Alembic revisions in :mod:`mnistops.store.migrations`
(run by :meth:`mnistops.store.engine.Database.migrate`). So a schema change means: edit the table
here AND add a revision that brings an existing database to the same shape; a test compares a
migrated database with :data:`metadata` (Alembic's ``compare_metadata``) on SQLite and PostgreSQL.

``predictions.seq`` is the integer primary key (it must be for SQLite to autoincrement it) and the
uuid ``id`` is UNIQUE; seqs only grow but can have gaps (conflicts and rollbacks consume values).
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
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
    # --- lease (revision 0002): a worker owns a running job while lease_until is in the future and
    # extends it by heartbeats; an expired lease makes the job claimable again (attempts counts claims)
    Column("lease_owner", String, nullable=True),
    Column("lease_until", Float, nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("attempts", Integer, nullable=False, server_default="0"),
)

# Durable promotion history (MLflow keeps only the current alias targets): see store.audit.
promotion_events = Table(
    "promotion_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("time", DateTime(timezone=True), nullable=False),
    Column("model_name", String(256), nullable=False, index=True),
    Column("action", String(32), nullable=False),  # promote | rollback | auto-rollback
    Column("from_version", String(32), nullable=True),
    Column("to_version", String(32), nullable=False),
    Column("reason", Text, nullable=False, default=""),
    Column("actor", String(256), nullable=False),
    Column("forced", Boolean, nullable=False, default=False),
    Column("details", Text, nullable=False, default="{}"),  # JSON: gate summary etc.
)

# --- control plane (revision 0002): leadership, rollouts, the timeline, role state ----------------

# One row per named lease (e.g. the controller's leadership on SQLite); PostgreSQL uses advisory locks.
leases = Table(
    "leases",
    metadata,
    Column("name", String, primary_key=True),
    Column("owner", String, nullable=False),
    Column("until", Float, nullable=False),
    Column("acquired_at", Float, nullable=False),
)

# One row per rollout attempt (Argo Rollouts' shape): the controller's durable state machine,
# updated with compare-and-set on ``revision``.
rollouts = Table(
    "rollouts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("revision", Integer, nullable=False, server_default="0"),
    Column("state", String, nullable=False, index=True),
    Column("job_id", Integer, nullable=True),
    Column("version", String, nullable=True),  # the challenger / new champion
    Column("previous_version", String, nullable=True),  # what a rollback restores
    Column("reason", Text, nullable=False, server_default=""),
    Column("data", JSON, nullable=False),  # step-specific facts (watch progress, baselines, seqs)
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

# The closed loop's timeline (what the demo prints and /v1/loop/events serves). ``key`` makes a step
# idempotent: a restarted controller that repeats a step hits the unique key instead of a second row.
timeline = Table(
    "timeline",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("ts", Float, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("kind", String, nullable=False, index=True),
    Column("detail", Text, nullable=False, server_default=""),
    Column("version", String, nullable=True),
    Column("data", JSON, nullable=False),
    Column("key", String, nullable=True, unique=True),
)

# Small durable key/value state of a role (e.g. the controller's cursors); JSON values.
role_state = Table(
    "role_state",
    metadata,
    Column("name", String, primary_key=True),
    Column("value", JSON, nullable=False),
    Column("updated_at", Float, nullable=False),
)
