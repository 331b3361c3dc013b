"""Windowing of the prediction log and per-version scoring, the two halves of the monitor loop.

:class:`WindowBuffer` turns the stream of logged predictions of one model version into count-based
windows (``size`` rows, sliding by ``step``) or time windows (``time_window_seconds`` of traffic,
merged forward until they hold ``min_rows``). A window never mixes versions: rows of a new version
drop the partial window of the old one. :class:`VersionContext` holds what scoring one version's
windows needs (reference profile, torch model, fitted detectors) and scores a window of images.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch
from numpy.typing import NDArray

from mnistops.errors import DriftConfigError
from mnistops.monitor.drift.base import Sample
from mnistops.monitor.drift.combine import Monitor, MonitorReport
from mnistops.monitor.drift.ood import OODRateDetector
from mnistops.monitor.performance import Estimate, calibrated_probs, estimate_accuracy
from mnistops.registry.profile import ReferenceProfile
from mnistops.store.records import PredictionWindow
from mnistops.training.evaluate import predict_embeddings
from mnistops.training.model import MnistNet, load_model

log = logging.getLogger(__name__)

WindowKind = Literal["count", "time"]


class ModelSource(Protocol):
    """The part of :class:`~mnistops.registry.core.Registry` the monitor needs."""

    def download(self, version: str) -> Path: ...

    def download_profile(self, version: str) -> Path: ...


# --- row helpers ---------------------------------------------------------------------------------
def take_rows(rows: PredictionWindow, index: slice | NDArray[Any]) -> PredictionWindow:
    """Rows selected by a slice, index array or boolean mask (every column, same order)."""
    return PredictionWindow(**{f.name: getattr(rows, f.name)[index] for f in dataclasses.fields(rows)})


def concat_rows(a: PredictionWindow, b: PredictionWindow) -> PredictionWindow:
    """``a`` followed by ``b``."""
    return PredictionWindow(
        **{f.name: np.concatenate([getattr(a, f.name), getattr(b, f.name)]) for f in dataclasses.fields(a)}
    )


def eligible(rows: PredictionWindow, served_by: str, exclude_clients: Sequence[str]) -> NDArray[np.bool_]:
    """bool [N]: rows the monitor evaluates (served by ``served_by``, client not excluded).

    The client filter applies once the store returns a ``clients`` column (str, "" for none).
    """
    mask = rows.served_by == served_by
    clients = getattr(rows, "clients", None)
    if clients is not None and exclude_clients:
        mask &= ~np.isin(clients, list(exclude_clients))
    return np.asarray(mask, dtype=bool)


def version_runs(rows: PredictionWindow) -> list[PredictionWindow]:
    """Split rows (seq order) into maximal runs of one model version."""
    n = len(rows)
    if n == 0:
        return []
    v = rows.model_versions
    cuts = [0, *(np.flatnonzero(v[1:] != v[:-1]) + 1).tolist(), n]
    return [take_rows(rows, slice(a, b)) for a, b in itertools.pairwise(cuts)]


# --- windowing -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class PendingWindow:
    """A complete window waiting to be scored; :meth:`WindowBuffer.consume` it once persisted."""

    rows: PredictionWindow
    version: str
    kind: WindowKind
    advance: int  # rows dropped from the buffer on consume
    resume_after_seq: int  # a restarted monitor reads rows with seq > this to rebuild the next window

    @property
    def start_seq(self) -> int:
        """Seq of the first row."""
        return int(self.rows.seqs[0])

    @property
    def end_seq(self) -> int:
        """Seq of the last row."""
        return int(self.rows.seqs[-1])

    @property
    def end_ts(self) -> float:
        """Timestamp of the newest row."""
        return float(self.rows.ts.max())


class WindowBuffer:
    """Rows of one model version not yet consumed by a window.

    Args:
        size: rows per count window.
        step: rows the next count window starts after the current one (``step < size`` slides).
        time_window_seconds: if set, windows are time periods instead of counts.
        min_rows: a time window with fewer rows is merged into the next period.
        grace_seconds: a time period closes this long after its end (late log writes).
    """

    def __init__(
        self,
        size: int,
        step: int,
        *,
        time_window_seconds: float | None = None,
        min_rows: int = 20,
        grace_seconds: float = 1.0,
    ) -> None:
        if size < 2 or not 1 <= step <= size:
            raise DriftConfigError(f"window size must be >= 2 and 1 <= step <= size, got {size}, {step}")
        if time_window_seconds is not None and time_window_seconds <= 0:
            raise DriftConfigError("time_window_seconds must be > 0")
        self.size, self.step = size, step
        self.period = time_window_seconds
        self.min_rows = max(2, min_rows)
        self.grace = grace_seconds
        self.version: str | None = None
        self.rows: PredictionWindow | None = None
        self.dropped = 0  # rows of partial windows discarded on version changes

    def __len__(self) -> int:
        return 0 if self.rows is None else len(self.rows)

    def push(self, run: PredictionWindow) -> int:
        """Append rows of ONE version; a new version first discards the partial window.

        Returns:
            Rows discarded because the version changed.
        """
        if len(run) == 0:
            return 0
        version = str(run.model_versions[0])
        dropped = 0
        if version != self.version:
            dropped = len(self)
            self.dropped += dropped
            self.version, self.rows = version, None
        self.rows = run if self.rows is None else concat_rows(self.rows, run)
        return dropped

    def next_window(self, now: float) -> PendingWindow | None:
        """The next complete window (not removed until :meth:`consume`), or None."""
        rows = self.rows
        if rows is None or self.version is None or len(rows) == 0:
            return None
        if self.period is None:
            if len(rows) < self.size:
                return None
            return self._pending(rows, self.size, self.step, "count")
        start = float(rows.ts[0])
        horizon = max(now, float(rows.ts.max()))
        end = start + self.period
        while horizon >= end + self.grace:
            k = int(np.argmax(rows.ts >= end)) if bool((rows.ts >= end).any()) else len(rows)
            if k >= self.min_rows:
                return self._pending(rows, k, k, "time")
            end += self.period  # too few rows: merge into the next period
        return None

    def _pending(self, rows: PredictionWindow, n: int, advance: int, kind: WindowKind) -> PendingWindow:
        assert self.version is not None
        window = take_rows(rows, slice(0, n))
        # the next window starts at rows[advance]; with nothing buffered past the window, after it
        resume = int(rows.seqs[advance]) - 1 if advance < len(rows) else int(window.seqs[-1])
        return PendingWindow(window, self.version, kind, advance, resume)

    def consume(self, window: PendingWindow) -> None:
        """Drop the rows the window advances past."""
        if self.rows is not None:
            self.rows = take_rows(self.rows, slice(window.advance, None))

    def clear(self) -> None:
        """Forget buffered rows (the version is kept)."""
        self.dropped += len(self)
        self.rows = None


# --- scoring -------------------------------------------------------------------------------------
@contextlib.contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily cap torch's intra-op threads (process-wide; only speed is affected elsewhere).

    On the shared 2-core box a 500-image embedding pass took 0.3 s on 1 thread and 0.6-0.9 s on 2:
    the pool's threads fight the serving and MMD threads for the same cores.
    """
    if n is None or n == torch.get_num_threads():
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclass(frozen=True)
class WindowScores:
    """Everything computed from one window's images."""

    drift: MonitorReport
    estimate: Estimate
    ood_rate: float
    ood_flags: NDArray[np.bool_]  # [N]
    probs: NDArray[np.float64]  # [N, 10] calibrated


@dataclass
class VersionContext:
    """Reference profile, torch model and fitted detectors of one model version."""

    version: str
    profile: ReferenceProfile
    model: MnistNet
    monitor: Monitor
    ood: OODRateDetector
    reference_accuracy: float
    threads: int | None = 1  # torch intra-op threads for the embedding pass (None = leave as is)

    @classmethod
    def load(
        cls, version: str, source: ModelSource, *, detectors: Sequence[str], alpha: float, seed: int = 0
    ) -> VersionContext:
        """Download (cached by the registry) and fit once per version.

        Raises:
            ModelNotFoundError: the version or its reference profile does not exist.
        """
        profile = ReferenceProfile.load(Path(source.download_profile(version)))
        model = load_model(Path(source.download(version)))
        ref = Sample(
            probs=profile.probs, logits=profile.logits, embeddings=profile.embeddings, images=profile.images
        )
        monitor = Monitor.from_names(list(detectors), alpha=alpha, seed=seed).fit(ref)
        ood = OODRateDetector(seed=seed).fit(ref)
        acc = profile.meta.get("val_accuracy")
        if not isinstance(acc, int | float):
            acc = float((profile.probs.argmax(axis=1) == profile.labels).mean())
        return cls(version, profile, model, monitor, ood, float(acc))

    def sample(self, images: NDArray[np.uint8]) -> Sample:
        """Recompute logits and embeddings with the torch model (the log keeps images + probs only)."""
        with torch_threads(self.threads):
            logits_t, emb_t = predict_embeddings(self.model, torch.from_numpy(np.ascontiguousarray(images)))
        logits = logits_t.numpy().astype(np.float64)  # [N, 10]
        return Sample(
            probs=calibrated_probs(logits, self.profile.temperature),
            logits=logits,
            embeddings=emb_t.numpy(),  # [N, D]
            images=images,
        )

    def score(self, images: NDArray[np.uint8], window_index: int) -> WindowScores:
        """Drift check, CBPE estimate and OOD rate of a window of uint8 images [N, 28, 28]."""
        sample = self.sample(images)
        assert sample.probs is not None
        drift = self.monitor.check(sample, window_index)
        flags = self.ood.flags(sample)
        return WindowScores(drift, estimate_accuracy(sample.probs), float(flags.mean()), flags, sample.probs)
