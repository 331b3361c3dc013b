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
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from mnistops.errors import StoreError
from mnistops.runtime import RoleEndpoint, stop_on_signals
from mnistops.store.jobs import JobQueue
from mnistops.worker.execute import run_claimed
from mnistops.worker.metrics import WorkerMetrics
from mnistops.worker.priority import prepare_process

if TYPE_CHECKING:
    from mnistops.settings import Settings
    from mnistops.store.records import RetrainJob
    from mnistops.worker.jobs import RetrainJobRunner

__all__ = ["Worker", "follow", "retrain_now", "run_worker", "worker_owner"]

log = logging.getLogger(__name__)


def worker_owner() -> str:
    """This process's lease owner id: ``host:pid:random`` (unique even after a pid is reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


def _runner(settings: Settings) -> RetrainJobRunner:
    from mnistops.registry.core import Registry, configure
    from mnistops.store.predictions import PredictionStore
    from mnistops.worker.jobs import RetrainJobRunner

    configure(settings)  # training tracks its run in the same MLflow store
    return RetrainJobRunner(settings, PredictionStore(settings.database), Registry(settings))


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
    prepare_process(settings.worker_nice)
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
    runner: RetrainJobRunner | None = None,
) -> RetrainJob:
    """Queue a job and run it in this process, claimed exactly as a worker claims it.

    If a job is already active, that one is the result: run here if it is claimable, otherwise
    (another worker runs it) followed until it ends. Ctrl+C hands a running job back to the queue.
    """
    prepare_process(settings.worker_nice)
    runner = runner or _runner(settings)
    queue = JobQueue(runner.store)
    job = queue.submit(trigger, details)
    owner = worker_owner()
    s = settings
    claimed = queue.claim(owner, s.job_lease_seconds, max_attempts=s.job_max_attempts, job_id=job.id)
    if claimed is None:
        return follow(queue, job.id, s.worker_poll_seconds)
    stop = threading.Event()
    with _stop_on_signals(stop):
        return run_claimed(queue, runner, claimed, owner, s, stop=stop) or queue.get(job.id)


@contextmanager
def _stop_on_signals(stop: threading.Event) -> Iterator[None]:
    """:func:`stop_on_signals` for a block (a command inside a bigger program restores its handlers)."""
    main = threading.current_thread() is threading.main_thread()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)} if main else {}
    if main:
        stop_on_signals(stop)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def follow(queue: JobQueue, job_id: int, poll: float) -> RetrainJob:
    """Wait until a job (run by another worker) ends; returns it."""
    job = queue.get(job_id)
    if job.state == "running":
        log.info("job %s is running on %s: waiting for it", job_id, job.lease_owner)
    while job.state not in ("succeeded", "failed"):
        time.sleep(poll)
        job = queue.get(job_id)
    return job
