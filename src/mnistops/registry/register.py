"""Registration: a trained model folder becomes a version of the registered model.

The folder is saved as a pyfunc MLflow model (ONNX inside, tensor signature, input example,
explicit pip requirements) and logged into its training run under ``mlflow_model/``; the version
points at that artifact and carries provenance tags; the reference profile is built from the
validation split and logged under ``reference_profile/``. Idempotent per run.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistops.errors import ModelNotFoundError, RegistryError
from mnistops.registry.names import MODEL_PATH, PROFILE_PATH, REQUIRED_FILES
from mnistops.registry.tracking import setup_tracking
from mnistops.store.lock import locked

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion

    from mnistops.registry.core import Registry
    from mnistops.training.data import Mnist

log = logging.getLogger(__name__)
_RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
SOURCE_RUN_TAG = "mnistops.source_run_id"  # on a local run standing in for another store's run


def git_commit() -> str:
    """Commit being registered: ``$GITHUB_SHA`` in CI, else ``git rev-parse HEAD``, else "unknown"."""
    if sha := os.environ.get("GITHUB_SHA"):
        return sha
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def register(
    reg: Registry,
    model_dir: Path,
    run_id: str | None = None,
    mnist: Mnist | None = None,
    profile: bool = True,
    tags: dict[str, str] | None = None,
) -> str:
    """Register a trained model folder as a new version (idempotent per run).

    Args:
        model_dir: folder with model.pt, model.onnx, metrics.json, config.json.
        run_id: the training run; default ``metrics.json["run_id"]``; if neither, a new run
            whose id is written back into ``metrics.json``. A run id from ``metrics.json`` that
            this store does not know (trained against another store) gets a local run tagged
            with it; ``metrics.json`` is left as it is.
        mnist: data for the reference profile (loaded from the data dir if ``None``).
        profile: build and log the reference profile.
        tags: extra version tags, set when the version is created (so a crash cannot leave a
            version without them), e.g. the retrain job that produced it.

    Returns:
        The version; the existing one if this run was registered before.

    Raises:
        ModelNotFoundError: a required file is missing.
        RegistryError: an explicit ``run_id`` does not exist in this store, or MLflow failed.
    """
    missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
    if missing:
        raise ModelNotFoundError(f"{model_dir} lacks {', '.join(missing)}")
    metrics: dict[str, Any] = json.loads((model_dir / "metrics.json").read_text())
    explicit = run_id is not None
    run_id = run_id or metrics.get("run_id")
    if run_id:
        _check_run_id(run_id, model_dir)
        if not explicit and not _run_exists(reg, run_id):
            # trained against another MLflow store (a laptop run promoted on a server, say): give
            # it a run here, found again by its source id so re-registering stays idempotent
            run_id = _run_for_source(reg, model_dir, metrics, run_id)
    else:
        # an untracked folder: give it a run, and remember it so re-registering is idempotent
        run_id = _new_run(reg, setup_tracking(reg.settings), model_dir, metrics)
        metrics["run_id"] = run_id
        (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
    with locked(reg.settings, "registry"):
        existing = reg.search_versions(f"run_id='{run_id}'")
        if existing:
            mv = existing[0]
            log.info("run %s already registered as version %s", run_id, mv.version)
            stale = {k: v for k, v in (tags or {}).items() if mv.tags.get(k) != v}
            if stale:
                reg.set_tags(str(mv.version), stale)
        else:
            mv = _create_version(reg, model_dir, run_id, metrics, tags or {})
    if profile and mv.tags.get("profile") != "true":
        _log_profile(reg, str(mv.version), model_dir, run_id, mnist)
    return str(mv.version)


def _check_run_id(run_id: str, model_dir: Path) -> None:
    if not _RUN_ID.fullmatch(str(run_id)):  # it goes into registry / run filter strings
        raise RegistryError(f"invalid run id {run_id!r} in {model_dir / 'metrics.json'}")


def _run_exists(reg: Registry, run_id: str) -> bool:
    from mlflow.exceptions import MlflowException

    try:
        reg.client.get_run(run_id)
    except MlflowException:
        return False
    return True


def _run_for_source(reg: Registry, model_dir: Path, metrics: dict[str, Any], source_run_id: str) -> str:
    exp = setup_tracking(reg.settings)
    found = reg.client.search_runs([exp], filter_string=f"tags.`{SOURCE_RUN_TAG}` = '{source_run_id}'")
    if found:
        return str(found[0].info.run_id)
    return _new_run(reg, exp, model_dir, metrics, {SOURCE_RUN_TAG: source_run_id})


def _new_run(
    reg: Registry, exp: str, model_dir: Path, metrics: dict[str, Any], tags: dict[str, str] | None = None
) -> str:
    from mlflow.entities import Metric

    run = reg.client.create_run(
        exp, tags={"mnistops.kind": "register", "source_dir": str(model_dir), **(tags or {})}
    )
    vals = [
        Metric(k, float(v), 0, 0)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    ]
    reg.client.log_batch(run.info.run_id, metrics=vals)
    reg.client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def _create_version(
    reg: Registry, model_dir: Path, run_id: str, metrics: dict[str, Any], extra_tags: dict[str, str]
) -> ModelVersion:
    import mlflow.pyfunc
    import numpy as np
    from mlflow.exceptions import MlflowException

    from mnistops.registry import pyfunc as rp

    cl = reg.client
    try:
        run = cl.get_run(run_id)
    except MlflowException as exc:
        raise RegistryError(f"run {run_id} not found in {reg.settings.tracking}: {exc.message}") from exc
    with tempfile.TemporaryDirectory() as tmp:
        pyf = Path(tmp) / MODEL_PATH
        quiet = logging.getLogger("mlflow.pyfunc")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # silence the "CloudPickle" advisory on every registration
        try:
            mlflow.pyfunc.save_model(
                path=str(pyf),
                python_model=rp.OnnxDigitClassifier(),
                artifacts={n: str(model_dir / n) for n in rp.ARTIFACTS},
                signature=rp.signature(),
                input_example=np.zeros((1, 28, 28), np.uint8),
                pip_requirements=rp.pip_requirements(),
                metadata={"mnistops_run_id": run_id},
            )
        finally:
            quiet.setLevel(level)
        cl.log_artifacts(run_id, str(pyf), MODEL_PATH)
    try:
        cl.create_registered_model(reg.name, description="MNIST digit classifier (mnistops)")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise RegistryError(f"cannot create registered model {reg.name}: {exc.message}") from exc
    config = (model_dir / "config.json").read_text()
    tags: dict[str, str] = {
        "data_md5": str(metrics.get("data_md5", "unknown")),
        "git_commit": git_commit(),
        "params": str(metrics.get("params", "unknown")),
        **{k: str(metrics[k]) for k in ("test_accuracy", "noisy_test_accuracy") if k in metrics},
        "train_seed": str(metrics.get("seed", "")),
        "train_config": json.dumps(json.loads(config), separators=(",", ":"))[:4900],
        "source_dir": str(model_dir.resolve()),
        **extra_tags,
    }
    tags = {k: v for k, v in tags.items() if v}  # a missing metric is no tag, not an empty one
    mv = cl.create_model_version(reg.name, f"{run.info.artifact_uri}/{MODEL_PATH}", run_id=run_id, tags=tags)
    log.info("registered %s version %s from run %s", reg.name, mv.version, run_id)
    return mv


def _log_profile(reg: Registry, version: str, model_dir: Path, run_id: str, mnist: Mnist | None) -> None:
    from mnistops.registry.profile import build_profile
    from mnistops.training.data import load_mnist, split_train_val
    from mnistops.training.model import load_model

    split = split_train_val(mnist or load_mnist(reg.settings.data_path))
    prof = build_profile(load_model(model_dir), split.val_x, split.val_y, version=version)
    with tempfile.TemporaryDirectory() as tmp:
        reg.client.log_artifacts(run_id, str(prof.save(Path(tmp))), PROFILE_PATH)
    reg.set_tags(version, {"profile": "true", "temperature": f"{prof.temperature:.6g}"})
