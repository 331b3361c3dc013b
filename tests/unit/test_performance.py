"""Temperature scaling, calibration error, CBPE-style accuracy estimate, realized metrics."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special

from mnistops.errors import DriftInputError
from mnistops.monitor.performance import (
    calibrated_probs,
    estimate_accuracy,
    estimation_gap,
    expected_calibration_error,
    fit_temperature,
    realized_metrics,
)


def _calibrated_stream(seed: int, n: int, scale: float = 3.0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits): the probabilities are calibrated by construction."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, scale, (n, 10))
    p = special.softmax(logits, axis=1)
    labels = (p.cumsum(axis=1) < rng.random((n, 1))).sum(axis=1)
    return logits, np.minimum(labels, 9)


def test_temperature_fit_recovers_known_temperature() -> None:
    logits, labels = _calibrated_stream(0, 20000)
    # the model's logits are 2.5x too large: the best temperature is 2.5
    assert fit_temperature(logits * 2.5, labels) == pytest.approx(2.5, rel=0.05)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, rel=0.05)


def test_calibrated_probs_is_tempered_softmax() -> None:
    z = np.random.default_rng(1).normal(size=(4, 10))
    np.testing.assert_allclose(calibrated_probs(z, 2.0), special.softmax(z / 2, axis=1))
    np.testing.assert_allclose(calibrated_probs(z).sum(axis=1), 1.0)
    with pytest.raises(DriftInputError):
        calibrated_probs(z, 0.0)


def test_ece_small_when_calibrated_large_when_overconfident() -> None:
    logits, labels = _calibrated_stream(2, 20000)
    assert expected_calibration_error(calibrated_probs(logits), labels) < 0.02
    assert expected_calibration_error(calibrated_probs(logits, 0.3), labels) > 0.1


def test_cbpe_estimate_matches_realized_accuracy() -> None:
    logits, labels = _calibrated_stream(3, 5000)
    probs = calibrated_probs(logits)
    est = estimate_accuracy(probs)
    real = realized_metrics(labels, probs.argmax(axis=1))
    assert est.lower < est.value < est.upper and est.n == 5000
    gap = estimation_gap(est, real)
    assert abs(gap["gap"]) < 0.02 and gap["within_interval"]


def test_cbpe_interval_coverage() -> None:
    logits, labels = _calibrated_stream(4, 200 * 100)
    probs = calibrated_probs(logits)
    hits = []
    for w in range(200):
        sl = slice(w * 100, (w + 1) * 100)
        est = estimate_accuracy(probs[sl])
        hits.append(est.lower <= np.mean(probs[sl].argmax(axis=1) == labels[sl]) <= est.upper)
    assert np.mean(hits) > 0.88  # nominal 95 %


def test_realized_metrics_by_hand() -> None:
    y_true = np.array([0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 0])
    m = realized_metrics(y_true, y_pred)
    assert m.accuracy == pytest.approx(3 / 5) and m.n == 5
    assert m.per_class_recall[:3] == (0.5, 1.0, 0.0) and m.per_class_recall[3] is None
    # precision: 0 -> 1/2, 1 -> 2/3, 2 -> 0 ; recall 1/2, 1, 0 ; F1 0.5, 0.8, 0
    assert m.macro_precision == pytest.approx((0.5 + 2 / 3) / 3)
    assert m.macro_recall == pytest.approx(0.5)
    assert m.macro_f1 == pytest.approx(1.3 / 3)


def test_input_errors() -> None:
    with pytest.raises(DriftInputError):
        realized_metrics([], [])
    with pytest.raises(DriftInputError):
        realized_metrics([0, 11], [0, 1])
    with pytest.raises(DriftInputError):
        fit_temperature(np.zeros((3, 10)), [0, 1])
    with pytest.raises(DriftInputError):
        expected_calibration_error(np.full((2, 10), np.nan), [0, 1])
