"""The closed loop's timeline: what the controller did, in order (read by `/v1/loop/events`, the demo).

Read side only here; the controller appends (one row per step, ``key`` unique so a repeated step
is not recorded twice). Rows are ``{id, ts, seq, kind, detail, version, data}`` (kinds: see
docs/control-plane.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy import Row, select

from mnistops.store.engine import Database
from mnistops.store.schema import timeline


@dataclass(frozen=True)
class TimelineEvent:
    """One step of the closed loop."""

    id: int
    ts: float  # epoch seconds
    seq: int  # predictions logged when it happened (the stream's sample index)
    kind: str  # window | alert | retrain_started | ... | rollback
    detail: str
    version: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _event(row: Row[Any]) -> TimelineEvent:
    m = row._mapping
    return TimelineEvent(
        id=int(m["id"]),
        ts=float(m["ts"]),
        seq=int(m["seq"]),
        kind=str(m["kind"]),
        detail=str(m["detail"] or ""),
        version=m["version"],
        data=dict(m["data"] or {}),
    )


class Timeline:
    """The ``timeline`` table of one database."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def list(self, since_id: int = 0, limit: int = 1000) -> list[TimelineEvent]:
        """Events with ``id > since_id``, oldest first, at most ``limit``."""
        q = select(timeline).where(timeline.c.id > since_id).order_by(timeline.c.id).limit(limit)
        with self.db._tx(write=False) as conn:
            return [_event(r) for r in conn.execute(q).all()]
