"""The demo's production traffic: concurrent HTTP predictions with delayed feedback labels."""

from __future__ import annotations

import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import numpy as np


@dataclass
class Served:
    """What the client saw for one request."""

    index: int  # sample index in the whole stream
    phase: str
    prediction_id: str
    label: int
    true_label: int
    version: str
    ts: float


@dataclass
class StreamClient:
    """Replays images over HTTP; labels a share of them after ``label_lag`` further predictions.

    Args:
        base_url: the service.
        concurrency: parallel requests.
        label_share: fraction of predictions that later receive feedback.
        label_lag: feedback for a prediction is sent after this many later predictions (delayed labels).
        seed: which predictions get labels.
    """

    base_url: str
    concurrency: int = 8
    label_share: float = 0.5
    label_lag: int = 100
    seed: int = 0
    served: list[Served] = field(default_factory=list)
    errors: int = 0

    def __post_init__(self) -> None:
        self._http = httpx.Client(
            base_url=self.base_url, timeout=30.0, limits=httpx.Limits(max_connections=32)
        )
        self._pool = ThreadPoolExecutor(self.concurrency)
        self._rng = np.random.default_rng(self.seed)
        self._pending: deque[tuple[int, str, int]] = deque()  # (index, prediction id, true label)
        self._lock = threading.Lock()
        self.labels_sent = 0

    def close(self) -> None:
        """Send the remaining labels and close connections."""
        self.flush_labels(all_=True)
        self._pool.shutdown()
        self._http.close()

    def _one(self, image: np.ndarray, true: int, index: int, phase: str) -> Served | None:
        try:
            r = self._http.post("/v1/predict", json={"pixels": image.tolist(), "client": f"demo-{phase}"})
            r.raise_for_status()
        except httpx.HTTPError:
            with self._lock:
                self.errors += 1
            return None
        b = r.json()
        return Served(index, phase, b["prediction_id"], b["label"], true, b["model_version"], time.time())

    def send(self, images: np.ndarray, labels: np.ndarray, phase: str) -> list[Served]:
        """Predict a chunk concurrently (in order of submission), queue labels, send due labels."""
        start = len(self.served)
        futs = [
            self._pool.submit(self._one, images[i], int(labels[i]), start + i, phase)
            for i in range(len(images))
        ]
        out = [s for s in (f.result() for f in futs) if s is not None]
        self.served.extend(out)
        for s in out:
            if self._rng.random() < self.label_share:
                self._pending.append((s.index, s.prediction_id, s.true_label))
        self.flush_labels()
        return out

    def flush_labels(self, all_: bool = False) -> None:
        """Send feedback for predictions older than ``label_lag`` (or all of them)."""
        cutoff = len(self.served) - (0 if all_ else self.label_lag)
        due = []
        while self._pending and self._pending[0][0] < cutoff:
            due.append(self._pending.popleft())

        def post(item: tuple[int, str, int]) -> None:
            try:
                self._http.post("/v1/feedback", json={"prediction_id": item[1], "true_label": item[2]})
            except httpx.HTTPError:
                with self._lock:
                    self.errors += 1

        list(self._pool.map(post, due))
        self.labels_sent += len(due)

    def get(self, path: str) -> object:
        """GET a JSON resource of the service."""
        r = self._http.get(path)
        r.raise_for_status()
        return r.json()


def accuracy(served: list[Served]) -> float | None:
    """Share of correct answers."""
    if not served:
        return None
    return float(np.mean([s.label == s.true_label for s in served]))
