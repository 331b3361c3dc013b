"""Monitoring read API: the dashboard's data, windows, alerts, promotion history, retrain jobs, timeline.

Everything here is read from the store (written by the monitor and the controller, other processes)
or the registry; an API replica computes no monitoring itself. A window's ``results`` carry the
monitor's flat metrics (``results["metrics"]``, concept drift included) and the version's reference
class shares (``results["reference"]``).
"""

from __future__ import annotations

import base64
import io
import time
from datetime import UTC, datetime
from typing import Any

import numpy as np
from fastapi import APIRouter, Query
from pydantic import BaseModel

from mnistops.service.deps import StateDep
from mnistops.service.schemas import error_responses
from mnistops.service.state import ServiceState
from mnistops.store.jobs import JobQueue
from mnistops.store.records import MonitorWindow
from mnistops.store.timeline import Timeline

router = APIRouter(prefix="/v1", tags=["monitoring"])


class HistoryOut(BaseModel):
    """A promotion or rollback event."""

    time: str
    action: str
    from_version: str | None
    to_version: str
    reason: str
    actor: str


class TrafficOut(BaseModel):
    """Request rate and latency in one time bucket."""

    t: float
    rps: float
    p50_ms: float
    p95_ms: float


class DetectorPoint(BaseModel):
    """A detector's score against its threshold in one window."""

    score: float
    threshold: float
    p_value: float | None
    drifted: bool


class WindowOut(BaseModel):
    """One monitoring window."""

    window: int
    end_ts: float
    n: int
    model_version: str
    detectors: dict[str, DetectorPoint]
    drifted: bool
    estimated_accuracy: float | None
    estimated_lower: float | None
    estimated_upper: float | None
    realized_accuracy: float | None
    ood_rate: float | None = None
    concept: dict[str, float | int | None] = {}  # accuracy, macro_f1, error_rate, change_points, ...


class AlertOut(BaseModel):
    """An alert event."""

    id: int
    rule: str
    severity: str
    state: str
    started_at: str
    resolved_at: str | None
    summary: str


class SuspiciousOut(BaseModel):
    """A recent low-confidence input."""

    prediction_id: str
    label: int
    confidence: float
    ood: bool
    image_png_base64: str


class ClassDistOut(BaseModel):
    """Predicted-class shares: reference (validation) vs the latest predictions."""

    reference: list[float]
    current: list[float]


class DashboardOut(BaseModel):
    """Everything the dashboard page draws."""

    model: dict[str, Any]
    history: list[HistoryOut]
    traffic: list[TrafficOut]
    class_distribution: ClassDistOut
    windows: list[WindowOut]
    alerts: list[AlertOut]
    suspicious: list[SuspiciousOut]
    jobs: list[dict[str, Any]]
    generated_at: float


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def _png_b64(img: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8), mode="L").save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _traffic(ts: np.ndarray, lat: np.ndarray, bucket: float = 10.0) -> list[TrafficOut]:
    if len(ts) == 0:
        return []
    keys = np.floor(ts / bucket).astype(np.int64)
    out = []
    for k in np.unique(keys)[-60:]:
        sel = keys == k
        out.append(
            TrafficOut(
                t=float(k * bucket),
                rps=float(sel.sum() / bucket),
                p50_ms=float(np.percentile(lat[sel], 50)),
                p95_ms=float(np.percentile(lat[sel], 95)),
            )
        )
    return out


UNIFORM = [0.1] * 10
MAX_ID = 2**63 - 1  # the largest row id a database can hold (BIGINT)
_NOT_DETECTORS = ("metrics", "reference")  # window results that are not a detector's


def _reference_freq(windows: list[MonitorWindow], version: str) -> list[float]:
    """Reference class shares of ``version``, as its newest window recorded them (else uniform)."""
    for w in reversed(windows):
        ref = (w.results or {}).get("reference") if w.model_version == version else None
        freq = ref.get("class_freq") if isinstance(ref, dict) else None
        if isinstance(freq, list) and len(freq) == len(UNIFORM):
            return [float(x) for x in freq]
    return list(UNIFORM)


def _window_out(w: MonitorWindow) -> WindowOut:
    results = w.results or {}
    dets: dict[str, DetectorPoint] = {}
    for name, r in results.items():
        if name not in _NOT_DETECTORS and isinstance(r, dict) and "score" in r:
            dets[name] = DetectorPoint(
                score=float(r["score"]),
                threshold=float(r.get("threshold", 0.0)),
                p_value=None if r.get("p_value") is None else float(r["p_value"]),
                drifted=bool(r.get("drifted", False)),
            )
    m = results.get("metrics")
    m = m if isinstance(m, dict) else {}
    ood = m.get("ood_rate")
    concept = {
        k.removeprefix("concept."): v
        for k, v in m.items()
        if k.startswith("concept.") and (v is None or isinstance(v, int | float))
    }
    return WindowOut(
        window=w.window,
        end_ts=w.end_ts,
        n=w.n,
        model_version=w.model_version,
        detectors=dets,
        drifted=w.drifted,
        estimated_accuracy=w.estimated_accuracy,
        estimated_lower=w.estimated_lower,
        estimated_upper=w.estimated_upper,
        realized_accuracy=w.realized_accuracy,
        ood_rate=float(ood) if isinstance(ood, int | float) else None,
        concept=concept,
    )


def build_dashboard(state: ServiceState, n_recent: int = 2000) -> DashboardOut:
    """Assemble the dashboard from the store (shared by all replicas) and the registry."""
    m = state.model()
    recent = state.store.latest(n_recent)
    current = np.bincount(recent.labels, minlength=10)[:10] if len(recent) else np.zeros(10)
    cur = (current / max(current.sum(), 1)).tolist()
    history: list[HistoryOut] = []
    if state.registry_ops is not None:
        try:
            history = [HistoryOut(**e.to_dict()) for e in state.registry_ops.history()[-50:]]
        except Exception:  # registry unreachable: the rest of the dashboard still renders
            history = []
    ood_cut = float(m.metrics.get("ood_confidence_cut", 0.6))
    low = np.argsort(recent.confidence)[:24] if len(recent) else np.array([], dtype=int)
    suspicious = [
        SuspiciousOut(
            prediction_id=str(recent.ids[i]),
            label=int(recent.labels[i]),
            confidence=float(recent.confidence[i]),
            ood=bool(recent.confidence[i] < ood_cut),
            image_png_base64=_png_b64(recent.images[i]),
        )
        for i in low
    ]
    alerts = [
        AlertOut(
            id=a.id,
            rule=a.rule,
            severity=a.severity,
            state=a.state,
            started_at=_iso(a.started_at) or "",
            resolved_at=_iso(a.resolved_at),
            summary=a.summary,
        )
        for a in state.store.list_alerts(limit=100)
    ]
    stored = state.store.latest_windows(100)
    windows = [_window_out(w) for w in stored]
    jobs = [
        {"id": j.id, "state": j.state, "trigger": j.trigger, "version": j.version, "created_at": j.created_at,
         "finished_at": j.finished_at, "error": j.error}
        for j in JobQueue(state.store).list(limit=20)
    ]  # fmt: skip
    return DashboardOut(
        model={"version": m.version, "backend": m.backend, "metrics": {k: v for k, v in m.metrics.items()
               if isinstance(v, int | float | str)}},
        history=history,
        traffic=_traffic(recent.ts, recent.latency_ms),
        class_distribution=ClassDistOut(reference=_reference_freq(stored, m.version), current=cur),
        windows=windows,
        alerts=alerts,
        suspicious=suspicious,
        jobs=jobs,
        generated_at=time.time(),
    )  # fmt: skip


@router.get(
    "/dashboard", operation_id="get_dashboard", response_model=DashboardOut, responses=error_responses(503)
)
def dashboard(state: StateDep) -> DashboardOut:
    """Data behind the /dashboard page."""
    return build_dashboard(state)


@router.get(
    "/windows",
    operation_id="list_windows",
    response_model=list[WindowOut],
    responses=error_responses(422, 503),
)
def windows(state: StateDep, limit: int = Query(50, ge=1, le=1000)) -> list[WindowOut]:
    """Latest monitoring windows, oldest first."""
    return [_window_out(w) for w in state.store.latest_windows(limit)]


@router.get(
    "/alerts", operation_id="list_alerts", response_model=list[AlertOut], responses=error_responses(422, 503)
)
def alerts(state: StateDep, limit: int = Query(100, ge=1, le=1000)) -> list[AlertOut]:
    """Alert events, newest first."""
    return [
        AlertOut(
            id=a.id, rule=a.rule, severity=a.severity, state=a.state, started_at=_iso(a.started_at) or "",
            resolved_at=_iso(a.resolved_at), summary=a.summary,
        )
        for a in state.store.list_alerts(limit=limit)
    ]  # fmt: skip


class LoopEventOut(BaseModel):
    """One closed-loop step (a row of the controller's timeline)."""

    id: int
    ts: float
    seq: int
    kind: str
    detail: str
    version: str | None
    data: dict[str, Any]


@router.get(
    "/loop/events",
    operation_id="list_loop_events",
    response_model=list[LoopEventOut],
    responses=error_responses(422, 503),
)
def loop_events(
    state: StateDep,
    since_id: int = Query(0, ge=0, le=MAX_ID, description="Only events after this id (incremental polling)."),
    limit: int = Query(1000, ge=1, le=1000),
) -> list[LoopEventOut]:
    """Timeline of the closed loop, oldest first, as the controller recorded it."""
    return [LoopEventOut(**e.to_dict()) for e in Timeline(state.store).list(since_id=since_id, limit=limit)]


class JobOut(BaseModel):
    """A retraining job."""

    id: int
    state: str
    trigger: str
    created_at: float
    started_at: float | None
    finished_at: float | None
    version: str | None
    error: str | None
    details: dict[str, Any]
    log: str


@router.get(
    "/jobs", operation_id="list_jobs", response_model=list[JobOut], responses=error_responses(422, 503)
)
def jobs(state: StateDep, limit: int = Query(20, ge=1, le=200)) -> list[JobOut]:
    """Retraining jobs, newest first (state, timings, logs)."""
    return [
        JobOut(
            id=j.id, state=j.state, trigger=j.trigger, created_at=j.created_at, started_at=j.started_at,
            finished_at=j.finished_at, version=j.version, error=j.error, details=j.details or {}, log=j.log,
        )
        for j in JobQueue(state.store).list(limit=limit)
    ]  # fmt: skip
