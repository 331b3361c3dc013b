"""A worker process's CPU share: lower priority than serving, torch sized to the CPUs it may use.

Standard library only (torch is imported inside): it must run before anything starts a thread.
On Linux the nice value is per thread and new threads inherit it from their creator, so a thread
started earlier (numpy's OpenBLAS pool starts one on import) would keep the old priority.
"""

from __future__ import annotations

import logging
import os

__all__ = ["lower_priority", "prepare_process"]


def lower_priority(nice: int) -> int:
    """Raise this process's nice value to ``nice`` (never lowers it); returns the value now."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current < nice:
        os.nice(nice - current)
    return os.getpriority(os.PRIO_PROCESS, 0)


def prepare_process(nice: int) -> None:
    """:func:`lower_priority`, then torch's intra-op threads = the CPUs this process may run on.

    The job runs in the main thread, which is the thread these settings apply to. INFO records of
    ``mnistops.*`` are enabled because the job's log captures them.
    """
    lower_priority(nice)
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    pkg = logging.getLogger("mnistops")
    if pkg.getEffectiveLevel() > logging.INFO:
        pkg.setLevel(logging.INFO)
