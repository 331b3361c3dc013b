"""Everything a running service holds, created in the app's lifespan (never on import).

The seams to the rest of the system are Protocols: :class:`RegistryOps` (what an API replica asks
of the model registry) and :class:`Stoppable` (anything stopped with the app). An API replica runs
no control-plane code: the monitor, controller and worker are other processes that it only
meets through the store and the registry's aliases.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from mnistops.service.follower import ModelFollower
from mnistops.service.inference import LoadedModel
from mnistops.service.metrics import ServiceMetrics
from mnistops.settings import Settings

if TYPE_CHECKING:
    from mnistops.service.logger import PredictionLogger
    from mnistops.service.shadow import ShadowRunner
    from mnistops.store.predictions import PredictionStore

log = logging.getLogger(__name__)

Resolver = Callable[[], tuple[str, Path]]


class VersionView(Protocol):
    """What ``GET /v1/model`` shows of a registered version."""

    @property
    def aliases(self) -> Sequence[str]:
        """Aliases pointing at it."""
        ...

    @property
    def gate_passed(self) -> bool | None:
        """Gate result (None = never gated)."""
        ...


class AliasChange(Protocol):
    """A promotion or rollback as the audit trail records it."""

    @property
    def action(self) -> str:
        """promote | rollback | auto-rollback."""
        ...

    @property
    def from_version(self) -> str | None:
        """Champion before."""
        ...

    @property
    def to_version(self) -> str:
        """Champion after."""
        ...

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the dashboard's ``history`` entries)."""
        ...


class RegistryOps(Protocol):
    """The model registry as an API replica uses it (:class:`mnistops.registry.core.Registry`)."""

    def alias_version(self, alias: str) -> str | None:
        """Version an alias points to, or None."""
        ...

    def download(self, version: str) -> Path:
        """Local model folder of a version."""
        ...

    def get_version(self, version: str) -> VersionView:
        """One version's aliases and gate result."""
        ...

    def history(self, limit: int | None = None) -> Sequence[AliasChange]:
        """Promotions and rollbacks, oldest first."""
        ...

    def promote(
        self, version: str, actor: str | None = None, reason: str = "", force: bool = False
    ) -> AliasChange:
        """Make ``version`` champion (admin route)."""
        ...

    def rollback(self, actor: str | None = None, reason: str = "", auto: bool = False) -> tuple[str, str]:
        """Restore the previous champion: ``(from, to)`` (admin route)."""
        ...


class Stoppable(Protocol):
    """Something the app stops on shutdown (a :class:`~mnistops.runtime.BackgroundService`)."""

    def stop(self, timeout: float = 5.0) -> None:
        """Stop, waiting at most ``timeout`` seconds."""
        ...


@dataclass
class ServiceState:
    """The service's long-lived objects (one per process)."""

    settings: Settings
    metrics: ServiceMetrics
    follower: ModelFollower
    store: PredictionStore
    logger: PredictionLogger
    shadow: ShadowRunner | None = None
    registry_ops: RegistryOps | None = None  # None: no registry (admin routes answer 403)
    background: list[Stoppable] = field(default_factory=list)  # stopped on shutdown, last first
    rng: random.Random = field(default_factory=random.Random)

    def model(self) -> LoadedModel:
        """The model that answers the next request (a stable reference for the whole request)."""
        return self.follower.current()

    def pick_model(self) -> tuple[LoadedModel, str]:
        """Champion, or the challenger for a canary share of requests."""
        champ = self.follower.current()
        sh = self.shadow
        share = self.settings.canary_share
        if sh is not None and share > 0 and self.rng.random() < share:
            challenger = sh.challenger()
            if challenger is not None and challenger.version != champ.version:
                return challenger, "canary"
        return champ, "champion"

    def logger_stats(self) -> dict[str, int]:
        """Counters read by the Prometheus collector at scrape time."""
        lg = self.logger
        return {
            "queue_depth": lg.queue_depth,
            "write_errors": lg.write_errors,
            "spill_backlog": lg.spill_backlog,
        }
