"""The retrain job queue (``retrain_jobs``): enqueue and read.

Minimal version for the controller (submit, get, list, active, latest); the worker's branch brings
the full queue (claim under a lease, heartbeat, guarded finish) behind the same names.

``submit`` returns the active (queued or running) job instead of a second one: one retrain at a
time, system-wide. The check-then-insert is one write transaction (``BEGIN IMMEDIATE`` on SQLite;
a transaction-scoped advisory lock on PostgreSQL), so two submitters never both insert.
"""

from __future__ import annotations

import builtins
import logging
import time
from typing import Any

from sqlalchemy import insert, select, text

from mnistops.errors import NotFoundError
from mnistops.store.engine import Database
from mnistops.store.events import _job
from mnistops.store.records import JobState, RetrainJob
from mnistops.store.schema import retrain_jobs

__all__ = ["ACTIVE_STATES", "JobQueue"]

log = logging.getLogger(__name__)
J = retrain_jobs.c
ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
_PG_SUBMIT_LOCK = 0x6D6E6A62  # advisory lock key: serialises check-then-insert across hosts


class JobQueue:
    """Retrain jobs on a :class:`~mnistops.store.engine.Database` (the ``PredictionStore`` is one)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def submit(
        self, trigger: str, details: dict[str, Any] | None = None, *, unique: bool = True
    ) -> RetrainJob:
        """Queue a job, or return the one already queued or running.

        Args:
            trigger: why (e.g. ``alerts:DataDriftSustained``, ``api:<client>``, ``cli``).
            details: JSON-ready facts stored with the job (e.g. ``{"reason": ...}``).
            unique: False always inserts (tests).

        Raises:
            StoreError: the database is unreachable.
        """
        with self.db._tx(write=True) as conn:
            if not self.db.is_sqlite:
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_SUBMIT_LOCK})
            active = conn.execute(
                select(retrain_jobs).where(J.state.in_(ACTIVE_STATES)).order_by(J.id).limit(1)
            ).first()
            if unique and active is not None:
                job = _job(active)
                log.info("retrain job %s is %s; not queueing another (%s)", job.id, job.state, trigger)
                return job
            values: dict[str, Any] = {
                "state": "queued",
                "trigger": trigger,
                "created_at": time.time(),
                "details": dict(details or {}),
            }
            job = _job(conn.execute(insert(retrain_jobs).values(**values).returning(*retrain_jobs.c)).one())
        log.info("queued retrain job %s (trigger %s)", job.id, trigger)
        return job

    def get(self, job_id: int) -> RetrainJob:
        """One job.

        Raises:
            NotFoundError: unknown id.
        """
        with self.db._tx(write=False) as conn:
            row = conn.execute(select(retrain_jobs).where(J.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"retrain job {job_id} not found")
        return _job(row)

    def list(self, *, state: JobState | None = None, limit: int = 50) -> builtins.list[RetrainJob]:
        """Jobs, newest first, optionally in one state."""
        q = select(retrain_jobs).order_by(J.id.desc()).limit(limit)
        if state is not None:
            q = q.where(J.state == state)
        with self.db._tx(write=False) as conn:
            return [_job(r) for r in conn.execute(q)]

    def active(self) -> RetrainJob | None:
        """The queued or running job (the oldest, if several), or None."""
        q = select(retrain_jobs).where(J.state.in_(ACTIVE_STATES)).order_by(J.id).limit(1)
        with self.db._tx(write=False) as conn:
            row = conn.execute(q).first()
        return None if row is None else _job(row)

    def latest(self) -> RetrainJob | None:
        """The newest job, or None."""
        jobs = self.list(limit=1)
        return jobs[0] if jobs else None
