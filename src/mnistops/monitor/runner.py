"""The monitor loop: prediction log -> windows -> drift, estimated/realized accuracy -> store, alerts, gauges.

``MonitorRunner.process()`` reads the rows logged since the last window (champion traffic only, draft
canvas predictions excluded), cuts them into windows per model version (see
:mod:`mnistops.monitor.windows`), scores each window against that version's reference profile,
persists a :class:`MonitorWindow` (detector results, and under ``results["metrics"]`` the flat metrics
the alert rules read, concept drift included; under ``results["reference"]`` the version's reference
class shares and accuracy, so readers such as the dashboard never need monitor code), feeds the
:class:`AlertEngine`, updates the Prometheus gauges and calls the subscribers (``on_window``,
``on_alerts``). It resumes after the last stored window. As a
:class:`~mnistops.runtime.BackgroundService` it processes every ``monitor_interval_seconds``; the
role process around it is :mod:`mnistops.monitor.role`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from mnistops.errors import DriftInputError, ModelNotFoundError, NotFoundError
from mnistops.monitor.alerts.engine import AlertEngine
from mnistops.monitor.drift.combine import DEFAULT_DETECTORS
from mnistops.monitor.metrics import MonitorMetrics
from mnistops.monitor.reports import (
    CheckReport,
    ConceptReport,
    WindowReport,
    concept_from_rows,
    concept_metrics,
    realized_for_rows,
    render_check,
    window_metrics,
)
from mnistops.monitor.windows import (
    ModelSource,
    PendingWindow,
    VersionContext,
    WindowBuffer,
    eligible,
    take_rows,
    version_runs,
)
from mnistops.runtime import BackgroundService
from mnistops.store.records import AlertEvent, MonitorWindow

if TYPE_CHECKING:
    from mnistops.settings import Settings
    from mnistops.store.predictions import PredictionStore

__all__ = [
    "CheckReport",
    "ConceptReport",
    "MonitorRunner",
    "WindowReport",
    "render_check",
]

log = logging.getLogger(__name__)

EXCLUDED_CLIENTS = ("web-draft",)  # half-drawn canvas predictions from the draw page
UNMONITORABLE_RETRY_SECONDS = 300.0  # a version without a profile is retried (it may be registering)


class MonitorRunner(BackgroundService):
    """Evaluates the prediction log window by window (see module docstring).

    Args:
        settings: window_size, step, monitor_interval_seconds, alerts_file, webhook_urls.
        store: the prediction store.
        registry: gives each version's model folder and reference profile (``download``,
            ``download_profile``; cached per version here).
        engine: alert engine (default: rules and notifiers from settings, built on first use).
        metrics: Prometheus gauges to update (default: none).
        detectors: detector names of the combined monitor.
        alpha: overall false-alarm level per window.
        time_window_seconds: evaluate time windows of this length instead of count windows.
        min_labels: fewest feedback labels in a window for realized metrics.
        min_window_rows: a time window with fewer predictions merges into the next period.
        exclude_clients: client tags never monitored.
        clock: epoch-seconds clock (time windows).
    """

    def __init__(
        self,
        settings: Settings,
        store: PredictionStore,
        registry: ModelSource,
        *,
        engine: AlertEngine | None = None,
        metrics: MonitorMetrics | None = None,
        detectors: Sequence[str] = DEFAULT_DETECTORS,
        alpha: float = 0.01,
        time_window_seconds: float | None = None,
        min_labels: int = 20,
        min_window_rows: int = 50,
        exclude_clients: Sequence[str] = EXCLUDED_CLIENTS,
        served_by: str = "champion",
        fetch_limit: int = 5000,
        seed: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__("monitor", settings.monitor_interval_seconds)
        self.settings, self.store, self.registry = settings, store, registry
        self.metrics = metrics
        self.detectors, self.alpha, self.seed = tuple(detectors), alpha, seed
        self.min_labels = min_labels
        self.exclude_clients, self.served_by = tuple(exclude_clients), served_by
        self.fetch_limit = max(fetch_limit, settings.window_size)
        self.clock = clock
        self.buffer = WindowBuffer(
            settings.window_size,
            settings.step,
            time_window_seconds=time_window_seconds,
            min_rows=min_window_rows,
        )
        self.on_window: list[Callable[[WindowReport], None]] = []
        self.on_alerts: list[Callable[[list[AlertEvent]], None]] = []
        self._engine = engine
        self._contexts: dict[str, VersionContext] = {}
        self._unmonitorable: dict[str, float] = {}  # version -> when its profile was found missing
        self._cursor: int | None = None  # last seq read from the store
        self._next_window = 0
        self._lock = threading.RLock()
        self._concept_key: tuple[str | None, int] | None = None
        self._concept: ConceptReport | None = None

    # --- setup -------------------------------------------------------------------------------
    @property
    def engine(self) -> AlertEngine:
        """The alert engine (built from settings on first use: it reads firing alerts from the store)."""
        if self._engine is None:
            self._engine = AlertEngine.from_settings(self.settings, self.store)
            if self.metrics is not None:
                self.metrics.observe_alerts(self._engine.firing_gauge())
        return self._engine

    @property
    def last_seq(self) -> int | None:
        """Last prediction seq read from the store (None before the first step)."""
        return self._cursor

    def context(self, version: str) -> VersionContext:
        """Profile, model and fitted detectors of a version (loaded once, then cached)."""
        ctx = self._contexts.get(version)
        if ctx is None:
            t0 = time.perf_counter()
            ctx = VersionContext.load(
                version, self.registry, detectors=self.detectors, alpha=self.alpha, seed=self.seed
            )
            self._contexts[version] = ctx
            log.info("monitor: loaded reference of version %s in %.2fs", version, time.perf_counter() - t0)
        return ctx

    def _resume(self) -> None:
        last = self.store.last_window()
        if last is None:
            self._cursor = 0
            return
        self._next_window = last.window + 1
        self._cursor = last.resume_after_seq
        log.info("monitor: resuming after seq %d (window %d)", self._cursor, self._next_window)

    # --- the loop ----------------------------------------------------------------------------
    def step(self) -> None:
        """The background step: :meth:`process` (a failure is logged; the next step retries)."""
        self.process()

    def process(self) -> list[WindowReport]:
        """Process every complete window available now (resumes after the last stored window).

        Raises:
            StoreError / RegistryError: transient failures; nothing is lost, the next step retries.
        """
        with self._lock:
            if self._cursor is None:
                self._resume()
            reports = self._drain()
            while True:
                assert self._cursor is not None
                chunk = self.store.after(self._cursor, self.fetch_limit, served_by=self.served_by)
                if len(chunk) == 0:
                    break
                rows = take_rows(chunk, eligible(chunk, self.served_by, self.exclude_clients))
                for run in version_runs(rows):
                    dropped = self.buffer.push(run)
                    if dropped:
                        log.info(
                            "monitor: version %s: new run, dropped %d rows", run.model_versions[0], dropped
                        )
                    self._cursor = int(run.seqs[-1])
                    reports += self._drain()
                self._cursor = int(chunk.seqs[-1])
                if len(chunk) < self.fetch_limit:
                    break
            return reports

    def _drain(self) -> list[WindowReport]:
        reports: list[WindowReport] = []
        while (pending := self.buffer.next_window(self.clock())) is not None:
            failed_at = self._unmonitorable.get(pending.version)
            if failed_at is not None and self.clock() - failed_at < UNMONITORABLE_RETRY_SECONDS:
                self.buffer.consume(pending)
                continue
            try:
                report = self._process(pending)
            except ModelNotFoundError as exc:
                log.error("monitor: version %s cannot be monitored: %s", pending.version, exc)
                self._unmonitorable[pending.version] = self.clock()
                self.buffer.clear()
                continue
            except DriftInputError as exc:
                log.error("monitor: window %d skipped: %s", self._next_window, exc)
                self.buffer.consume(pending)
                continue
            self.buffer.consume(pending)
            reports.append(report)
        return reports

    def _process(self, pending: PendingWindow) -> WindowReport:
        ctx = self.context(pending.version)
        index = self._next_window
        scores = ctx.score(pending.rows.images, index)
        # labels arrive late: re-read them now rather than trusting buffered rows
        fresh = self.store.window(pending.start_seq, pending.end_seq, model_version=pending.version)
        rows = take_rows(fresh, np.isin(fresh.seqs, pending.rows.seqs))
        realized = realized_for_rows(rows, self.min_labels)
        metrics = window_metrics(scores, realized, ctx.reference_accuracy)
        metrics.update(self._concept_metrics(pending.version))
        results = {r.detector: r.to_dict() for r in scores.drift.all()}
        results["combined"]["details"].update(
            start_seq=pending.start_seq, resume_after_seq=pending.resume_after_seq, kind=pending.kind
        )
        results["metrics"] = _json_safe(metrics)
        results["reference"] = {
            "class_freq": [float(x) for x in ctx.profile.class_freq],
            "accuracy": ctx.reference_accuracy,
        }
        est = scores.estimate
        stored = self.store.insert_window(
            MonitorWindow(
                window=index,
                end_seq=pending.end_seq,
                end_ts=pending.end_ts,
                n=len(pending.rows),
                model_version=pending.version,
                results=results,
                drifted=scores.drift.drifted,
                estimated_accuracy=est.value,
                estimated_lower=est.lower,
                estimated_upper=est.upper,
                realized_accuracy=None if realized is None else realized.accuracy,
            )
        )
        self._next_window = index + 1
        changed = self.engine.evaluate(index, metrics, pending.version)
        if self.metrics is not None:
            self.metrics.observe_drift(scores.drift.all())
            self.metrics.observe_window(
                estimate=est,
                realized=realized,
                ood_rate=scores.ood_rate,
                accuracy_drop=metrics["accuracy_drop_vs_reference"],
                end_seq=pending.end_seq,
            )
            self.metrics.observe_alerts(self.engine.firing_gauge())
        report = WindowReport(
            window=stored,
            metrics=metrics,
            drift=scores.drift,
            estimate=est,
            realized=realized,
            fired=[e for e in changed if e.state == "firing"],
            resolved=[e for e in changed if e.state == "resolved"],
            start_seq=pending.start_seq,
        )
        self._notify(report, changed)
        return report

    def _notify(self, report: WindowReport, changed: list[AlertEvent]) -> None:
        # subscribers (retraining, post-promotion watch) must never break monitoring
        for cb in list(self.on_window):
            try:
                cb(report)
            except Exception:
                log.exception("monitor: on_window subscriber %r failed", cb)
        if changed:
            for acb in list(self.on_alerts):
                try:
                    acb(changed)
                except Exception:
                    log.exception("monitor: on_alerts subscriber %r failed", acb)

    # --- concept drift -----------------------------------------------------------------------
    def concept_report(
        self, model_version: str | None = None, window: int = 100, limit: int = 5000
    ) -> ConceptReport:
        """Windowed realized metrics and ADWIN/DDM change points on the newest labelled predictions.

        Args:
            model_version: one version's predictions (default: all versions).
            window: labelled predictions per metrics window.
            limit: newest labelled predictions considered.
        """
        rows = self.store.labelled(model_version=model_version, limit=limit)
        rows = take_rows(rows, eligible(rows, self.served_by, self.exclude_clients))
        return concept_from_rows(rows, model_version, window)

    def _concept_metrics(self, version: str) -> dict[str, Any]:
        # recomputed only when the number of labels of this version changed (cheap count query)
        key = (version, self.store.count(model_version=version, labelled=True))
        if key != self._concept_key:
            self._concept = self.concept_report(version) if key[1] else None
            self._concept_key = key
        return concept_metrics(self._concept)

    # --- one-shot check ----------------------------------------------------------------------
    def check_last(self, n: int) -> CheckReport:
        """Score the last ``n`` monitored predictions of the newest version (nothing persisted).

        Raises:
            NotFoundError: no monitored prediction logged yet.
            DriftInputError: fewer than 20 of them.
        """
        probe = self.store.latest(max(n, 1) * 2, served_by=self.served_by)
        probe = take_rows(probe, eligible(probe, self.served_by, self.exclude_clients))
        if len(probe) == 0:
            raise NotFoundError("no champion predictions logged yet")
        version = str(probe.model_versions[-1])
        rows = self.store.latest(n * 2, model_version=version, served_by=self.served_by)
        rows = take_rows(rows, eligible(rows, self.served_by, self.exclude_clients))
        rows = take_rows(rows, slice(max(0, len(rows) - n), None))
        if len(rows) < 20:
            raise DriftInputError(f"only {len(rows)} predictions of version {version}: need >= 20")
        with self._lock:
            ctx = self.context(version)
        scores = ctx.score(rows.images, 0)
        return CheckReport(
            model_version=version,
            n=len(rows),
            start_seq=int(rows.seqs[0]),
            end_seq=int(rows.seqs[-1]),
            drift=scores.drift,
            estimate=scores.estimate,
            reference_accuracy=ctx.reference_accuracy,
            realized=realized_for_rows(rows, self.min_labels),
            ood_rate=scores.ood_rate,
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the background service (after the current window) and flush the notifiers."""
        super().stop(timeout)
        if self._engine is not None:
            self._engine.close()


def _json_safe(metrics: dict[str, Any]) -> dict[str, float | int | bool | str | None]:
    """Plain JSON scalars (numpy scalars unwrapped; NaN and inf, which PostgreSQL's JSON refuses, as None)."""
    out: dict[str, float | int | bool | str | None] = {}
    for k, v in metrics.items():
        if hasattr(v, "item") and not isinstance(v, bool | int | float):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[k] = v if v is None or isinstance(v, bool | int | float | str) else str(v)
    return out
