"""Shadow (and canary) scoring by the challenger, on one machine.

The challenger (registry alias ``challenger``) scores a copy of live traffic off the request path:
:class:`ShadowRunner` re-reads the alias every ``poll_seconds`` and a second
:class:`~mnistops.runtime.BackgroundService` consumes the queue of offered inputs; the challenger's
answers are logged as shadow predictions, never returned. Agreement with the champion
is counted live; accuracy side by side comes from the store once feedback labels arrive.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Self

import numpy as np

from mnistops.runtime import BackgroundService, Health
from mnistops.service.inference import LoadedModel, load_model_dir
from mnistops.store.records import ShadowRecord

log = logging.getLogger(__name__)

ChallengerResolver = Callable[[], tuple[str, Path] | None]


class ShadowRunner(BackgroundService):
    """Scores up to ``max_requests`` champion requests with the challenger, off the request path.

    Its own step re-reads the challenger alias (:meth:`refresh`); scoring runs in a second
    background service that drains the queue :meth:`offer` fills.

    Args:
        resolve: returns ``(version, model_dir)`` of the challenger, or None when there is none.
        submit: where shadow records go (the prediction logger's ``submit_shadow``).
        max_requests: shadow budget per challenger version (0 = unlimited).
        poll_seconds: how often the challenger alias is re-read.
        on_agreement: called with the running agreement ratio (e.g. a Prometheus gauge setter).
        backend: inference backend of the challenger.
    """

    def __init__(
        self,
        resolve: ChallengerResolver,
        submit: Callable[[ShadowRecord], None],
        max_requests: int = 500,
        poll_seconds: float = 2.0,
        on_agreement: Callable[[float], None] | None = None,
        backend: str = "onnx",
    ) -> None:
        super().__init__("shadow-poll", poll_seconds)
        self._resolve, self._submit = resolve, submit
        self.max_requests, self.backend = max_requests, backend
        self._on_agreement = on_agreement
        self._model: LoadedModel | None = None
        self._queue: queue.Queue[tuple[str, np.ndarray, int]] = queue.Queue(maxsize=4096)
        self._lock = threading.Lock()
        self.scored = self.agreed = self.dropped = 0
        self._scorer = _Scorer(self)

    def start(self) -> Self:
        """Load the current challenger (if any), then poll the alias and score in the background."""
        if not self.running:
            self.refresh()
        self._scorer.start()
        return super().start()

    def run(self) -> None:
        """Re-read the alias after each interval (the first read ran in :meth:`start`)."""
        while not self.stopping.wait(self.interval):
            self.run_step()

    def step(self) -> None:
        """One poll of the challenger alias."""
        self.refresh()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both services (queued shadow work is dropped: it is never user-visible)."""
        super().stop(timeout)
        self._scorer.stop(timeout)

    def scorer_health(self) -> Health:
        """Health of the scoring service."""
        return self._scorer.health()

    def challenger(self) -> LoadedModel | None:
        """The loaded challenger, or None."""
        return self._model

    @property
    def agreement(self) -> float | None:
        """Share of shadowed requests where challenger and champion gave the same label."""
        return self.agreed / self.scored if self.scored else None

    @property
    def active(self) -> bool:
        """True while a challenger is loaded and its shadow budget is not used up."""
        return self._model is not None and (self.max_requests == 0 or self.scored < self.max_requests)

    def offer(self, prediction_id: str, image: np.ndarray, champion_label: int) -> None:
        """Queue a served input for the challenger; never blocks the request."""
        if not self.active:
            return
        try:
            self._queue.put_nowait((prediction_id, image, champion_label))
        except queue.Full:
            self.dropped += 1

    def refresh(self) -> None:
        """Re-read the challenger alias; load a new version and reset the counters."""
        try:
            target = self._resolve()
        except Exception as exc:  # registry down: keep the current challenger
            log.warning("challenger lookup failed: %s", exc)
            return
        if target is None:
            self._model = None
            return
        version, path = target
        if self._model is not None and self._model.version == version:
            return
        try:
            model = load_model_dir(version, path, backend=self.backend)
        except Exception:
            log.exception("cannot load challenger %s", version)
            return
        with self._lock:
            self._model, self.scored, self.agreed, self.dropped = model, 0, 0, 0
        log.info("shadowing challenger version %s for %d requests", version, self.max_requests)

    def next_batch(self, wait: float = 0.2, size: int = 64) -> list[tuple[str, np.ndarray, int]]:
        """Up to ``size`` offered inputs, waiting at most ``wait`` seconds for the first."""
        try:
            batch = [self._queue.get(timeout=wait)]
        except queue.Empty:
            return []
        while len(batch) < size:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def score(self, batch: list[tuple[str, np.ndarray, int]]) -> None:
        """Score one batch with the challenger and submit its shadow records (within budget)."""
        model = self._model
        if model is None or not batch:
            return
        probs, _ = model.classifier.predict(np.stack([b[1] for b in batch]))
        with self._lock:
            for (pid, _, champ_label), p in zip(batch, probs, strict=True):
                if self.max_requests and self.scored >= self.max_requests:
                    break
                rec = ShadowRecord.create(pid, model.version, p)
                self._submit(rec)
                self.scored += 1
                self.agreed += int(rec.label == champ_label)
        if self._on_agreement is not None and self.agreement is not None:
            self._on_agreement(self.agreement)


class _Scorer(BackgroundService):
    """Queue consumer: each step scores the next batch of offered inputs (errors logged, counted)."""

    def __init__(self, runner: ShadowRunner) -> None:
        super().__init__("shadow-score", 0.0)
        self.runner = runner

    def run(self) -> None:
        """Score batches until stopped (the queue wait is the pacing, not ``interval``)."""
        while not self.stopping.is_set():
            self.run_step()

    def step(self) -> None:
        """Score one batch (waits up to 0.2 s for the first input)."""
        self.runner.score(self.runner.next_batch())
