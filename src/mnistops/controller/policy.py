"""Closed-loop decision logic: when to retrain, and when a new champion is rolled back.

Everything here is pure (no store, registry, clock or disk access): callers pass the facts in
(firing alerts, times, accuracies) and get a decision with a readable reason back, so each rule is
unit-testable with plain numbers. The shadow verdict (is a challenger ready?) is in
:mod:`mnistops.controller.verdict`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mnistops.gates.stats import wilson_upper

if TYPE_CHECKING:
    from mnistops.settings import Settings

__all__ = [
    "DEFAULT_TRIGGER_RULES",
    "Decision",
    "PromotionWatch",
    "RetrainPolicy",
    "WatchDecision",
]

# Alerts that mean "the champion is wrong on today's traffic" (see monitor/alerts.yaml). A single-window
# DataDrift is deliberately absent: it fires on one noisy window; the sustained version needs two.
DEFAULT_TRIGGER_RULES = frozenset({"DataDriftSustained", "AccuracyDropVsReference", "RealizedAccuracyLow"})


# --- retrain trigger -----------------------------------------------------------------------------
class _Alert(Protocol):
    # read-only members: frozen dataclasses such as AlertEvent satisfy them
    @property
    def rule(self) -> str: ...
    @property
    def started_at(self) -> float: ...


@dataclass(frozen=True)
class Decision:
    """Yes/no with the reason (truthy when yes)."""

    yes: bool
    reason: str
    rules: tuple[str, ...] = ()  # the triggering alert rules

    def __bool__(self) -> bool:
        return self.yes


class RetrainPolicy:
    """Decides whether firing alerts should start a retraining job.

    Storm protection, in order: never while a job is queued or running; an alert counts only if it
    started after the last job finished (a drift that keeps firing through the retrain, e.g. because
    the inputs stay rotated, is not new evidence) unless ``retry_stale`` (the last job produced no
    challenger); and never within ``cooldown_seconds`` of the last job.

    Args:
        cooldown_seconds: minimum time between the last job and a new one.
        trigger_rules: alert rule names that may trigger a retrain.
        min_labelled: labelled production inputs needed before retraining is worth it.
    """

    def __init__(
        self,
        cooldown_seconds: float,
        trigger_rules: Iterable[str] = DEFAULT_TRIGGER_RULES,
        min_labelled: int = 100,
    ) -> None:
        self.cooldown_seconds = float(cooldown_seconds)
        self.trigger_rules = frozenset(trigger_rules)
        self.min_labelled = int(min_labelled)

    @classmethod
    def from_settings(
        cls, settings: Settings, trigger_rules: Iterable[str] = DEFAULT_TRIGGER_RULES
    ) -> RetrainPolicy:
        """Policy with ``settings.retrain_cooldown_seconds`` and ``retrain_min_labelled``."""
        return cls(settings.retrain_cooldown_seconds, trigger_rules, settings.retrain_min_labelled)

    def should_retrain(
        self,
        fired_alerts: Iterable[_Alert | str],
        now: float,
        last_job_time: float | None,
        job_running: bool,
        labelled_count: int,
        *,
        retry_stale: bool = False,
    ) -> Decision:
        """Decide on a retrain now.

        Args:
            fired_alerts: firing alerts (objects with ``rule`` and ``started_at``, or bare rule names,
                which count as new).
            now: epoch seconds.
            last_job_time: when the last job finished (or was created, if unfinished); None if never.
            job_running: a job is queued or running.
            labelled_count: labelled production inputs available for training.
            retry_stale: let alerts older than the last job count (it produced no challenger).
        """
        if job_running:
            return Decision(False, "a retrain job is already queued or running")
        alerts = [(a, None) if isinstance(a, str) else (a.rule, a.started_at) for a in fired_alerts]
        relevant = [(r, t) for r, t in alerts if r in self.trigger_rules]
        if not relevant:
            firing = sorted({r for r, _ in alerts})
            return Decision(False, f"no trigger alert firing (firing: {', '.join(firing) or 'none'})")
        fresh = [r for r, t in relevant if t is None or last_job_time is None or t >= last_job_time]
        rules = tuple(sorted(set(fresh if fresh else [r for r, _ in relevant])))
        if not fresh and not retry_stale:
            return Decision(False, f"{', '.join(rules)} already firing before the last job: not new evidence")
        if last_job_time is not None and now - last_job_time < self.cooldown_seconds:
            ago = now - last_job_time
            return Decision(
                False, f"cool-down: last job {ago:.0f}s ago < {self.cooldown_seconds:.0f}s", rules
            )
        if labelled_count < self.min_labelled:
            why = f"only {labelled_count} labelled production inputs (< {self.min_labelled})"
            return Decision(False, why, rules)
        since = "no earlier job" if last_job_time is None else f"last job {now - last_job_time:.0f}s ago"
        retry = "" if fresh else " (retrying: the last job produced no challenger)"
        return Decision(True, f"{', '.join(rules)} firing; {labelled_count} labelled; {since}{retry}", rules)


# --- post-promotion watch --------------------------------------------------------------------------
WatchAction = Literal["watch", "passed", "rollback"]
Source = Literal["realized", "estimated"]


@dataclass(frozen=True)
class WatchDecision:
    """Outcome of one watched window."""

    action: WatchAction
    reason: str
    windows_ok: int  # windows that met the bar so far
    accuracy: float | None = None  # the accuracy judged in this window
    source: Source | None = None


class PromotionWatch:
    """Watches a new champion for ``windows`` windows after its promotion.

    Each window: realized accuracy (if labels arrived) else the label-free estimate is compared with
    the previous champion's; more than ``tolerance`` below it means rollback. ``windows`` windows
    that meet the bar mean passed. Windows with neither number do not count. Terminal decisions stick.

    Args:
        previous_version: the champion before the promotion (what a rollback restores).
        previous_accuracy: its accuracy on recent traffic (realized, or estimated if no labels).
        tolerance: allowed accuracy drop.
        windows: windows to watch.
        previous_estimated: its label-free estimate, compared with the new estimate when given.
    """

    def __init__(
        self,
        previous_version: str | None,
        previous_accuracy: float,
        tolerance: float,
        windows: int,
        *,
        previous_estimated: float | None = None,
    ) -> None:
        if windows < 1:
            raise ValueError("windows must be >= 1")
        self.previous_version = previous_version
        self.previous_accuracy = float(previous_accuracy)
        self.previous_estimated = previous_estimated
        self.tolerance = float(tolerance)
        self.windows = int(windows)
        self.windows_ok = 0
        self.observed = 0
        self.decision: WatchDecision | None = None  # set once terminal

    @property
    def done(self) -> bool:
        """A terminal decision (passed or rollback) was reached."""
        return self.decision is not None

    def state(self) -> dict[str, Any]:
        """JSON-ready progress: what a durable caller stores between windows (see :meth:`restore`)."""
        return {
            "previous_version": self.previous_version,
            "previous_accuracy": self.previous_accuracy,
            "previous_estimated": self.previous_estimated,
            "tolerance": self.tolerance,
            "windows": self.windows,
            "windows_ok": self.windows_ok,
            "observed": self.observed,
        }

    @classmethod
    def restore(cls, state: Mapping[str, Any]) -> PromotionWatch:
        """The watch that :meth:`state` described, ready for its next window.

        Only a watch still in progress is stored: a terminal decision ends the caller's watch.
        """
        watch = cls(
            state["previous_version"],
            state["previous_accuracy"],
            state["tolerance"],
            state["windows"],
            previous_estimated=state.get("previous_estimated"),
        )
        watch.windows_ok, watch.observed = int(state["windows_ok"]), int(state["observed"])
        return watch

    def observe(
        self, realized: float | None, estimated: float | None, *, realized_n: int | None = None
    ) -> WatchDecision:
        """Judge one window of the new champion.

        Args:
            realized: accuracy on labelled rows of the window, or None.
            estimated: label-free (CBPE) accuracy estimate, or None.
            realized_n: labelled rows behind ``realized``; given, the drop must hold for the one-sided
                95% upper confidence bound, so a handful of unlucky labels does not roll back.
        """
        if self.decision is not None:
            return self.decision
        self.observed += 1
        source: Source
        if realized is not None:
            acc, source, ref = float(realized), "realized", self.previous_accuracy
            bound = wilson_upper(acc, realized_n) if realized_n else acc
        elif estimated is not None:
            acc, source = float(estimated), "estimated"
            ref = self.previous_estimated if self.previous_estimated is not None else self.previous_accuracy
            bound = acc
        else:
            why = f"window {self.observed}: no realized or estimated accuracy yet"
            return WatchDecision("watch", why, self.windows_ok)
        floor = ref - self.tolerance
        if bound < floor:
            why = (
                f"{source} accuracy {acc:.4f} is more than {self.tolerance} below the previous champion "
                f"{self.previous_version or '?'} ({ref:.4f}) in watched window {self.observed}"
            )
            self.decision = WatchDecision("rollback", why, self.windows_ok, acc, source)
            return self.decision
        self.windows_ok += 1
        if self.windows_ok >= self.windows:
            why = f"{self.windows_ok} watched windows at or above {floor:.4f} (last {source} {acc:.4f})"
            self.decision = WatchDecision("passed", why, self.windows_ok, acc, source)
            return self.decision
        why = f"{source} accuracy {acc:.4f} >= {floor:.4f} ({self.windows_ok}/{self.windows} windows ok)"
        return WatchDecision("watch", why, self.windows_ok, acc, source)
