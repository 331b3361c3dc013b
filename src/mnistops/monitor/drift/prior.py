"""Predicted-class prior shift: goodness of fit of the window's predicted-class counts.

Expected counts are ``n * q`` where q is the reference predicted-class frequency with add-1/2
(Jeffreys) smoothing, so a class the reference never predicted has a small, non-zero expectation
instead of a division by zero. Cells with an expected count below 5 (Cochran's rule) are pooled,
smallest first, into one cell until the pooled expectation reaches 5; the chi-squared (or G-test)
asymptotics then hold and the p-value is deterministic. If fewer than two cells remain (a tiny
window) there is nothing to test and the p-value is 1. A class that appears out of nowhere still
shows up: its observed count lands in the pooled cell, far above that cell's expectation.
Effect size: total variation distance ``0.5 * sum |p_window - p_reference|`` (unsmoothed, in [0, 1]).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from mnistops.errors import DriftConfigError
from mnistops.monitor.drift.base import Correction, Detector, Sample, Scores

MIN_EXPECTED = 5.0


def pool_cells(
    observed: NDArray[np.float64], expected: NDArray[np.float64], min_expected: float = MIN_EXPECTED
) -> tuple[NDArray[np.float64], NDArray[np.float64], list[int]]:
    """Merge the cells with the smallest expected counts until every cell expects >= min_expected.

    Returns:
        (observed, expected, indices of the original cells that were pooled).
    """
    order = [int(i) for i in np.argsort(expected, kind="stable")]
    pooled = [i for i in order if expected[i] < min_expected]
    if not pooled:
        return observed, expected, []
    rest = [i for i in order if expected[i] >= min_expected]
    # grow the pool (next-smallest cells first) until it is a real merge that expects enough
    while (expected[pooled].sum() < min_expected or len(pooled) < 2) and rest:
        pooled.append(rest.pop(0))
    keep = np.setdiff1d(np.arange(observed.size), pooled)
    obs = np.append(observed[keep], observed[pooled].sum())
    exp = np.append(expected[keep], expected[pooled].sum())
    return obs, exp, sorted(pooled)


class PriorShiftDetector(Detector):
    """Chi-squared (or G) goodness-of-fit test of predicted-class counts. Effect = total variation.

    Args:
        test: ``"pearson"`` (chi-squared) or ``"g"`` (log-likelihood ratio).
    """

    name: ClassVar[str] = "prior"
    requires: ClassVar[tuple[str, ...]] = ("probs",)

    def __init__(
        self,
        alpha: float = 0.01,
        correction: Correction = "bonferroni",
        min_effect: float = 0.0,
        seed: int = 0,
        test: Literal["pearson", "g"] = "pearson",
    ) -> None:
        super().__init__(alpha, correction, min_effect, seed)
        if test not in ("pearson", "g"):
            raise DriftConfigError(f"prior: test must be 'pearson' or 'g', got {test!r}")
        self.test = test
        self.reference_freq = np.zeros(0)
        self._smoothed = np.zeros(0)

    @staticmethod
    def _counts(sample: Sample) -> NDArray[np.float64]:
        assert sample.probs is not None
        k = sample.probs.shape[1]
        return np.bincount(sample.probs.argmax(axis=1), minlength=k).astype(np.float64)

    def prepare(self, reference: Sample) -> None:
        """Reference predicted-class frequencies (raw and Jeffreys-smoothed)."""
        counts = self._counts(reference)
        self.reference_freq = counts / counts.sum()
        self._smoothed = (counts + 0.5) / (counts.sum() + 0.5 * counts.size)

    def score(self, target: Sample) -> Scores:
        """Goodness-of-fit of the window's predicted-class counts to the reference frequencies."""
        obs = self._counts(target)
        n = obs.sum()
        exp = n * self._smoothed
        o, e, pooled = pool_cells(obs, exp)
        details: dict[str, Any] = {
            "test": self.test,
            "pooled_classes": pooled,
            "reference_freq": self.reference_freq,
            "window_freq": obs / n,
            "cells": int(o.size),
        }
        if o.size < 2:
            stat, p = 0.0, 1.0
            details["note"] = "window too small for a goodness-of-fit test"
        else:
            lam = "pearson" if self.test == "pearson" else "log-likelihood"
            res = stats.power_divergence(o, e, lambda_=lam)
            stat, p = float(res.statistic), float(res.pvalue)
        diff = obs / n - self.reference_freq
        tvd = 0.5 * float(np.abs(diff).sum())
        details["largest_changes"] = {f"class_{c}": float(diff[c]) for c in np.argsort(-np.abs(diff))[:3]}
        return Scores(
            names=("class_counts",),
            statistics=np.array([stat]),
            p_values=np.array([p]),
            effect_size=tvd,
            statistic=stat,
            details=details,
        )
