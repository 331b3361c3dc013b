"""HTTP error mapping: every error is a JSON ``{error, detail}`` body with the status and the
headers HTTP requires.

* 401 always carries ``WWW-Authenticate`` (RFC 9110 §15.5.2) with the RFC 6750 bearer challenge;
  a wrong token adds ``error="invalid_token"``, a missing one adds no error code (RFC 6750 §3.1).
* 405 carries ``Allow`` listing every method the path supports (RFC 9110 §15.5.6), across all
  routes that share the path (Starlette alone lists only the first route's methods).
* ``OPTIONS`` on a known path answers 204 with ``Allow`` (RFC 9110 §9.3.7) instead of a 405.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount

from mnistops.errors import AuthError, InvalidTokenError, MnistopsError

log = logging.getLogger(__name__)

REALM = "mnistops"
_INVALID = "the bearer token is not valid"
# Methods probed to build `Allow`; HEAD is left out: FastAPI routes GET without HEAD.
_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def bearer_challenge(exc: AuthError) -> str:
    """The ``WWW-Authenticate`` value for an authentication failure."""
    if isinstance(exc, InvalidTokenError):
        return f'Bearer realm="{REALM}", error="invalid_token", error_description="{_INVALID}"'
    return f'Bearer realm="{REALM}"'


def allowed_methods(app: FastAPI, scope: dict[str, Any]) -> list[str]:
    """Methods some route of ``app`` serves for ``scope``'s path (empty for an unknown path)."""
    allowed: list[str] = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        for route in app.router.routes:
            match, _ = route.matches(probe)
            if match is not Match.FULL:
                continue
            if isinstance(route, Mount):  # static files: they raise their own 405 with Allow
                continue
            allowed.append(method)
            break
    if allowed:
        allowed.append("OPTIONS")
    return allowed


def _error(status: int, code: str, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _method_not_allowed(request: Request, exc: StarletteHTTPException) -> Response:
    methods = allowed_methods(request.app, dict(request.scope))
    allow = ", ".join(methods) if methods else (exc.headers or {}).get("Allow", "")
    if request.method == "OPTIONS" and methods:
        return Response(status_code=204, headers={"Allow": allow})
    detail = f"{request.method} is not supported here; allowed: {allow}"
    return _error(405, "method_not_allowed", detail, {"Allow": allow})


def install_error_handlers(app: FastAPI) -> None:
    """Map every error to a JSON ``{error, detail}`` body with the right status and headers."""

    @app.exception_handler(MnistopsError)
    async def _ours(_: Request, exc: MnistopsError) -> JSONResponse:
        headers = {"WWW-Authenticate": bearer_challenge(exc)} if isinstance(exc, AuthError) else None
        return _error(exc.http_status, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errs = [
            {"loc": list(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()[:20]
        ]
        return _error(422, "validation_error", errs)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            return _method_not_allowed(request, exc)
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        return _error(exc.status_code, code, exc.detail, exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:  # pragma: no cover - a bug if reached
        log.exception("unhandled error")
        return _error(500, "internal_error", "unexpected server error (logged)")
