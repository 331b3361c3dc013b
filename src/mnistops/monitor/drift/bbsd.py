"""Black-box shift detection (BBSD, Lipton et al. 2018; Rabanser et al. 2019).

The classifier's own softmax is a 10-dimensional summary of the input that is sensitive to exactly
the shifts that hurt it. Each of the 10 calibrated class probabilities gets a two-sample
Kolmogorov-Smirnov test against the reference; the 10 p-values are corrected (Bonferroni by default).
Effect size: the largest KS distance D (the largest gap between two CDFs, in [0, 1]).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from mnistops.monitor.drift.base import Detector, Sample, Scores


def ks_columns(ref: NDArray[Any], new: NDArray[Any], names: tuple[str, ...]) -> Scores:
    """Column-wise two-sample KS tests of [M, F] vs [N, F] (exact p-values for small samples).

    Ties (e.g. saturated probabilities) make KS conservative, never anti-conservative.
    """
    res = stats.ks_2samp(ref, new, axis=0)
    d = np.atleast_1d(np.asarray(res.statistic, dtype=np.float64))
    p = np.atleast_1d(np.asarray(res.pvalue, dtype=np.float64))
    worst = int(np.argmax(d))
    return Scores(
        names=names,
        statistics=d,
        p_values=p,
        effect_size=float(d[worst]),
        details={"largest_shift": names[worst]},
    )


class BBSDDetector(Detector):
    """KS on each calibrated softmax output, Bonferroni-corrected. Effect size = max KS D."""

    name: ClassVar[str] = "bbsd"
    requires: ClassVar[tuple[str, ...]] = ("probs",)

    def _outputs(self, sample: Sample) -> NDArray[np.float64]:
        assert sample.probs is not None  # guaranteed by requires
        return sample.probs

    def score(self, target: Sample) -> Scores:
        """KS per class probability of the window vs the reference."""
        ref = self._outputs(self.reference)
        names = tuple(f"class_{c}" for c in range(ref.shape[1]))
        return ks_columns(ref, self._outputs(target), names)
