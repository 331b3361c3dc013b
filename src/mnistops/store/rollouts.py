"""Rollouts: the controller's durable state machine, one row per attempt (the ``rollouts`` table).

A rollout follows one model from its retraining job (or from the moment a challenger or a new
champion appears) to a terminal state; ``docs/control-plane.md`` draws the states. Every change
is a compare-and-set on ``revision``: a writer that read revision ``r`` updates ``WHERE revision =
r`` and raises :class:`~mnistops.errors.ConflictError` when somebody else got there first.

:meth:`Rollouts.step` is one transaction for one reconcile step: the rollout change, its timeline
events (idempotency keys) and the controller's cursors commit together or not at all, so a crash
leaves either the state before the step or the state after it.
"""

from __future__ import annotations

import builtins
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

from sqlalchemy import Connection, Row, insert, select, update
from sqlalchemy.dialects import postgresql, sqlite

from mnistops.errors import ConflictError, NotFoundError
from mnistops.store.engine import Database
from mnistops.store.schema import role_state, rollouts
from mnistops.store.timeline import TimelineEvent, insert_event

__all__ = ["ACTIVE", "Rollout", "RolloutState", "Rollouts", "Step"]

RolloutState = Literal[
    # active: the controller still has work to do
    "retraining",  # job_id: waiting for the worker
    "shadowing",  # version = challenger: waiting for the shadow verdict
    "promoting",  # verdict passed: the promotion is due (data.audit_before)
    "watching",  # version = new champion: judged window by window (data.watch)
    "rolling_back",  # the watch failed: the rollback is due (data.audit_before)
    # terminal
    "no_challenger",  # the job failed or its model did not pass the gates
    "rejected",  # the shadow verdict rejected the challenger
    "refused",  # the registry refused the promotion
    "stable",  # watched windows passed (or nothing to compare with)
    "rolled_back",
    "rollback_failed",  # nothing to roll back to
    "superseded",  # somebody else moved the aliases first
]
ACTIVE: tuple[RolloutState, ...] = ("retraining", "shadowing", "promoting", "watching", "rolling_back")
_STATES = frozenset(get_args(RolloutState))
R = rollouts.c


@dataclass(frozen=True)
class Rollout:
    """One rollout row (``revision`` grows by one with every change)."""

    id: int
    revision: int
    state: RolloutState
    job_id: int | None
    version: str | None  # the challenger / new champion
    previous_version: str | None  # what a rollback restores
    reason: str
    data: dict[str, Any] = field(default_factory=dict)  # step facts: watch progress, audit ids
    created_at: float = 0.0
    updated_at: float = 0.0

    @property
    def active(self) -> bool:
        """Not in a terminal state."""
        return self.state in ACTIVE


def _rollout(row: Row[Any]) -> Rollout:
    m = dict(row._mapping)
    m["data"] = dict(m["data"] or {})
    return Rollout(**m)


def _check_state(state: str) -> None:
    if state not in _STATES:
        raise ValueError(f"unknown rollout state {state!r}")


class Step:
    """The writes of one reconcile step, inside one transaction (see :meth:`Rollouts.step`)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.events: list[TimelineEvent] = []  # recorded by this step (not the keys already there)

    def create(
        self,
        state: RolloutState,
        *,
        job_id: int | None = None,
        version: str | None = None,
        previous_version: str | None = None,
        reason: str = "",
        data: dict[str, Any] | None = None,
    ) -> Rollout:
        """Insert a new rollout at revision 0."""
        _check_state(state)
        now = time.time()
        values: dict[str, Any] = {
            "revision": 0,
            "state": state,
            "job_id": job_id,
            "version": version,
            "previous_version": previous_version,
            "reason": reason,
            "data": data or {},
            "created_at": now,
            "updated_at": now,
        }
        row = self.conn.execute(insert(rollouts).values(**values).returning(*rollouts.c)).one()
        return _rollout(row)

    def update(self, rollout: Rollout, **changes: Any) -> Rollout:
        """Compare-and-set: apply ``changes`` (state, version, previous_version, reason, data) if the
        row is still at ``rollout.revision``.

        Raises:
            ConflictError: the row moved on meanwhile (the whole step is rolled back).
        """
        unknown = set(changes) - {"state", "version", "previous_version", "reason", "data", "job_id"}
        if unknown:
            raise ValueError(f"cannot change rollout columns {sorted(unknown)}")
        if "state" in changes:
            _check_state(changes["state"])
        stmt = (
            update(rollouts)
            .where(R.id == rollout.id, R.revision == rollout.revision)
            .values(**changes, revision=rollout.revision + 1, updated_at=time.time())
            .returning(*rollouts.c)
        )
        row = self.conn.execute(stmt).first()
        if row is None:
            raise ConflictError(f"rollout {rollout.id} changed since revision {rollout.revision}")
        return _rollout(row)

    def record(
        self,
        kind: str,
        detail: str,
        version: str | None = None,
        data: dict[str, Any] | None = None,
        key: str | None = None,
    ) -> TimelineEvent | None:
        """Append a timeline event in this transaction (None when ``key`` exists already)."""
        event = insert_event(self.conn, kind, detail, version, data, key)
        if event is not None:
            self.events.append(event)
        return event

    def put_state(self, name: str, value: dict[str, Any]) -> None:
        """Upsert the small JSON state of a role (``role_state``), e.g. the controller's cursors."""
        dialect = sqlite if self.conn.dialect.name == "sqlite" else postgresql
        now = time.time()
        stmt = dialect.insert(role_state).values(name=name, value=value, updated_at=now)
        self.conn.execute(
            stmt.on_conflict_do_update(index_elements=["name"], set_={"value": value, "updated_at": now})
        )


class Rollouts:
    """Rollout rows on a :class:`~mnistops.store.engine.Database` (the ``PredictionStore`` is one)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @contextmanager
    def step(self) -> Iterator[Step]:
        """One write transaction for a reconcile step; committed when the block ends normally.

        Raises:
            ConflictError: a compare-and-set in the block lost (nothing of the block is written).
            StoreError: the database is unreachable.
        """
        with self.db._tx(write=True) as conn:
            yield Step(conn)

    def _select(self, q: Any) -> builtins.list[Rollout]:
        with self.db._tx(write=False) as conn:
            return [_rollout(r) for r in conn.execute(q)]

    def active(self) -> builtins.list[Rollout]:
        """Rollouts not yet in a terminal state, oldest first."""
        return self._select(select(rollouts).where(R.state.in_(ACTIVE)).order_by(R.id))

    def get(self, rollout_id: int) -> Rollout:
        """One rollout.

        Raises:
            NotFoundError: unknown id.
        """
        rows = self._select(select(rollouts).where(R.id == rollout_id))
        if not rows:
            raise NotFoundError(f"rollout {rollout_id} not found")
        return rows[0]

    def list(self, *, limit: int = 50, version: str | None = None) -> builtins.list[Rollout]:
        """Rollouts, newest first (optionally of one version)."""
        q = select(rollouts).order_by(R.id.desc()).limit(limit)
        if version is not None:
            q = q.where(R.version == version)
        return self._select(q)

    def for_job(self, job_id: int) -> Rollout | None:
        """The rollout that follows a retraining job, if any."""
        rows = self._select(select(rollouts).where(R.job_id == job_id).order_by(R.id).limit(1))
        return rows[0] if rows else None

    def create(self, state: RolloutState, **kwargs: Any) -> Rollout:
        """Insert a rollout in its own transaction (see :meth:`Step.create` for the arguments)."""
        with self.step() as s:
            return s.create(state, **kwargs)

    def update(self, rollout: Rollout, **changes: Any) -> Rollout | None:
        """Compare-and-set in its own transaction; None when another writer changed the row first."""
        try:
            with self.step() as s:
                return s.update(rollout, **changes)
        except ConflictError:
            return None

    def get_state(self, name: str) -> dict[str, Any] | None:
        """A role's JSON state (``role_state``), or None if never written."""
        with self.db._tx(write=False) as conn:
            v = conn.execute(select(role_state.c.value).where(role_state.c.name == name)).scalar()
        return None if v is None else dict(v)
