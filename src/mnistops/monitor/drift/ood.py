"""Out-of-distribution rate: share of predictions whose OOD score exceeds the reference's 99th pct.

OOD score: the energy ``-logsumexp(logits)`` (Liu et al. 2020; higher = less familiar) or
``1 - max softmax``. At fit the threshold is the reference's ``quantile`` (default 0.99) of the score
and the expected exceedance rate is the conformal share ``(#{reference > threshold} + 1) / (M + 1)``
(about 1 %; exact even with ties). On a window of n predictions with k above the threshold, a
one-sided exact binomial test asks whether the rate exceeds that expectation.
Effect size: the observed rate k / n (``details["expected_rate"]`` for comparison).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import special, stats

from mnistops.errors import DriftConfigError
from mnistops.monitor.drift.base import Correction, Detector, Sample, Scores

OODScore = Literal["energy", "msp"]


def ood_scores(sample: Sample, kind: OODScore = "energy") -> NDArray[np.float64]:
    """Per-prediction OOD score [N] (higher = more unusual).

    ``energy`` needs logits; ``msp`` (1 - max softmax) uses the calibrated probs.
    """
    if kind == "energy":
        assert sample.logits is not None
        return np.asarray(-special.logsumexp(sample.logits, axis=1), dtype=np.float64)
    assert sample.probs is not None
    return 1.0 - sample.probs.max(axis=1)


class OODRateDetector(Detector):
    """Binomial test of the share of OOD-flagged predictions. Effect size = observed rate.

    Args:
        kind: ``"energy"`` (needs logits) or ``"msp"`` (needs probs).
        quantile: reference quantile used as the per-prediction OOD threshold.
    """

    name: ClassVar[str] = "ood"
    requires: ClassVar[tuple[str, ...]] = ("logits",)

    def __init__(
        self,
        alpha: float = 0.01,
        correction: Correction = "bonferroni",
        min_effect: float = 0.0,
        seed: int = 0,
        kind: OODScore = "energy",
        quantile: float = 0.99,
    ) -> None:
        super().__init__(alpha, correction, min_effect, seed)
        if kind not in ("energy", "msp"):
            raise DriftConfigError(f"ood: kind must be 'energy' or 'msp', got {kind!r}")
        if not 0.5 <= quantile < 1:
            raise DriftConfigError(f"ood: quantile must be in [0.5, 1), got {quantile}")
        self.kind: OODScore = kind
        self.quantile = quantile
        self.requires = ("logits",) if kind == "energy" else ("probs",)  # type: ignore[misc]
        self.ood_threshold = float("inf")
        self.expected_rate = 0.0

    def prepare(self, reference: Sample) -> None:
        """Threshold = reference quantile of the OOD score; expected exceedance rate (conformal)."""
        s = ood_scores(reference, self.kind)
        self.ood_threshold = float(np.quantile(s, self.quantile))
        self.expected_rate = (int((s > self.ood_threshold).sum()) + 1) / (s.size + 1)

    def flags(self, sample: Sample) -> NDArray[np.bool_]:
        """Per-prediction OOD flags [N] (for the "suspicious" list of the dashboard)."""
        return ood_scores(sample, self.kind) > self.ood_threshold

    def score(self, target: Sample) -> Scores:
        """One-sided binomial test of the window's exceedance count."""
        k = int(self.flags(target).sum())
        n = target.n
        p = float(stats.binomtest(k, n, self.expected_rate, alternative="greater").pvalue)
        rate = k / n
        return Scores(
            names=("ood_rate",),
            statistics=np.array([rate]),
            p_values=np.array([p]),
            effect_size=rate,
            statistic=rate,
            details={
                "kind": self.kind,
                "ood_threshold": self.ood_threshold,
                "expected_rate": self.expected_rate,
                "n_flagged": k,
            },
        )
