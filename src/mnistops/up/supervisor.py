"""Supervise the roles (serve, monitor, controller, worker) as child processes."""

from __future__ import annotations

from mnistops.settings import Settings


def run_up(settings: Settings) -> int:
    """Start every role, restart crashed ones with backoff, stop all on SIGTERM/Ctrl-C; exit code."""
    raise NotImplementedError("mnistops up: being built (issue 12)")
