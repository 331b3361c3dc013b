"""Alert events and monitoring windows (the non-prediction half of the store; jobs: :mod:`.jobs`)."""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from sqlalchemy import CursorResult, Row, insert, select, update
from sqlalchemy.exc import IntegrityError

from mnistops.errors import StoreError
from mnistops.store.engine import Database
from mnistops.store.records import AlertEvent, MonitorWindow
from mnistops.store.schema import alert_events, monitor_windows


def alert_fingerprint(rule: str, labels: dict[str, Any] | None = None) -> str:
    """Stable dedup key of an alert: hash of the rule and its sorted labels."""
    raw = json.dumps([rule, labels or {}], sort_keys=True, default=str)
    return hashlib.sha256(raw.encode()).hexdigest()[:24]


def _new_id(result: CursorResult[Any]) -> int:
    pk = result.inserted_primary_key
    if pk is None:  # pragma: no cover - every table here has an autoincrement key
        raise StoreError("insert returned no primary key")
    return int(pk[0])


def _alert(row: Row[Any]) -> AlertEvent:
    m = row._mapping
    return AlertEvent(
        id=int(m["id"]),
        rule=m["rule"],
        severity=m["severity"],
        state=m["state"],
        started_at=float(m["started_at"]),
        resolved_at=m["resolved_at"],
        summary=m["summary"],
        labels=dict(m["labels"] or {}),
        fingerprint=m["fingerprint"],
    )


def _window(row: Row[Any]) -> MonitorWindow:
    m = dict(row._mapping)
    m["results"] = dict(m["results"] or {})
    m["drifted"] = bool(m["drifted"])
    return MonitorWindow(**m)


class EventStore(Database):
    """Alerts and monitor windows on top of :class:`Database`."""

    # --- alerts -----------------------------------------------------------------------------
    def open_alert(
        self,
        rule: str,
        severity: str,
        summary: str,
        *,
        labels: dict[str, Any] | None = None,
        fingerprint: str | None = None,
        now: float | None = None,
    ) -> tuple[AlertEvent, bool]:
        """Record a firing alert unless one with the same fingerprint is already firing.

        Args:
            rule: rule name.
            severity: "warning" or "critical" (not validated here).
            summary: human-readable text.
            labels: extra labels (JSON-serializable).
            fingerprint: dedup key (default :func:`alert_fingerprint` of rule + labels).
            now: start time (epoch seconds; default now).

        Returns:
            ``(event, created)``: ``created`` is False when an already-firing event was returned
            (notify receivers only when it is True).
        """
        fp = fingerprint or alert_fingerprint(rule, labels)
        firing = select(alert_events).where(
            alert_events.c.fingerprint == fp, alert_events.c.state == "firing"
        )
        for attempt in range(2):
            try:
                with self._tx(write=True) as conn:
                    row = conn.execute(firing).first()
                    if row is not None:
                        return _alert(row), False
                    values: dict[str, Any] = {
                        "rule": rule,
                        "severity": severity,
                        "state": "firing",
                        "started_at": time.time() if now is None else now,
                        "resolved_at": None,
                        "summary": summary,
                        "labels": labels or {},
                        "fingerprint": fp,
                    }
                    new_id = _new_id(conn.execute(insert(alert_events).values(**values)))
                    return AlertEvent(id=new_id, **values), True
            except StoreError as e:
                # a concurrent writer opened the same alert first (partial unique index): read theirs
                if attempt == 0 and isinstance(e.__cause__, IntegrityError):
                    continue
                raise
        raise StoreError("open_alert: unreachable")  # pragma: no cover

    def resolve_alert(self, fingerprint: str, *, now: float | None = None) -> AlertEvent | None:
        """Mark the firing event with this fingerprint resolved; None if nothing was firing."""
        with self._tx(write=True) as conn:
            row = conn.execute(
                update(alert_events)
                .where(alert_events.c.fingerprint == fingerprint, alert_events.c.state == "firing")
                .values(state="resolved", resolved_at=time.time() if now is None else now)
                .returning(*alert_events.c)
            ).first()
            return None if row is None else _alert(row)

    def list_alerts(self, *, state: str | None = None, limit: int = 100) -> list[AlertEvent]:
        """Alert events, newest first, optionally only "firing" or "resolved" ones."""
        q = select(alert_events).order_by(alert_events.c.id.desc()).limit(limit)
        if state is not None:
            q = q.where(alert_events.c.state == state)
        with self._tx(write=False) as conn:
            return [_alert(r) for r in conn.execute(q)]

    # --- monitor windows --------------------------------------------------------------------
    def insert_window(self, window: MonitorWindow) -> MonitorWindow:
        """Store one window result; returns it with ``id`` and ``created_at`` filled."""
        values: dict[str, Any] = {
            "window": window.window,
            "end_seq": window.end_seq,
            "end_ts": window.end_ts,
            "n": window.n,
            "model_version": window.model_version,
            "results": window.results,
            "drifted": bool(window.drifted),
            "estimated_accuracy": window.estimated_accuracy,
            "estimated_lower": window.estimated_lower,
            "estimated_upper": window.estimated_upper,
            "realized_accuracy": window.realized_accuracy,
            "created_at": window.created_at if window.created_at is not None else time.time(),
        }
        with self._tx(write=True) as conn:
            new_id = _new_id(conn.execute(insert(monitor_windows).values(**values)))
        return MonitorWindow(id=new_id, **values)

    def latest_windows(self, k: int = 50, *, model_version: str | None = None) -> list[MonitorWindow]:
        """The last ``k`` windows in insertion order (oldest of them first)."""
        q = select(monitor_windows).order_by(monitor_windows.c.id.desc()).limit(k)
        if model_version is not None:
            q = q.where(monitor_windows.c.model_version == model_version)
        with self._tx(write=False) as conn:
            return [_window(r) for r in reversed(conn.execute(q).all())]

    def last_window(self) -> MonitorWindow | None:
        """The most recent window (where a restarted monitor resumes), or None."""
        rows = self.latest_windows(1)
        return rows[0] if rows else None
