"""Model registry on MLflow: register trained folders as versions, download them, list them.

Every version of ``settings.model_name`` is a pyfunc MLflow model (ONNX inside, signature and
input example, explicit pip requirements) logged into its training run under ``mlflow_model/``,
with the ONNX file, ``model.pt``, ``metrics.json`` and ``config.json`` as its artifacts and the
reference profile under ``reference_profile/``. Provenance lives in version tags. Registration
is in :mod:`mnistops.registry.register`; gating, promotion, rollback and the audit history in
:mod:`mnistops.registry.promote`; both are exposed as :class:`Registry` methods. Nothing touches
MLflow until a method is called.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistops.errors import ModelNotFoundError, RegistryError
from mnistops.registry.names import (
    CHALLENGER,
    CHAMPION,
    GATE_PATH,
    MODEL_PATH,
    PREVIOUS,
    PROFILE_PATH,
    REQUIRED_FILES,
)
from mnistops.settings import Settings

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities.model_registry import ModelVersion

    from mnistops.gates.checks import GateConfig, GateReport
    from mnistops.registry.profile import ReferenceProfile
    from mnistops.store.audit import AuditEvent
    from mnistops.training.data import Mnist

__all__ = [
    "CHALLENGER",
    "CHAMPION",
    "GATE_PATH",
    "MODEL_PATH",
    "PREVIOUS",
    "PROFILE_PATH",
    "REQUIRED_FILES",
    "Registry",
    "VersionInfo",
    "configure",
    "load_profile",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VersionInfo:
    """One registered version as ``mnistops models`` shows it."""

    version: str
    run_id: str
    created: datetime
    aliases: tuple[str, ...]
    metrics: dict[str, float]  # test_accuracy, noisy_test_accuracy, params
    gate_passed: bool | None  # None = never gated
    gate_failed_checks: tuple[str, ...]
    forced: bool  # promoted with --force at least once
    promoted_by: str | None
    promoted_at: str | None  # ISO time of the last promotion/rollback onto it
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        d = asdict(self)
        d["created"] = self.created.isoformat()
        return d


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow (global URIs, for pyfunc loading) at the configured store; return a bound client.

    Called explicitly by commands, never on import. Creates the experiment if missing.
    """
    from mnistops.registry.tracking import client, setup_tracking

    setup_tracking(settings)
    return client(settings)


class Registry:
    """The registered model ``settings.model_name`` in the configured MLflow store."""

    def __init__(self, settings: Settings, client: MlflowClient | None = None) -> None:
        self.settings = settings
        self.name = settings.model_name
        self._client = client

    @property
    def client(self) -> MlflowClient:
        """Lazily created client bound to the store (no global state)."""
        if self._client is None:
            from mnistops.registry.tracking import client

            self.settings.data_path.mkdir(parents=True, exist_ok=True)  # the sqlite file's folder
            self._client = client(self.settings)
        return self._client

    # --- registration (implemented in registry_register) -------------------------------------
    def register(
        self,
        model_dir: Path,
        run_id: str | None = None,
        mnist: Mnist | None = None,
        profile: bool = True,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Register a trained folder, idempotent per run (see :func:`mnistops.registry.register.register`)."""
        from mnistops.registry.register import register

        return register(self, model_dir, run_id=run_id, mnist=mnist, profile=profile, tags=tags)

    # --- lookup ----------------------------------------------------------------------------
    def search_versions(self, extra_filter: str = "") -> list[ModelVersion]:
        """Versions of the model matching an extra MLflow filter (no aliases: MLflow #9783)."""
        from mlflow.exceptions import MlflowException

        flt = f"name='{self.name}'" + (f" and {extra_filter}" if extra_filter else "")
        try:
            return list(self.client.search_model_versions(flt))
        except MlflowException as exc:
            raise RegistryError(f"cannot search versions of {self.name}: {exc.message}") from exc

    def model_version(self, version: str) -> ModelVersion:
        """The MLflow ``ModelVersion`` (with aliases).

        Raises:
            ModelNotFoundError: no such version.
        """
        from mlflow.exceptions import MlflowException

        try:
            return self.client.get_model_version(self.name, str(version))
        except MlflowException as exc:
            raise ModelNotFoundError(f"{self.name} version {version} not found") from exc

    def alias_version(self, alias: str) -> str | None:
        """Version an alias points to, or ``None`` if unset (one registry call)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise RegistryError(f"cannot resolve {self.name}@{alias}: {exc.message}") from exc

    def aliases(self) -> dict[str, str]:
        """All aliases of the registered model → version (search results lack them, MLflow #9783)."""
        from mlflow.exceptions import MlflowException

        try:
            rm = self.client.get_registered_model(self.name)
        except MlflowException:
            return {}
        return {a: str(v) for a, v in (rm.aliases or {}).items()}

    def resolve_alias(self, alias: str = CHAMPION) -> tuple[str, Path]:
        """``(version, local model dir)`` of ``alias``: one registry call once the version is cached.

        Raises:
            ModelNotFoundError: the alias is not set.
        """
        from mlflow.exceptions import MlflowException

        try:
            mv = self.client.get_model_version_by_alias(self.name, alias)
        except MlflowException as exc:
            raise ModelNotFoundError(f"{self.name}@{alias} is not set: {exc.message}") from exc
        return str(mv.version), self._download(mv)

    def download(self, version: str) -> Path:
        """Local folder (model.pt, model.onnx, metrics.json, config.json) of a version, cached.

        The pyfunc MLflow model is its parent folder.
        """
        return self._download(self.model_version(version))

    def _cache(self, version: str) -> Path:
        return self.settings.home / "cache" / "versions" / str(version)

    def _download(self, mv: ModelVersion) -> Path:
        root = self._cache(str(mv.version))
        stamp = f"{mv.run_id} {mv.source}"
        model_dir = root / MODEL_PATH / "artifacts"
        marker = root / ".source"
        if marker.is_file() and marker.read_text() == stamp and (model_dir / "model.onnx").is_file():
            return model_dir
        root.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{mv.version}.", dir=root.parent))
        try:
            self.client.download_artifacts(str(mv.run_id), MODEL_PATH, str(tmp))
            (tmp / ".source").write_text(stamp)
            if root.exists():  # stale: same number, different run (e.g. a recreated store)
                shutil.rmtree(root, ignore_errors=True)
            with contextlib.suppress(OSError):  # another process finished the same download first
                tmp.rename(root)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return model_dir

    def download_profile(self, version: str) -> Path:
        """Local folder with ``profile.npz`` / ``profile.json`` of a version (cached)."""
        mv = self.model_version(version)
        dest = self._cache(str(version)) / PROFILE_PATH
        if (dest / "profile.json").is_file():
            return dest
        if mv.tags.get("profile") != "true":
            raise ModelNotFoundError(f"{self.name} version {version} has no reference profile")
        dest.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
            self.client.download_artifacts(str(mv.run_id), PROFILE_PATH, tmp)
            shutil.copytree(Path(tmp) / PROFILE_PATH, dest, dirs_exist_ok=True)
        return dest

    def list_versions(self) -> list[VersionInfo]:
        """All versions, oldest first, with metrics, gate result, aliases and last promotion."""
        aliases = self.aliases()
        by_version: dict[str, list[str]] = {}
        for a, v in sorted(aliases.items()):
            by_version.setdefault(v, []).append(a)
        return [
            _info(mv, tuple(by_version.get(str(mv.version), ())))
            for mv in sorted(self.search_versions(), key=lambda m: int(m.version))
        ]

    def get_version(self, version: str) -> VersionInfo:
        """One version's :class:`VersionInfo`."""
        mv = self.model_version(version)
        return _info(mv, tuple(sorted(mv.aliases or ())))

    def set_tags(self, version: str, tags: dict[str, str]) -> None:
        """Set tags on a version."""
        for k, v in tags.items():
            self.client.set_model_version_tag(self.name, str(version), k, v)

    def log_artifacts(self, version: str, local_dir: Path, artifact_path: str) -> None:
        """Log a folder into the run behind ``version``."""
        self.client.log_artifacts(str(self.model_version(version).run_id), str(local_dir), artifact_path)

    # --- promotion (implemented in registry_promote) ---------------------------------------
    def set_challenger(self, version: str) -> None:
        """Point ``challenger`` at ``version`` (see :func:`mnistops.registry.promote.set_challenger`)."""
        from mnistops.registry.promote import set_challenger

        set_challenger(self, version)

    def promote(
        self, version: str, actor: str | None = None, reason: str = "", force: bool = False
    ) -> AuditEvent:
        """Make ``version`` champion (see :func:`mnistops.registry.promote.promote`)."""
        from mnistops.registry.promote import promote

        return promote(self, version, actor=actor, reason=reason, force=force)

    def rollback(self, actor: str | None = None, reason: str = "", auto: bool = False) -> tuple[str, str]:
        """Restore the previous champion (see :func:`mnistops.registry.promote.rollback`)."""
        from mnistops.registry.promote import rollback

        return rollback(self, actor=actor, reason=reason, auto=auto)

    def history(self, limit: int | None = None) -> list[AuditEvent]:
        """Promotion/rollback events, oldest first."""
        from mnistops.store import audit

        return audit.history(self.settings.database, self.name, limit)

    def gate(self, version: str, mnist: Mnist | None = None, config: GateConfig | None = None) -> GateReport:
        """Gate a version against the champion (see :func:`mnistops.registry.promote.gate_version`)."""
        from mnistops.registry.promote import gate_version

        return gate_version(self, version, mnist=mnist, config=config)


# --- module-level shortcuts (what the CLI and the service call) ----------------------------------
def register(
    model_dir: Path, settings: Settings, run_id: str | None = None, mnist: Mnist | None = None
) -> str:
    """Register a trained model folder; see :meth:`Registry.register`."""
    return Registry(settings).register(model_dir, run_id=run_id, mnist=mnist)


def download(version: str, settings: Settings) -> Path:
    """Local model folder of a version; see :meth:`Registry.download`."""
    return Registry(settings).download(version)


def resolve_alias(alias: str, settings: Settings) -> tuple[str, Path]:
    """``(version, local model dir)`` of an alias; see :meth:`Registry.resolve_alias`."""
    return Registry(settings).resolve_alias(alias)


def list_versions(settings: Settings) -> list[VersionInfo]:
    """All versions; see :meth:`Registry.list_versions`."""
    return Registry(settings).list_versions()


def _info(mv: ModelVersion, aliases: tuple[str, ...]) -> VersionInfo:
    tags: dict[str, str] = dict(mv.tags or {})
    metrics: dict[str, float] = {}
    for k in ("test_accuracy", "noisy_test_accuracy", "params"):
        with contextlib.suppress(KeyError, ValueError):
            metrics[k] = float(tags[k])
    gp = tags.get("gate_passed")
    failed = tags.get("gate_failed_checks", "")
    return VersionInfo(
        version=str(mv.version),
        run_id=str(mv.run_id),
        created=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
        aliases=aliases,
        metrics=metrics,
        gate_passed=None if gp is None else gp == "true",
        gate_failed_checks=tuple(c for c in failed.split(",") if c),
        forced=tags.get("forced_promotion") == "true",
        promoted_by=tags.get("promoted_by"),
        promoted_at=tags.get("promoted_at"),
        tags=tags,
    )


def load_profile(version: str, settings: Settings) -> ReferenceProfile:
    """The reference profile of a registered version (downloaded once, then cached).

    Raises:
        ModelNotFoundError: unknown version or no profile logged for it.
    """
    from mnistops.registry.profile import ReferenceProfile

    return ReferenceProfile.load(Registry(settings).download_profile(version))
