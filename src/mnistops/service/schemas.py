"""Request and response models (schema families per resource).

Request models say exactly what the validator accepts, so a body that is valid against the
OpenAPI schema is accepted and every other body is a 422:

* objects are closed (``additionalProperties: false``) and strict (no ``"7"`` for 7, no
  ``1`` for ``true``);
* integers follow JSON Schema, where ``7.0`` *is* the integer 7 (JSON has one number type):
  integral floats are accepted, ``7.5`` is not;
* an image is ``oneOf`` a pixel grid or a base64 file (exactly one source, no ``null``
  placeholders).

What a schema cannot say (a base64 string that decodes to a real PNG with ink on it) is the
custom format ``image-base64`` and the 422 ``invalid_image`` answer.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    RootModel,
    Tag,
    WithJsonSchema,
)

IMAGE_FORMATS = "PNG, JPEG, BMP or WEBP"
MAX_BATCH_CAP = 4096  # hard ceiling; the served schema states min(MNISTOPS_MAX_BATCH, this)
_CLOSED = ConfigDict(extra="forbid", strict=True)


def _integral(value: object) -> object:
    """JSON Schema integers include integral floats (``7.0``); hand them to the strict int check."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


# A JSON-Schema integer label 0-9: ints and integral floats; never bools, strings or 7.5.
Label = Annotated[int, Field(strict=True, ge=0, le=9), BeforeValidator(_integral)]


# A pixel is validated as a strict float that is a multiple of 1: the same set as JSON Schema's
# integer, checked in pydantic-core (a Python validator per pixel would cost 784 calls/request).
Pixel = Annotated[
    float,
    Field(strict=True, ge=0, le=255, multiple_of=1, allow_inf_nan=False),
    WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 255}),
]
Row = Annotated[list[Pixel], Field(min_length=28, max_length=28)]
ClientTag = Annotated[str, Field(max_length=64, description="Optional client tag (kept in the log).")]


# --- predictions ---------------------------------------------------------------------------
class PixelsIn(BaseModel):
    """A 28x28 grid of integer intensities 0-255, ink bright on a dark background."""

    model_config = ConfigDict(
        extra="forbid", strict=True, json_schema_extra={"examples": [{"pixels": [[0] * 28] * 28}]}
    )

    pixels: Annotated[list[Row], Field(min_length=28, max_length=28)]
    preprocess: bool = Field(
        False,
        description="Apply the MNIST crop/fit/centre pipeline first (a blank grid is then a 422).",
    )
    client: ClientTag | None = None


class Base64In(BaseModel):
    """A whole image file, base64-encoded (optionally as a ``data:image/...;base64,`` URL)."""

    model_config = _CLOSED

    image_base64: Annotated[
        str,
        Field(min_length=1),
        WithJsonSchema(
            {
                "type": "string",
                "format": "image-base64",
                "description": f"Base64 of a {IMAGE_FORMATS} file with a digit on it, each side 8-10000 px "
                "(decoded size at most MNISTOPS_MAX_UPLOAD_BYTES, default 5,000,000 bytes, else 413). "
                "Preprocessed the MNIST way; undecodable or blank images are a 422 `invalid_image`.",
            }
        ),
    ]
    client: ClientTag | None = None


def _image_source(value: Any) -> str | None:
    """Tag of the one source an image body names (None: neither or both → validation error)."""
    if isinstance(value, dict):
        pixels, b64 = "pixels" in value, "image_base64" in value
        return "pixels" if pixels and not b64 else "image_base64" if b64 and not pixels else None
    if isinstance(value, PixelsIn | Base64In):
        return "pixels" if isinstance(value, PixelsIn) else "image_base64"
    return None


class ImageIn(
    RootModel[
        Annotated[
            Annotated[PixelsIn, Tag("pixels")] | Annotated[Base64In, Tag("image_base64")],
            Discriminator(
                _image_source,
                custom_error_type="image_source",
                custom_error_message="give exactly one of `pixels` or `image_base64`",
            ),
        ]
    ]
):
    """One image: exactly one of a pixel grid or a base64 file."""


class BatchIn(BaseModel):
    """1 to ``MNISTOPS_MAX_BATCH`` images (256 by default; the served schema states the limit)."""

    model_config = _CLOSED

    items: Annotated[list[ImageIn], Field(min_length=1, max_length=MAX_BATCH_CAP)]


class PredictionOut(BaseModel):
    """One prediction; `model_version` names the model that produced it."""

    prediction_id: str = Field(description="Id of the logged prediction (send it back with feedback).")
    label: int
    probabilities: list[float]
    confidence: float
    model_version: str
    latency_ms: float


class BatchOut(BaseModel):
    """Predictions in input order."""

    predictions: list[PredictionOut]


# --- feedback ------------------------------------------------------------------------------
class FeedbackIn(BaseModel):
    """The ground truth for an earlier prediction (delayed labels)."""

    model_config = _CLOSED

    prediction_id: Annotated[str, Field(min_length=1, max_length=64)]
    true_label: Label


class FeedbackOut(BaseModel):
    """`recorded` for a new or changed label, `unchanged` when the same label was sent again."""

    prediction_id: str
    true_label: int
    status: Literal["recorded", "unchanged"]


# --- model / health ------------------------------------------------------------------------
class ModelOut(BaseModel):
    """The model this process serves."""

    version: str
    backend: str
    aliases: list[str]
    metrics: dict[str, Any]
    gate_passed: bool | None
    loaded_at: float
    challenger_version: str | None = None


class HealthOut(BaseModel):
    """Liveness/readiness answer."""

    status: Literal["ok", "degraded", "unavailable"]
    checks: dict[str, Any] = Field(default_factory=dict)


# --- errors --------------------------------------------------------------------------------
class ValidationIssue(BaseModel):
    """One field error of a 422 ``validation_error``."""

    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(BaseModel):
    """Every 4xx/5xx body: a stable machine code and a human-readable detail."""

    error: str = Field(description="Stable code, e.g. `validation_error`, `not_found`, `unauthorized`.")
    detail: str | list[ValidationIssue]


_ERROR_TEXT = {
    400: "Malformed body: not UTF-8 JSON, or a broken multipart body.",
    401: "Missing or wrong bearer token (see `WWW-Authenticate`, RFC 6750).",
    404: "The referenced object does not exist.",
    409: "Conflicts with the current state (promotion refused, nothing to roll back, job error).",
    413: "Body or image larger than MNISTOPS_MAX_UPLOAD_BYTES (default 5,000,000 bytes).",
    415: "Content-Type not supported by this operation.",
    422: "Valid JSON/form, but not what the schema accepts, or an image that cannot be used.",
    423: "Another promotion/rollback holds the registry lock for too long; retry.",
    503: "The prediction store or the model is unavailable, or the service is starting or stopping.",
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {
        "description": 'Always `Bearer realm="mnistops"`; adds `error="invalid_token"` for a wrong token.',
        "required": True,
        "schema": {"type": "string"},
    }
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the error statuses an operation can answer."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorOut, "description": _ERROR_TEXT[code]}
        if code == 401:
            entry["headers"] = _WWW_AUTHENTICATE
        out[code] = entry
    return out


# --- admin ---------------------------------------------------------------------------------
class PromoteIn(BaseModel):
    """Promote a registered version to champion."""

    model_config = _CLOSED

    version: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[0-9]+$")]
    reason: Annotated[str, Field(max_length=500)] = "promoted via API"
    force: bool = False


class RollbackIn(BaseModel):
    """Restore the previous champion."""

    model_config = _CLOSED

    reason: Annotated[str, Field(max_length=500)] = "rollback via API"


class AliasChangeOut(BaseModel):
    """Result of a promotion or rollback."""

    action: str
    from_version: str | None
    to_version: str
