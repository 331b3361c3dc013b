"""Raw-input drift on interpretable image statistics (ink, size, position, stroke, background).

Each statistic of :mod:`mnistops.monitor.features` gets a two-sample KS test against the reference,
Bonferroni-corrected over the statistics. Unlike the model-based detectors this one says *what*
changed: ``details["drifted_features"]`` names the statistics, and ``details["per_stat"]`` gives for
each the KS distance and the standardized mean shift ``(mean_window - mean_ref) / std_ref``.
Effect size: the largest KS distance D.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from mnistops.monitor.drift.base import Detector, Sample, Scores
from mnistops.monitor.drift.bbsd import ks_columns
from mnistops.monitor.features import STAT_NAMES, stats_matrix


class InputStatsDetector(Detector):
    """KS on each per-image statistic, Bonferroni. Effect size = max KS D; details name the stats."""

    name: ClassVar[str] = "inputs"
    requires: ClassVar[tuple[str, ...]] = ("images",)

    def prepare(self, reference: Sample) -> None:
        """Compute the reference statistics once ([M, S])."""
        assert reference.images is not None
        self._ref_stats = stats_matrix(reference.images)
        self._ref_mean = self._ref_stats.mean(axis=0)
        # a constant statistic (std 0) would divide by zero: use 1 so the shift is in raw units
        std = self._ref_stats.std(axis=0)
        self._ref_std = np.where(std > 0, std, 1.0)

    def score(self, target: Sample) -> Scores:
        """KS per image statistic; details give the standardized mean shift of each."""
        assert target.images is not None
        new = stats_matrix(target.images)  # [N, S]
        raw = ks_columns(self._ref_stats, new, STAT_NAMES)
        shift = (new.mean(axis=0) - self._ref_mean) / self._ref_std
        per_stat = {
            name: {
                "ks_d": float(raw.statistics[i]),
                "ref_mean": float(self._ref_mean[i]),
                "window_mean": float(new[:, i].mean()),
                "std_shift": float(shift[i]),
            }
            for i, name in enumerate(STAT_NAMES)
        }
        return Scores(
            names=raw.names,
            statistics=raw.statistics,
            p_values=raw.p_values,
            effect_size=raw.effect_size,
            details={**raw.details, "per_stat": per_stat},
        )
