"""What every reconcile step works with: the seams (registry, lease, alerts), the durable cursors and
the metrics, bundled in one :class:`Context` per controller process.

The steps themselves are functions of a context (:mod:`mnistops.controller.observe`,
:mod:`mnistops.controller.retrain`, :mod:`mnistops.controller.advance`), wired together by
:class:`mnistops.controller.reconciler.Reconciler`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from mnistops.errors import LeadershipLostError, RegistryError, StoreError
from mnistops.registry.core import CHAMPION

if TYPE_CHECKING:
    from mnistops.controller.metrics import ControllerMetrics
    from mnistops.controller.policy import RetrainPolicy
    from mnistops.controller.verdict import ShadowVerdict
    from mnistops.settings import Settings
    from mnistops.store.audit import AuditEvent
    from mnistops.store.feed import Feed
    from mnistops.store.jobs import JobQueue
    from mnistops.store.predictions import PredictionStore
    from mnistops.store.records import AlertEvent
    from mnistops.store.rollouts import Rollouts, Step
    from mnistops.store.timeline import Timeline

__all__ = [
    "PROMOTE_ACTOR",
    "ROLLBACK_ACTOR",
    "AlertRaiser",
    "Context",
    "Cursors",
    "Lease",
    "RegistryOps",
]

log = logging.getLogger(__name__)

PROMOTE_ACTOR = "controller"  # audit actor of the promotions the controller makes
ROLLBACK_ACTOR = "controller:watch"  # ... and of its automatic rollbacks
STATE_NAME = "controller"  # its row in role_state
AUTO_ROLLBACK_RULE, AUTO_ROLLBACK_METRIC = "AutoRollback", "auto_rollback"  # see monitor/alerts/alerts.yaml


class RegistryOps(Protocol):
    """The part of :class:`mnistops.registry.core.Registry` the controller uses."""

    def aliases(self) -> dict[str, str]: ...

    def promote(
        self, version: str, actor: str | None = None, reason: str = "", force: bool = False
    ) -> AuditEvent: ...

    def rollback(self, actor: str | None = None, reason: str = "", auto: bool = False) -> tuple[str, str]: ...

    def history(self, limit: int | None = None) -> list[AuditEvent]: ...


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class AlertRaiser(Protocol):
    """Raises and resolves the AutoRollback alert (the monitor's ``AlertEngine``)."""

    @property
    def rules(self) -> Sequence[_Named]: ...

    def firing(self) -> list[AlertEvent]: ...

    def evaluate(
        self, window_index: int, metrics: Mapping[str, Any], model_version: str, *, now: float | None = None
    ) -> list[AlertEvent]: ...

    def close(self, timeout: float = 5.0) -> None: ...


class Lease(Protocol):
    """Leadership as the steps see it (:class:`mnistops.store.lock.LeaderLease`)."""

    def held(self) -> bool: ...


@dataclass(frozen=True)
class Cursors:
    """The controller's durable progress through the facts (``role_state['controller']``)."""

    window_id: int = 0  # last monitor_windows.id handled
    alert_id: int = 0  # last alert_events.id handled
    champion: str | None = None  # champion alias as last seen
    audit_id: int = 0  # last promotion_events.id that explained a champion move
    retrain_due: bool = False  # facts since the last retrain decision warrant a new one
    rollback_alert: dict[str, Any] | None = None  # open AutoRollback: {"version", "after_window_id"}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Cursors:
        """Cursors from their stored JSON (unknown keys ignored)."""
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class Context:
    """Dependencies and per-tick snapshot of one controller (see module docstring)."""

    settings: Settings
    store: PredictionStore
    registry: RegistryOps
    lease: Lease
    timeline: Timeline
    rollouts: Rollouts
    feed: Feed
    jobs: JobQueue
    policy: RetrainPolicy
    verdict: ShadowVerdict
    alerts: Callable[[], AlertRaiser]  # a fresh engine per use: it reloads the firing alerts
    metrics: ControllerMetrics
    clock: Callable[[], float] = time.time
    cursors: Cursors = field(default_factory=Cursors)
    aliases: dict[str, str] = field(default_factory=dict)  # registry aliases read at the tick's start

    def guard(self) -> None:
        """Raise unless this process still leads (called before every step and every effect).

        Raises:
            LeadershipLostError: the lease is gone; the tick ends without acting.
        """
        if not self.lease.held():
            raise LeadershipLostError("controller lease lost: stopping this tick")

    def save_cursors(self, step: Step, **changes: Any) -> Cursors:
        """Write changed cursors in ``step``'s transaction; returns them (assign after the commit)."""
        new = replace(self.cursors, **changes)
        step.put_state(STATE_NAME, new.to_dict())
        return new

    def read_aliases(self) -> dict[str, str]:
        """The registry's aliases now.

        Raises:
            RegistryError: no champion alias, which is how an unreachable registry answers too
                (acting on it would mistake a registry outage for aliases that moved).
        """
        aliases = self.registry.aliases()
        if CHAMPION not in aliases:
            raise RegistryError("the registry shows no champion (unreachable, or none promoted yet)")
        return aliases

    def last_audit_id(self) -> int:
        """Id of the newest promotion/rollback event (0 without any): effects after it are new."""
        events = self.registry.history(limit=1)
        return int(events[-1].id or 0) if events else 0

    def audit_since(self, after_id: int, limit: int = 50) -> list[AuditEvent]:
        """Promotion/rollback events newer than ``after_id``, oldest first."""
        return [e for e in self.registry.history(limit=limit) if (e.id or 0) > after_id]

    def complete_audit(self, action: str, frm: str, to: str, actor: str, reason: str) -> AuditEvent:
        """Write the audit row of an effect whose aliases moved but whose row is missing.

        ``registry.promote``/``rollback`` move the aliases, then write the row: a process killed in
        between leaves the aliases (the truth) without the row, which this completes.
        """
        from mnistops.store import audit

        log.warning(
            "controller: %s %s → %s had no audit row (killed half-way): recording it", action, frm, to
        )
        event = audit.AuditEvent(
            time=audit.now(),
            action=action,
            from_version=frm,
            to_version=to,
            reason=f"{reason} (recorded after a restart)",
            actor=actor,
            details={"recovered": True},
        )
        return audit.record(self.settings.database, self.settings.model_name, event)

    def set_rollback_alert(self, window: int, version: str, on: bool) -> None:
        """Raise (``on``) or resolve the AutoRollback alert; idempotent (one firing row per rule).

        Raises:
            StoreError: raising it failed (the step is retried; the engine only logs store errors).
        """
        engine = self.alerts()
        try:
            if AUTO_ROLLBACK_RULE not in {r.name for r in engine.rules}:
                log.warning("no %s rule configured: rollback of %s not alerted", AUTO_ROLLBACK_RULE, version)
                return
            engine.evaluate(window, {AUTO_ROLLBACK_METRIC: on}, version)
            raised = any(a.rule == AUTO_ROLLBACK_RULE for a in engine.firing())
            if on and not raised:
                raise StoreError(f"could not raise {AUTO_ROLLBACK_RULE} for version {version}")
        finally:
            engine.close(2.0)  # webhooks get a moment to deliver
