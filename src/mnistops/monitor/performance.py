"""Calibration and performance: temperature scaling, ECE, label-free accuracy estimate, realized metrics.

The label-free estimate is CBPE-style (as in NannyML): if the softmax is calibrated, the top-class
probability of each prediction *is* the chance that prediction is right, so the expected accuracy of a
window is the mean top-class probability. It is only as good as the calibration, which is why the
monitor works on temperature-scaled probabilities and the quality gate checks the ECE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, special, stats

from mnistops.errors import DriftInputError

NUM_CLASSES = 10
# Search range of the temperature; outside it the model is broken rather than mis-calibrated.
T_MIN, T_MAX = 0.05, 20.0


def _to_numpy(x: Any, dtype: Any = np.float64) -> NDArray[Any]:
    """Accept numpy arrays, torch tensors or lists (torch is converted without importing it here)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _check_logits(logits: Any, name: str = "logits") -> NDArray[np.float64]:
    arr = _to_numpy(logits)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise DriftInputError(f"{name} must be a non-empty [N, C] array, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DriftInputError(f"{name} contain NaN or inf")
    return arr


def _check_labels(labels: Any, n: int, name: str = "labels") -> NDArray[np.int64]:
    arr = _to_numpy(labels, np.int64).reshape(-1)
    if arr.shape[0] != n:
        raise DriftInputError(f"{name} has {arr.shape[0]} entries, expected {n}")
    if arr.size and (arr.min() < 0 or arr.max() >= NUM_CLASSES):
        raise DriftInputError(f"{name} must be class ids in [0, {NUM_CLASSES})")
    return arr


def calibrated_probs(logits: Any, temperature: float = 1.0) -> NDArray[np.float64]:
    """Temperature-scaled softmax.

    Args:
        logits: [N, C] logits (numpy or torch).
        temperature: T > 0; probabilities are ``softmax(logits / T)``.

    Returns:
        [N, C] float64 probabilities (rows sum to 1).
    """
    if not temperature > 0:
        raise DriftInputError(f"temperature must be > 0, got {temperature}")
    arr = _check_logits(logits)
    return np.asarray(special.softmax(arr / temperature, axis=1), dtype=np.float64)


def _nll(logits: NDArray[np.float64], labels: NDArray[np.int64], temperature: float) -> float:
    z = logits / temperature
    # mean of logsumexp(z) - z[label]  (= cross-entropy), stable via scipy's logsumexp
    return float(np.mean(special.logsumexp(z, axis=1) - z[np.arange(len(labels)), labels]))


def fit_temperature(logits: Any, labels: Any) -> float:
    """Fit the temperature that minimises the negative log-likelihood on held-out data.

    A one-parameter bounded search over ``log T`` (the NLL is smooth and unimodal in T),
    so it never needs gradients or a learning rate.

    Args:
        logits: [N, C] validation logits.
        labels: [N] true classes.

    Returns:
        The temperature T in [0.05, 20].
    """
    arr = _check_logits(logits)
    y = _check_labels(labels, arr.shape[0])
    res = optimize.minimize_scalar(
        lambda log_t: _nll(arr, y, float(np.exp(log_t))),
        bounds=(np.log(T_MIN), np.log(T_MAX)),
        method="bounded",
        options={"xatol": 1e-5},
    )
    return float(np.exp(res.x))


def expected_calibration_error(probs: Any, labels: Any, bins: int = 15) -> float:
    """Top-label expected calibration error with equal-width confidence bins.

    Args:
        probs: [N, C] probabilities.
        labels: [N] true classes.
        bins: number of equal-width bins on [0, 1].

    Returns:
        ``sum_b |B_b|/N * |accuracy(B_b) - confidence(B_b)|`` in [0, 1].
    """
    p = _check_logits(probs, "probs")
    y = _check_labels(labels, p.shape[0])
    if bins < 1:
        raise DriftInputError("bins must be >= 1")
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    # bin b holds conf in (b/bins, (b+1)/bins]; conf == 0 cannot happen for a softmax
    idx = np.clip(np.ceil(conf * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, correct, bins) - np.bincount(idx, conf, bins))
    return float(gap.sum() / max(count.sum(), 1))


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval."""

    value: float
    lower: float
    upper: float
    n: int


def estimate_accuracy(probs: Any, confidence: float = 0.95) -> Estimate:
    """CBPE-style label-free accuracy estimate of a window.

    Each prediction is right with probability ``max_c p_c`` (if calibrated), so the number of right
    predictions is Poisson-binomial with mean ``sum p_i`` and variance ``sum p_i (1 - p_i)``. The
    interval is the normal approximation of that distribution: it says where the *realized* accuracy
    of this window should land, and excludes calibration error.

    Args:
        probs: [N, C] calibrated probabilities.
        confidence: interval coverage.

    Returns:
        Estimate(value, lower, upper, n), bounds clipped to [0, 1].
    """
    p = _check_logits(probs, "probs").max(axis=1)
    n = p.shape[0]
    value = float(p.mean())
    half = float(stats.norm.ppf(0.5 + confidence / 2) * np.sqrt(np.sum(p * (1 - p))) / n)
    return Estimate(value, max(0.0, value - half), min(1.0, value + half), n)


@dataclass(frozen=True)
class RealizedMetrics:
    """Metrics on labelled predictions.

    ``per_class_recall[c]`` is None when class c never occurs in ``y_true``; the macro averages run
    over the classes present in ``y_true`` or ``y_pred`` (the scikit-learn convention).
    """

    n: int
    accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class_recall: tuple[float | None, ...]


def realized_metrics(y_true: Any, y_pred: Any) -> RealizedMetrics:
    """Accuracy, macro precision/recall/F1 and per-class recall.

    Args:
        y_true: [N] true classes.
        y_pred: [N] predicted classes.

    Returns:
        RealizedMetrics (a class absent from both vectors does not enter the macro averages).
    """
    t = _to_numpy(y_true, np.int64).reshape(-1)
    if t.size == 0:
        raise DriftInputError("realized_metrics needs at least one labelled prediction")
    t = _check_labels(t, t.size, "y_true")
    p = _check_labels(y_pred, t.size, "y_pred")
    tp = np.bincount(t[t == p], minlength=NUM_CLASSES).astype(np.float64)
    support = np.bincount(t, minlength=NUM_CLASSES).astype(np.float64)
    predicted = np.bincount(p, minlength=NUM_CLASSES).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        recall = np.where(support > 0, tp / support, 0.0)
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = (support > 0) | (predicted > 0)
    return RealizedMetrics(
        n=int(t.size),
        accuracy=float(np.mean(t == p)),
        macro_precision=float(precision[present].mean()),
        macro_recall=float(recall[present].mean()),
        macro_f1=float(f1[present].mean()),
        per_class_recall=tuple(float(r) if s > 0 else None for r, s in zip(recall, support, strict=True)),
    )


def estimation_gap(estimate: Estimate, realized: RealizedMetrics) -> dict[str, float | bool]:
    """Compare the label-free estimate with the realized accuracy once labels arrive.

    Returns:
        ``{"estimated", "realized", "gap" (estimated - realized), "within_interval"}``.
    """
    return {
        "estimated": estimate.value,
        "realized": realized.accuracy,
        "gap": estimate.value - realized.accuracy,
        "within_interval": estimate.lower <= realized.accuracy <= estimate.upper,
    }
