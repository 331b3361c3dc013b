"""The closed loop: drift alerts → retrain → gate → shadow → promote → watch → automatic rollback.

:class:`ClosedLoop` subscribes to the monitor (windows and alerts) inside the process that runs
the monitor (the service with ``MNISTOPS_LOOP_IN_SERVE=true``, or ``mnistops monitor run``) and
ticks once a second to follow jobs, the shadowing challenger and the serving champion. Every step
is recorded as a :class:`LoopEvent` (the demo's timeline) and in the durable stores (jobs, alerts,
the registry's audit trail).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from mnistops.controller.policy import PromotionWatch, RetrainPolicy, ShadowVerdict

if TYPE_CHECKING:
    from mnistops.monitor.reports import WindowReport
    from mnistops.monitor.runner import MonitorRunner
    from mnistops.service.state import ServiceState
    from mnistops.store.jobs import JobQueue
    from mnistops.store.records import AlertEvent

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoopEvent:
    """One step of the loop, for the timeline."""

    ts: float  # epoch seconds
    seq: int  # predictions logged so far (the stream's sample index)
    kind: str  # alert | retrain_started | retrain_finished | shadow | promoted | watch | rollback | ...
    detail: str
    version: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


@dataclass
class _VersionAcc:
    realized: float | None = None
    realized_n: int = 0
    estimated: float | None = None


class ClosedLoop:
    """Glue between monitor, retraining, shadowing, promotion and the post-promotion watch.

    Args:
        state: the service state (store, follower, shadow runner, metrics, registry).
        runner: the monitor runner whose windows and alerts drive the loop.
        jobs: the retraining job queue (workers run the jobs).
        policy: when alerts warrant a retrain.
        verdict: when a shadowing challenger is promoted or rejected.
        tick_seconds: how often jobs, challenger and champion are checked.
    """

    def __init__(
        self,
        state: ServiceState,
        runner: MonitorRunner,
        jobs: JobQueue,
        policy: RetrainPolicy,
        verdict: ShadowVerdict,
        tick_seconds: float = 1.0,
    ) -> None:
        self.state, self.runner, self.jobs, self.policy, self.verdict = state, runner, jobs, policy, verdict
        self.registry: Any = state.registry_ops
        self.tick_seconds = tick_seconds
        self.events: list[LoopEvent] = []
        self.watch: PromotionWatch | None = None
        self.watched_version: str | None = None
        self._acc: dict[str, _VersionAcc] = {}
        self._champion: str | None = None
        self._job_states: dict[int, str] = {}
        self._shadow_seen: set[str] = set()
        self._rejected: set[str] = set()
        self._rollback_alert_open = False
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="closed-loop", daemon=True)
        runner.on_window.append(self.on_window)
        runner.on_alerts.append(self.on_alerts)

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ClosedLoop:
        """Start ticking (call after the follower has loaded the champion)."""
        try:
            self._champion = self.state.follower.current().version
        except Exception:  # no model yet: the first tick picks it up
            self._champion = None
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop ticking (a running retrain job finishes in its own thread)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def record(self, kind: str, detail: str, version: str | None = None, **data: Any) -> LoopEvent:
        """Append a timeline event (and log it)."""
        try:
            seq = self.state.store.max_seq()
        except Exception:
            seq = -1
        ev = LoopEvent(time.time(), seq, kind, detail, version, data)
        with self._lock:
            self.events.append(ev)
        log.info("loop: %s %s %s", kind, version or "", detail)
        return ev

    # --- monitor callbacks -------------------------------------------------------------------
    def on_alerts(self, changed: list[AlertEvent]) -> None:
        """New or resolved alerts: maybe start a retrain."""
        for a in changed:
            if a.state == "firing":
                self.record("alert", f"{a.rule} ({a.severity}): {a.summary}", data={"rule": a.rule})
        if not any(a.state == "firing" for a in changed):
            return
        self._maybe_retrain()

    def _maybe_retrain(self) -> None:
        store = self.state.store
        last = self.jobs.latest()
        decision = self.policy.should_retrain(
            self.runner.engine.firing(),
            time.time(),
            None if last is None else (last.finished_at or last.created_at),
            self.jobs.active() is not None,
            store.count(labelled=True),
            retry_stale=last is not None
            and last.state in ("succeeded", "failed")
            and not last.details.get("challenger"),
        )
        if not decision:
            log.info("loop: no retrain: %s", decision.reason)
            return
        job_id = self.jobs.submit(f"alerts:{','.join(decision.rules)}", {"reason": decision.reason}).id
        self._job_states[job_id] = "queued"
        self.record("retrain_started", f"job {job_id}: {decision.reason}", data={"job": job_id})

    def on_window(self, report: WindowReport) -> None:
        """Remember each version's accuracy on live traffic; judge a watched champion."""
        w = report.window
        r = report.realized
        self.record(
            "window",
            f"window {w.window}: {'DRIFT' if report.drifted else 'ok'}, estimated {report.estimate.value:.3f}"
            + ("" if r is None else f", realized {r.accuracy:.3f} (n={r.n})"),
            w.model_version,
            window=w.window,
            start_seq=report.start_seq,
            end_seq=w.end_seq,
            drifted=report.drifted,
        )
        acc = self._acc.setdefault(w.model_version, _VersionAcc())
        acc.estimated = report.estimate.value
        if r is not None:
            acc.realized, acc.realized_n = r.accuracy, r.n
        if report.drifted and not report.fired:
            # labels may have arrived since the alert first fired; alerts firing in THIS window
            # start the retrain from on_alerts, once they are on the timeline
            self._maybe_retrain()
        if self._rollback_alert_open and w.model_version != self.watched_version:
            self._rollback_alert(w.window, w.model_version, False)
        with self._lock:
            watch, watched = self.watch, self.watched_version
        if watch is None or watch.done or w.model_version != watched:
            return
        d = watch.observe(
            None if r is None else r.accuracy, report.estimate.value, realized_n=None if r is None else r.n
        )
        self.record("watch", d.reason, watched, action=d.action, window=w.window)
        if d.action == "rollback":
            self._rollback(d.reason, w.window, watched, watch.observed)

    # --- actions -----------------------------------------------------------------------------
    def _rollback(self, reason: str, window: int, bad_version: str | None, watched_windows: int) -> None:
        try:
            frm, to = self.registry.rollback(actor="loop:watch", reason=reason, auto=True)
        except Exception as exc:
            self.record("rollback_failed", str(exc), bad_version)
            return
        self.state.follower.poll_once()
        self._champion = to  # not a promotion: do not watch the restored champion
        self.state.metrics.rollbacks.inc()
        self.record(
            "rollback",
            f"automatic rollback {frm} → {to}: {reason}",
            to,
            from_version=frm,
            watched_windows=watched_windows,
        )
        self._rollback_alert(window, frm, True)

    def _rollback_alert(self, window: int, version: str, on: bool) -> None:
        try:
            self.runner.engine.evaluate(window, {"auto_rollback": on}, version)
            self._rollback_alert_open = on
        except Exception:
            log.exception("cannot raise the auto-rollback alert")

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_seconds):
            try:
                self.tick()
            except Exception:
                log.exception("closed-loop tick failed")

    def tick(self) -> None:
        """Follow jobs, the challenger in shadow, and champion changes."""
        self._follow_jobs()
        self._follow_shadow()
        self._follow_champion()

    def _follow_jobs(self) -> None:
        for job_id, old in list(self._job_states.items()):
            job = self.jobs.get(job_id)
            if job.state == old:
                continue
            self._job_states[job_id] = job.state
            if job.state in ("succeeded", "failed"):
                del self._job_states[job_id]
                d = job.details or {}
                took = (job.finished_at or 0) - (job.started_at or job.created_at)
                why = job.error or d.get("summary")  # e.g. why the production gate rejected it
                detail = f"job {job_id} {job.state} in {took:.0f}s" + (f": {why}" if why else "")
                self.record("retrain_finished", detail, job.version, challenger=d.get("challenger"))

    def _follow_shadow(self) -> None:
        sh = self.state.shadow
        ch = sh.challenger() if sh is not None else None
        if ch is None or ch.version in self._rejected or ch.version == self._champion:
            return
        if ch.version not in self._shadow_seen:
            self._shadow_seen.add(ch.version)
            self.record("shadow", f"challenger {ch.version} shadows live traffic", ch.version)
        v = self.verdict.decide(self.state.store.shadow_pairs(ch.version))
        if v.action == "wait":
            return
        if v.action == "reject":
            self._rejected.add(ch.version)
            self.record("shadow_rejected", v.reason, ch.version)
            return
        self.record("shadow_passed", v.reason, ch.version, agreement=v.stats.agreement)
        try:
            self.registry.promote(ch.version, actor="loop", reason=f"shadow verdict: {v.reason}")
        except Exception as exc:
            self._rejected.add(ch.version)
            self.record("promotion_refused", str(exc), ch.version)
            return
        self.state.follower.poll_once()

    def _follow_champion(self) -> None:
        try:
            cur = self.state.follower.current().version
        except Exception:
            return
        prev = self._champion
        if cur == prev:
            return
        self._champion = cur
        if prev is None:
            return
        last = self.registry.history(limit=1) if self.registry is not None else []
        ev = last[-1] if last else None
        if ev is not None and ev.action != "promote":
            return  # a rollback restored a known-good champion: nothing to watch
        forced = bool(ev is not None and ev.forced)
        self.record(
            "promoted", f"champion {prev} → {cur}" + (" (FORCED)" if forced else ""), cur, forced=forced
        )
        base = self._acc.get(prev, _VersionAcc())
        ref = base.realized if base.realized is not None else base.estimated
        if ref is None:
            self.record("watch", f"no accuracy recorded for {prev}: watching skipped", cur)
            return
        s = self.state.settings
        with self._lock:
            self.watch = PromotionWatch(
                prev, ref, s.rollback_tolerance, s.watch_windows, previous_estimated=base.estimated
            )
            self.watched_version = cur
        self.record("watch", f"watching {cur} for {s.watch_windows} windows against {prev} ({ref:.4f})", cur)

    def snapshot(self) -> list[dict[str, Any]]:
        """The timeline so far."""
        with self._lock:
            return [e.to_dict() for e in self.events]


def attach_loop(state: ServiceState) -> ClosedLoop:
    """Run monitor + closed loop inside the service (``create_app(on_start=attach_loop)``)."""
    from mnistops.monitor.runner import attach_to_service
    from mnistops.store.jobs import JobQueue

    runner = attach_to_service(state)
    jobs = JobQueue(state.store)
    s = state.settings
    loop = ClosedLoop(
        state,
        runner,
        jobs,
        RetrainPolicy.from_settings(s, min_labelled=s.retrain_min_labelled),
        ShadowVerdict(min_requests=min(s.shadow_requests, 200), min_labelled=s.shadow_min_labelled),
    )
    state.background.append(loop)
    state.loop = loop
    return loop.start()
