"""FastAPI dependencies (typed with ``Annotated``)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mnistops.errors import (
    AdminDisabledError,
    AuthError,
    InvalidTokenError,
    StoreError,
    UnsupportedMediaTypeError,
)
from mnistops.service.state import ServiceState

ADMIN_DISABLED = "admin API disabled: set MNISTOPS_ADMIN_TOKEN to enable /v1/admin/*"
_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="adminToken",
    description="The value of MNISTOPS_ADMIN_TOKEN (admin routes exist only when it is set).",
)


def get_state(request: Request) -> ServiceState:
    """The process's :class:`ServiceState` (set up by the lifespan)."""
    state: ServiceState | None = getattr(request.app.state, "service", None)
    if state is None:  # only during start-up/shutdown
        raise StoreError("service is starting or stopping")
    return state


StateDep = Annotated[ServiceState, Depends(get_state)]


def require_admin(
    state: StateDep, creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> str:
    """Check the bearer token (compared in constant time).

    Returns:
        The actor name recorded in the audit trail.

    Raises:
        AuthError: no ``Authorization: Bearer`` credentials (401).
        InvalidTokenError: a token that is not the configured one (401, ``invalid_token``).
        AdminDisabledError: no token configured (the admin router is not mounted then; a guard).
    """
    token = state.settings.admin_token
    if token is None:
        raise AdminDisabledError(ADMIN_DISABLED)
    if creds is None:
        raise AuthError("this operation needs an `Authorization: Bearer <MNISTOPS_ADMIN_TOKEN>` header")
    if not secrets.compare_digest(creds.credentials.encode(), token.get_secret_value().encode()):
        raise InvalidTokenError("the bearer token is not valid")
    return "api:admin"


AdminDep = Annotated[str, Depends(require_admin)]


def media_type(request: Request) -> str:
    """The request's media type, lower-case, without parameters ("" when absent)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def require_json(request: Request) -> None:
    """415 for a body route called with anything but JSON (async: no threadpool hop per request)."""
    ctype = media_type(request)
    if ctype != "application/json" and not (ctype.startswith("application/") and ctype.endswith("+json")):
        got = ctype or "no Content-Type"
        raise UnsupportedMediaTypeError(f"{got}: this operation takes application/json")


JsonBody = Depends(require_json)
AdminAuth = Depends(require_admin)
