"""worker: claims retrain jobs from the store and runs them in its own process.

``run_worker`` is imported on first use so that ``mnistops.worker.priority`` can lower the
process's priority before numpy/torch start their threads (the threads inherit it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mnistops.worker.role import run_worker

__all__ = ["run_worker"]


def __getattr__(name: str) -> Any:
    if name == "run_worker":
        from mnistops.worker.role import run_worker

        return run_worker
    raise AttributeError(f"module 'mnistops.worker' has no attribute {name!r}")
