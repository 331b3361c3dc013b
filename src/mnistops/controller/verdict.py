"""The shadow verdict: is a challenger that answered live traffic in the shadows ready to promote?

Pure like :mod:`mnistops.controller.policy`: the caller passes the paired answers in
(``store.shadow_pairs``, rows from every serve replica) and gets a verdict with its reason back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np
from numpy.typing import ArrayLike

from mnistops.gates.stats import mcnemar

if TYPE_CHECKING:
    from mnistops.settings import Settings

__all__ = ["Pairs", "ShadowStats", "ShadowVerdict", "Verdict"]


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


class Pairs(Protocol):
    """Paired answers to the same inputs (``store.ShadowPairs`` is one): int64 [N] each."""

    @property
    def champion_labels(self) -> np.ndarray: ...
    @property
    def shadow_labels(self) -> np.ndarray: ...
    @property
    def true_labels(self) -> np.ndarray: ...  # -1 = no feedback


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

    @classmethod
    def from_settings(cls, settings: Settings) -> ShadowVerdict:
        """Verdict after ``shadow_requests`` (at most 200) requests and ``shadow_min_labelled`` labels."""
        return cls(min_requests=min(settings.shadow_requests, 200), min_labelled=settings.shadow_min_labelled)

    @staticmethod
    def account(champion_labels: ArrayLike, shadow_labels: ArrayLike, true_labels: ArrayLike) -> ShadowStats:
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

    def decide(self, pairs: Pairs) -> Verdict:
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
