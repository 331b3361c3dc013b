"""One claimed job from start to outcome: lease heartbeats, the job's log, abandon or hand back, finish.

:func:`run_claimed` runs a job's body in the calling (main) thread while a :class:`Keeper` thread
extends the lease every ``job_heartbeat_seconds``. Every write to the job's row is guarded by this
worker's owner id, so once the lease is lost nothing more is written. Two events stop the body
early, through :class:`JobInterrupted` raised in the main thread (a signal to itself, so even an
epoch of training stops within a step):

- the lease is lost (the database said another worker owns the job): the job is abandoned, its
  outcome is not written — the other worker's re-run decides it;
- a stop was requested (SIGTERM) and the running job did not finish within the grace period: the
  job is released back to the queue for another worker, without counting the attempt.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import traceback
from types import FrameType, TracebackType
from typing import TYPE_CHECKING, Any

from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_exponential

from mnistops.errors import LeaseLostError, StoreError
from mnistops.runtime import BackgroundService

if TYPE_CHECKING:
    from mnistops.settings import Settings
    from mnistops.store.jobs import JobQueue
    from mnistops.store.records import RetrainJob
    from mnistops.worker.jobs import RetrainJobRunner
    from mnistops.worker.metrics import WorkerMetrics

__all__ = ["JobContext", "JobInterrupted", "Keeper", "run_claimed"]

log = logging.getLogger(__name__)
job_log = logging.getLogger("mnistops.worker.job")  # the job's own lines (written to its log directly)


class JobInterrupted(BaseException):  # a stop order, not an error: BaseException on purpose
    """Raised in the main thread to stop a job body now; ``except Exception`` does not catch it."""


class _Capture(logging.Handler):
    """Buffers this process's ``mnistops.*`` log records while a job runs (flushed into the job's log)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if record.name != job_log.name:
            self.lines.append(self.format(record) + "\n")

    def take(self) -> str:
        out, self.lines = "".join(self.lines), []
        return out


class JobContext:
    """The claimed job as its body sees it (implements :class:`mnistops.worker.seams.JobSink`)."""

    def __init__(self, queue: JobQueue, job: RetrainJob, owner: str, lease_seconds: float) -> None:
        self.queue, self.owner, self.lease_seconds = queue, owner, lease_seconds
        self._job = job
        self.lost = threading.Event()  # set once the lease is known to be gone (or handed back)
        self.capture = _Capture()
        self.t0 = time.monotonic()

    @property
    def job(self) -> RetrainJob:
        """The job as claimed (its details hold what earlier attempts recorded)."""
        return self._job

    def _lost(self, why: str) -> LeaseLostError:
        self.lost.set()
        return LeaseLostError(f"job {self._job.id}: {why}; {self.owner} stops writing")

    def note(self, msg: str, *, details: dict[str, Any] | None = None, version: str | None = None) -> None:
        """Append a timestamped line (and buffered log records, details, version) to the job."""
        if self.lost.is_set():
            raise self._lost("lease lost")
        job_log.info("job %s: %s", self._job.id, msg)
        line = f"{time.strftime('%H:%M:%S')} +{time.monotonic() - self.t0:6.1f}s {msg}\n"
        text = self.capture.take() + line
        ok = self.queue.update(
            self._job.id, owner=self.owner, append_log=text, details=details, version=version
        )
        if not ok:
            raise self._lost("lease lost")

    def confirm_lease(self) -> None:
        """Extend the lease now; raises :class:`LeaseLostError` if this worker no longer holds it."""
        if self.lost.is_set() or not self.queue.heartbeat(self._job.id, self.owner, self.lease_seconds):
            raise self._lost("lease lost")


class _MainInterrupt:
    """Raises :class:`JobInterrupted` in the main thread while armed (SIGUSR1 sent to that thread).

    Outside the main thread (an embedding that runs jobs elsewhere) no handler can be installed;
    the body then stops at its next step boundary instead (every write checks the lease).
    """

    def __init__(self) -> None:
        self.armed, self.reason = False, ""
        self.usable = threading.current_thread() is threading.main_thread()
        self._previous: Any = None

    def __enter__(self) -> _MainInterrupt:
        if self.usable:
            self._previous = signal.signal(signal.SIGUSR1, self._handler)
        self.armed = True
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.armed = False
        if self.usable:
            signal.signal(signal.SIGUSR1, self._previous)

    def _handler(self, _signum: int, _frame: FrameType | None) -> None:
        if self.armed:  # one shot: a late signal after the body returned is ignored
            self.armed = False
            raise JobInterrupted(self.reason)

    def __call__(self, reason: str) -> None:
        self.reason = reason
        ident = threading.main_thread().ident
        if self.armed and self.usable and ident is not None:
            signal.pthread_kill(ident, signal.SIGUSR1)


class Keeper(BackgroundService):
    """Extends the job's lease; interrupts the body when the lease is lost or the stop grace is over."""

    def __init__(
        self,
        ctx: JobContext,
        interval: float,
        interrupt: _MainInterrupt,
        stop: threading.Event | None = None,
        grace: float = 0.0,
    ) -> None:
        super().__init__(f"job-{ctx.job.id}-lease", interval)
        self.ctx, self.interrupt, self.stop_requested, self.grace = ctx, interrupt, stop, grace
        self._stop_seen: float | None = None
        self.released = False

    def step(self) -> None:
        """One heartbeat (or the hand-back, once a stop request outlived the grace period)."""
        ctx = self.ctx
        if self.stop_requested is not None and self.stop_requested.is_set():
            self._stop_seen = self._stop_seen or time.monotonic()
            if time.monotonic() - self._stop_seen >= self.grace:
                why = f"stop requested, job not done within the {self.grace:g}s grace period"
                self.released = ctx.queue.release(ctx.job.id, ctx.owner, why)
                self._halt(f"released to the queue: {why}" if self.released else "lease lost")
                return
        if not ctx.queue.heartbeat(ctx.job.id, ctx.owner, ctx.lease_seconds):
            log.warning("job %s: lease lost (another worker owns it now): abandoning it", ctx.job.id)
            self._halt("lease lost")

    def _halt(self, reason: str) -> None:
        self.ctx.lost.set()
        self.interrupt(reason)
        self.stopping.set()


def run_claimed(
    queue: JobQueue,
    runner: RetrainJobRunner,
    job: RetrainJob,
    owner: str,
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    grace: float = 0.0,
    metrics: WorkerMetrics | None = None,
) -> RetrainJob | None:
    """Run a job this process claimed to its outcome, holding the lease meanwhile.

    Args:
        stop: set when the process should stop (SIGTERM); the job then gets ``grace`` seconds.
        grace: seconds a stopping worker lets the job finish before handing it back.
        metrics: counted when the job finishes here.

    Returns:
        The finished job (succeeded or failed), or None if it was abandoned (lease lost) or
        handed back to the queue.
    """
    ctx = JobContext(queue, job, owner, settings.job_lease_seconds)
    interrupt = _MainInterrupt()
    keeper = Keeper(ctx, settings.job_heartbeat_seconds, interrupt, stop, grace)
    pkg = logging.getLogger("mnistops")
    pkg.addHandler(ctx.capture)
    if metrics is not None:
        metrics.busy.set(1)
    try:
        keeper.start()
        _run_body(queue, runner, ctx, interrupt)
    except JobInterrupted:  # arrived just outside the body's own handler
        log.info("job %s interrupted: %s", job.id, interrupt.reason)
    finally:
        keeper.stop()
        pkg.removeHandler(ctx.capture)
        if metrics is not None:
            metrics.busy.set(0)
    final = queue.get(job.id)
    if final.state not in ("succeeded", "failed") or final.lease_owner != owner:
        return None  # abandoned or handed back: another attempt decides it
    if metrics is not None:
        metrics.finished(final.state, time.monotonic() - ctx.t0)
    return final


def _run_body(queue: JobQueue, runner: RetrainJobRunner, ctx: JobContext, interrupt: _MainInterrupt) -> None:
    job, owner = ctx.job, ctx.owner
    # the outcome survives a database blip: retried while the lease lasts (the keeper still
    # heartbeats); after that another worker's re-run finishes the job from the recorded steps
    durable = retry(
        retry=retry_if_exception_type(StoreError),
        wait=wait_exponential(multiplier=0.2, max=5.0),
        stop=stop_after_delay(ctx.lease_seconds),
        reraise=True,
    )
    finish = durable(queue.finish)
    try:
        with interrupt:
            details = runner.run(ctx)
    except (LeaseLostError, JobInterrupted) as exc:
        log.warning("job %s abandoned by %s: %s", job.id, owner, exc)
        return
    except Exception as exc:
        log.error("retrain job %s failed: %s: %s", job.id, type(exc).__name__, exc)
        tb = ctx.capture.take() + traceback.format_exc()
        finish(job.id, owner, "failed", error=f"{type(exc).__name__}: {exc}", append_log=tb)
        return
    line = f"{time.strftime('%H:%M:%S')} +{time.monotonic() - ctx.t0:6.1f}s {details['summary']}\n"
    version = details.get("version")
    finish(job.id, owner, "succeeded", version=version, details=details, append_log=ctx.capture.take() + line)
