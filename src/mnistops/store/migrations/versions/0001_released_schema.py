"""The schema released before the control plane: prediction log, alerts, windows, jobs, audit.

Exactly the tables of ``monitor/schema.py`` (its hand-written runner's version 1) and
``audit.py``'s ``promotion_events`` at commit 2f3e9e4. That code created its tables without an
Alembic stamp, and ``promotion_events`` only when the registry first wrote to it, so a database it
made may hold some of these tables and not others: each table here is created only if missing
(an existing one is that code's table, already of this shape).

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# SQLite only autoincrements "INTEGER PRIMARY KEY" (an alias of the rowid); PostgreSQL gets BIGSERIAL.
_SEQ = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLES = (
    "predictions",
    "shadow_predictions",
    "alert_events",
    "monitor_windows",
    "retrain_jobs",
    "promotion_events",
)


def _missing(name: str) -> bool:
    return not sa.inspect(op.get_bind()).has_table(name)


def _predictions() -> None:
    op.create_table(
        "predictions",
        sa.Column("seq", _SEQ, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("image", sa.LargeBinary(), nullable=False),
        sa.Column("probs", sa.LargeBinary(), nullable=False),
        sa.Column("label", sa.SmallInteger(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("client", sa.String(), nullable=True),
        sa.Column("served_by", sa.String(), nullable=False, server_default="champion"),
        sa.Column("true_label", sa.SmallInteger(), nullable=True),
        sa.Column("feedback_ts", sa.Float(), nullable=True),
        sa.UniqueConstraint("id"),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_predictions_ts", "predictions", ["ts"])
    op.create_index("ix_predictions_model_version", "predictions", ["model_version"])
    labelled = sa.text("true_label IS NOT NULL")
    op.create_index(
        "ix_predictions_labelled_seq",
        "predictions",
        ["seq"],
        sqlite_where=labelled,
        postgresql_where=labelled,
    )


def _shadow_predictions() -> None:
    op.create_table(
        "shadow_predictions",
        sa.Column("prediction_id", sa.String(), primary_key=True),
        sa.Column("model_version", sa.String(), primary_key=True),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("probs", sa.LargeBinary(), nullable=False),
        sa.Column("label", sa.SmallInteger(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
    )


def _alert_events() -> None:
    op.create_table(
        "alert_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("rule", sa.String(), nullable=False),
        sa.Column("severity", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("resolved_at", sa.Float(), nullable=True),
        sa.Column("summary", sa.Text(), nullable=False, server_default=""),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.String(), nullable=False),
    )
    op.create_index("ix_alert_events_rule", "alert_events", ["rule"])
    op.create_index("ix_alert_events_fingerprint", "alert_events", ["fingerprint"])
    firing = sa.text("state = 'firing'")
    op.create_index(
        "uq_alert_events_firing",
        "alert_events",
        ["fingerprint"],
        unique=True,
        sqlite_where=firing,
        postgresql_where=firing,
    )


def _monitor_windows() -> None:
    op.create_table(
        "monitor_windows",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("window", sa.Integer(), nullable=False),
        sa.Column("end_seq", sa.BigInteger(), nullable=False),
        sa.Column("end_ts", sa.Float(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("model_version", sa.String(), nullable=False),
        sa.Column("results", sa.JSON(), nullable=False),
        sa.Column("drifted", sa.Boolean(), nullable=False, server_default="0"),
        sa.Column("estimated_accuracy", sa.Float(), nullable=True),
        sa.Column("estimated_lower", sa.Float(), nullable=True),
        sa.Column("estimated_upper", sa.Float(), nullable=True),
        sa.Column("realized_accuracy", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
    )
    op.create_index("ix_monitor_windows_window", "monitor_windows", ["window"])


def _retrain_jobs() -> None:
    op.create_table(
        "retrain_jobs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("trigger", sa.String(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("version", sa.String(), nullable=True),
        sa.Column("log", sa.Text(), nullable=False, server_default=""),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
    )
    op.create_index("ix_retrain_jobs_state", "retrain_jobs", ["state"])


def _promotion_events() -> None:
    op.create_table(
        "promotion_events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_name", sa.String(256), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("from_version", sa.String(32), nullable=True),
        sa.Column("to_version", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor", sa.String(256), nullable=False),
        sa.Column("forced", sa.Boolean(), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
    )
    op.create_index("ix_promotion_events_model_name", "promotion_events", ["model_name"])


def upgrade() -> None:
    """Create the released tables that are missing."""
    creators = (
        _predictions,
        _shadow_predictions,
        _alert_events,
        _monitor_windows,
        _retrain_jobs,
        _promotion_events,
    )
    for name, create in zip(TABLES, creators, strict=True):
        if _missing(name):
            create()


def downgrade() -> None:
    """Drop every table of this revision (and its data)."""
    for name in reversed(TABLES):
        op.drop_table(name)
