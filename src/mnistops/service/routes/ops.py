"""Model info, health, readiness, Prometheus exposition and the two HTML pages."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mnistops.service.deps import StateDep
from mnistops.service.schemas import HealthOut, ModelOut, error_responses
from mnistops.service.state import ServiceState

router = APIRouter()


def static_dir() -> Path:
    """Folder of the packaged static files."""
    return Path(str(resources.files("mnistops.service") / "static"))


@router.get(
    "/v1/model",
    operation_id="get_model",
    response_model=ModelOut,
    responses=error_responses(503),
    tags=["model"],
)
def model_info(state: StateDep) -> ModelOut:
    """The version this process serves, its metrics and gate result."""
    m = state.model()
    aliases: list[str] = []
    gate: bool | None = m.metrics.get("gate_passed")
    if state.registry_ops is not None:
        try:
            info = state.registry_ops.get_version(m.version)
            aliases, gate = list(info.aliases), info.gate_passed
        except Exception:  # registry down: still answer with what the process knows
            pass
    ch = state.shadow.challenger() if state.shadow is not None else None
    return ModelOut(
        version=m.version,
        backend=m.backend,
        aliases=aliases,
        metrics={k: v for k, v in m.metrics.items() if isinstance(v, int | float | str | bool)},
        gate_passed=gate,
        loaded_at=m.loaded_at,
        challenger_version=ch.version if ch is not None else None,
    )


@router.get("/healthz", operation_id="healthz", response_model=HealthOut, tags=["ops"])
def healthz() -> HealthOut:
    """Liveness: the process answers."""
    return HealthOut(status="ok")


_NOT_READY: dict[int | str, dict[str, Any]] = {
    503: {"model": HealthOut, "description": "Not ready; `checks` says why."}
}


@router.get("/readyz", operation_id="readyz", response_model=HealthOut, responses=_NOT_READY, tags=["ops"])
async def readyz(request: Request, response: Response) -> HealthOut:
    """Readiness: a model is loaded and the prediction store is writable (else 503 with the reasons)."""
    state: ServiceState | None = getattr(request.app.state, "service", None)
    if state is None:  # starting or stopping: a probe gets the same 503 shape as any other not-ready
        response.status_code = 503
        return HealthOut(status="unavailable", checks={"service_running": False})
    loaded = state.follower.ready
    writable = await run_in_threadpool(state.store.ping)
    stats = state.logger_stats()
    checks = {"model_loaded": loaded, "store_writable": writable, **stats}
    if loaded and writable:
        return HealthOut(status="ok", checks=checks)
    # not ready either way; "degraded" tells operators predictions still work and spill to disk
    response.status_code = 503
    return HealthOut(status="unavailable" if not loaded else "degraded", checks=checks)


@router.get("/metrics", response_class=Response, include_in_schema=False)
def metrics(state: StateDep) -> Response:
    """Prometheus text exposition."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/", response_class=FileResponse, include_in_schema=False)
def index() -> FileResponse:
    """Draw-a-digit page."""
    return FileResponse(static_dir() / "index.html")


@router.get("/dashboard", response_class=FileResponse, include_in_schema=False)
def dashboard_page() -> FileResponse:
    """Monitoring dashboard page."""
    return FileResponse(static_dir() / "dashboard.html")
