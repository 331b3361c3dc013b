"""Retraining: deciding on a job, enqueueing it once, following it until the worker is done.

The decision is :class:`~mnistops.controller.policy.RetrainPolicy` on durable facts (firing alerts,
the newest job, labelled rows). Enqueueing is idempotent by construction: ``JobQueue.submit``
returns the active job instead of a second one, and the rollout that follows a job is created
together with its ``retrain_started`` event (key ``job:<id>:started``). A job whose rollout was never
written (a crash between the two, or a job queued by the API or CLI) is adopted on the next tick.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mnistops.controller.context import Context
from mnistops.registry.core import CHALLENGER, CHAMPION
from mnistops.store.jobs import ACTIVE_STATES

if TYPE_CHECKING:
    from mnistops.store.records import RetrainJob
    from mnistops.store.rollouts import Rollout

__all__ = ["adopt_jobs", "follow_job", "maybe_retrain"]

log = logging.getLogger(__name__)


def maybe_retrain(ctx: Context) -> None:
    """Decide on a retrain now (new alerts or drifted windows were seen); clears ``retrain_due``."""
    ctx.guard()
    job = ctx.jobs.latest()
    active = ctx.jobs.active() is not None
    decision = ctx.policy.should_retrain(
        ctx.store.list_alerts(state="firing", limit=1000),
        ctx.clock(),
        None if job is None else (job.finished_at or job.created_at),
        active,
        ctx.store.count(labelled=True),
        retry_stale=job is not None and job.state not in ACTIVE_STATES and not job.details.get("challenger"),
    )
    if not decision:
        log.info("controller: no retrain: %s", decision.reason)
        with ctx.rollouts.step() as s:
            cursors = ctx.save_cursors(s, retrain_due=False)
        ctx.cursors = cursors
        return
    ctx.guard()
    queued = ctx.jobs.submit(f"alerts:{','.join(decision.rules)}", {"reason": decision.reason})
    _follow(ctx, queued, decision.reason)


def _follow(ctx: Context, job: RetrainJob, reason: str) -> None:
    # the rollout, its first event and the cleared trigger commit together
    exists = ctx.rollouts.for_job(job.id) is not None
    with ctx.rollouts.step() as s:
        if not exists:
            s.create("retraining", job_id=job.id, previous_version=ctx.aliases.get(CHAMPION), reason=reason)
            s.record(
                "retrain_started",
                f"job {job.id}: {reason}",
                data={"job": job.id},
                key=f"job:{job.id}:started",
            )
        cursors = ctx.save_cursors(s, retrain_due=False)
    ctx.cursors = cursors


def adopt_jobs(ctx: Context) -> None:
    """Follow queued or running jobs that no rollout follows yet."""
    for state in ACTIVE_STATES:
        for job in ctx.jobs.list(state=state, limit=5):
            if ctx.rollouts.for_job(job.id) is None:
                ctx.guard()
                reason = str(job.details.get("reason") or f"trigger {job.trigger}")
                log.info("controller: following job %s (%s)", job.id, job.trigger)
                _follow(ctx, job, reason)


def follow_job(ctx: Context, r: Rollout) -> None:
    """A ``retraining`` rollout: once its job is done, record it and shadow its challenger, if any."""
    assert r.job_id is not None
    job = ctx.jobs.get(r.job_id)
    if job.state in ACTIVE_STATES:
        return
    d = job.details
    took = (job.finished_at or 0) - (job.started_at or job.created_at)
    why = job.error or d.get("summary")  # e.g. why the production gate rejected it
    detail = f"job {job.id} {job.state} in {took:.0f}s" + (f": {why}" if why else "")
    made = job.version if job.state == "succeeded" and d.get("challenger") and job.version else None
    # fresh aliases: the worker sets the challenger just before it finishes the job
    alias = ctx.read_aliases().get(CHALLENGER) if made else None
    ctx.guard()
    with ctx.rollouts.step() as s:
        key = f"rollout:{r.id}:retrain_finished"
        s.record("retrain_finished", detail, job.version, {"challenger": d.get("challenger")}, key=key)
        if made is None:
            s.update(r, state="no_challenger", version=job.version, reason=str(why or job.state))
        elif alias != made:
            s.update(r, state="superseded", version=made, reason=f"challenger alias is {alias or 'unset'}")
        else:
            s.record("shadow", f"challenger {made} shadows live traffic", made, key=f"rollout:{r.id}:shadow")
            s.update(
                r, state="shadowing", version=made, reason="shadowing", data={**r.data, "shadowed": True}
            )
