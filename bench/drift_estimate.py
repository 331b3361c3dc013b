"""Label-free accuracy estimates on benchmark windows: the shipped CBPE estimate and, for comparison,
Average Thresholded Confidence (ATC, Garg et al., ICLR 2022).

CBPE (:func:`mnistops.monitor.performance.estimate_accuracy`) = mean calibrated top-class probability:
exact if calibration holds on the window, but a shift that makes the model confidently wrong breaks
it. ATC learns one confidence threshold t on the labelled reference such that the share of reference
predictions above t equals the reference accuracy, and estimates a window's accuracy as the share of
its predictions above t. It only assumes the *ranking* of confidences vs correctness transfers,
which is typically more robust under covariate shift than the calibration itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drift_data import ScenarioPool
from mnistops.monitor.performance import estimate_accuracy


def neg_entropy(probs: np.ndarray) -> np.ndarray:
    """ATC-NE score: negative entropy of each row [N] (higher = more confident)."""
    p = np.clip(probs, 1e-12, 1.0)
    return np.asarray((p * np.log(p)).sum(axis=1), dtype=np.float64)


@dataclass(frozen=True)
class ATC:
    """Average Thresholded Confidence on the negative-entropy score."""

    threshold: float

    @classmethod
    def fit(cls, probs: np.ndarray, labels: np.ndarray) -> ATC:
        """Threshold t with ``mean(score > t) == accuracy`` on the labelled reference."""
        score = neg_entropy(probs)
        acc = float((probs.argmax(axis=1) == labels).mean())
        # the (1 - acc) quantile: a share acc of the reference scores lies above it
        return cls(float(np.quantile(score, 1.0 - acc)))

    def estimate(self, probs: np.ndarray) -> float:
        """Estimated accuracy of a window: share of scores above the threshold."""
        return float((neg_entropy(probs) > self.threshold).mean())


def gap_windows(sp: ScenarioPool, atc: ATC, seed: int, count: int, n: int = 1000) -> list[dict[str, float]]:
    """``count`` windows of ``n`` fully shifted rows (δ=1): estimates vs realized accuracy."""
    rng = np.random.default_rng([seed, n, 99])
    out = []
    for _ in range(count):
        s, y, _ = sp.window(n, 1.0, rng)
        assert s.probs is not None
        real = float((s.probs.argmax(axis=1) == y).mean())
        est, atc_est = estimate_accuracy(s.probs).value, atc.estimate(s.probs)
        out.append(
            {"estimated": est, "realized": real, "gap": est - real, "atc": atc_est, "atc_gap": atc_est - real}
        )
    return out
