"""controller: the closed loop as a reconciler over durable state (``mnistops controller run``)."""

from mnistops.controller.role import run_controller

__all__ = ["run_controller"]
