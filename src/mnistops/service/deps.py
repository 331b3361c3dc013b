"""FastAPI dependencies (typed with ``Annotated``)."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from mnistops.errors import AuthError, FeatureDisabledError, StoreError
from mnistops.service.state import ServiceState

_bearer = HTTPBearer(auto_error=False)


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
    """Check the bearer token; admin routes are disabled when no token is configured.

    Returns:
        The actor name recorded in the audit trail.
    """
    token = state.settings.admin_token
    if token is None:
        raise FeatureDisabledError("admin routes are disabled: set MNISTOPS_ADMIN_TOKEN to enable them")
    if creds is None or not secrets.compare_digest(creds.credentials, token.get_secret_value()):
        raise AuthError("missing or wrong bearer token")
    return "api:admin"


AdminDep = Annotated[str, Depends(require_admin)]
