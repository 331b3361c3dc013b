"""Advancing a rollout: shadow verdict, promotion, rollback; adopting a challenger nobody follows.

The two registry effects are taken at most once. The step that decides one (verdict passed,
watch failed) commits the next state with ``audit_before``, the newest audit id at that moment;
the step that takes it first looks in the audit trail for its own event after that id (actor
``controller`` / ``controller:watch``) and only calls the registry if there is none. A crash
between the effect and the state write therefore finds the effect done and only records it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from mnistops.controller.context import PROMOTE_ACTOR, ROLLBACK_ACTOR, Context
from mnistops.errors import ModelNotFoundError, PromotionRefusedError, RollbackError
from mnistops.registry.core import CHALLENGER, CHAMPION

if TYPE_CHECKING:
    from mnistops.store.rollouts import Rollout

__all__ = ["adopt_challenger", "promote", "roll_back", "shadow"]

log = logging.getLogger(__name__)


def adopt_challenger(ctx: Context) -> None:
    """Shadow the ``challenger`` alias's version unless a rollout already did (one verdict each)."""
    v, champ = ctx.aliases.get(CHALLENGER), ctx.aliases.get(CHAMPION)
    if v is None or v == champ:
        return
    if any(r.state == "retraining" for r in ctx.rollouts.active()):
        return  # a job in flight: its rollout takes over the challenger it makes
    for r in ctx.rollouts.list(version=v, limit=50):
        if r.active or r.data.get("shadowed"):
            return
    ctx.guard()
    with ctx.rollouts.step() as s:
        r = s.create(
            "shadowing", version=v, previous_version=champ, reason="challenger", data={"shadowed": True}
        )
        s.record("shadow", f"challenger {v} shadows live traffic", v, key=f"rollout:{r.id}:shadow")


def shadow(ctx: Context, r: Rollout) -> bool:
    """A ``shadowing`` rollout: judge the paired answers; True if it was promoted now."""
    assert r.version is not None
    if ctx.aliases.get(CHALLENGER) != r.version:
        if ctx.aliases.get(CHAMPION) != r.version:  # promoted by hand: follow_champion goes on with it
            ctx.guard()
            ctx.rollouts.update(
                r, state="superseded", reason=f"challenger is now {ctx.aliases.get(CHALLENGER)}"
            )
        return False
    v = ctx.verdict.decide(ctx.store.shadow_pairs(r.version))
    if v.action == "wait":
        return False
    ctx.guard()
    key = f"rollout:{r.id}:verdict"
    if v.action == "reject":
        with ctx.rollouts.step() as s:
            s.record("shadow_rejected", v.reason, r.version, key=key)
            s.update(r, state="rejected", reason=v.reason)
        return False
    audit_before = ctx.last_audit_id()
    with ctx.rollouts.step() as s:
        s.record("shadow_passed", v.reason, r.version, {"agreement": v.stats.agreement}, key=key)
        data = {**r.data, "audit_before": audit_before, "champion": ctx.aliases.get(CHAMPION)}
        r = s.update(r, state="promoting", reason=v.reason, data=data)
    return promote(ctx, r)


def promote(ctx: Context, r: Rollout) -> bool:
    """A ``promoting`` rollout: promote once; True when the champion moved (or had moved) to it."""
    assert r.version is not None
    after = int(r.data.get("audit_before", 0))
    done = any(e.action == "promote" and e.to_version == r.version for e in ctx.audit_since(after))
    if not done and ctx.read_aliases().get(CHAMPION) == r.version:
        ctx.guard()  # moved without its audit row: the promotion died half-way
        prev = str(r.data.get("champion") or r.previous_version or "?")
        ctx.complete_audit("promote", prev, r.version, PROMOTE_ACTOR, f"shadow verdict: {r.reason}")
        done = True
    if done:
        return True  # follow_champion records the promotion and starts the watch
    ctx.guard()
    try:
        ctx.registry.promote(r.version, actor=PROMOTE_ACTOR, reason=f"shadow verdict: {r.reason}")
    except (PromotionRefusedError, ModelNotFoundError) as exc:
        # e.g. its gate ran against a champion that is no longer serving; other errors retry
        with ctx.rollouts.step() as s:
            s.record("promotion_refused", str(exc), r.version, key=f"rollout:{r.id}:refused")
            s.update(r, state="refused", reason=str(exc))
        return False
    log.info("controller: promoted %s", r.version)
    return True


def _rolled_back(ctx: Context, r: Rollout) -> tuple[str, str] | None:
    """(from, to) if the rollback of ``r`` happened already; repairs a missing audit row."""
    assert r.version is not None
    events = ctx.audit_since(int(r.data.get("audit_before", 0)))
    ours = [
        e
        for e in events
        if e.action == "auto-rollback" and e.from_version == r.version and e.actor == ROLLBACK_ACTOR
    ]
    if ours:
        return r.version, ours[0].to_version
    champ = ctx.read_aliases().get(CHAMPION)
    explained = any(e.to_version == champ for e in events)  # somebody else's audited move
    if champ is not None and champ != r.version and champ == r.previous_version and not explained:
        ctx.guard()  # the aliases moved back without the audit row: our rollback died half-way
        ctx.complete_audit("auto-rollback", r.version, champ, ROLLBACK_ACTOR, r.reason)
        return r.version, champ
    return None


def roll_back(ctx: Context, r: Rollout) -> bool:
    """A ``rolling_back`` rollout: roll back once, alert, record; True when the champion moved."""
    assert r.version is not None
    done = _rolled_back(ctx, r)
    if done is not None:
        frm, to = done
    else:
        champ = ctx.read_aliases().get(CHAMPION)
        if champ != r.version:
            ctx.guard()
            ctx.rollouts.update(
                r, state="superseded", reason=f"champion moved to {champ} before the rollback"
            )
            return False
        ctx.guard()
        try:
            frm, to = ctx.registry.rollback(actor=ROLLBACK_ACTOR, reason=r.reason, auto=True)
        except RollbackError as exc:
            with ctx.rollouts.step() as s:
                s.record("rollback_failed", str(exc), r.version, key=f"rollout:{r.id}:rollback_failed")
                s.update(r, state="rollback_failed", reason=str(exc))
            return False
    ctx.set_rollback_alert(int(r.data["window"]), frm, True)
    watched = int(r.data.get("watched_windows", 0))
    with ctx.rollouts.step() as s:
        data = {"from_version": frm, "watched_windows": watched}
        s.record(
            "rollback",
            f"automatic rollback {frm} → {to}: {r.reason}",
            to,
            data,
            key=f"rollout:{r.id}:rollback",
        )
        s.update(r, state="rolled_back", previous_version=to)
        alert = {"version": frm, "after_window_id": int(r.data["window_id"])}
        cursors = ctx.save_cursors(s, champion=to, rollback_alert=alert)  # a rollback is not watched
    ctx.cursors = cursors
    ctx.metrics.rollbacks.inc()
    log.warning("controller: rolled back %s → %s", frm, to)
    return True
