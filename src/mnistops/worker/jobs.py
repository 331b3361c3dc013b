"""Retraining jobs: MNIST + labelled production inputs → new version → gates → ``challenger``.

A job is a row of the store's ``retrain_jobs`` table (queued → running → succeeded | failed, with
timings, a log and a details JSON). One job at a time: :meth:`RetrainJobRunner.submit` returns the
active job instead of queueing a second one, and a job only runs while holding the cross-process
``retrain`` lock. "succeeded" means the job ran to completion; whether its model became the
challenger is ``details["challenger"]`` (with the registry and production gate results that decided
it). The steps themselves (hold-out slice, data mixing, recipe, production gate) are in
:mod:`mnistops.worker.steps`.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistops.errors import JobError, LockTimeoutError
from mnistops.registry.core import CHAMPION
from mnistops.store.lock import locked
from mnistops.worker.steps import (
    FINETUNE_MAX_LR,
    FINETUNE_PCT_START,
    HOLDOUT_EVERY,
    ProductionGateResult,
    clean_accuracies,
    holdout_mask,
    mix_training_set,
    production_gate,
    retrain_config,
)

if TYPE_CHECKING:
    from mnistops.registry.core import Registry
    from mnistops.settings import Settings
    from mnistops.store.predictions import PredictionStore, RetrainJob
    from mnistops.training.data import Mnist
    from mnistops.training.train import TrainResult

__all__ = [
    "FINETUNE_MAX_LR",
    "FINETUNE_PCT_START",
    "HOLDOUT_EVERY",
    "ProductionGateResult",
    "RetrainJobRunner",
    "holdout_mask",
    "mix_training_set",
    "production_gate",
    "retrain_config",
]

log = logging.getLogger(__name__)

RETRAIN_LOCK = "retrain"
TrainFn = Callable[..., "TrainResult"]


def _run_training() -> TrainFn:
    from mnistops.training.train import run_training

    return run_training


class _Capture(logging.Handler):
    """Buffers ``mnistops.*`` log records of one thread (flushed into the job log between steps)."""

    def __init__(self, thread_id: int) -> None:
        super().__init__(logging.INFO)
        self.thread_id = thread_id
        self.lines: list[str] = []
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        # the job's own step lines go into the log directly (with their elapsed time)
        if record.thread == self.thread_id and record.name != __name__:
            self.lines.append(self.format(record) + "\n")

    def take(self) -> str:
        out, self.lines = "".join(self.lines), []
        return out


class RetrainJobRunner:
    """Runs retraining jobs one at a time and records them in the store's job table.

    Args:
        settings: paths, tracking, ``retrain_mode`` and ``retrain_production_share``.
        store: the prediction store (labelled production inputs and the job table).
        registry: where the new version is registered, gated and made challenger.
        mnist: preloaded dataset (loaded from the data dir otherwise).
        train_fn: training entry point with the signature of :func:`mnistops.training.train.run_training`.
        epoch_size: images per training epoch; default the 55k training split.
        holdout_every: one in this many labelled production rows is held out.
        alpha: significance level of the production gate.
        clean_tolerance: largest clean-test accuracy drop the production gate allows.
        min_holdout: held-out rows the production gate needs.
        finetune_max_lr: peak learning rate when fine-tuning (see :data:`FINETUNE_MAX_LR`).
        finetune_pct_start: warm-up share when fine-tuning.
        lock_timeout: seconds to wait for the ``retrain`` lock before failing the job.
        stale_queued_seconds: a queued job older than this, with nobody holding the lock, is abandoned.
    """

    def __init__(
        self,
        settings: Settings,
        store: PredictionStore,
        registry: Registry,
        *,
        mnist: Mnist | None = None,
        train_fn: TrainFn | None = None,
        epoch_size: int | None = None,
        holdout_every: int = HOLDOUT_EVERY,
        alpha: float = 0.05,
        clean_tolerance: float = 0.005,
        min_holdout: int = 30,
        finetune_max_lr: float = FINETUNE_MAX_LR,
        finetune_pct_start: float = FINETUNE_PCT_START,
        lock_timeout: float = 30.0,
        stale_queued_seconds: float = 600.0,
    ) -> None:
        self.settings, self.store, self.registry = settings, store, registry
        self._mnist, self._train_fn = mnist, train_fn
        self.epoch_size, self.holdout_every = epoch_size, holdout_every
        self.alpha, self.clean_tolerance, self.min_holdout = alpha, clean_tolerance, min_holdout
        self.lock_timeout, self.stale_queued_seconds = lock_timeout, stale_queued_seconds
        self.finetune = (finetune_max_lr, finetune_pct_start)
        self._submit_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- queueing ---------------------------------------------------------------------------
    def _lock_free(self) -> bool:
        try:
            with locked(self.settings, RETRAIN_LOCK, timeout=0):
                return True
        except LockTimeoutError:
            return False

    def active_job(self) -> RetrainJob | None:
        """The queued or running job, if any; jobs abandoned by a dead process are failed first."""
        jobs = self.store.list_jobs(state="running", limit=5) + self.store.list_jobs(state="queued", limit=5)
        if not jobs:
            return None
        free = self._lock_free()  # running implies the lock is held (it is taken before the state moves)
        for job in jobs:
            old = time.time() - job.created_at > self.stale_queued_seconds
            if free and (job.state == "running" or old):
                why = "abandoned: the process running it stopped" if job.state == "running" else "abandoned"
                self.store.update_job(job.id, state="failed", error=why, append_log=why + "\n")
            else:
                return job
        return None

    def _submit(self, trigger: str, details: dict[str, Any] | None) -> tuple[int, bool]:
        # the thread lock covers this process, the file lock other processes (check-then-create)
        with self._submit_lock, locked(self.settings, "retrain-submit", timeout=self.lock_timeout):
            active = self.active_job()
            if active is not None:
                log.info("retrain job %s is %s; not queueing another (%s)", active.id, active.state, trigger)
                return active.id, False
            job = self.store.create_job(trigger, details=dict(details or {}))
        log.info("queued retrain job %s (trigger %s)", job.id, trigger)
        return job.id, True

    def submit(self, trigger: str, details: dict[str, Any] | None = None) -> int:
        """Queue a job; if one is already queued or running, return its id instead."""
        return self._submit(trigger, details)[0]

    def start_async(self, trigger: str, details: dict[str, Any] | None = None) -> int:
        """Queue a job and run it in a background thread (no new thread if a job is already active)."""
        job_id, created = self._submit(trigger, details)
        if created:
            self._thread = threading.Thread(
                target=self.run_job, args=(job_id,), name=f"retrain-{job_id}", daemon=True
            )
            self._thread.start()
        return job_id

    def wait(self, timeout: float | None = None) -> bool:
        """Join the last background job; True if it is no longer running."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def retry_due(self) -> bool:
        """True if the newest job ended without a challenger (failed, or rejected by the gates).

        Pass it as ``RetrainPolicy.should_retrain(..., retry_stale=...)``: an alert episode that a job
        did not fix may then trigger again once the cool-down has passed.
        """
        jobs = self.store.list_jobs(limit=1)
        return (
            bool(jobs) and jobs[0].state in ("succeeded", "failed") and not jobs[0].details.get("challenger")
        )

    def last_job_time(self) -> float | None:
        """When the newest job finished (or was created, if unfinished); None without jobs."""
        jobs = self.store.list_jobs(limit=1)
        return None if not jobs else (jobs[0].finished_at or jobs[0].created_at)

    # --- running ----------------------------------------------------------------------------
    def run_job(self, job_id: int) -> RetrainJob:
        """Run a queued job to completion in this thread; failures are recorded, never raised.

        Raises:
            JobError: the job is not queued.
            NotFoundError: unknown job.
        """
        job = self.store.get_job(job_id)
        if job.state != "queued":
            raise JobError(f"retrain job {job_id} is {job.state}, not queued")
        capture = _Capture(threading.get_ident())
        pkg = logging.getLogger("mnistops")
        pkg.addHandler(capture)
        t0 = time.monotonic()

        def note(msg: str, **kw: Any) -> None:
            log.info("job %s: %s", job_id, msg)
            line = f"{time.strftime('%H:%M:%S')} +{time.monotonic() - t0:6.1f}s {msg}\n"
            self.store.update_job(job_id, append_log=capture.take() + line, **kw)

        def fail(exc: Exception) -> None:
            log.error("retrain job %s failed: %s: %s", job_id, type(exc).__name__, exc)
            tb = capture.take() + traceback.format_exc()
            self.store.update_job(job_id, state="failed", error=f"{type(exc).__name__}: {exc}", append_log=tb)

        try:
            with locked(self.settings, RETRAIN_LOCK, timeout=self.lock_timeout):
                try:  # the outcome is recorded before the lock is released (see active_job)
                    note(
                        f"started (trigger {job.trigger}, mode {self.settings.retrain_mode})", state="running"
                    )
                    details = self._run(job, note)
                    note(details["summary"], state="succeeded", details=details)
                except Exception as exc:
                    fail(exc)
        except LockTimeoutError as exc:
            fail(exc)
        finally:
            pkg.removeHandler(capture)
        return self.store.get_job(job_id)

    def _load_mnist(self) -> Mnist:
        if self._mnist is None:
            from mnistops.training.data import load_mnist

            self._mnist = load_mnist(self.settings.data_path)
        return self._mnist

    def _champion(self) -> tuple[str | None, Path | None]:
        version = self.registry.alias_version(CHAMPION)
        return version, None if version is None else self.registry.download(version)

    def _run(self, job: RetrainJob, note: Callable[..., None]) -> dict[str, Any]:
        import torch

        from mnistops.training.data import Split, split_train_val

        timings: dict[str, float] = {}
        t = time.monotonic()
        champion, champ_dir = self._champion()
        mnist = self._load_mnist()
        base = split_train_val(mnist)
        labelled = self.store.labelled()
        hold = holdout_mask(labelled.ids, self.holdout_every)
        train_rows = ~hold
        share = self.settings.retrain_production_share
        x, y, n_prod = mix_training_set(
            base.train_x,
            base.train_y,
            torch.from_numpy(labelled.images[train_rows]),
            torch.from_numpy(labelled.true_labels[train_rows]),
            share,
            self.epoch_size,
            seed=job.id,
        )
        data = {
            "labelled": len(labelled),
            "production_train_rows": int(train_rows.sum()),
            "holdout_rows": int(hold.sum()),
            "production_share": share,
            "production_in_epoch": n_prod,
            "epoch_size": len(x),
        }
        timings["data_s"] = round(time.monotonic() - t, 3)
        note(f"data: {json.dumps(data)}", details={"data": data, "champion": champion})

        t = time.monotonic()
        cfg, init = retrain_config(self.settings.retrain_mode, champ_dir, job.id, *self.finetune)
        mode = "finetune" if init is not None else "scratch"
        src = f" from champion {champion}" if init is not None else ""
        note(f"training ({mode}{src}, max_lr {cfg.max_lr}, pct_start {cfg.pct_start}, seed {cfg.seed})")
        out_dir = self.settings.models_path / f"retrain-job{job.id}-{time.strftime('%Y%m%d-%H%M%S')}"
        tags = {"mnistops.retrain_job": str(job.id), "mnistops.trigger": job.trigger, "mnistops.mode": mode}
        res = (self._train_fn or _run_training())(
            cfg,
            self.settings,
            out_dir=out_dir,
            mnist=mnist,
            split=Split(x, y, base.val_x, base.val_y),
            init=init,
            progress=False,
            tags=tags,
        )
        timings["train_s"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        version = self.registry.register(res.out_dir, run_id=res.metrics.get("run_id"), mnist=mnist)
        timings["register_s"] = round(time.monotonic() - t, 3)
        note(f"registered version {version} from {res.out_dir}", version=version)

        t = time.monotonic()
        report = self.registry.gate(version, mnist=mnist)
        timings["gate_s"] = round(time.monotonic() - t, 3)
        t = time.monotonic()
        champion, champ_dir = self._champion()  # the champion may have moved while training
        pg = production_gate(
            res.out_dir,
            champ_dir,
            labelled.images[hold],
            labelled.true_labels[hold],
            mnist,
            alpha=self.alpha,
            clean_tolerance=self.clean_tolerance,
            min_rows=self.min_holdout,
            clean_accs=clean_accuracies(report, champion),
        )
        timings["production_gate_s"] = round(time.monotonic() - t, 3)
        passed = report.passed and pg.passed
        if passed:
            self.registry.set_challenger(version)
        failed = ", ".join(report.failed_checks)
        registry = f"registry gate failed ({failed})" if failed else "registry gate passed"
        verdict = "challenger" if passed else "rejected"
        summary = f"version {version} {verdict}: {registry}; production gate: {pg.reason}"
        return {
            "summary": summary,
            "version": version,
            "champion": champion,
            "mode": mode,
            "run_id": res.metrics.get("run_id"),
            "model_dir": str(res.out_dir),
            "train_config": {"seed": cfg.seed, "max_lr": cfg.max_lr, "pct_start": cfg.pct_start},
            "metrics": {
                k: res.metrics.get(k) for k in ("test_accuracy", "noisy_test_accuracy", "train_seconds")
            },
            "gate": {"passed": report.passed, "failed_checks": list(report.failed_checks)},
            "production_gate": asdict(pg),
            "challenger": passed,
            "outcome": verdict,
            "timings": timings,
        }
