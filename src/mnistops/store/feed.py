"""Rows appended since a cursor: what a reconciler follows (monitor windows, alert events).

Windows and alert events only grow (ids are never reused), so a follower keeps the last id it
handled (the controller stores it in ``role_state``, see :mod:`mnistops.store.rollouts`) and asks
for the rows after it. An alert row is written when the alert fires and updated in place when it
resolves: a follower sees each firing once, whatever its current state.
"""

from __future__ import annotations

from sqlalchemy import func, select

from mnistops.store.engine import Database
from mnistops.store.events import _alert, _window
from mnistops.store.records import AlertEvent, MonitorWindow
from mnistops.store.schema import alert_events, monitor_windows, predictions

__all__ = ["Feed"]

P = predictions.c


class Feed:
    """Cursor reads on a :class:`~mnistops.store.engine.Database` (the ``PredictionStore`` is one)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def windows_after(self, window_id: int, limit: int = 100) -> list[MonitorWindow]:
        """Monitor windows with ``id > window_id``, in insertion order."""
        q = (
            select(monitor_windows)
            .where(monitor_windows.c.id > window_id)
            .order_by(monitor_windows.c.id)
            .limit(limit)
        )
        with self.db._tx(write=False) as conn:
            return [_window(r) for r in conn.execute(q)]

    def alerts_after(self, alert_id: int, limit: int = 100) -> list[AlertEvent]:
        """Alert events with ``id > alert_id`` (each fired once; some may be resolved by now)."""
        q = select(alert_events).where(alert_events.c.id > alert_id).order_by(alert_events.c.id).limit(limit)
        with self.db._tx(write=False) as conn:
            return [_alert(r) for r in conn.execute(q)]

    def last_ids(self) -> tuple[int, int]:
        """``(last window id, last alert id)``, 0 when empty: where a follower that starts now begins."""
        with self.db._tx(write=False) as conn:
            w = conn.execute(select(func.coalesce(func.max(monitor_windows.c.id), 0))).scalar_one()
            a = conn.execute(select(func.coalesce(func.max(alert_events.c.id), 0))).scalar_one()
        return int(w), int(a)

    def labelled_between(self, start_seq: int, end_seq: int, model_version: str) -> int:
        """Champion-served predictions of ``model_version`` with feedback, ``start_seq <= seq <= end_seq``.

        How many labels stand behind a window's realized accuracy, for windows that do not record it.
        """
        q = (
            select(func.count())
            .select_from(predictions)
            .where(
                P.seq >= start_seq,
                P.seq <= end_seq,
                P.model_version == model_version,
                P.served_by == "champion",
                P.true_label.is_not(None),
            )
        )
        with self.db._tx(write=False) as conn:
            return int(conn.execute(q).scalar_one())
