"""The controller role: ``mnistops controller run``, the closed loop as a reconciler."""

from __future__ import annotations

from mnistops.settings import Settings


def run_controller(settings: Settings) -> None:
    """Reconcile until SIGTERM, while holding the leader lease."""
    raise NotImplementedError("controller role: being built (issue 12)")
