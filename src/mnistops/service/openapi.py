"""The served OpenAPI document states this process's configured limits, not only the defaults.

Route declarations are static; a few promises depend on settings: the batch limit
(``MNISTOPS_MAX_BATCH``), the upload limit (``MNISTOPS_MAX_UPLOAD_BYTES``) and whether the admin
API exists (``MNISTOPS_ADMIN_TOKEN``). ``install_openapi`` patches them into the generated
document once, so a client (or schemathesis) reading ``/openapi.json`` gets what this process
enforces.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from mnistops.service.schemas import MAX_BATCH_CAP
from mnistops.settings import Settings

ADMIN_NOTE = (
    "\n\nThe admin API (`/v1/admin/*`) exists only when MNISTOPS_ADMIN_TOKEN is set; it takes "
    "`Authorization: Bearer <token>` and answers 401 with `WWW-Authenticate` without a valid one. "
    "**In this process it is disabled**: every `/v1/admin/*` request answers 404 `admin_disabled`."
)


def _patch(schema: dict[str, Any], settings: Settings) -> None:
    comps = schema.get("components", {}).get("schemas", {})
    items = comps.get("BatchIn", {}).get("properties", {}).get("items")
    if items is not None:
        items["maxItems"] = min(settings.max_batch, MAX_BATCH_CAP)
    limit = f"{settings.max_upload_bytes:,} bytes"
    body = schema.get("paths", {}).get("/v1/predict", {}).get("post", {}).get("requestBody", {})
    if "description" in body:
        body["description"] = body["description"].replace("(default 5,000,000 bytes;", f"(here {limit};")
    if settings.admin_token is None:
        info = schema.setdefault("info", {})
        info["description"] = info.get("description", "") + ADMIN_NOTE


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` return the document patched with ``settings``' limits (built once)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            _patch(schema, settings)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented override point
