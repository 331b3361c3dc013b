"""Prometheus gauges of model quality, updated by the monitor once per window.

Names follow the shared contract (``mnistops_`` prefix, ``_total`` counters, 0/1 gauges for states).
Per-detector series carry a ``detector`` label; ``detector="combined"`` is the monitor's overall
verdict. ``mnistops_drift_p_value`` is the p-value adjusted across detectors, so for every detector
``score = -log10(p_value)`` and ``detected == (score >= threshold)`` hold on the same scale.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge

from mnistops.monitor.drift.base import DriftResult
from mnistops.monitor.performance import Estimate, RealizedMetrics

__all__ = ["MonitorMetrics", "metrics_registry"]


class MonitorMetrics:
    """Model-quality gauges of the monitor role on a Prometheus registry.

    Args:
        registry: where the metrics are registered (default: a private one); one ``MonitorMetrics``
            per registry (Prometheus refuses duplicate names).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        per_detector = lambda name, doc: Gauge(name, doc, ["detector"], registry=r)  # noqa: E731
        self.p_value = per_detector(
            "mnistops_drift_p_value",
            "Drift p-value of the latest window, adjusted across detectors (combined = overall).",
        )
        self.score = per_detector("mnistops_drift_score", "Drift score -log10(p_value) of the latest window.")
        self.threshold = per_detector(
            "mnistops_drift_threshold", "Score above which the detector flags drift (-log10(alpha))."
        )
        self.detected = per_detector(
            "mnistops_drift_detected", "1 if the detector flagged the latest window."
        )
        self.effect_size = per_detector(
            "mnistops_drift_effect_size", "Effect size of the latest window (units depend on the detector)."
        )
        self.estimated = Gauge(
            "mnistops_estimated_accuracy",
            "Label-free (CBPE) accuracy estimate of the latest window.",
            registry=r,
        )
        self.estimated_lower = Gauge(
            "mnistops_estimated_accuracy_lower", "Lower bound of the 95% estimate interval.", registry=r
        )
        self.estimated_upper = Gauge(
            "mnistops_estimated_accuracy_upper", "Upper bound of the 95% estimate interval.", registry=r
        )
        self.realized = Gauge(
            "mnistops_realized_accuracy",
            "Accuracy on feedback labels of the latest window with enough labels (NaN before any).",
            registry=r,
        )
        self.realized_f1 = Gauge(
            "mnistops_realized_macro_f1", "Macro F1 on feedback labels of the latest window.", registry=r
        )
        self.accuracy_drop = Gauge(
            "mnistops_accuracy_drop_vs_reference",
            "Reference (validation) accuracy minus the estimated accuracy of the latest window.",
            registry=r,
        )
        self.ood_rate = Gauge(
            "mnistops_ood_rate", "Share of out-of-distribution inputs in the latest window.", registry=r
        )
        self.alerts_firing = Gauge(
            "mnistops_alerts_firing", "1 while the alert rule fires.", ["rule", "severity"], registry=r
        )
        self.windows = Counter("mnistops_monitor_windows", "Monitoring windows evaluated.", registry=r)
        self.last_window_seq = Gauge(
            "mnistops_monitor_last_window_end_seq",
            "Prediction seq at the end of the latest window.",
            registry=r,
        )
        self.realized.set(float("nan"))
        self.realized_f1.set(float("nan"))

    def observe_drift(self, results: list[DriftResult]) -> None:
        """Per-detector (and combined) p-value, score, threshold, 0/1 verdict and effect size."""
        for res in results:
            d = res.detector
            self.p_value.labels(detector=d).set(float("nan") if res.p_value is None else res.p_value)
            self.score.labels(detector=d).set(res.score)
            self.threshold.labels(detector=d).set(res.threshold)
            self.detected.labels(detector=d).set(int(res.drifted))
            self.effect_size.labels(detector=d).set(res.effect_size)

    def observe_window(
        self,
        *,
        estimate: Estimate,
        realized: RealizedMetrics | None,
        ood_rate: float,
        accuracy_drop: float | None,
        end_seq: int,
    ) -> None:
        """Performance gauges of one window; realized metrics keep their last value when None."""
        self.estimated.set(estimate.value)
        self.estimated_lower.set(estimate.lower)
        self.estimated_upper.set(estimate.upper)
        if realized is not None:
            self.realized.set(realized.accuracy)
            self.realized_f1.set(realized.macro_f1)
        self.ood_rate.set(ood_rate)
        if accuracy_drop is not None:
            self.accuracy_drop.set(accuracy_drop)
        self.last_window_seq.set(end_seq)
        self.windows.inc()

    def observe_alerts(self, firing: Mapping[tuple[str, str], int]) -> None:
        """``{(rule, severity): 0|1}`` as from :meth:`AlertEngine.firing_gauge`."""
        for (rule, severity), value in firing.items():
            self.alerts_firing.labels(rule=rule, severity=severity).set(value)


def metrics_registry() -> CollectorRegistry:
    """A registry with every series the monitor role exports (fresh, unbound)."""
    return MonitorMetrics().registry
