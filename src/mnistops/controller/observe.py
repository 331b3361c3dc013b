"""Following the facts: champion moves in the registry, monitor windows and alert events in the store.

:func:`follow_champion` turns a move of the ``champion`` alias into a watched rollout when the
audit trail says it was a promotion (the controller's own or anybody's, ``--force`` included).
:func:`follow_feed` handles windows and alerts after the durable cursors, one transaction per fact:
the timeline event, the watch's judgement of the window and the advanced cursor commit together.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from mnistops.controller.context import AUTO_ROLLBACK_RULE, Context
from mnistops.controller.policy import PromotionWatch, WatchDecision
from mnistops.registry.core import CHAMPION

if TYPE_CHECKING:
    from mnistops.store.audit import AuditEvent
    from mnistops.store.records import AlertEvent, MonitorWindow
    from mnistops.store.rollouts import Rollout

__all__ = ["follow_champion", "follow_feed"]

log = logging.getLogger(__name__)
FEED_BATCH = 100  # facts read per query; a backlog drains over several ticks


# --- champion ------------------------------------------------------------------------------------
def _audit_onto(ctx: Context, version: str) -> AuditEvent | None:
    """The newest audit event after the cursor that made ``version`` champion."""
    return next((e for e in reversed(ctx.audit_since(ctx.cursors.audit_id)) if e.to_version == version), None)


def _effect_in_flight(ctx: Context, prev: str, cur: str) -> bool:
    # aliases moved without an audit row: one of our own effects died half-way (the registry moves
    # aliases, then writes the row); its rollout step completes the record, then this one goes on
    for r in ctx.rollouts.active():
        if (r.state, r.version) in (("promoting", cur), ("rolling_back", prev)):
            return True
    return False


def _baseline(ctx: Context, version: str) -> tuple[float, float | None] | None:
    """(accuracy, estimate) of a champion on its latest windows: realized if labelled, else estimated."""
    windows = ctx.store.latest_windows(50, model_version=version)
    if not windows:
        return None
    realized = next((w.realized_accuracy for w in reversed(windows) if w.realized_accuracy is not None), None)
    estimated = windows[-1].estimated_accuracy
    ref = realized if realized is not None else estimated
    return None if ref is None else (ref, estimated)


def follow_champion(ctx: Context) -> None:
    """Record a champion move; start watching it if it was a promotion (a rollback is not watched)."""
    cur, prev = ctx.aliases.get(CHAMPION), ctx.cursors.champion
    if cur is None or cur == prev:  # None: no champion yet, or the registry did not answer
        return
    ctx.guard()
    if prev is None:  # first sight: nothing to compare with
        with ctx.rollouts.step() as s:
            cursors = ctx.save_cursors(s, champion=cur)
        ctx.cursors = cursors
        return
    ev = _audit_onto(ctx, cur)
    if ev is None and _effect_in_flight(ctx, prev, cur):
        return
    audit_id = max(ctx.cursors.audit_id, 0 if ev is None else int(ev.id or 0))
    if ev is not None and ev.action != "promote":
        _restored(ctx, cur, ev, audit_id)
    else:  # no audit event: the alias was moved by hand, which is watched like a promotion
        _promoted(ctx, prev, cur, bool(ev is not None and ev.forced), audit_id)


def _restored(ctx: Context, cur: str, ev: AuditEvent, audit_id: int) -> None:
    # a rollback restored a known-good champion: nothing to watch; watches of other versions end
    # (a rolling_back rollout finds its own rollback in the audit trail)
    with ctx.rollouts.step() as s:
        for r in ctx.rollouts.active():
            if r.state == "watching" and r.version != cur:
                s.update(r, state="superseded", reason=f"champion moved to {cur} ({ev.action} by {ev.actor})")
        cursors = ctx.save_cursors(s, champion=cur, audit_id=audit_id)
    ctx.cursors = cursors


def _promoted(ctx: Context, prev: str, cur: str, forced: bool, audit_id: int) -> None:
    active = ctx.rollouts.active()
    base = _baseline(ctx, prev)
    s_ = ctx.settings
    with ctx.rollouts.step() as s:
        # the attempt that shadowed this version goes on; anybody else's promotion is a new one
        r = next((r for r in active if r.version == cur and r.state in ("shadowing", "promoting")), None)
        if r is None:
            r = s.create("watching", version=cur, previous_version=prev, reason="promoted")
        for other in active:
            if other.id != r.id and other.state == "watching":
                s.update(other, state="superseded", reason=f"champion {cur} promoted")
        flag = " (FORCED)" if forced else ""
        s.record(
            "promoted",
            f"champion {prev} → {cur}{flag}",
            cur,
            {"forced": forced},
            key=f"rollout:{r.id}:promoted",
        )
        key = f"rollout:{r.id}:watch:start"
        if base is None:
            s.record("watch", f"no accuracy recorded for {prev}: watching skipped", cur, key=key)
            s.update(r, state="stable", previous_version=prev, reason=f"no accuracy recorded for {prev}")
        else:
            ref, est = base
            watch = PromotionWatch(prev, ref, s_.rollback_tolerance, s_.watch_windows, previous_estimated=est)
            why = f"watching {cur} for {s_.watch_windows} windows against {prev} ({ref:.4f})"
            s.record("watch", why, cur, key=key)
            data = {**r.data, "watch": watch.state(), "after_window_id": ctx.cursors.window_id}
            s.update(r, state="watching", previous_version=prev, reason="watching", data=data)
        cursors = ctx.save_cursors(s, champion=cur, audit_id=audit_id)
    ctx.cursors = cursors
    ctx.metrics.promotions.inc()


# --- windows and alerts --------------------------------------------------------------------------
def _facts(ctx: Context) -> list[MonitorWindow | AlertEvent]:
    """New windows and alerts in the order they happened (a truncated batch sets the horizon)."""
    c = ctx.cursors
    windows = ctx.feed.windows_after(c.window_id, FEED_BATCH)
    alerts = ctx.feed.alerts_after(c.alert_id, FEED_BATCH)
    horizon = min(
        [float("inf")]
        + ([windows[-1].created_at or 0.0] if len(windows) == FEED_BATCH else [])
        + ([alerts[-1].started_at] if len(alerts) == FEED_BATCH else [])
    )
    facts: list[tuple[float, int, int, MonitorWindow | AlertEvent]] = []
    facts += [(w.created_at or 0.0, 0, w.id or 0, w) for w in windows]
    facts += [(a.started_at, 1, a.id, a) for a in alerts]  # a window's alerts come after it
    return [f for t, _, _, f in sorted(facts, key=lambda x: x[:3]) if t <= horizon]


def follow_feed(ctx: Context) -> None:
    """Handle the windows and alerts after the cursors; stop early when a rollback is due."""
    from mnistops.store.records import MonitorWindow

    for fact in _facts(ctx):
        ctx.guard()
        if isinstance(fact, MonitorWindow):
            if _window(ctx, fact):
                return  # the rollback runs before the next window is judged
        else:
            _alert(ctx, fact)


def _window_facts(ctx: Context, w: MonitorWindow) -> tuple[int, int | None]:
    details: dict[str, Any] = (w.results.get("combined") or {}).get("details") or {}
    start = details.get("start_seq")
    start_seq = int(start) if isinstance(start, int) else max(0, w.end_seq - w.n + 1)
    if w.realized_accuracy is None:
        return start_seq, None
    n = details.get("realized_n")  # written by monitors that record it; else counted
    if not isinstance(n, int):
        n = ctx.feed.labelled_between(start_seq, w.end_seq, w.model_version)
    return start_seq, n


def _window_detail(w: MonitorWindow, realized_n: int | None) -> str:
    est = "n/a" if w.estimated_accuracy is None else f"{w.estimated_accuracy:.3f}"
    r = w.realized_accuracy
    return f"window {w.window}: {'DRIFT' if w.drifted else 'ok'}, estimated {est}" + (
        "" if r is None else f", realized {r:.3f} (n={realized_n})"
    )


def _watched(ctx: Context, w: MonitorWindow) -> Rollout | None:
    wid = int(w.id or 0)
    for r in ctx.rollouts.active():
        if r.state == "watching" and r.version == w.model_version and wid > int(r.data["after_window_id"]):
            return r
    return None


def _window(ctx: Context, w: MonitorWindow) -> bool:
    """One window: timeline, watch, the rollback alert's resolution; True when a rollback is now due."""
    start_seq, realized_n = _window_facts(ctx, w)
    wid = int(w.id or 0)
    ra = ctx.cursors.rollback_alert
    resolve = ra is not None and w.model_version != ra["version"] and wid > int(ra["after_window_id"])
    if resolve:  # the restored champion serves: the AutoRollback alert has done its job
        ctx.set_rollback_alert(w.window, w.model_version, False)
    watched = _watched(ctx, w)
    judged = None if watched is None else _judge(ctx, watched, w, realized_n)
    with ctx.rollouts.step() as s:
        data: dict[str, Any] = {
            "window": w.window,
            "start_seq": start_seq,
            "end_seq": w.end_seq,
            "drifted": w.drifted,
        }
        s.record("window", _window_detail(w, realized_n), w.model_version, data, key=f"window:{wid}")
        if watched is not None and judged is not None:
            d, changes = judged
            wdata = {"action": d.action, "window": w.window}
            s.record("watch", d.reason, watched.version, wdata, key=f"rollout:{watched.id}:watch:{wid}")
            s.update(watched, **changes)
        cur: dict[str, Any] = {"window_id": wid, "retrain_due": ctx.cursors.retrain_due or w.drifted}
        if resolve:
            cur["rollback_alert"] = None
        cursors = ctx.save_cursors(s, **cur)
    ctx.cursors = cursors
    return judged is not None and judged[0].action == "rollback"


def _judge(
    ctx: Context, r: Rollout, w: MonitorWindow, realized_n: int | None
) -> tuple[WatchDecision, dict[str, Any]]:
    """The watch's decision on one window and the rollout change it implies."""
    watch = PromotionWatch.restore(r.data["watch"])
    d = watch.observe(w.realized_accuracy, w.estimated_accuracy, realized_n=realized_n)
    data = {**r.data, "watch": watch.state()}
    if d.action == "watch":
        return d, {"data": data}
    if d.action == "passed":
        return d, {"state": "stable", "reason": d.reason, "data": data}
    # the rollback itself runs next (advance.rolling_back); effects newer than this audit id are ours
    data.update(
        audit_before=ctx.last_audit_id(), window=w.window, window_id=w.id, watched_windows=watch.observed
    )
    return d, {"state": "rolling_back", "reason": d.reason, "data": data}


def _alert(ctx: Context, a: AlertEvent) -> None:
    own = a.rule == AUTO_ROLLBACK_RULE  # raised by the controller itself: its rollback event says it
    with ctx.rollouts.step() as s:
        if not own:
            s.record(
                "alert", f"{a.rule} ({a.severity}): {a.summary}", data={"rule": a.rule}, key=f"alert:{a.id}"
            )
        cursors = ctx.save_cursors(s, alert_id=a.id, retrain_due=ctx.cursors.retrain_due or not own)
    ctx.cursors = cursors
