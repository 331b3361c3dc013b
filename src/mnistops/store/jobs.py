"""The retrain job queue: rows of ``retrain_jobs`` claimed by workers under a lease.

``queued → running → succeeded | failed``. A worker claims the oldest claimable job (queued, or
running with an expired lease: its worker died) and owns it while ``lease_until`` is in the future;
it extends the lease by heartbeats and finishes the job by an update guarded by its owner id, so a
worker that lost its lease (and whose job another worker re-claimed) can no longer write. A job
claimed ``max_attempts`` times whose lease expired again is failed for good instead of being
claimed once more (a job that kills its worker must not kill every worker in turn).

Claiming is race-free across processes and hosts: PostgreSQL locks the candidate row with
``SELECT … FOR UPDATE SKIP LOCKED`` (concurrent claimers skip it and take the next one); SQLite
runs every write transaction under ``BEGIN IMMEDIATE`` (one writer at a time). Lease times come
from the database's clock, so workers on hosts with skewed clocks agree on when a lease expired.
"""

from __future__ import annotations

import builtins
import time
from typing import Any

from sqlalchemy import Connection, Row, and_, func, insert, or_, select, text, update

from mnistops.errors import NotFoundError
from mnistops.store.engine import Database
from mnistops.store.records import JobState, RetrainJob
from mnistops.store.schema import retrain_jobs

__all__ = ["ACTIVE_STATES", "JOB_STATES", "JobQueue"]

JOB_STATES: tuple[JobState, ...] = ("queued", "running", "succeeded", "failed")
ACTIVE_STATES: tuple[JobState, ...] = ("queued", "running")
J = retrain_jobs.c
# a claim fails at most this many exhausted jobs for good before it claims one (bounds the transaction)
_MAX_FAIL_PER_CLAIM = 20


def _job(row: Row[Any]) -> RetrainJob:
    m = dict(row._mapping)
    m["details"] = dict(m["details"] or {})
    m["attempts"] = int(m["attempts"] or 0)
    return RetrainJob(**m)


def _stamp(now: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(now))


class JobQueue:
    """Retrain jobs on a :class:`~mnistops.store.engine.Database` (e.g. the ``PredictionStore``).

    Args:
        db: the store whose engine and transactions are used (no engine of its own).
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def _now(self, conn: Connection) -> float:
        """Epoch seconds by the database's clock (one clock for every worker's lease)."""
        if self.db.is_sqlite:
            q = "SELECT (julianday('now') - 2440587.5) * 86400.0"
        else:
            q = "SELECT extract(epoch FROM clock_timestamp())"
        return float(conn.execute(text(q)).scalar_one())

    # --- enqueue ----------------------------------------------------------------------------
    def submit(
        self, trigger: str, details: dict[str, Any] | None = None, *, unique: bool = True
    ) -> RetrainJob:
        """Queue a job; with ``unique`` (the default) return the active job instead if there is one.

        One retrain at a time, system-wide: check-then-insert runs in one write transaction that
        excludes concurrent submitters (SQLite ``BEGIN IMMEDIATE``; PostgreSQL a table lock that
        conflicts with itself and with writers, not with readers).

        Args:
            trigger: who or what asked (recorded).
            details: JSON-ready facts for the job (e.g. the alert that triggered it).
            unique: False always inserts (tests, backfills).
        """
        with self.db._tx(write=True) as conn:
            if unique:
                if not self.db.is_sqlite:
                    conn.execute(text("LOCK TABLE retrain_jobs IN SHARE ROW EXCLUSIVE MODE"))
                q = select(retrain_jobs).where(J.state.in_(ACTIVE_STATES)).order_by(J.id).limit(1)
                row = conn.execute(q).first()
                if row is not None:
                    return _job(row)
            values: dict[str, Any] = {
                "state": "queued",
                "trigger": trigger,
                "created_at": time.time(),
                "details": dict(details or {}),
                "attempts": 0,
            }
            row = conn.execute(insert(retrain_jobs).values(**values).returning(*retrain_jobs.c)).one()
            return _job(row)

    # --- claim / heartbeat / finish / release (the worker's side) --------------------------
    def claim(
        self, owner: str, lease_seconds: float, *, max_attempts: int = 3, job_id: int | None = None
    ) -> RetrainJob | None:
        """Claim the oldest claimable job (or job ``job_id`` if claimable); None if there is none.

        Claimable: queued, or running with ``lease_until`` in the past. Claiming sets the job
        running with ``lease_owner=owner``, ``lease_until = now + lease_seconds``, ``heartbeat_at``,
        ``started_at`` and ``attempts + 1``. A candidate already claimed ``max_attempts`` times
        is failed for good (with the reason) and the next candidate is tried.
        """
        with self.db._tx(write=True) as conn:
            now = self._now(conn)
            # a running row without a lease was left by code before leases: treat it as expired
            expired = or_(J.lease_until.is_(None), J.lease_until < now)
            claimable = or_(J.state == "queued", and_(J.state == "running", expired))
            q = select(retrain_jobs).where(claimable).order_by(J.id).limit(1)
            if job_id is not None:
                q = q.where(J.id == job_id)
            q = q.with_for_update(skip_locked=True)  # no-op on SQLite (BEGIN IMMEDIATE serialises)
            for _ in range(_MAX_FAIL_PER_CLAIM):
                row = conn.execute(q).first()
                if row is None:
                    return None
                job = _job(row)
                if job.attempts < max_attempts:
                    return self._take(conn, job, owner, lease_seconds, now)
                self._exhaust(conn, job, max_attempts, now)
        return None

    def _take(self, conn: Connection, job: RetrainJob, owner: str, lease: float, now: float) -> RetrainJob:
        attempt = job.attempts + 1
        why = "" if job.state == "queued" else f" (lease of {job.lease_owner} expired)"
        line = f"{_stamp(now)} claimed by {owner}, attempt {attempt}{why}\n"
        values = {
            "state": "running",
            "lease_owner": owner,
            "lease_until": now + lease,
            "heartbeat_at": now,
            "started_at": now,
            "attempts": attempt,
            "log": J.log + line,
        }
        row = conn.execute(
            update(retrain_jobs).where(J.id == job.id).values(**values).returning(*retrain_jobs.c)
        ).one()
        return _job(row)

    def _exhaust(self, conn: Connection, job: RetrainJob, max_attempts: int, now: float) -> None:
        last = f"; the lease of {job.lease_owner} expired" if job.state == "running" else ""
        error = f"failed for good after {job.attempts} of {max_attempts} attempts{last} (worker died or hung)"
        conn.execute(
            update(retrain_jobs)
            .where(J.id == job.id)
            .values(state="failed", error=error, finished_at=now, lease_until=None, log=J.log + error + "\n")
        )

    def heartbeat(self, job_id: int, owner: str, lease_seconds: float) -> bool:
        """Extend the lease to now + ``lease_seconds``; False if ``owner`` no longer holds the job."""
        with self.db._tx(write=True) as conn:
            now = self._now(conn)
            res = conn.execute(
                update(retrain_jobs)
                .where(J.id == job_id, J.lease_owner == owner, J.state == "running")
                .values(lease_until=now + lease_seconds, heartbeat_at=now)
            )
            return res.rowcount == 1

    def finish(
        self,
        job_id: int,
        owner: str,
        state: JobState,
        *,
        version: str | None = None,
        error: str | None = None,
        details: dict[str, Any] | None = None,
        append_log: str = "",
    ) -> bool:
        """End a running job as ``succeeded`` or ``failed``; False (nothing written) if not ``owner``'s.

        Raises:
            ValueError: ``state`` is not terminal.
        """
        if state not in ("succeeded", "failed"):
            raise ValueError(f"finish needs succeeded or failed, not {state!r}")
        extra: dict[str, Any] = {"state": state, "lease_until": None}
        if error is not None:
            extra["error"] = error
        return self._guarded(job_id, owner, version, append_log, details, extra, finish=True)

    def release(self, job_id: int, owner: str, reason: str = "worker stopped") -> bool:
        """Hand a running job back to the queue (clean shutdown); False if not ``owner``'s.

        The attempt is not counted: a job released by a stopping worker was not a failed attempt.
        """
        extra: dict[str, Any] = {
            "state": "queued",
            "lease_owner": None,
            "lease_until": None,
            "attempts": J.attempts - 1,
        }
        return self._guarded(job_id, owner, None, f"released by {owner}: {reason}\n", None, extra)

    def update(
        self,
        job_id: int,
        *,
        owner: str | None = None,
        version: str | None = None,
        append_log: str = "",
        details: dict[str, Any] | None = None,
    ) -> bool:
        """Append to the log, merge keys into ``details``, set ``version``.

        With ``owner`` the update applies only while that worker holds the running job (False
        otherwise); without, it always applies.

        Raises:
            NotFoundError: unknown job (without ``owner``).
        """
        return self._guarded(job_id, owner, version, append_log, details, {})

    def _guarded(
        self,
        job_id: int,
        owner: str | None,
        version: str | None,
        append_log: str,
        details: dict[str, Any] | None,
        extra: dict[str, Any],
        *,
        finish: bool = False,
    ) -> bool:
        where = [J.id == job_id]
        if owner is not None:
            where += [J.lease_owner == owner, J.state == "running"]
        with self.db._tx(write=True) as conn:
            row = conn.execute(select(J.details).where(*where).with_for_update()).first()
            if row is None:
                if owner is None:
                    raise NotFoundError(f"retrain job {job_id} not found")
                return False
            values = dict(extra)
            if finish:
                values["finished_at"] = self._now(conn)
            if version is not None:
                values["version"] = version
            if append_log:
                values["log"] = J.log + append_log
            if details:
                values["details"] = {**dict(row[0] or {}), **details}
            if values:
                conn.execute(update(retrain_jobs).where(J.id == job_id).values(**values))
            return True

    # --- reads ------------------------------------------------------------------------------
    def get(self, job_id: int) -> RetrainJob:
        """One job. Raises NotFoundError for an unknown id."""
        with self.db._tx(write=False) as conn:
            row = conn.execute(select(retrain_jobs).where(J.id == job_id)).first()
        if row is None:
            raise NotFoundError(f"retrain job {job_id} not found")
        return _job(row)

    def list(self, *, state: JobState | None = None, limit: int = 50) -> builtins.list[RetrainJob]:
        """Jobs, newest first, optionally filtered by state."""
        q = select(retrain_jobs).order_by(J.id.desc()).limit(limit)
        if state is not None:
            q = q.where(J.state == state)
        with self.db._tx(write=False) as conn:
            return [_job(r) for r in conn.execute(q)]

    def active(self) -> RetrainJob | None:
        """The queued or running job (the oldest, if a test queued several), or None."""
        q = select(retrain_jobs).where(J.state.in_(ACTIVE_STATES)).order_by(J.id).limit(1)
        with self.db._tx(write=False) as conn:
            row = conn.execute(q).first()
        return None if row is None else _job(row)

    def latest(self) -> RetrainJob | None:
        """The newest job, or None."""
        jobs = self.list(limit=1)
        return jobs[0] if jobs else None

    def counts_by_state(self) -> dict[str, int]:
        """Jobs per state (every state present, 0 when none)."""
        with self.db._tx(write=False) as conn:
            rows = conn.execute(select(J.state, func.count()).group_by(J.state)).all()
        counts: dict[str, int] = dict.fromkeys(JOB_STATES, 0)
        counts.update({str(s): int(n) for s, n in rows})
        return counts
