"""controller: the closed loop as a reconciler over durable state."""

from mnistops.controller.role import run_controller

__all__ = ["run_controller"]
