"""The controller role: ``mnistops controller run``, the closed loop as a reconciler, one leader.

Every ``controller_tick_seconds`` the controller makes sure it holds the leader lease
(:class:`~mnistops.store.lock.LeaderLease`: a file lock on one machine, an advisory lock on
PostgreSQL) and, while it does, runs one :meth:`Reconciler.tick`. A follower just retries the
lease, so a second controller is a hot standby that takes over when the leader dies. ``/metrics``
and ``/healthz`` are served on ``controller_port``; SIGTERM/SIGINT stop it after the current tick.
"""

from __future__ import annotations

import logging
import threading
import time

from mnistops.controller.metrics import ControllerMetrics
from mnistops.controller.reconciler import Reconciler
from mnistops.errors import ConflictError, LeadershipLostError
from mnistops.runtime import BackgroundService, RoleEndpoint, health_dict, stop_on_signals
from mnistops.settings import Settings
from mnistops.store.lock import LeaderLease

__all__ = ["ControllerService", "run_controller"]

log = logging.getLogger(__name__)


class ControllerService(BackgroundService):
    """The tick thread: acquire or keep the lease, then reconcile once (see module docstring).

    Args:
        reconciler: what one tick runs.
        lease: the leadership; released when the service stops.
        metrics: ``mnistops_controller_leader`` is set here.
        interval: seconds between ticks.
    """

    def __init__(
        self, reconciler: Reconciler, lease: LeaderLease, metrics: ControllerMetrics, interval: float
    ) -> None:
        super().__init__("controller", interval)
        self.reconciler, self.lease, self.metrics = reconciler, lease, metrics
        self.leading = False

    def step(self) -> None:
        """One tick: only the leader reconciles; a lost race or lease ends the tick quietly."""
        leading = self.lease.try_acquire()
        if leading != self.leading:
            log.info("controller: %s", "leading" if leading else "waiting for the leader lease")
        self.leading = leading
        self.metrics.leader.set(1 if leading else 0)
        if not leading:
            return
        try:
            self.reconciler.tick()
        except LeadershipLostError as exc:
            log.warning("controller: %s", exc)
        except ConflictError as exc:  # another writer moved a rollout: the next tick re-reads
            log.warning("controller: %s", exc)

    def run(self) -> None:
        """Ticks until stopped, then steps down."""
        try:
            super().run()
        finally:
            self.lease.release()
            self.metrics.leader.set(0)


def build_controller(settings: Settings, metrics: ControllerMetrics | None = None) -> ControllerService:
    """The controller of ``settings``: store, registry, lease and reconciler (nothing connects yet)."""
    from mnistops.registry.core import Registry
    from mnistops.store.predictions import PredictionStore

    metrics = metrics or ControllerMetrics()
    lease = LeaderLease(settings, "controller")
    store = PredictionStore(settings.database)
    reconciler = Reconciler(settings, store, Registry(settings), lease, metrics=metrics)
    return ControllerService(reconciler, lease, metrics, settings.controller_tick_seconds)


def _log_to_stderr() -> None:
    # a role's process logs its steps (the timeline is in the database; this is for operators)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run_controller(settings: Settings) -> None:
    """Reconcile until SIGTERM/SIGINT, while holding the leader lease (a follower waits for it)."""
    _log_to_stderr()
    metrics = ControllerMetrics()
    service = build_controller(settings, metrics)
    stop = threading.Event()
    stop_on_signals(stop)
    endpoint = None
    if settings.controller_port:

        def health() -> dict[str, object]:
            return health_dict(service, leader=service.leading, time=time.time())

        endpoint = RoleEndpoint(
            settings.controller_port, metrics.registry, health, host=settings.host
        ).start()
        log.info("controller: /metrics and /healthz on %s:%d", settings.host, endpoint.port)
    service.start()
    try:
        while not stop.wait(1.0):
            if not service.running:  # pragma: no cover - the thread only ends when stopped
                raise RuntimeError("controller thread died")
    finally:
        service.stop(timeout=max(10.0, 2 * settings.controller_tick_seconds))
        if endpoint is not None:
            endpoint.stop()
