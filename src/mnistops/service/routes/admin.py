"""Admin routes (bearer token).

Without MNISTOPS_ADMIN_TOKEN the admin API does not exist in the process: the routes are left
out of the OpenAPI schema and every ``/v1/admin/*`` request answers 404 ``admin_disabled``
(like a disabled API group in Kubernetes), so a missing token is never mistaken for a wrong one.
"""

from __future__ import annotations

from typing import Annotated, NoReturn

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field

from mnistops.errors import AdminDisabledError
from mnistops.service.deps import ADMIN_DISABLED, AdminAuth, AdminDep, JsonBody, StateDep
from mnistops.service.schemas import AliasChangeOut, PromoteIn, RollbackIn, error_responses
from mnistops.service.state import RegistryOps
from mnistops.settings import Settings
from mnistops.store.jobs import JobQueue

router = APIRouter(prefix="/v1/admin", tags=["admin"])
disabled_router = APIRouter(prefix="/v1/admin", include_in_schema=False)


def router_for(settings: Settings) -> APIRouter:
    """The admin API when a token is configured, else the router that answers 404 for all of it."""
    return router if settings.admin_token is not None else disabled_router


@disabled_router.api_route(
    "/{rest:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"], response_model=None
)
async def admin_disabled(rest: str) -> NoReturn:
    """Every admin path while the admin API is off."""
    raise AdminDisabledError(ADMIN_DISABLED)


def _registry(state: StateDep) -> RegistryOps:
    if state.registry_ops is None:
        raise AdminDisabledError("admin API disabled: this service runs without a model registry")
    return state.registry_ops


@router.post(
    "/promote",
    operation_id="admin_promote",
    dependencies=[AdminAuth, JsonBody],  # authenticate before anything else is looked at
    response_model=AliasChangeOut,
    responses=error_responses(400, 401, 404, 409, 415, 422, 423, 503),
    summary="Promote a version to champion",
)
async def promote(body: PromoteIn, state: StateDep, actor: AdminDep) -> AliasChangeOut:
    """Promote a gated version to champion (``force`` skips the gate check, loudly)."""
    reg = _registry(state)
    ev = await run_in_threadpool(reg.promote, body.version, actor, body.reason, body.force)
    await run_in_threadpool(state.follower.poll_once)  # serve it now rather than at the next poll
    return AliasChangeOut(action=ev.action, from_version=ev.from_version, to_version=ev.to_version)


@router.post(
    "/rollback",
    operation_id="admin_rollback",
    dependencies=[AdminAuth, JsonBody],  # authenticate before anything else is looked at
    response_model=AliasChangeOut,
    responses=error_responses(400, 401, 404, 409, 415, 422, 423, 503),
    summary="Restore the previous champion",
)
async def rollback(body: RollbackIn, state: StateDep, actor: AdminDep) -> AliasChangeOut:
    """Restore the previous champion in one step."""
    reg = _registry(state)
    frm, to = await run_in_threadpool(reg.rollback, actor, body.reason)
    await run_in_threadpool(state.follower.poll_once)
    return AliasChangeOut(action="rollback", from_version=frm, to_version=to)


class RetrainIn(BaseModel):
    """Start a retraining job."""

    model_config = ConfigDict(extra="forbid", strict=True)

    reason: Annotated[str, Field(max_length=500)] = "requested via API"


class RetrainOut(BaseModel):
    """The queued job (an already active job is returned instead of a second one)."""

    job_id: int
    state: str


@router.post(
    "/retrain",
    operation_id="admin_retrain",
    dependencies=[AdminAuth, JsonBody],  # authenticate before anything else is looked at
    response_model=RetrainOut,
    responses=error_responses(400, 401, 409, 415, 422, 503),
    summary="Queue a retraining job",
)
async def retrain(body: RetrainIn, state: StateDep, actor: AdminDep) -> RetrainOut:
    """Queue a retraining job for the workers (one at a time: an active job is returned instead)."""
    job = await run_in_threadpool(JobQueue(state.store).submit, f"api:{actor}", {"reason": body.reason})
    return RetrainOut(job_id=job.id, state=job.state)
