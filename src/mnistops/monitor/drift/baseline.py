"""Benchmark baseline: BBSD on the *raw* (uncalibrated, T = 1) softmax.

This is what most tutorials and alibi-detect's default BBSD pipeline do. A trained CNN's raw softmax
is over-confident and piles up at 0 and 1, so many values tie and the KS test loses power; the drift
benchmark compares it with :class:`~mnistops.monitor.drift.bbsd.BBSDDetector` on calibrated outputs.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
from numpy.typing import NDArray
from scipy import special

from mnistops.monitor.drift.base import Sample
from mnistops.monitor.drift.bbsd import BBSDDetector


class RawBBSDDetector(BBSDDetector):
    """KS on each raw softmax output (``softmax(logits)``), Bonferroni. Effect size = max KS D."""

    name: ClassVar[str] = "bbsd_raw"
    requires: ClassVar[tuple[str, ...]] = ("logits",)

    def _outputs(self, sample: Sample) -> NDArray[np.float64]:
        assert sample.logits is not None  # guaranteed by requires
        return np.asarray(special.softmax(sample.logits, axis=1), dtype=np.float64)
