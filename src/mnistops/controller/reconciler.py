"""The closed loop as a reconciler: each tick reads durable facts and takes the next step.

Facts: ``monitor_windows`` and ``alert_events`` (the monitor), ``retrain_jobs`` (the worker), the
registry's aliases and audit trail (``promotion_events``), ``shadow_predictions`` (every serve
replica). State: ``rollouts`` (compare-and-set), ``timeline`` (idempotency keys), ``role_state``
(cursors). A tick, in order:

1. the champion alias moved? a promotion starts a watched rollout (:func:`follow_champion`);
2. windows and alerts after the cursors: timeline, the watch's judgement, the retrain trigger
   (:func:`follow_feed`, then :func:`maybe_retrain` when new evidence arrived);
3. jobs and a challenger that no rollout follows yet get one (queued by the API, set by hand);
4. every active rollout takes its next step (job done? verdict? promote, roll back).

Nothing is kept in memory between ticks, so SIGKILL + restart at any point resumes the same
decision; every effect is taken once (see :mod:`mnistops.controller.advance`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from mnistops.controller.advance import adopt_challenger, promote, roll_back, shadow
from mnistops.controller.context import (
    STATE_NAME,
    AlertRaiser,
    Context,
    Cursors,
    Lease,
    RegistryOps,
)
from mnistops.controller.metrics import ControllerMetrics
from mnistops.controller.observe import follow_champion, follow_feed
from mnistops.controller.policy import RetrainPolicy
from mnistops.controller.retrain import adopt_jobs, follow_job, maybe_retrain
from mnistops.controller.verdict import ShadowVerdict
from mnistops.errors import RegistryError
from mnistops.registry.core import CHAMPION
from mnistops.store.feed import Feed
from mnistops.store.jobs import JobQueue
from mnistops.store.rollouts import Rollout, Rollouts
from mnistops.store.timeline import Timeline

if TYPE_CHECKING:
    from mnistops.settings import Settings
    from mnistops.store.predictions import PredictionStore

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)


def _follow_job(ctx: Context, r: Rollout) -> bool:
    follow_job(ctx, r)
    return False


# what each active state does per tick; ``watching`` advances with windows (observe.follow_feed)
STEPS: dict[str, Callable[[Context, Rollout], bool]] = {
    "retraining": _follow_job,
    "shadowing": shadow,
    "promoting": promote,
    "rolling_back": roll_back,
}


class Reconciler:
    """One controller's reconcile loop body (:meth:`tick`); the role runs it while it leads.

    Args:
        settings: tick, watch and retrain settings.
        store: the operational database.
        registry: aliases, promote, rollback, audit history.
        lease: leadership, checked before every step.
        alerts: builds the engine that raises the AutoRollback alert (default: from settings).
        metrics: the controller's counters.
    """

    def __init__(
        self,
        settings: Settings,
        store: PredictionStore,
        registry: RegistryOps,
        lease: Lease,
        *,
        alerts: Callable[[], AlertRaiser] | None = None,
        metrics: ControllerMetrics | None = None,
    ) -> None:
        if alerts is None:

            def alerts() -> AlertRaiser:
                from mnistops.monitor.alerts.engine import AlertEngine

                return AlertEngine.from_settings(settings, store)

        self.ctx = Context(
            settings=settings,
            store=store,
            registry=registry,
            lease=lease,
            timeline=Timeline(store),
            rollouts=Rollouts(store),
            feed=Feed(store),
            jobs=JobQueue(store),
            policy=RetrainPolicy.from_settings(settings),
            verdict=ShadowVerdict.from_settings(settings),
            alerts=alerts,
            metrics=metrics or ControllerMetrics(),
        )

    def _load(self) -> None:
        ctx = self.ctx
        stored = ctx.rollouts.get_state(STATE_NAME)
        try:
            ctx.aliases = ctx.read_aliases()
        except RegistryError as exc:  # the facts in the store can still be followed
            log.warning("controller: %s", exc)
            ctx.aliases = {}
        if stored is not None:
            ctx.cursors = Cursors.from_dict(stored)
            return
        # first start: follow the facts from now on (old windows and alerts are history, not news)
        window_id, alert_id = ctx.feed.last_ids()
        audit_id = ctx.last_audit_id()
        ctx.guard()
        with ctx.rollouts.step() as s:
            ctx.cursors = Cursors()
            cursors = ctx.save_cursors(
                s,
                window_id=window_id,
                alert_id=alert_id,
                champion=ctx.aliases.get(CHAMPION),
                audit_id=audit_id,
            )
        ctx.cursors = cursors
        log.info(
            "controller: first start, following windows after %d and alerts after %d", window_id, alert_id
        )

    def tick(self) -> None:
        """One reconcile pass (see module docstring).

        Raises:
            LeadershipLostError: the lease was lost; nothing more was done.
            ConflictError: another writer changed a rollout first; the next tick re-reads.
            StoreError / RegistryError: a dependency failed; the next tick retries.
        """
        ctx = self.ctx
        ctx.guard()
        self._load()
        if ctx.aliases:
            follow_champion(ctx)
        follow_feed(ctx)
        if ctx.cursors.retrain_due:
            maybe_retrain(ctx)
        adopt_jobs(ctx)
        if ctx.aliases:  # every rollout step judges aliases: none without the registry's answer
            adopt_challenger(ctx)
            if self._advance():  # a promotion or rollback this tick: record it now, not a tick later
                ctx.aliases = ctx.read_aliases()
                follow_champion(ctx)
        ctx.metrics.ticks.inc()

    def _advance(self) -> bool:
        """Every active rollout takes its step; True if the champion moved."""
        moved = False
        for r in self.ctx.rollouts.active():
            step = STEPS.get(r.state)
            if step is not None:
                self.ctx.guard()
                moved = bool(step(self.ctx, r)) or moved
        return moved
