"""The closed loop's timeline: what happened, in order (the ``timeline`` table).

The controller writes it (``record``, or :func:`insert_event` inside a bigger transaction, see
:mod:`mnistops.store.rollouts`); the API replicas serve it as ``/v1/loop/events`` and the demo prints
it. An event's ``key`` (unique) makes a step idempotent: a restarted controller that repeats a
step hits the key instead of writing the event twice. Kinds and data fields are listed in
``docs/control-plane.md``.
"""

from __future__ import annotations

import builtins
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Connection, Row, func, insert, select
from sqlalchemy.dialects import postgresql, sqlite

from mnistops.store.engine import Database
from mnistops.store.schema import predictions, timeline

__all__ = ["Timeline", "TimelineEvent", "insert_event"]

log = logging.getLogger(__name__)
T = timeline.c


@dataclass(frozen=True)
class TimelineEvent:
    """One step of the closed loop."""

    id: int
    ts: float  # epoch seconds
    seq: int  # predictions logged when it happened (the stream's sample index); 0 before any
    kind: str  # window | alert | retrain_started | ... (docs/control-plane.md)
    detail: str
    version: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{id, ts, seq, kind, detail, version, data}``."""
        return asdict(self)


def _event(row: Row[Any]) -> TimelineEvent:
    m = row._mapping
    return TimelineEvent(
        id=int(m["id"]),
        ts=float(m["ts"]),
        seq=int(m["seq"]),
        kind=m["kind"],
        detail=m["detail"],
        version=m["version"],
        data=dict(m["data"] or {}),
    )


def insert_event(
    conn: Connection,
    kind: str,
    detail: str,
    version: str | None = None,
    data: dict[str, Any] | None = None,
    key: str | None = None,
    seq: int | None = None,
) -> TimelineEvent | None:
    """Append an event inside the caller's transaction; None if ``key`` is already recorded.

    ``seq`` defaults to the highest prediction seq stored (read in the same transaction).
    """
    if seq is None:
        seq = int(conn.execute(select(func.coalesce(func.max(predictions.c.seq), 0))).scalar_one())
    values: dict[str, Any] = {
        "ts": time.time(),
        "seq": int(seq),
        "kind": kind,
        "detail": detail,
        "version": version,
        "data": data or {},
        "key": key,
    }
    if key is None:
        stmt = insert(timeline)
    else:  # ON CONFLICT DO NOTHING keeps the transaction usable (a failed INSERT would abort it on PG)
        dialect = sqlite if conn.dialect.name == "sqlite" else postgresql
        stmt = dialect.insert(timeline).on_conflict_do_nothing(index_elements=["key"])
    row = conn.execute(stmt.values(**values).returning(T.id)).first()
    if row is None:
        return None
    log.info("timeline: %s %s %s", kind, version or "", detail)
    values.pop("key")
    return TimelineEvent(id=int(row[0]), **values)


class Timeline:
    """Read and append timeline events on a :class:`~mnistops.store.engine.Database`.

    Args:
        db: the operational database (e.g. the ``PredictionStore``); its transactions are used.
    """

    def __init__(self, db: Database) -> None:
        self.db = db

    def record(
        self,
        kind: str,
        detail: str,
        version: str | None = None,
        data: dict[str, Any] | None = None,
        key: str | None = None,
        seq: int | None = None,
    ) -> TimelineEvent | None:
        """Append one event in its own transaction; None when ``key`` already exists.

        Raises:
            StoreError: the database is unreachable.
        """
        with self.db._tx(write=True) as conn:
            return insert_event(conn, kind, detail, version, data, key, seq)

    def list(self, since_id: int = 0, limit: int = 1000) -> builtins.list[TimelineEvent]:
        """Events with ``id > since_id``, oldest first, at most ``limit``.

        Raises:
            StoreError: the database is unreachable.
        """
        q = select(timeline).where(T.id > since_id).order_by(T.id).limit(limit)
        with self.db._tx(write=False) as conn:
            return [_event(r) for r in conn.execute(q)]

    def has(self, key: str) -> bool:
        """True if an event with this idempotency key was recorded."""
        with self.db._tx(write=False) as conn:
            return conn.execute(select(T.id).where(T.key == key)).first() is not None
