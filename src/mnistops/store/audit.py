"""Durable promotion history: the ``promotion_events`` table in the operational database.

MLflow keeps only the *current* alias targets (#2169/#6180: no production history, no rollback),
so every promotion and rollback is also written here: time, action, from/to version, reason,
actor and whether it was forced. Rollback walks this history back, any number of steps.

The table lives in ``settings.database`` (SQLite by default, PostgreSQL by URL) with the rest of
the operational database: defined in :mod:`.schema`, created by the migrations, written through the
process-wide :class:`~mnistops.store.engine.Database` of that URL.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select

from mnistops.errors import StoreError
from mnistops.store.engine import database
from mnistops.store.schema import promotion_events

ACTIONS = ("promote", "rollback", "auto-rollback")


@dataclass(frozen=True)
class AuditEvent:
    """One promotion or rollback."""

    time: datetime  # UTC
    action: str  # promote | rollback | auto-rollback
    from_version: str | None  # champion before (None for the first promotion)
    to_version: str  # champion after
    reason: str
    actor: str
    forced: bool = False
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (ISO time), the shape of the dashboard's ``history`` entries."""
        d = asdict(self)
        d["time"] = self.time.isoformat()
        return d


def default_actor(client: str | None = None) -> str:
    """Who is acting: ``api:<client>`` for API calls, else ``$USER@hostname``."""
    if client:
        return f"api:{client}"
    user = os.environ.get("USER") or os.environ.get("USERNAME") or "unknown"
    return f"{user}@{socket.gethostname()}"


def record(url: str, model_name: str, event: AuditEvent) -> AuditEvent:
    """Append ``event`` and return it with its id.

    Raises:
        StoreError: the write failed.
    """
    if event.action not in ACTIONS:
        raise ValueError(f"unknown audit action {event.action!r}")
    row = {
        "time": event.time,
        "model_name": model_name,
        "action": event.action,
        "from_version": event.from_version,
        "to_version": event.to_version,
        "reason": event.reason,
        "actor": event.actor,
        "forced": event.forced,
        "details": json.dumps(event.details, default=str),
    }
    try:
        with database(url)._tx(write=True) as conn:
            pk = conn.execute(promotion_events.insert().values(**row)).inserted_primary_key
    except StoreError as exc:
        raise StoreError(f"cannot write audit event: {exc.message}") from exc
    return AuditEvent(**{**asdict(event), "id": int(pk[0]) if pk else None})


def history(url: str, model_name: str, limit: int | None = None) -> list[AuditEvent]:
    """Events for ``model_name``, oldest first (the last ``limit`` if given)."""
    t = promotion_events
    q = select(t).where(t.c.model_name == model_name).order_by(t.c.id.desc())
    if limit is not None:
        q = q.limit(limit)
    try:
        with database(url)._tx(write=False) as conn:
            rows = conn.execute(q).mappings().all()
    except StoreError as exc:
        raise StoreError(f"cannot read audit events: {exc.message}") from exc
    return [_event(r) for r in reversed(rows)]


def _event(r: Any) -> AuditEvent:
    when: datetime = r["time"]
    if when.tzinfo is None:  # SQLite drops the zone; we always store UTC
        when = when.replace(tzinfo=UTC)
    return AuditEvent(
        time=when,
        action=r["action"],
        from_version=r["from_version"],
        to_version=r["to_version"],
        reason=r["reason"],
        actor=r["actor"],
        forced=bool(r["forced"]),
        details=json.loads(r["details"] or "{}"),
        id=r["id"],
    )


def champion_stack(events: list[AuditEvent]) -> list[str]:
    """Champion lineage implied by the history: promotions push, rollbacks pop.

    ``stack[-1]`` is the champion, ``stack[-2]`` the version a rollback restores, and so on,
    which is what lets rollback go back more than one step.
    """
    stack: list[str] = []
    for e in events:
        if e.action == "promote":
            if not stack or stack[-1] != e.to_version:
                stack.append(e.to_version)
        else:
            while stack and stack[-1] != e.to_version:
                stack.pop()
            if not stack:  # history began mid-way (e.g. a fresh audit DB): trust the event
                stack.append(e.to_version)
    return stack


def now() -> datetime:
    """Current UTC time (one place, so tests can reason about ordering)."""
    return datetime.now(UTC)
