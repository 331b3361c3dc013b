"""Prometheus metrics of the prediction service (one CollectorRegistry per app instance).

Names follow Prometheus conventions: `mnistops_` prefix, base units (seconds), `_total` counters.
:func:`metrics_registry` is what an API replica's ``/metrics`` exposes (every role module has one;
``tests/e2e/test_pages_static.py`` checks the deploy/ configs against them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONFIDENCE_BUCKETS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)


LogStats = Callable[[], dict[str, int]]


class ServiceMetrics:
    """Request, prediction and prediction-log metrics.

    Args:
        registry: where they are registered (default: a private one).
        log_stats: the prediction logger's counters, read at scrape time (settable later:
            the logger is built after the metrics).
    """

    def __init__(self, registry: CollectorRegistry | None = None, log_stats: LogStats | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "mnistops_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mnistops_http_request_duration_seconds",
            "Request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            "mnistops_predictions",
            "Predictions by predicted class and model version.",
            ["label", "model_version"],
            registry=r,
        )
        self.confidence = Histogram(
            "mnistops_prediction_confidence",
            "Max softmax probability of served predictions.",
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.model_info = Gauge(
            "mnistops_model_info",
            "The model version being served (value 1).",
            ["version", "backend"],
            registry=r,
        )
        self.shadow_agreement = Gauge(
            "mnistops_shadow_agreement_ratio",
            "Share of shadowed requests where challenger and champion agree.",
            registry=r,
        )
        self.feedback = Counter("mnistops_feedback", "Feedback labels received.", ["status"], registry=r)
        self.model_swaps = Counter("mnistops_model_swaps", "Hot swaps of the served model.", registry=r)
        self.log_stats: LogStats = log_stats or dict
        r.register(LogCollector(lambda: self.log_stats()))
        self._info_labels: tuple[str, str] | None = None

    def set_model(self, version: str, backend: str) -> None:
        """Point the info gauge at the version now served (removing the previous series)."""
        if self._info_labels == (version, backend):
            return
        if self._info_labels is not None:
            self.model_info.remove(*self._info_labels)
        self.model_info.labels(version=version, backend=backend).set(1)
        self._info_labels = (version, backend)


class LogCollector(Collector):
    """Reads the prediction logger's counters at scrape time (no bookkeeping on the hot path)."""

    def __init__(self, stats: Callable[[], dict[str, int]]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        """Yield queue depth, journal backlog (gauges) and write errors (counter)."""
        st = self._stats()
        yield GaugeMetricFamily(
            "mnistops_prediction_log_queue_depth",
            "Predictions queued for the log, not yet written.",
            value=st.get("queue_depth", 0),
        )
        yield GaugeMetricFamily(
            "mnistops_prediction_log_spill_backlog",
            "Journaled rows only on disk, awaiting replay into the store (store down, or left by a crash).",
            value=st.get("spill_backlog", 0),
        )
        yield CounterMetricFamily(
            "mnistops_prediction_log_write_errors",
            "Failed prediction-log store writes (the rows stay in the journal, not lost).",
            value=st.get("write_errors", 0),
        )


def metrics_registry() -> CollectorRegistry:
    """A registry with every series an API replica exports (fresh, unbound)."""
    return ServiceMetrics().registry
