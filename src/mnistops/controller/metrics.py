"""The controller's Prometheus series (served on ``controller_port`` by the role endpoint)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

__all__ = ["ControllerMetrics", "metrics_registry"]


class ControllerMetrics:
    """The controller's Prometheus series (its own registry, served by the role endpoint)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.rollbacks = Counter(
            "mnistops_rollbacks", "Automatic rollbacks by the post-promotion watch.", registry=r
        )
        self.promotions = Counter(
            "mnistops_promotions", "Promotions seen by the controller (its own and forced ones).", registry=r
        )
        self.ticks = Counter("mnistops_controller_ticks", "Reconcile ticks run as the leader.", registry=r)
        self.leader = Gauge(
            "mnistops_controller_leader", "1 while this controller is the leader.", registry=r
        )


def metrics_registry() -> CollectorRegistry:
    """A registry with every series the controller role exports (fresh, unbound)."""
    return ControllerMetrics().registry
