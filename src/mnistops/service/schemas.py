"""Request and response models (schema families per resource)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Row = Annotated[list[Annotated[int, Field(ge=0, le=255, strict=True)]], Field(min_length=28, max_length=28)]


# --- predictions ---------------------------------------------------------------------------
class ImageIn(BaseModel):
    """One image: 28x28 integer pixels 0-255 (ink bright on dark) or a base64 PNG/JPEG/BMP."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"pixels": [[0] * 28] * 28}]})

    pixels: Annotated[list[Row], Field(min_length=28, max_length=28)] | None = None
    image_base64: Annotated[str, Field(min_length=1, max_length=7_000_000)] | None = None
    preprocess: bool = Field(False, description="Apply the MNIST crop/scale/centre pipeline to `pixels`.")
    client: Annotated[str, Field(max_length=64)] | None = Field(None, description="Optional client tag.")

    @model_validator(mode="after")
    def _one_source(self) -> ImageIn:
        if (self.pixels is None) == (self.image_base64 is None):
            raise ValueError("give exactly one of `pixels` or `image_base64`")
        return self


class BatchIn(BaseModel):
    """Up to `max_batch` images (256 by default)."""

    model_config = ConfigDict(extra="forbid")

    items: Annotated[list[ImageIn], Field(min_length=1, max_length=256)]


class PredictionOut(BaseModel):
    """One prediction; `model_version` names the model that produced it."""

    prediction_id: str
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

    model_config = ConfigDict(extra="forbid")

    prediction_id: Annotated[str, Field(min_length=1, max_length=64)]
    true_label: Annotated[int, Field(ge=0, le=9, strict=True)]


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


class ErrorOut(BaseModel):
    """Every 4xx/5xx body."""

    error: str
    detail: Any


# --- admin ---------------------------------------------------------------------------------
class PromoteIn(BaseModel):
    """Promote a registered version to champion."""

    model_config = ConfigDict(extra="forbid")

    version: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[0-9]+$")]
    reason: Annotated[str, Field(max_length=500)] = "promoted via API"
    force: bool = False


class RollbackIn(BaseModel):
    """Restore the previous champion."""

    model_config = ConfigDict(extra="forbid")

    reason: Annotated[str, Field(max_length=500)] = "rollback via API"


class AliasChangeOut(BaseModel):
    """Result of a promotion or rollback."""

    action: str
    from_version: str | None
    to_version: str
