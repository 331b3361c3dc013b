"""The body of a retraining job: MNIST + labelled production inputs → new version → gates → ``challenger``.

A worker claims a job from the store's queue (:mod:`mnistops.store.jobs`) and runs
:meth:`RetrainJobRunner.run` on it (:mod:`mnistops.worker.execute` holds the lease meanwhile).
Every step may run twice, because a worker can die anywhere and another one re-runs the job:

- the registered version carries the job id as tag ``mnistops.retrain_job``; a re-run that finds
  it skips training and registering (and completes a registration cut short, e.g. the profile);
  registering is serialised per store and re-checks the lease and the tag, so two workers that
  both believe they own the job still register at most one version;
- the registry gate and the production gate record their verdicts in the job's details and a
  re-run reuses them (feedback that arrived in between cannot flip the decision);
- pointing ``@challenger`` at the same version again is a no-op.

So one job yields at most one registered version and at most one challenger. "succeeded" means
the job ran to completion; whether its model became the challenger is ``details["challenger"]``.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistops.registry.core import CHAMPION
from mnistops.store.lock import locked
from mnistops.worker.seams import JOB_KEY_TAG, JOB_TAG, JobSink, RetrainRegistry, job_key
from mnistops.worker.steps import (
    ProductionGateResult,
    RetrainRecipe,
    clean_accuracies,
    holdout_mask,
    mix_training_set,
    production_gate,
    retrain_config,
)

if TYPE_CHECKING:
    import numpy as np

    from mnistops.settings import Settings
    from mnistops.store.predictions import PredictionStore
    from mnistops.store.records import RetrainJob
    from mnistops.training.data import Mnist, Split
    from mnistops.training.model import MnistNet
    from mnistops.training.train import TrainConfig, TrainResult

__all__ = ["RetrainJobRunner"]

log = logging.getLogger(__name__)

REGISTER_LOCK = "retrain-register"  # serialises "find the job's version, else register one"
TrainFn = Callable[..., "TrainResult"]


@dataclass
class _Prepared:
    """Inputs of training and of the production gate."""

    champion: str | None
    champion_dir: Path | None
    mnist: Mnist
    split: Split  # MNIST training rows mixed with labelled production rows, MNIST validation rows
    holdout_x: np.ndarray  # uint8 [H,28,28] held-out labelled production images (never trained on)
    holdout_y: np.ndarray  # int64 [H]
    cfg: TrainConfig
    init: MnistNet | None  # fine-tuning start (the champion), None = from scratch
    data: dict[str, Any]  # what the log and details show

    @property
    def mode(self) -> str:
        return "finetune" if self.init is not None else "scratch"


@contextmanager
def _timed(timings: dict[str, float], key: str) -> Iterator[None]:
    t = time.monotonic()
    try:
        yield
    finally:
        timings[key] = round(time.monotonic() - t, 3)


class RetrainJobRunner:
    """Runs the steps of one claimed retraining job (see the module docstring).

    Args:
        settings: paths, tracking, ``retrain_mode`` and ``retrain_production_share``.
        store: the prediction store (labelled production inputs).
        registry: where the new version is registered, gated and made challenger.
        recipe: epoch size, hold-out share, fine-tuning recipe, production gate thresholds.
        mnist: preloaded dataset (loaded from the data dir on first use otherwise).
        train_fn: training entry point with the signature of :func:`mnistops.training.train.run_training`.
    """

    def __init__(
        self,
        settings: Settings,
        store: PredictionStore,
        registry: RetrainRegistry,
        *,
        recipe: RetrainRecipe | None = None,
        mnist: Mnist | None = None,
        train_fn: TrainFn | None = None,
    ) -> None:
        self.settings, self.store, self.registry = settings, store, registry
        self.recipe = recipe or RetrainRecipe(epoch_size=settings.retrain_epoch_size)
        self._mnist, self._train_fn = mnist, train_fn

    def run(self, ctx: JobSink) -> dict[str, Any]:
        """Run the job to its verdict; returns the details to finish it with.

        Raises:
            LeaseLostError: the lease is gone (nothing more may be written).
            Exception: any failure of a step (the caller records it).
        """
        job, timings = ctx.job, dict[str, float]()
        ctx.note(
            f"started (trigger {job.trigger}, mode {self.settings.retrain_mode}, attempt {job.attempts})"
        )
        with _timed(timings, "data_s"):
            prep = self._prepare(job)
        ctx.note(f"data: {json.dumps(prep.data)}", details={"data": prep.data, "champion": prep.champion})
        version, model_dir, train = self._model(ctx, prep, timings)
        with _timed(timings, "gate_s"):
            gate = self._registry_gate(ctx, version, prep)
        with _timed(timings, "production_gate_s"):
            pg = self._production_gate(ctx, version, model_dir, prep, gate)
        passed = bool(gate["passed"] and pg["passed"])
        if passed:
            ctx.confirm_lease()  # a worker that lost the job must not move the alias
            self.registry.set_challenger(version)
        failed = ", ".join(gate["failed_checks"])
        registry = f"registry gate failed ({failed})" if failed else "registry gate passed"
        verdict = "challenger" if passed else "rejected"
        return {
            "summary": f"version {version} {verdict}: {registry}; production gate: {pg['reason']}",
            "version": version,
            "champion": pg.get("champion"),
            "mode": prep.mode,
            **{k: train.get(k) for k in ("run_id", "model_dir", "train_config", "metrics")},
            "gate": gate,
            "production_gate": pg,
            "challenger": passed,
            "outcome": verdict,
            "timings": timings,
        }

    # --- steps ------------------------------------------------------------------------------
    def _prepare(self, job: RetrainJob) -> _Prepared:
        import torch

        from mnistops.training.data import Split, split_train_val

        champion, champ_dir = self._champion()
        mnist = self._load_mnist()
        base = split_train_val(mnist)
        labelled = self.store.labelled()
        hold = holdout_mask(labelled.ids, self.recipe.holdout_every)
        train_rows, share, r = ~hold, self.settings.retrain_production_share, self.recipe
        x, y, n_prod = mix_training_set(
            base.train_x,
            base.train_y,
            torch.from_numpy(labelled.images[train_rows]),
            torch.from_numpy(labelled.true_labels[train_rows]),
            share,
            r.epoch_size,
            seed=job.id,
        )
        mode = self.settings.retrain_mode
        cfg, init = retrain_config(mode, champ_dir, job.id, r.finetune_max_lr, r.finetune_pct_start)
        data = {
            "labelled": len(labelled),
            "production_train_rows": int(train_rows.sum()),
            "holdout_rows": int(hold.sum()),
            "production_share": share,
            "production_in_epoch": n_prod,
            "epoch_size": len(x),
        }
        split = Split(x, y, base.val_x, base.val_y)
        hx, hy = labelled.images[hold], labelled.true_labels[hold]
        return _Prepared(champion, champ_dir, mnist, split, hx, hy, cfg, init, data)

    def _model(
        self, ctx: JobSink, prep: _Prepared, timings: dict[str, float]
    ) -> tuple[str, Path, dict[str, Any]]:
        """(version, model folder, training facts): the job's registered version, else train one."""
        job = ctx.job
        tags = {JOB_TAG: str(job.id), JOB_KEY_TAG: job_key(job), "mnistops.trigger": job.trigger,
                "mnistops.mode": prep.mode}  # fmt: skip
        found = self._job_version(job)
        if found is None:
            with _timed(timings, "train_s"):
                res, train = self._train(ctx, prep, tags)
            with _timed(timings, "register_s"), locked(self.settings, REGISTER_LOCK):
                ctx.confirm_lease()  # a worker whose lease lapsed while training must not register
                found = self._job_version(job)  # registered meanwhile by a worker re-running the job
                if found is None:
                    run_id = res.metrics.get("run_id")
                    version = self.registry.register(res.out_dir, run_id=run_id, mnist=prep.mnist, tags=tags)
                    ctx.note(f"registered version {version} from {res.out_dir}", version=version)
                    return version, res.out_dir, train
        version, run_id = found
        with _timed(timings, "register_s"):
            model_dir = self.registry.download(version)
            # completes a registration cut short by a crash (reference profile, tags); else a no-op
            self.registry.register(model_dir, run_id=run_id, mnist=prep.mnist, tags=tags)
        ctx.note(f"version {version} was registered for this job by an earlier attempt: not training again",
                 version=version)  # fmt: skip
        train = dict(job.details.get("train") or {"run_id": run_id, "model_dir": str(model_dir)})
        return version, model_dir, train

    def _train(
        self, ctx: JobSink, prep: _Prepared, tags: dict[str, str]
    ) -> tuple[TrainResult, dict[str, Any]]:
        job, cfg = ctx.job, prep.cfg
        src = f" from champion {prep.champion}" if prep.init is not None else ""
        ctx.note(
            f"training ({prep.mode}{src}, max_lr {cfg.max_lr}, pct_start {cfg.pct_start}, seed {cfg.seed})"
        )
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out_dir = self.settings.models_path / f"retrain-job{job.id}-a{job.attempts}-{stamp}"
        res = (self._train_fn or _run_training())(
            cfg,
            self.settings,
            out_dir=out_dir,
            mnist=prep.mnist,
            split=prep.split,
            init=prep.init,
            progress=False,
            tags=tags,
        )
        metrics = {k: res.metrics.get(k) for k in ("test_accuracy", "noisy_test_accuracy", "train_seconds")}
        train = {
            "run_id": res.metrics.get("run_id"),
            "model_dir": str(res.out_dir),
            "train_config": {"seed": cfg.seed, "max_lr": cfg.max_lr, "pct_start": cfg.pct_start},
            "metrics": metrics,
        }
        ctx.note(f"trained: {json.dumps(metrics)}", details={"train": train})
        return res, train

    def _registry_gate(self, ctx: JobSink, version: str, prep: _Prepared) -> dict[str, Any]:
        earlier = ctx.job.details.get("gate")
        if isinstance(earlier, dict) and earlier.get("version") == version:
            ctx.note(f"registry gate: verdict of an earlier attempt reused (passed {earlier['passed']})")
            return earlier
        report = self.registry.gate(version, mnist=prep.mnist)
        against = getattr(report, "champion", None)
        rec = {
            "version": version,
            "passed": bool(report.passed),
            "failed_checks": list(report.failed_checks),
            "champion": against,
            "clean_accs": clean_accuracies(report, against),  # reused by the production gate
        }
        ctx.note(f"registry gate: {'passed' if rec['passed'] else 'failed'}", details={"gate": rec})
        return rec

    def _production_gate(
        self, ctx: JobSink, version: str, model_dir: Path, prep: _Prepared, gate: dict[str, Any]
    ) -> dict[str, Any]:
        earlier = ctx.job.details.get("production_gate")
        if isinstance(earlier, dict) and earlier.get("version") == version:
            ctx.note(f"production gate: verdict of an earlier attempt reused ({earlier['reason']})")
            return earlier
        champion, champ_dir = self._champion()  # the champion may have moved while training
        accs = gate.get("clean_accs") if gate.get("champion") == champion else None
        pg: ProductionGateResult = production_gate(
            model_dir,
            champ_dir,
            prep.holdout_x,
            prep.holdout_y,
            prep.mnist,
            self.recipe.gate,
            clean_accs=None if not accs else (float(accs[0]), float(accs[1])),
        )
        rec = {"version": version, "champion": champion, **asdict(pg)}
        ctx.note(f"production gate: {pg.reason}", details={"production_gate": rec})
        return rec

    # --- lookups ----------------------------------------------------------------------------
    def _job_version(self, job: RetrainJob) -> tuple[str, str | None] | None:
        """(version, run id) registered for this job, or None."""
        found = self.registry.search_versions(f"tags.`{JOB_KEY_TAG}` = '{job_key(job)}'")
        if not found:
            return None
        if len(found) > 1:  # not produced by this code (registering is serialised); keep the first
            log.warning("job %s has %d registered versions; using the oldest", job.id, len(found))
        mv = min(found, key=lambda m: int(str(m.version)))
        return str(mv.version), mv.run_id

    def _champion(self) -> tuple[str | None, Path | None]:
        version = self.registry.alias_version(CHAMPION)
        return version, None if version is None else self.registry.download(version)

    def _load_mnist(self) -> Mnist:
        if self._mnist is None:
            from mnistops.training.data import load_mnist

            self._mnist = load_mnist(self.settings.data_path)
        return self._mnist


def _run_training() -> TrainFn:
    from mnistops.training.train import run_training

    return run_training
