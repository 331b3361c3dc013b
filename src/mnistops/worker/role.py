"""The worker role: ``mnistops worker run`` claims queued retrain jobs and runs them; ``mnistops retrain``.

Any number of workers on any hosts share one queue (the store's ``retrain_jobs``). A worker runs
at lower CPU priority (``MNISTOPS_WORKER_NICE``; set before any thread starts, since Linux threads
inherit it) so serving on the same machine goes first, polls every ``MNISTOPS_WORKER_POLL_SECONDS``
when idle, and on SIGTERM/SIGINT stops claiming, lets a running job finish within
``MNISTOPS_WORKER_GRACE_SECONDS`` and otherwise hands it back to the queue. ``/metrics`` and
``/healthz`` are served on ``MNISTOPS_WORKER_PORT``.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from mnistops.errors import StoreError
from mnistops.runtime import RoleEndpoint, stop_on_signals
from mnistops.store.jobs import JobQueue
from mnistops.worker.execute import run_claimed
from mnistops.worker.metrics import WorkerMetrics

if TYPE_CHECKING:
    from mnistops.settings import Settings
    from mnistops.store.records import RetrainJob
    from mnistops.worker.jobs import RetrainJobRunner
    from mnistops.worker.seams import RetrainRegistry

__all__ = ["Worker", "prepare_process", "retrain_now", "run_worker", "worker_owner"]

log = logging.getLogger(__name__)


def worker_owner() -> str:
    """This process's lease owner id: ``host:pid:random`` (unique even after a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def prepare_process(settings: Settings) -> None:
    """Lower the CPU priority to ``worker_nice`` and give torch the CPUs this process may use.

    Call first thing in the process: on Linux the nice value is per thread and new threads inherit
    it, so torch's pool and every later thread start at the lower priority.
    """
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current < settings.worker_nice:
        os.nice(settings.worker_nice - current)
    import torch

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    pkg = logging.getLogger("mnistops")
    if pkg.getEffectiveLevel() > logging.INFO:  # the job log captures INFO records
        pkg.setLevel(logging.INFO)


def _runner(settings: Settings, registry: RetrainRegistry | None = None) -> RetrainJobRunner:
    from mnistops.store.predictions import PredictionStore
    from mnistops.worker.jobs import RetrainJobRunner

    if registry is None:
        from mnistops.registry.core import Registry, configure

        configure(settings)  # training tracks its run in the same MLflow store
        registry = Registry(settings)
    return RetrainJobRunner(settings, PredictionStore(settings.database), registry)


class Worker:
    """The claim → run → finish loop of one worker process."""

    def __init__(
        self, settings: Settings, runner: RetrainJobRunner, metrics: WorkerMetrics | None = None
    ) -> None:
        self.settings, self.runner = settings, runner
        self.queue = JobQueue(runner.store)
        self.metrics = metrics or WorkerMetrics()
        self.owner = worker_owner()
        self.current: int | None = None  # job being run
        self.last_error: str | None = None  # last failed poll (cleared by a good one)
        self.last_poll: float | None = None

    def poll_once(self, stop: threading.Event | None = None) -> tuple[bool, RetrainJob | None]:
        """Claim and run one job: (claimed anything, the finished job or None)."""
        s = self.settings
        job = self.queue.claim(self.owner, s.job_lease_seconds, max_attempts=s.job_max_attempts)
        self.last_poll, self.last_error = time.time(), None
        if job is None:
            return False, None
        log.info("claimed retrain job %s (attempt %s, trigger %s)", job.id, job.attempts, job.trigger)
        self.current = job.id
        try:
            done = run_claimed(
                self.queue, self.runner, job, self.owner, s,
                stop=stop, grace=s.worker_grace_seconds, metrics=self.metrics,
            )  # fmt: skip
        finally:
            self.current = None
        log.info("retrain job %s: %s", job.id, "abandoned or handed back" if done is None else done.state)
        return True, done

    def run(self, stop: threading.Event, *, once: bool = False) -> RetrainJob | None:
        """Poll and run jobs until ``stop`` (``once``: at most one job; returns at once if none is queued)."""
        last: RetrainJob | None = None
        while not stop.is_set():
            try:
                claimed, done = self.poll_once(stop)
            except StoreError as exc:
                if once:
                    raise
                self.last_error = str(exc)
                log.warning("cannot poll the job queue: %s", exc)
                claimed, done = False, None
            last = done or last
            if once:
                return last
            if not claimed:
                stop.wait(self.settings.worker_poll_seconds)
        return last

    def health(self) -> dict[str, Any]:
        """``/healthz`` body: ok while the queue answers."""
        return {
            "ok": self.last_error is None,
            "role": "worker",
            "owner": self.owner,
            "job": self.current,
            "last_poll": self.last_poll,
            "error": self.last_error,
        }


def run_worker(settings: Settings, *, once: bool = False) -> RetrainJob | None:
    """Claim and run retrain jobs until SIGTERM/SIGINT (``once``: at most one job, then return).

    Returns:
        The last job this worker finished, if any.
    """
    prepare_process(settings)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    worker = Worker(settings, _runner(settings))
    stop = threading.Event()
    stop_on_signals(stop)
    endpoint = None
    if settings.worker_port:
        endpoint = RoleEndpoint(settings.worker_port, worker.metrics.registry, worker.health).start()
    log.info(
        "worker %s polling %s (nice %d)", worker.owner, settings.database, os.getpriority(os.PRIO_PROCESS, 0)
    )
    try:
        return worker.run(stop, once=once)
    finally:
        if endpoint is not None:
            endpoint.stop()


def retrain_now(
    settings: Settings,
    trigger: str,
    details: dict[str, Any] | None = None,
    *,
    registry: RetrainRegistry | None = None,
) -> RetrainJob:
    """Queue a job and run it in this process, claimed exactly as a worker claims it.

    If a job is already active, that one is the result: run here if it is claimable, otherwise
    (another worker runs it) followed until it ends. Ctrl+C hands a running job back to the queue.
    """
    prepare_process(settings)
    runner = _runner(settings, registry)
    queue = JobQueue(runner.store)
    job = queue.submit(trigger, details)
    owner = worker_owner()
    s = settings
    claimed = queue.claim(owner, s.job_lease_seconds, max_attempts=s.job_max_attempts, job_id=job.id)
    if claimed is None:
        return follow(queue, job.id, s.worker_poll_seconds)
    stop = threading.Event()
    stop_on_signals(stop)
    return run_claimed(queue, runner, claimed, owner, s, stop=stop) or queue.get(job.id)


def follow(queue: JobQueue, job_id: int, poll: float) -> RetrainJob:
    """Wait until a job (run by another worker) ends; returns it."""
    job = queue.get(job_id)
    if job.state == "running":
        log.info("job %s is running on %s: waiting for it", job_id, job.lease_owner)
    while job.state not in ("succeeded", "failed"):
        time.sleep(poll)
        job = queue.get(job_id)
    return job
