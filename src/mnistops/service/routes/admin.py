"""Admin routes (bearer token; disabled without MNISTOPS_ADMIN_TOKEN)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from mnistops.errors import FeatureDisabledError
from mnistops.service.deps import AdminDep, StateDep
from mnistops.service.routes.predict import ERRORS
from mnistops.service.schemas import AliasChangeOut, PromoteIn, RollbackIn

router = APIRouter(prefix="/v1/admin", tags=["admin"])


def _registry(state: StateDep) -> object:
    if state.registry_ops is None:
        raise FeatureDisabledError("this service runs without a model registry")
    return state.registry_ops


@router.post("/promote", response_model=AliasChangeOut, responses=ERRORS)
async def promote(body: PromoteIn, state: StateDep, actor: AdminDep) -> AliasChangeOut:
    """Promote a gated version to champion (``force`` skips the gate check, loudly)."""
    reg = _registry(state)
    ev = await run_in_threadpool(reg.promote, body.version, actor, body.reason, body.force)  # type: ignore[attr-defined]
    await run_in_threadpool(state.follower.poll_once)  # serve it now rather than at the next poll
    return AliasChangeOut(action=ev.action, from_version=ev.from_version, to_version=ev.to_version)


@router.post("/rollback", response_model=AliasChangeOut, responses=ERRORS)
async def rollback(body: RollbackIn, state: StateDep, actor: AdminDep) -> AliasChangeOut:
    """Restore the previous champion in one step."""
    reg = _registry(state)
    frm, to = await run_in_threadpool(reg.rollback, actor, body.reason)  # type: ignore[attr-defined]
    await run_in_threadpool(state.follower.poll_once)
    return AliasChangeOut(action="rollback", from_version=frm, to_version=to)
