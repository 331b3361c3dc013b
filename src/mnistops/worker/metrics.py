"""Prometheus series of a worker (served on ``MNISTOPS_WORKER_PORT``, ``/metrics``).

``mnistops_retrain_jobs_total{state}`` counts the jobs THIS worker finished (``succeeded`` or
``failed``); sum over workers in PromQL. An abandoned or handed-back attempt is not counted: the
attempt that finishes the job is. ``deploy/prometheus/alerts.yml`` alerts on failed ones.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WorkerMetrics", "metrics_registry"]

# seconds: a retrain on 2 cores takes ~20 s (10k-image epoch) to a few minutes (55k images)
_JOB_BUCKETS = (5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0)


class WorkerMetrics:
    """The worker's series on its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "mnistops_retrain_jobs",
            "Retrain jobs this worker finished, by final state.",
            ["state"],
            registry=self.registry,
        )
        for state in ("succeeded", "failed"):  # both series exist from the start (increase() needs it)
            self.jobs.labels(state)
        self.job_seconds = Histogram(
            "mnistops_retrain_job_seconds",
            "Wall time of a finished retrain job attempt on this worker.",
            buckets=_JOB_BUCKETS,
            registry=self.registry,
        )
        self.busy = Gauge("mnistops_worker_busy", "1 while this worker runs a job.", registry=self.registry)

    def finished(self, state: str, seconds: float) -> None:
        """Count a job this worker finished."""
        self.jobs.labels(state).inc()
        self.job_seconds.observe(seconds)


def metrics_registry() -> CollectorRegistry:
    """A registry with every series the worker role exports (fresh, unbound)."""
    return WorkerMetrics().registry
