"""Everything a running service holds, created in the app's lifespan (never on import)."""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mnistops.service.inference import LoadedModel, ModelFollower
from mnistops.service.metrics import ServiceMetrics
from mnistops.settings import Settings

if TYPE_CHECKING:
    from mnistops.service.logger import PredictionLogger
    from mnistops.service.shadow import ShadowRunner
    from mnistops.store.predictions import PredictionStore

log = logging.getLogger(__name__)

Resolver = Callable[[], tuple[str, Path]]


@dataclass
class ServiceState:
    """The service's long-lived objects (one per process)."""

    settings: Settings
    metrics: ServiceMetrics
    follower: ModelFollower
    store: PredictionStore
    logger: PredictionLogger
    shadow: ShadowRunner | None = None
    registry_ops: Any = None  # module-like object with promote/rollback/history/list_versions
    loop: Any = None  # the ClosedLoop when it runs in this process
    background: list[Any] = field(default_factory=list)  # monitor loop etc., stopped on shutdown
    rng: random.Random = field(default_factory=random.Random)
    reference_freq: dict[str, list[float]] = field(default_factory=dict)  # per model version (dashboard)

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
