"""MLflow tracking set-up, done explicitly at call time (never on import)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mnistops.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient


def setup_tracking(settings: Settings) -> str:
    """Point MLflow at the configured store and return the experiment id.

    The default store is SQLite under the data dir with artifacts beside it, so `mlflow ui
    --backend-store-uri sqlite:///...` shows everything without a server.
    """
    import mlflow

    settings.data_path.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking)
    mlflow.set_registry_uri(settings.registry_uri or settings.tracking)
    exp = mlflow.get_experiment_by_name(settings.experiment)
    if exp is not None:
        return str(exp.experiment_id)
    location = settings.artifact_root if settings.tracking.startswith("sqlite") else None
    return str(mlflow.create_experiment(settings.experiment, artifact_location=location))


def client(settings: Settings) -> MlflowClient:
    """An MlflowClient bound to the configured store (no global state)."""
    from mlflow import MlflowClient

    return MlflowClient(
        tracking_uri=settings.tracking, registry_uri=settings.registry_uri or settings.tracking
    )
