"""The monitor role: ``mnistops monitor run``.

One process evaluates the prediction log window by window (:class:`MonitorRunner`, a background
service): windows and alerts go to the store, webhooks to the receivers, gauges to its own
``/metrics`` (with ``/healthz``) on ``settings.monitor_port``. SIGTERM or SIGINT finishes the
current window, flushes the webhook queues and exits 0.
"""

from __future__ import annotations

import logging
import threading

from mnistops.errors import StoreError
from mnistops.monitor.metrics import MonitorMetrics
from mnistops.monitor.runner import MonitorRunner
from mnistops.runtime import RoleEndpoint, health_dict, stop_on_signals
from mnistops.settings import Settings

log = logging.getLogger(__name__)


def run_monitor(settings: Settings, *, stop: threading.Event | None = None) -> None:
    """Monitor until ``stop`` is set (by default: until SIGTERM/SIGINT; call from the main thread).

    Args:
        settings: store, registry, windows, alert rules, webhooks, ``monitor_port`` (0 = no endpoint).
        stop: an event to stop on instead of the process signals (tests, embedding).
    """
    from mnistops.registry.core import CHALLENGER, Registry, configure
    from mnistops.store.predictions import PredictionStore
    from mnistops.store.retention_service import retention_service

    if stop is None:
        stop = threading.Event()
        stop_on_signals(stop)
    configure(settings)
    store = PredictionStore(settings.database)
    try:  # in the main thread, before the runner's thread and MLflow's own migrations can overlap
        store.migrate()
    except StoreError as exc:
        log.warning("monitor: store not migrated at startup (retried on first use): %s", exc)
    metrics = MonitorMetrics()
    registry = Registry(settings)
    runner = MonitorRunner(settings, store, registry, metrics=metrics)
    # the monitor knows which rows are still unevaluated: retention runs beside it (None = no limit set)
    retention = retention_service(
        settings, store, challenger=lambda: registry.alias_version(CHALLENGER), registry=metrics.registry
    )
    endpoint = None
    if settings.monitor_port:
        endpoint = RoleEndpoint(
            settings.monitor_port,
            metrics.registry,
            lambda: health_dict(runner, role="monitor", last_seq=runner.last_seq),
            host=settings.host,
        ).start()
        log.info("monitor: /metrics and /healthz on %s:%d", settings.host, endpoint.port)
    runner.start()
    if retention is not None:
        retention.start()
    try:
        stop.wait()
    finally:
        log.info("monitor: stopping")
        if retention is not None:
            retention.stop(timeout=30)
        runner.stop()
        if endpoint is not None:
            endpoint.stop()
        store.close()
