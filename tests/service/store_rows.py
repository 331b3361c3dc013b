"""Rows for store tests: predictions with random images and softmax-like probabilities."""

from __future__ import annotations

import numpy as np

from mnistops.store.records import MonitorWindow, PredictionRecord, ServedBy, ShadowRecord


def make_records(
    n: int,
    seed: int = 0,
    version: str = "1",
    t0: float = 1000.0,
    *,
    served_by: ServedBy = "champion",
) -> list[PredictionRecord]:
    """n records one second apart from ``t0`` (client "c", latency 1.5 + i ms)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    probs = rng.random((n, 10)).astype(np.float32)
    probs /= probs.sum(1, keepdims=True)
    return [
        PredictionRecord.create(
            images[i], probs[i], version, latency_ms=1.5 + i, ts=t0 + i, client="c", served_by=served_by
        )
        for i in range(n)
    ]


def shadow_of(rec: PredictionRecord, version: str, seed: int = 0) -> ShadowRecord:
    """A challenger's answer to ``rec``."""
    probs = np.random.default_rng(seed).random(10).astype(np.float32)
    return ShadowRecord.create(rec.id, version, probs / probs.sum(), latency_ms=0.7, ts=rec.ts)


def evaluated_up_to(end_seq: int, window: int = 0) -> MonitorWindow:
    """A stored monitor window saying the monitor evaluated every row up to ``end_seq``."""
    return MonitorWindow(window=window, end_seq=end_seq, end_ts=0.0, n=1, model_version="1")
