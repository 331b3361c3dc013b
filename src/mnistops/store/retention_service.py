"""Retention as a background role: a pass every ``retention_interval_seconds``, one pruner at a time.

:func:`retention_service` builds it from settings (None when no limit is set); the monitor process
runs it (``mnistops monitor run``, hence ``mnistops up``), and ``mnistops store prune`` runs it on
its own. Passes of several processes are serialised by the leader lease ``retention`` (a process
that does not get it skips its pass); correctness does not depend on it (a batch pruned twice is
archived under the same name and deleted once), it only saves the duplicate work.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from mnistops.runtime import BackgroundService
from mnistops.store.events import EventStore
from mnistops.store.lock import LeaderLease
from mnistops.store.retention import PruneReport, Retention, RetentionPolicy

if TYPE_CHECKING:
    from mnistops.settings import Settings

log = logging.getLogger(__name__)


class Lease(Protocol):
    """The part of :class:`~mnistops.store.lock.LeaderLease` a pass needs."""

    def try_acquire(self) -> bool: ...

    def release(self) -> None: ...


class RetentionMetrics:
    """Prometheus series of the pruner (registered on the hosting role's registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.pruned = Counter(
            "mnistops_retention_pruned_rows", "Predictions deleted by retention", registry=registry
        )
        self.files = Counter(
            "mnistops_retention_archive_files", "Parquet files written by retention", registry=registry
        )
        self.delete_seconds = Histogram(
            "mnistops_retention_delete_seconds",
            "Write transaction of one retention batch (writers wait at most this long on SQLite)",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=registry,
        )
        self.horizon = Gauge(
            "mnistops_retention_monitor_horizon_seq",
            "Last seq the monitor evaluated (retention keeps everything after it)",
            registry=registry,
        )
        self.last_pass = Gauge(
            "mnistops_retention_last_pass_timestamp_seconds",
            "End of the last retention pass",
            registry=registry,
        )

    def observe(self, report: PruneReport) -> None:
        """Account one pass."""
        self.pruned.inc(report.pruned)
        self.files.inc(len(report.files))
        for ms in report.delete_ms:
            self.delete_seconds.observe(ms / 1000)
        if report.plan is not None and report.plan.horizon_seq is not None:
            self.horizon.set(report.plan.horizon_seq)
        self.last_pass.set_to_current_time()


class RetentionService(BackgroundService):
    """Runs :meth:`Retention.run` every ``interval`` seconds under ``lease`` (if given).

    Args:
        retention: the pruner.
        interval: seconds between passes.
        lease: taken for each pass, released after it; a pass that cannot take it is skipped.
        metrics: series to update after each pass.
    """

    def __init__(
        self,
        retention: Retention,
        interval: float,
        *,
        lease: Lease | None = None,
        metrics: RetentionMetrics | None = None,
    ) -> None:
        super().__init__("mnistops-retention", interval)
        self.retention, self.lease, self.metrics = retention, lease, metrics
        self.last_report: PruneReport | None = None

    def step(self) -> None:
        """One pass (stops between batches when the service is stopped)."""
        if self.lease is not None and not self.lease.try_acquire():
            log.info("retention: another process is pruning; skipping this pass")
            return
        try:
            report = self.retention.run(stop=self.stopping)
        finally:
            if self.lease is not None:
                self.lease.release()
        self.last_report = report
        if self.metrics is not None:
            self.metrics.observe(report)
        if report.pruned or report.skipped:
            log.info(report.summary())
        else:
            log.debug(report.summary())


def retention_service(
    settings: Settings,
    store: EventStore,
    *,
    challenger: Callable[[], str | None],
    registry: CollectorRegistry | None = None,
) -> RetentionService | None:
    """The retention role of ``settings`` on ``store``, or None when no retention limit is set.

    Args:
        settings: the ``retention_*`` settings (and ``home`` for the lease).
        store: the prediction store to prune.
        challenger: the current challenger version (e.g. ``registry.alias_version("challenger")``).
        registry: Prometheus registry of the hosting role, for the retention series.
    """
    policy = RetentionPolicy.from_settings(settings)
    if not policy.enabled:
        return None
    return RetentionService(
        Retention(store, policy, challenger=challenger),
        settings.retention_interval_seconds,
        lease=LeaderLease(settings, "retention"),
        metrics=None if registry is None else RetentionMetrics(registry),
    )
