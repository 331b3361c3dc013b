"""Concept drift on delayed labels: windowed metrics, ADWIN/DDM change points."""

from __future__ import annotations

import numpy as np
import pytest

from mnistops.errors import DriftConfigError, DriftInputError
from mnistops.monitor.concept import ErrorStreamMonitor, detect_changes, error_stream, windowed_metrics


def _jump_stream(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.r_[rng.random(2000) < 0.02, rng.random(1000) < 0.30].astype(np.int64)


def test_adwin_finds_jump_from_2_to_30_percent() -> None:
    points = detect_changes(_jump_stream(), "adwin")
    assert points and 2000 <= points[0] < 2300  # after the change, within a few hundred samples
    assert all(p >= 2000 for p in points)


def test_adwin_quiet_on_stationary_stream() -> None:
    rng = np.random.default_rng(1)
    assert detect_changes((rng.random(3000) < 0.05).astype(int), "adwin") == []


def test_ddm_detects_jump() -> None:
    points = detect_changes(_jump_stream(2), "ddm", warm_start=100)
    assert any(2000 <= p < 2300 for p in points)


def test_streaming_monitor_keeps_global_indices() -> None:
    mon = ErrorStreamMonitor("adwin")
    errs = _jump_stream(3)
    assert mon.update_many(errs[:1500]) == []
    later = mon.update_many(errs[1500:])
    assert later and later[0] >= 2000 and mon.seen == 3000
    assert mon.error_rate is not None and mon.error_rate > 0.1


def test_windowed_metrics_and_error_stream() -> None:
    y_true = np.arange(1000) % 10
    y_pred = y_true.copy()
    y_pred[500:600] = (y_pred[500:600] + 1) % 10  # second window: 100 of 500 wrong
    wins = windowed_metrics(y_true, y_pred, window=500)
    assert [(w.start, w.end) for w in wins] == [(0, 500), (500, 1000)]
    assert wins[0].metrics.accuracy == 1.0 and wins[1].metrics.accuracy == pytest.approx(0.8)
    assert len(windowed_metrics(y_true, y_pred, window=500, step=250)) == 3
    assert error_stream(y_true, y_pred).sum() == 100


def test_errors() -> None:
    with pytest.raises(DriftConfigError):
        ErrorStreamMonitor("kswin")  # type: ignore[arg-type]
    with pytest.raises(DriftConfigError):
        ErrorStreamMonitor("adwin", nope=1)
    with pytest.raises(DriftInputError):
        detect_changes([0, 2, 1])
    with pytest.raises(DriftInputError):
        error_stream([1, 2], [1])
    with pytest.raises(DriftConfigError):
        windowed_metrics([1], [1], window=0)
