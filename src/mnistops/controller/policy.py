"""Closed-loop decision logic: when to retrain, whether a shadowing challenger is ready, when to roll back.

Everything here is pure (no store, registry, clock or disk access): callers pass the facts in
(firing alerts, times, accuracies, predictions) and get a decision with a readable reason back,
so each rule is unit-testable with plain numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

__all__ = [
    "DEFAULT_TRIGGER_RULES",
    "Decision",
    "McNemar",
    "PromotionWatch",
    "RetrainPolicy",
    "ShadowStats",
    "ShadowVerdict",
    "Verdict",
    "WatchDecision",
    "mcnemar",
]

# Alerts that mean "the champion is wrong on today's traffic" (see monitor/alerts.yaml). A single-window
# DataDrift is deliberately absent: it fires on one noisy window; the sustained version needs two.
DEFAULT_TRIGGER_RULES = frozenset({"DataDriftSustained", "AccuracyDropVsReference", "RealizedAccuracyLow"})


# --- McNemar ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class McNemar:
    """Exact one-sided McNemar test that ``new`` is more often right than ``ref`` on the same inputs."""

    b: int  # ref right, new wrong
    c: int  # new right, ref wrong
    p_value: float  # P(X >= c), X ~ Binomial(b + c, 1/2); 1.0 without discordant pairs


def mcnemar(ref_correct: Any, new_correct: Any) -> McNemar:
    """One-sided exact McNemar test on paired correctness vectors (bool [N] each).

    Only discordant pairs carry information; under H0 (equal accuracy) each one is equally likely
    to favour either model, so the number favouring ``new`` is Binomial(b + c, 1/2).
    """
    from scipy.stats import binomtest

    ref, new = np.asarray(ref_correct, dtype=bool), np.asarray(new_correct, dtype=bool)
    b, c = int((ref & ~new).sum()), int((new & ~ref).sum())
    p = 1.0 if b + c == 0 else float(binomtest(c, b + c, 0.5, alternative="greater").pvalue)
    return McNemar(b, c, p)


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
    def from_settings(cls, settings: Any, **kwargs: Any) -> RetrainPolicy:
        """Policy with ``settings.retrain_cooldown_seconds``; other arguments as keywords."""
        return cls(settings.retrain_cooldown_seconds, **kwargs)

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


def _wilson_upper(acc: float, n: int, z: float = 1.645) -> float:
    # one-sided 95% upper bound of a binomial proportion: a noisy small window is not a regression
    denom = 1 + z * z / n
    centre = acc + z * z / (2 * n)
    half = z * math.sqrt(acc * (1 - acc) / n + z * z / (4 * n * n))
    return min(1.0, (centre + half) / denom)


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
            bound = _wilson_upper(acc, realized_n) if realized_n else acc
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


# --- shadow verdict ------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShadowStats:
    """Shadow accounting: how often the challenger agreed, and accuracy side by side on labelled rows."""

    n: int  # shadowed requests
    agreement: float | None  # share of identical answers (None without rows)
    n_labelled: int
    champion_acc: float | None
    challenger_acc: float | None
    b: int = 0  # champion right, challenger wrong (labelled rows)
    c: int = 0  # challenger right, champion wrong
    p_worse: float | None = None  # one-sided exact McNemar that the challenger is worse
    p_better: float | None = None  # ... that it is better


@dataclass(frozen=True)
class Verdict:
    """Shadow outcome: promote, wait for more evidence, or reject."""

    action: Literal["promote", "wait", "reject"]
    reason: str
    stats: ShadowStats


class ShadowVerdict:
    """Judges a shadowing challenger from its paired answers (``store.shadow_pairs``).

    Agreement alone never decides (a challenger that fixes a shift must disagree); labelled rows do:
    significantly worse (McNemar) rejects, at most ``max_drop`` behind promotes, too few rows waits,
    and a challenger still behind (not significantly) after ``max_labelled`` labelled rows is rejected.

    Args:
        min_requests: shadowed requests needed before any verdict.
        min_labelled: labelled shadowed requests needed before any verdict.
        alpha: significance level of the "challenger is worse" test.
        max_drop: allowed challenger accuracy deficit on labelled shadowed rows.
        max_labelled: labelled rows after which a challenger still behind is rejected.
    """

    def __init__(
        self,
        min_requests: int = 200,
        min_labelled: int = 50,
        alpha: float = 0.05,
        max_drop: float = 0.0,
        max_labelled: int = 1000,
    ) -> None:
        self.min_requests, self.min_labelled = int(min_requests), int(min_labelled)
        self.alpha, self.max_drop, self.max_labelled = float(alpha), float(max_drop), int(max_labelled)

    @staticmethod
    def account(champion_labels: Any, shadow_labels: Any, true_labels: Any) -> ShadowStats:
        """Agreement over all pairs; accuracies and McNemar over pairs with a true label (>= 0)."""
        champ, shadow = np.asarray(champion_labels, np.int64), np.asarray(shadow_labels, np.int64)
        true = np.asarray(true_labels, np.int64)
        n = int(champ.size)
        agreement = float((champ == shadow).mean()) if n else None
        has = true >= 0
        m = int(has.sum())
        if m == 0:
            return ShadowStats(n, agreement, 0, None, None)
        champ_ok, chal_ok = champ[has] == true[has], shadow[has] == true[has]
        better, worse = mcnemar(champ_ok, chal_ok), mcnemar(chal_ok, champ_ok)
        return ShadowStats(
            n,
            agreement,
            m,
            float(champ_ok.mean()),
            float(chal_ok.mean()),
            b=better.b,
            c=better.c,
            p_worse=worse.p_value,
            p_better=better.p_value,
        )

    def decide(self, pairs: Any) -> Verdict:
        """Verdict from a ``ShadowPairs``-like object (champion_labels, shadow_labels, true_labels)."""
        s = self.account(pairs.champion_labels, pairs.shadow_labels, pairs.true_labels)
        agree = "n/a" if s.agreement is None else f"{s.agreement:.1%}"
        if s.n < self.min_requests:
            return Verdict("wait", f"shadowed {s.n}/{self.min_requests} requests (agreement {agree})", s)
        if s.n_labelled < self.min_labelled or s.champion_acc is None or s.challenger_acc is None:
            why = f"{s.n_labelled}/{self.min_labelled} labelled shadowed requests (agreement {agree})"
            return Verdict("wait", why, s)
        side = (
            f"challenger {s.challenger_acc:.4f} vs champion {s.champion_acc:.4f} on {s.n_labelled} labelled, "
            f"agreement {agree}"
        )
        if s.p_worse is not None and s.p_worse < self.alpha:
            return Verdict("reject", f"significantly worse (p={s.p_worse:.3g}): {side}", s)
        if s.challenger_acc >= s.champion_acc - self.max_drop:
            return Verdict("promote", f"at least as good: {side}", s)
        if s.n_labelled >= self.max_labelled:
            return Verdict("reject", f"still behind after {self.max_labelled} labelled rows: {side}", s)
        return Verdict("wait", f"behind but not significantly: {side}", s)
