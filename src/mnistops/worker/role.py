"""The worker role: ``mnistops worker run`` claims queued retrain jobs and runs them."""

from __future__ import annotations

from mnistops.settings import Settings


def run_worker(settings: Settings, *, once: bool = False) -> None:
    """Claim and run retrain jobs until SIGTERM (``once``: at most one job, then return)."""
    raise NotImplementedError("worker role: being built (issue 12)")
