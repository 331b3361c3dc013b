"""Runtime settings for services and paths (env prefix ``MNISTOPS_``).

Model and training hyper-parameters do NOT live here: they are frozen dataclasses saved with
each model (see :mod:`mnistops.training.model` and :mod:`mnistops.training.train`). Nothing
here touches the disk on import or on construction; call :meth:`Settings.ensure_dirs` where a
directory is needed.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """All service and path settings; each is overridable as ``MNISTOPS_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="MNISTOPS_", extra="ignore")

    # --- paths -------------------------------------------------------------------------
    home: Path = Field(Path(".mnistops"), description="Root of all local state.")
    data_dir: Path | None = Field(None, description="MNIST cache; default <home>/data.")
    models_dir: Path | None = Field(None, description="Trained model folders; default <home>/models.")
    # --- tracking / registry -----------------------------------------------------------
    tracking_uri: str | None = Field(None, description="MLflow tracking URI; default sqlite under data dir.")
    registry_uri: str | None = Field(None, description="MLflow registry URI; default = tracking URI.")
    experiment: str = Field("mnistops", description="MLflow experiment name.")
    model_name: str = Field("mnist-classifier", description="Registered model name.")
    gates_file: Path | None = Field(None, description="Gate thresholds YAML; default built-ins.")
    # --- serving -----------------------------------------------------------------------
    database_url: str | None = Field(None, description="Prediction log DB; default sqlite under home.")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    inference_backend: Literal["onnx", "torch"] = "onnx"
    inference_threads: int = Field(1, ge=1, description="onnxruntime intra-op threads per request.")
    model_poll_seconds: float = Field(2.0, gt=0, description="How often serve checks the champion alias.")
    max_upload_bytes: int = Field(5_000_000, gt=0, description="Largest accepted upload.")
    max_batch: int = Field(256, gt=0, description="Largest /v1/predict/batch.")
    admin_token: SecretStr | None = Field(None, description="Bearer token; admin routes off without it.")
    log_batch_size: int = Field(256, gt=0, description="Rows per prediction-log flush.")
    log_flush_seconds: float = Field(0.05, gt=0, description="Max wait before a flush.")
    # --- monitoring --------------------------------------------------------------------
    window_size: int = Field(500, ge=10, description="Predictions per monitoring window.")
    window_step: int | None = Field(None, description="Sliding step; default = window_size.")
    monitor_interval_seconds: float = Field(5.0, gt=0)
    alerts_file: Path | None = Field(None, description="Alert rules YAML; default built-ins.")
    # NoDecode: the env value reaches _split_urls as text (comma-separated or a JSON list)
    webhook_urls: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Alert webhook receivers."
    )
    # --- closed loop -------------------------------------------------------------------
    shadow_requests: int = Field(500, ge=0, description="Requests the challenger shadows.")
    shadow_min_labelled: int = Field(50, ge=1, description="Labelled shadowed requests before a verdict.")
    retrain_min_labelled: int = Field(100, ge=0, description="Labelled production inputs needed to retrain.")
    canary_share: float = Field(0.0, ge=0, le=1, description="Share answered by the challenger.")
    retrain_cooldown_seconds: float = Field(300.0, ge=0)
    retrain_production_share: float = Field(0.3, ge=0, le=1)
    retrain_mode: Literal["finetune", "scratch"] = "finetune"
    retrain_epoch_size: int | None = Field(
        None, ge=1000, description="Images per retraining epoch; default 55k."
    )
    watch_windows: int = Field(3, ge=1, description="Windows watched after a promotion.")
    rollback_tolerance: float = Field(0.02, ge=0, description="Accuracy drop that triggers rollback.")

    # --- roles (each its own process; `mnistops up` supervises them all) ------------------
    monitor_port: int = Field(8001, ge=0, le=65535, description="Monitor's /metrics and /healthz (0 = off).")
    controller_port: int = Field(
        8002, ge=0, le=65535, description="Controller's /metrics and /healthz (0 = off)."
    )
    worker_port: int = Field(8003, ge=0, le=65535, description="Worker's /metrics and /healthz (0 = off).")
    controller_tick_seconds: float = Field(1.0, gt=0, description="How often the controller reconciles.")
    job_lease_seconds: float = Field(
        30.0, gt=0, description="Lease of a claimed job; a dead worker's job is re-queued after it."
    )
    job_heartbeat_seconds: float = Field(5.0, gt=0, description="How often a worker extends its lease.")
    job_max_attempts: int = Field(3, ge=1, description="Claims of one job before it is failed for good.")
    worker_poll_seconds: float = Field(1.0, gt=0, description="How often an idle worker looks for jobs.")
    worker_nice: int = Field(10, ge=0, le=19, description="CPU niceness of training (serving goes first).")
    worker_grace_seconds: float = Field(
        20.0, ge=0, description="On SIGTERM, how long a running job may finish before it is handed back."
    )
    # --- durability and retention of the prediction log -------------------------------------
    durability: Literal["process", "power"] = Field(
        "process",
        description="process: an answered prediction survives kill -9; power: also power loss (fsync).",
    )
    journal_segment_bytes: int = Field(
        8 << 20, ge=4096, description="Prediction journal segment size (deleted once committed)."
    )
    retention_max_age_seconds: float | None = Field(
        None, gt=0, description="Prune predictions older than this (default: keep forever)."
    )
    retention_max_rows: int | None = Field(None, gt=0, description="Keep at most this many predictions.")
    retention_archive_dir: Path | None = Field(
        None, description="Write pruned rows to Parquet here first (default: no archive)."
    )
    retention_batch_rows: int = Field(1000, gt=0, description="Rows deleted per retention transaction.")
    retention_interval_seconds: float = Field(60.0, gt=0, description="How often retention runs.")
    retention_feedback_grace_seconds: float = Field(
        3600.0, ge=0, description="Keep predictions this young: their feedback may still arrive."
    )
    retention_keep_unmonitored: bool = Field(
        True, description="Keep predictions the monitor has not evaluated (off when no monitor runs)."
    )

    @field_validator("webhook_urls", mode="before")
    @classmethod
    def _split_urls(cls, v: object) -> object:
        # allow MNISTOPS_WEBHOOK_URLS="http://a,http://b" as well as a JSON list
        if isinstance(v, str):
            if v.strip().startswith("["):
                return json.loads(v)
            return [u.strip() for u in v.split(",") if u.strip()]
        return v

    # --- derived -----------------------------------------------------------------------
    @property
    def data_path(self) -> Path:
        """Folder with the cached, verified idx files."""
        return self.data_dir or self.home / "data"

    @property
    def models_path(self) -> Path:
        """Folder holding trained model folders."""
        return self.models_dir or self.home / "models"

    @property
    def tracking(self) -> str:
        """MLflow tracking URI (sqlite under the data dir unless overridden)."""
        return self.tracking_uri or f"sqlite:///{(self.data_path / 'mlflow.db').resolve()}"

    @property
    def artifact_root(self) -> str:
        """Where a local store keeps run artifacts."""
        return (self.data_path / "mlartifacts").resolve().as_uri()

    @property
    def database(self) -> str:
        """SQLAlchemy URL of the prediction log."""
        return self.database_url or f"sqlite:///{(self.home / 'predictions.db').resolve()}"

    @property
    def journal_dir(self) -> Path:
        """The replica's prediction journal (one locked slot per serving process)."""
        return self.home / "journal"

    @property
    def step(self) -> int:
        """Sliding step of monitoring windows."""
        return self.window_step or self.window_size

    def ensure_dirs(self) -> None:
        """Create the local state folders (never called on import)."""
        for p in (self.home, self.data_path, self.models_path, self.journal_dir):
            p.mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (cached; tests call ``get_settings.cache_clear()``)."""
    return Settings()
