"""``mnistops up``: every role as a supervised child process on one machine."""

from mnistops.up.supervisor import run_up

__all__ = ["run_up"]
