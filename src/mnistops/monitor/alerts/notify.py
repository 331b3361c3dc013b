"""Alert notifications: what a transition is, the notifier interface, the log notifier, the webhook body.

The :class:`~mnistops.monitor.alerts.engine.AlertEngine` hands each notifier the alert transitions of
one window (``notify(notifications)``). A notifier must never block or raise into the monitor. The
webhook notifier (Alertmanager-like JSON, :func:`webhook_payload`) is in
:mod:`mnistops.monitor.alerts.webhook`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

__all__ = ["LogNotifier", "Notification", "Notifier", "webhook_payload"]

log = logging.getLogger(__name__)

# Alertmanager's "zero time" for alerts that have not ended
_ZERO_TIME = "0001-01-01T00:00:00Z"


@dataclass(frozen=True)
class Notification:
    """One alert transition (it started firing, or it resolved) in one monitoring window."""

    status: Literal["firing", "resolved"]
    rule: str
    severity: str
    summary: str
    fingerprint: str
    started_at: float  # epoch seconds
    ended_at: float | None  # epoch seconds, set when resolved
    event_id: int
    window: int
    model_version: str
    metric: str
    value: float | bool | None  # metric value in the window that caused the transition
    threshold: float | bool
    comparator: str
    labels: dict[str, str] = field(default_factory=dict)


class Notifier(Protocol):
    """Receives alert transitions; must return quickly and never raise."""

    def notify(self, notifications: Sequence[Notification]) -> None:
        """Deliver (or enqueue) the transitions of one window."""
        ...

    def close(self, timeout: float = 5.0) -> None:
        """Flush what is pending for at most ``timeout`` seconds and release resources."""
        ...


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def webhook_payload(notifications: Sequence[Notification]) -> dict[str, Any]:
    """Alertmanager webhook (version 4) JSON body, each alert extended with our own fields.

    The group ``status`` is "firing" when any alert in it fires, else "resolved".
    """
    alerts: list[dict[str, Any]] = []
    label_sets: list[set[tuple[str, str]]] = []
    for n in notifications:
        labels = {"alertname": n.rule, "severity": n.severity, **n.labels}
        label_sets.append(set(labels.items()))
        alerts.append(
            {
                "status": n.status,
                "labels": labels,
                "annotations": {"summary": n.summary},
                "startsAt": _iso(n.started_at),
                "endsAt": _iso(n.ended_at) if n.ended_at is not None else _ZERO_TIME,
                "generatorURL": "",
                "fingerprint": n.fingerprint,
                # mnistops fields (ignored by Alertmanager-compatible receivers)
                "event_id": n.event_id,
                "rule": n.rule,
                "window": n.window,
                "model_version": n.model_version,
                "metric": n.metric,
                "value": n.value,
                "comparator": n.comparator,
                "threshold": n.threshold,
            }
        )
    common = set.intersection(*label_sets) if label_sets else set()
    return {
        "version": "4",
        "receiver": "mnistops",
        "status": "firing" if any(n.status == "firing" for n in notifications) else "resolved",
        "groupLabels": {},
        "commonLabels": dict(sorted(common)),
        "commonAnnotations": {},
        "externalURL": "",
        "truncatedAlerts": 0,
        "alerts": alerts,
    }


class LogNotifier:
    """Writes each transition to a logger (critical firing -> ERROR, warning -> WARNING, resolved -> INFO)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.logger = logger or logging.getLogger("mnistops.alerts")

    def notify(self, notifications: Sequence[Notification]) -> None:
        """Log every transition."""
        for n in notifications:
            if n.status == "resolved":
                level = logging.INFO
            else:
                level = logging.ERROR if n.severity == "critical" else logging.WARNING
            self.logger.log(
                level,
                "alert %s %s [%s] window=%d value=%s: %s",
                n.rule,
                n.status.upper(),
                n.severity,
                n.window,
                n.value,
                n.summary,
            )

    def close(self, timeout: float = 5.0) -> None:
        """Nothing to flush."""
