"""Plain data objects read from and written to the monitoring store."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mnistops.errors import InputError

IMAGE_BYTES = 28 * 28
N_CLASSES = 10
SERVED_BY = ("champion", "canary")
ServedBy = Literal["champion", "canary"]


def _probs_tuple(probs: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    # Rounded through float32 because that is what the store keeps: a record then equals its read-back.
    arr = np.asarray(probs, dtype=np.float32).reshape(-1)
    if arr.shape != (N_CLASSES,):
        raise InputError(f"probs must have {N_CLASSES} values, got {arr.size}")
    return tuple(float(p) for p in arr)


def _image_bytes(image: bytes | bytearray | memoryview | np.ndarray) -> bytes:
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.size != IMAGE_BYTES:
            raise InputError(f"image must be {IMAGE_BYTES} uint8 values, got {image.dtype} x {image.size}")
        return np.ascontiguousarray(image).tobytes()
    data = bytes(image)
    if len(data) != IMAGE_BYTES:
        raise InputError(f"image must be {IMAGE_BYTES} bytes, got {len(data)}")
    return data


@dataclass(slots=True)
class PredictionRecord:
    """One served prediction (a row of ``predictions``); ``seq`` is assigned by the store."""

    id: str
    ts: float
    model_version: str
    image: bytes = field(repr=False)  # 784 uint8, row-major 28x28
    probs: tuple[float, ...]  # 10 floats (float32 precision)
    label: int
    confidence: float
    latency_ms: float
    client: str | None = None
    served_by: str = "champion"
    true_label: int | None = None
    feedback_ts: float | None = None
    seq: int | None = field(default=None, compare=False)  # assigned on insert

    def __post_init__(self) -> None:
        self.image = _image_bytes(self.image)
        self.probs = _probs_tuple(self.probs)
        if not 0 <= int(self.label) < N_CLASSES:
            raise InputError(f"label must be in 0..9, got {self.label}")
        if self.served_by not in SERVED_BY:
            raise InputError(f"served_by must be one of {SERVED_BY}, got {self.served_by!r}")

    @classmethod
    def create(
        cls,
        image: np.ndarray | bytes,
        probs: Sequence[float] | np.ndarray,
        model_version: str,
        latency_ms: float,
        *,
        client: str | None = None,
        served_by: ServedBy = "champion",
        id: str | None = None,
        ts: float | None = None,
    ) -> PredictionRecord:
        """Build a record with a fresh uuid and timestamp; label/confidence are argmax/max of ``probs``.

        Args:
            image: uint8 [28,28] array (or 784 raw bytes).
            probs: the 10 class probabilities returned to the client.
            model_version: version that answered.
            latency_ms: inference latency.
            client: optional client identifier.
            served_by: "champion" or "canary".
            id: prediction id (default: a new uuid4).
            ts: epoch seconds (default: now).

        Returns:
            The record, ready for :meth:`PredictionStore.insert_many` or the logger.
        """
        p = np.asarray(probs, dtype=np.float32).reshape(-1)
        return cls(
            id=id or str(uuid.uuid4()),
            ts=time.time() if ts is None else ts,
            model_version=model_version,
            image=_image_bytes(image),
            probs=_probs_tuple(p),
            label=int(p.argmax()),
            confidence=float(p.max()),
            latency_ms=float(latency_ms),
            client=client,
            served_by=served_by,
        )


@dataclass(slots=True)
class ShadowRecord:
    """The challenger's answer to a served input (never returned to the client)."""

    prediction_id: str
    model_version: str
    probs: tuple[float, ...]
    label: int
    confidence: float
    ts: float
    latency_ms: float | None = None

    def __post_init__(self) -> None:
        self.probs = _probs_tuple(self.probs)

    @classmethod
    def create(
        cls,
        prediction_id: str,
        model_version: str,
        probs: Sequence[float] | np.ndarray,
        *,
        latency_ms: float | None = None,
        ts: float | None = None,
    ) -> ShadowRecord:
        """Build a shadow record from probabilities (label/confidence = argmax/max, ts = now)."""
        p = np.asarray(probs, dtype=np.float32).reshape(-1)
        return cls(
            prediction_id=prediction_id,
            model_version=model_version,
            probs=_probs_tuple(p),
            label=int(p.argmax()),
            confidence=float(p.max()),
            ts=time.time() if ts is None else ts,
            latency_ms=latency_ms,
        )


@dataclass(frozen=True, slots=True)
class FeedbackRecord:
    """A true label reported for a prediction; applying it again is a no-op (the last one wins)."""

    prediction_id: str
    true_label: int
    ts: float


@dataclass(frozen=True, slots=True)
class PredictionWindow:
    """Column arrays of consecutive predictions, ordered by ``seq`` ascending (N rows)."""

    ids: np.ndarray  # str [N]
    seqs: np.ndarray  # int64 [N]
    ts: np.ndarray  # float64 [N]
    model_versions: np.ndarray  # str [N]
    images: np.ndarray  # uint8 [N,28,28]
    probs: np.ndarray  # float32 [N,10]
    labels: np.ndarray  # int64 [N] predicted
    confidence: np.ndarray  # float64 [N]
    latency_ms: np.ndarray  # float64 [N]
    served_by: np.ndarray  # str [N]
    true_labels: np.ndarray  # int64 [N], -1 = no feedback yet
    clients: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=str))  # str [N], "" = none

    def __len__(self) -> int:
        return int(self.seqs.shape[0])

    @property
    def has_feedback(self) -> np.ndarray:
        """bool [N]: rows with a true label."""
        return self.true_labels >= 0


@dataclass(frozen=True, slots=True)
class ShadowPairs:
    """Champion vs challenger answers to the same inputs, ordered by the prediction's seq (N rows)."""

    prediction_ids: np.ndarray  # str [N]
    seqs: np.ndarray  # int64 [N]
    champion_versions: np.ndarray  # str [N]
    champion_labels: np.ndarray  # int64 [N]
    shadow_labels: np.ndarray  # int64 [N]
    champion_probs: np.ndarray  # float32 [N,10]
    shadow_probs: np.ndarray  # float32 [N,10]
    true_labels: np.ndarray  # int64 [N], -1 = no feedback

    def __len__(self) -> int:
        return int(self.seqs.shape[0])


@dataclass(frozen=True, slots=True)
class AlertEvent:
    """One alert occurrence (firing until resolved)."""

    id: int
    rule: str
    severity: str
    state: Literal["firing", "resolved"]
    started_at: float
    resolved_at: float | None
    summary: str
    labels: dict[str, Any]
    fingerprint: str


@dataclass(slots=True)
class MonitorWindow:
    """Result of one monitoring window (``results`` maps detector name -> DriftResult-like dict)."""

    window: int
    end_seq: int
    end_ts: float
    n: int
    model_version: str
    results: dict[str, Any] = field(default_factory=dict)
    drifted: bool = False
    estimated_accuracy: float | None = None
    estimated_lower: float | None = None
    estimated_upper: float | None = None
    realized_accuracy: float | None = None
    id: int | None = None
    created_at: float | None = None

    @property
    def resume_after_seq(self) -> int:
        """Seq after which a restarted monitor reads to rebuild its next window.

        Rows up to it are evaluated (a sliding window's next start minus one, else ``end_seq``).
        """
        combined = self.results.get("combined", {})
        details = combined.get("details", {}) if isinstance(combined, dict) else {}
        resume = details.get("resume_after_seq") if isinstance(details, dict) else None
        return int(resume) if isinstance(resume, int) else int(self.end_seq)


JobState = Literal["queued", "running", "succeeded", "failed"]


@dataclass(frozen=True, slots=True)
class RetrainJob:
    """A retraining job and its outcome."""

    id: int
    state: JobState
    trigger: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    version: str | None
    log: str
    error: str | None
    details: dict[str, Any]
    lease_owner: str | None = None  # worker holding the job (while lease_until is in the future)
    lease_until: float | None = None  # epoch seconds; extended by the worker's heartbeat
    heartbeat_at: float | None = None  # last heartbeat
    attempts: int = 0  # times a worker claimed it (a re-run after a dead worker's lease expired counts)
