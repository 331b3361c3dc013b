"""Shadow (and canary) scoring by the challenger, on one machine.

The challenger (registry alias ``challenger``) scores a copy of live traffic in a background
thread: its answers are logged as shadow predictions, never returned. Agreement with the champion
is counted live; accuracy side by side comes from the store once feedback labels arrive.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mnistops.service.inference import LoadedModel, load_model_dir
from mnistops.store.records import ShadowRecord

log = logging.getLogger(__name__)

ChallengerResolver = Callable[[], tuple[str, Path] | None]


class ShadowRunner:
    """Scores up to ``max_requests`` champion requests with the challenger, off the request path.

    Args:
        resolve: returns ``(version, model_dir)`` of the challenger, or None when there is none.
        submit: where shadow records go (the prediction logger's ``submit_shadow``).
        max_requests: shadow budget per challenger version (0 = unlimited).
        poll_seconds: how often the challenger alias is re-read.
        on_agreement: called with the running agreement ratio (e.g. a Prometheus gauge setter).
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
        self._resolve, self._submit = resolve, submit
        self.max_requests, self.poll_seconds, self.backend = max_requests, poll_seconds, backend
        self._on_agreement = on_agreement
        self._model: LoadedModel | None = None
        self._queue: queue.Queue[tuple[str, np.ndarray, int]] = queue.Queue(maxsize=4096)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.scored = self.agreed = self.dropped = 0
        self._threads = [
            threading.Thread(target=self._poll_loop, name="shadow-poll", daemon=True),
            threading.Thread(target=self._score_loop, name="shadow-score", daemon=True),
        ]

    def start(self) -> ShadowRunner:
        """Load the current challenger (if any) and start the threads."""
        self.refresh()
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """Stop the threads (queued shadow work is dropped: it is never user-visible)."""
        self._stop.set()
        for t in self._threads:
            if t.is_alive():
                t.join(timeout=5)

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

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            self.refresh()

    def _score_loop(self) -> None:
        while not self._stop.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < 64:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            model = self._model
            if model is None:
                continue
            try:
                probs, _ = model.classifier.predict(np.stack([b[1] for b in batch]))
            except Exception:
                log.exception("shadow scoring failed")
                continue
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
