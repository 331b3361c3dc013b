"""Prediction and feedback routes."""

from __future__ import annotations

import time

import numpy as np
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from mnistops.errors import (
    BatchSizeError,
    InputError,
    PayloadTooLargeError,
    UnsupportedMediaTypeError,
)
from mnistops.service import preprocess
from mnistops.service.deps import JsonBody, StateDep, get_state, media_type
from mnistops.service.schemas import (
    IMAGE_FORMATS,
    Base64In,
    BatchIn,
    BatchOut,
    FeedbackIn,
    FeedbackOut,
    ImageIn,
    PixelsIn,
    PredictionOut,
    error_responses,
)
from mnistops.service.state import ServiceState
from mnistops.store.records import PredictionRecord

router = APIRouter(prefix="/v1", tags=["predictions"])

_IMAGE_TYPES = "image/png, image/jpeg, image/bmp, image/webp"
_FORM_OVERHEAD = 64 * 1024  # multipart boundaries and part headers around the file
_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "description": "JSON (`pixels` or `image_base64`, exactly one) or a multipart upload with one "
        f"`file` part: a {IMAGE_FORMATS} file of at most MNISTOPS_MAX_UPLOAD_BYTES (default 5,000,000 "
        "bytes; larger bodies are a 413 before they are read), each side 8-10000 px and at most "
        "4096x4096 pixels. Uploads are preprocessed the MNIST way (crop, fit, centre).",
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/ImageIn"}},
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "additionalProperties": False,
                    "properties": {"file": {"type": "string", "format": "binary"}},
                },
                "encoding": {"file": {"contentType": _IMAGE_TYPES}},
            },
        },
    }
}


def _feedback_link(pointer: str) -> dict[str, object]:
    """OpenAPI link: the returned id is what POST /v1/feedback takes (and accepts at once)."""
    return {
        "operationId": "submit_feedback",
        "requestBody": {"prediction_id": f"$response.body#{pointer}"},
        "description": "Report the true label of this prediction.",
    }


def _image_from_json(item: PixelsIn | Base64In, max_bytes: int) -> np.ndarray:
    if isinstance(item, PixelsIn):
        if not item.preprocess:
            # PixelsIn already checked 28 rows x 28 integral numbers in 0..255: skip the re-validation
            # of from_pixels (a per-value Python loop, ~15% of a request's CPU)
            return np.array(item.pixels, dtype=np.uint8)
        return preprocess.from_pixels(item.pixels, preprocess=True)
    return preprocess.from_base64(item.image_base64, max_bytes)


def _classify(
    state: ServiceState, images: np.ndarray, clients: list[str | None], t0: float
) -> tuple[list[PredictionRecord], list[PredictionOut]]:
    """Run the model on uint8 [N,28,28]: the log rows and the answers (send them only once logged)."""
    model, served_by = state.pick_model()
    probs, _ = model.classifier.predict(images)
    latency_ms = (time.perf_counter() - t0) * 1000.0
    recs: list[PredictionRecord] = []
    out: list[PredictionOut] = []
    for i in range(len(images)):
        rec = PredictionRecord.create(
            images[i],
            probs[i],
            model.version,
            latency_ms,
            client=clients[i],
            served_by=served_by,  # type: ignore[arg-type]
        )
        recs.append(rec)
        out.append(
            PredictionOut(
                prediction_id=rec.id,
                label=rec.label,
                probabilities=[float(p) for p in probs[i]],
                confidence=rec.confidence,
                model_version=model.version,
                latency_ms=round(latency_ms, 3),
            )
        )
    return recs, out


def _logged(state: ServiceState, recs: list[PredictionRecord], images: np.ndarray) -> None:
    """After the rows are journaled: metrics, and the champion's inputs offered to the shadow."""
    m = state.metrics
    for rec, image in zip(recs, images, strict=True):
        if state.shadow is not None and rec.served_by == "champion":
            state.shadow.offer(rec.id, image, rec.label)
        m.predictions.labels(label=str(rec.label), model_version=rec.model_version).inc()
        m.confidence.observe(rec.confidence)


def _check_declared_length(request: Request, limit: int) -> None:
    """413 before reading a body whose Content-Length already exceeds ``limit``."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise PayloadTooLargeError(f"body of {declared} bytes exceeds the limit of {limit}")


async def _read_upload(request: Request, max_bytes: int) -> bytes:
    _check_declared_length(request, max_bytes + _FORM_OVERHEAD)
    form = await request.form(max_files=2, max_fields=4, max_part_size=max_bytes + 1)
    file = form.get("file")
    if file is None or isinstance(file, str) or set(form.keys()) != {"file"} or len(form.getlist("file")) > 1:
        got = [k for k, _ in form.multi_items()]
        raise InputError(f"multipart body takes exactly one `file` part with the image (got {got})")
    data = await file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"upload exceeds {max_bytes} bytes")
    return data


@router.post(
    "/predict",
    operation_id="predict",
    response_model=PredictionOut,
    responses={
        200: {"links": {"feedback": _feedback_link("/prediction_id")}},
        **error_responses(400, 413, 415, 422, 503),
    },
    openapi_extra=_PREDICT_BODY,
    summary="Classify one image (JSON pixels, base64 image, or a multipart upload)",
)
async def predict(request: Request) -> PredictionOut:
    """Classify one digit image. Uploaded photos/scans are preprocessed the MNIST way."""
    t0 = time.perf_counter()
    # get_state called directly, not via StateDep: FastAPI runs a sync dependency in the
    # threadpool, a thread hop per request that cost ~15% of the CPU of this hot route
    state = get_state(request)
    max_bytes = state.settings.max_upload_bytes
    ctype = media_type(request)
    if ctype == "multipart/form-data":
        data = await _read_upload(request, max_bytes)
        image = await run_in_threadpool(preprocess.decode_image, data, max_bytes)
        client = request.headers.get("x-client")
    elif ctype in ("application/json", ""):
        limit = 4 * max_bytes // 3 + 4096  # base64 inflates by 4/3
        _check_declared_length(request, limit)
        body = await request.body()
        if len(body) > limit:
            raise PayloadTooLargeError(f"body exceeds the {max_bytes}-byte image limit")
        try:
            item = ImageIn.model_validate_json(body).root
        except ValidationError as exc:
            raise InputError(_validation_detail(exc)) from None
        image = _image_from_json(item, max_bytes)
        client = item.client
    else:
        raise UnsupportedMediaTypeError(f"{ctype!r}: send application/json or multipart/form-data")
    images = image[None]
    recs, out = _classify(state, images, [client], t0)
    # the answer leaves only once its row is journaled (durable for MNISTOPS_DURABILITY); the
    # requests of one event-loop iteration share one journal write
    await state.logger.log(recs)
    _logged(state, recs, images)
    return out[0]


def _validation_detail(exc: ValidationError) -> str:
    errs = exc.errors(include_url=False, include_input=False)[:3]
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in errs)


@router.post(
    "/predict/batch",
    operation_id="predict_batch",
    dependencies=[JsonBody],
    response_model=BatchOut,
    responses={
        200: {"links": {"feedback": _feedback_link("/predictions/0/prediction_id")}},
        **error_responses(400, 415, 422, 503),
    },
    summary="Classify up to MNISTOPS_MAX_BATCH images",
)
def predict_batch(batch: BatchIn, state: StateDep) -> BatchOut:
    """Classify a batch (JSON items); predictions come back in input order."""
    t0 = time.perf_counter()
    if len(batch.items) > state.settings.max_batch:
        raise BatchSizeError(f"batch of {len(batch.items)} exceeds max_batch={state.settings.max_batch}")
    items = [it.root for it in batch.items]
    images = np.stack([_image_from_json(it, state.settings.max_upload_bytes) for it in items])
    recs, out = _classify(state, images, [it.client for it in items], t0)
    state.logger.log_blocking(recs)  # a worker thread: block until journaled, then answer
    _logged(state, recs, images)
    return BatchOut(predictions=out)


@router.post(
    "/feedback",
    operation_id="submit_feedback",
    dependencies=[JsonBody],
    response_model=FeedbackOut,
    responses=error_responses(400, 404, 415, 422, 503),
    summary="Report the true label",
)
def feedback(body: FeedbackIn, state: StateDep) -> FeedbackOut:
    """Attach the delayed ground truth to a logged prediction (idempotent; unknown id → 404).

    Answered once the feedback is journaled; the writer applies it to the store after the
    prediction's own row (which may still be only in this replica's journal).
    """
    status = state.logger.add_feedback(body.prediction_id, body.true_label)
    state.metrics.feedback.labels(status=status).inc()
    return FeedbackOut(prediction_id=body.prediction_id, true_label=body.true_label, status=status)
