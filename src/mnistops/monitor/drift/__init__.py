"""Drift detectors on windows of predictions and their combination into one verdict.

Usage::

    monitor = Monitor.from_names(["bbsd", "mmd", "prior", "inputs", "ood"], alpha=0.01).fit(reference)
    report = monitor.check(window_sample, window=7)
    report.overall.drifted, [r.to_dict() for r in report.results]
"""

from mnistops.monitor.drift.base import (
    Detector,
    DriftResult,
    Sample,
    Scores,
    adjust_p_values,
)
from mnistops.monitor.drift.baseline import RawBBSDDetector
from mnistops.monitor.drift.bbsd import BBSDDetector
from mnistops.monitor.drift.combine import DEFAULT_DETECTORS, DETECTORS, Monitor, MonitorReport, make_detector
from mnistops.monitor.drift.inputs import InputStatsDetector
from mnistops.monitor.drift.mmd import MMDDetector
from mnistops.monitor.drift.ood import OODRateDetector
from mnistops.monitor.drift.prior import PriorShiftDetector

__all__ = [
    "DEFAULT_DETECTORS",
    "DETECTORS",
    "BBSDDetector",
    "Detector",
    "DriftResult",
    "InputStatsDetector",
    "MMDDetector",
    "Monitor",
    "MonitorReport",
    "OODRateDetector",
    "PriorShiftDetector",
    "RawBBSDDetector",
    "Sample",
    "Scores",
    "adjust_p_values",
    "make_detector",
]
