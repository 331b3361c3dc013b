"""worker: claims retrain jobs from the store and runs them in its own process."""

from mnistops.worker.role import run_worker

__all__ = ["run_worker"]
