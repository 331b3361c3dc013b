"""Concept drift from delayed labels: windowed realized metrics and change points on the error stream.

Labels arrive late (``POST /v1/feedback``), so this runs on the labelled subset of logged predictions,
in prediction order. The 0/1 error stream (1 = wrong) goes through river's ADWIN (adaptive window,
detects a change in the mean error rate with a Hoeffding-style bound) or DDM (drift detection
method: error rate + std exceeding its running minimum by 3 std). Prefer ADWIN: with a low error
rate (~2 %) and river's default ``warm_start=30`` DDM raised 3 false alarms in 3000 clean samples in
our simulation, ADWIN none; pass e.g. ``warm_start=100`` when using DDM.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from river.drift import ADWIN
from river.drift.binary import DDM

from mnistops.errors import DriftConfigError, DriftInputError
from mnistops.monitor.performance import RealizedMetrics, realized_metrics

Method = Literal["adwin", "ddm"]


@dataclass(frozen=True)
class WindowMetrics:
    """Realized metrics of labelled predictions ``[start, end)`` of the stream."""

    start: int
    end: int
    metrics: RealizedMetrics


def _labels(y: Any, name: str) -> NDArray[np.int64]:
    if hasattr(y, "detach"):
        y = y.detach().cpu().numpy()
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise DriftInputError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr.astype(np.int64)


def error_stream(y_true: Any, y_pred: Any) -> NDArray[np.int64]:
    """0/1 errors (1 = misclassified) of a labelled prediction stream [N]."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise DriftInputError(f"y_true {t.shape} and y_pred {p.shape} differ")
    return (t != p).astype(np.int64)


def windowed_metrics(
    y_true: Any, y_pred: Any, window: int = 500, step: int | None = None
) -> list[WindowMetrics]:
    """Accuracy, macro-F1 and per-class recall over consecutive (or sliding) full windows.

    Args:
        y_true: [N] true labels in prediction order.
        y_pred: [N] predicted labels.
        window: labelled predictions per window.
        step: window start increment (default = window, i.e. non-overlapping).

    Returns:
        One WindowMetrics per full window (a trailing partial window is left out).
    """
    if window < 1 or (step is not None and step < 1):
        raise DriftConfigError("window and step must be >= 1")
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise DriftInputError(f"y_true {t.shape} and y_pred {p.shape} differ")
    step = step or window
    return [
        WindowMetrics(s, s + window, realized_metrics(t[s : s + window], p[s : s + window]))
        for s in range(0, t.size - window + 1, step)
    ]


class ErrorStreamMonitor:
    """Streaming change detector on the 0/1 error stream (wraps river's ADWIN or DDM).

    Args:
        method: ``"adwin"`` or ``"ddm"``.
        **params: passed to the river detector (e.g. ``delta=0.002`` for ADWIN,
            ``warm_start=30, drift_threshold=3.0`` for DDM).
    """

    def __init__(self, method: Method = "adwin", **params: Any) -> None:
        if method not in ("adwin", "ddm"):
            raise DriftConfigError(f"unknown concept-drift method {method!r}; use 'adwin' or 'ddm'")
        try:
            self._detector: ADWIN | DDM = ADWIN(**params) if method == "adwin" else DDM(**params)
        except TypeError as exc:
            raise DriftConfigError(f"{method}: {exc}") from None
        self.method = method
        self.seen = 0
        self.change_points: list[int] = []

    def update(self, error: int | bool) -> bool:
        """Feed one outcome (1/True = wrong); True if a change is detected at this index."""
        if self.method == "adwin":
            self._detector.update(int(error))
        else:
            self._detector.update(bool(error))
        idx = self.seen
        self.seen += 1
        if self._detector.drift_detected:
            self.change_points.append(idx)
            return True
        return False

    def update_many(self, errors: Iterable[int | bool]) -> list[int]:
        """Feed a batch; returns the change points (global indices) found in it."""
        before = len(self.change_points)
        for e in errors:
            self.update(e)
        return self.change_points[before:]

    @property
    def error_rate(self) -> float | None:
        """ADWIN's current estimate of the error rate (None for DDM)."""
        return float(self._detector.estimation) if isinstance(self._detector, ADWIN) else None


def detect_changes(
    errors: Sequence[int] | NDArray[Any], method: Method = "adwin", **params: Any
) -> list[int]:
    """Indices of the error stream at which the detector signals a change.

    Args:
        errors: 0/1 errors in order (see :func:`error_stream`).
        method: ``"adwin"`` or ``"ddm"``.
        **params: river detector parameters.

    Returns:
        Change-point indices (the index of the sample that triggered each detection; detection lags
        the true change by the samples needed to become significant).
    """
    arr = np.asarray(errors)
    if arr.ndim != 1 or (arr.size and not np.isin(arr, (0, 1)).all()):
        raise DriftInputError("errors must be a 1-D stream of 0/1 values")
    mon = ErrorStreamMonitor(method, **params)
    return mon.update_many(int(e) for e in arr)
