"""HTTP API behaviour with the session's trained model (in-process, TestClient)."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from mnistops.service.app import create_app
from mnistops.settings import Settings


@pytest.fixture(scope="module")
def client(trained_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    home = tmp_path_factory.mktemp("api")
    s = Settings(home=home, admin_token="s3cret")  # type: ignore[arg-type]
    app = create_app(s, resolver=lambda: ("7", trained_model_dir))
    with TestClient(app) as c:
        yield c


def png_bytes(img: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()


def test_predict_pixels_matches_label(
    client: TestClient, mnist_test_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    x, y = mnist_test_data
    r = client.post("/v1/predict", json={"pixels": x[0].tolist()})
    assert r.status_code == 200
    body = r.json()
    assert body["label"] == int(y[0]) and body["model_version"] == "7"
    assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-4
    assert body["confidence"] == max(body["probabilities"])


def test_upload_photo_style_image(
    client: TestClient, mnist_test_data: tuple[torch.Tensor, torch.Tensor]
) -> None:
    # a "scan": dark ink on a light, larger, colour canvas, off-centre
    x, y = mnist_test_data
    digit = 255 - np.kron(x[1].numpy(), np.ones((4, 4), dtype=np.uint8))  # 112x112, ink dark
    canvas = np.full((200, 160), 255, np.uint8)
    canvas[20:132, 30:142] = digit
    rgb = np.stack([canvas] * 3, -1)
    r = client.post("/v1/predict", files={"file": ("scan.png", png_bytes(rgb), "image/png")})
    assert r.status_code == 200, r.text
    assert r.json()["label"] == int(y[1])


def test_base64_and_batch(client: TestClient, mnist_test_data: tuple[torch.Tensor, torch.Tensor]) -> None:
    x, y = mnist_test_data
    b64 = base64.b64encode(png_bytes(x[2].numpy())).decode()
    r = client.post("/v1/predict/batch", json={"items": [{"image_base64": b64}, {"pixels": x[3].tolist()}]})
    assert r.status_code == 200
    labels = [p["label"] for p in r.json()["predictions"]]
    assert labels == [int(y[2]), int(y[3])]


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"json": {"pixels": [[0] * 28] * 27}}, 422),
        ({"json": {"pixels": [[256] + [0] * 27] * 28}}, 422),
        ({"json": {"pixels": [[-1] + [0] * 27] * 28}}, 422),
        ({"json": {"pixels": [[0.5] + [0] * 27] * 28}}, 422),
        ({"content": b'{"pixels": [[NaN]]}', "headers": {"content-type": "application/json"}}, 422),
        ({"json": {}}, 422),
        ({"json": {"image_base64": "!!!"}}, 422),
        ({"files": {"file": ("a.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "image/png")}}, 422),
        ({"files": {"file": ("a.txt", b"hello", "text/plain")}}, 422),
        ({"files": {"file": ("a.png", b"x", "image/png")}, "data": {"other": "1"}}, 422),  # extra part
        ({"content": b"xx", "headers": {"content-type": "text/plain"}}, 415),
        ({"json": {"pixels": [[0] * 28] * 28, "image_base64": "aGk="}}, 422),  # two sources
        ({"json": {"pixels": None, "image_base64": "aGk="}}, 422),  # no null placeholders
        ({"json": {"pixels": [[0] * 28] * 28, "preprocess": "yes"}}, 422),  # strict booleans
        ({"json": {"image_base64": "aGk=", "preprocess": True}}, 422),  # files are always preprocessed
        ({"json": {"pixels": [[0] * 28] * 28, "preprocess": True}}, 422),  # nothing to crop: no ink
    ],
)
def test_bad_input_is_4xx_json(client: TestClient, kwargs: dict[str, object], status: int) -> None:
    r = client.post("/v1/predict", **kwargs)  # type: ignore[arg-type]
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error", "detail"}


def test_oversize_upload_413(client: TestClient) -> None:
    r = client.post("/v1/predict", files={"file": ("big.png", b"\x00" * 5_000_100, "image/png")})
    assert r.status_code == 413 and r.json()["error"] == "payload_too_large"


def test_batch_limits(client: TestClient) -> None:
    assert client.post("/v1/predict/batch", json={"items": []}).status_code == 422
    item = {"pixels": [[0] * 28] * 28}
    assert client.post("/v1/predict/batch", json={"items": [item] * 257}).status_code == 422


def test_feedback_idempotent_and_404(client: TestClient) -> None:
    pid = client.post("/v1/predict", json={"pixels": [[0] * 28] * 28}).json()["prediction_id"]
    first = client.post("/v1/feedback", json={"prediction_id": pid, "true_label": 4})
    again = client.post("/v1/feedback", json={"prediction_id": pid, "true_label": 4})
    assert first.json()["status"] == "recorded" and again.json()["status"] == "unchanged"
    missing = client.post("/v1/feedback", json={"prediction_id": "no-such-id", "true_label": 4})
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"


def test_every_prediction_is_logged(client: TestClient) -> None:
    ids = [
        client.post("/v1/predict", json={"pixels": [[0] * 28] * 28}).json()["prediction_id"] for _ in range(5)
    ]
    state = client.app.state.service  # type: ignore[attr-defined]
    assert state.logger.flush(10)
    for pid in ids:
        assert state.store.get(pid).id == pid


def test_model_health_ready_metrics(client: TestClient) -> None:
    assert client.get("/v1/model").json()["version"] == "7"
    assert client.get("/healthz").json()["status"] == "ok"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["model_loaded"] is True
    text = client.get("/metrics").text
    for name in (
        "mnistops_http_requests_total",
        "mnistops_http_request_duration_seconds_bucket",
        "mnistops_predictions_total",
        "mnistops_prediction_confidence_bucket",
        'mnistops_model_info{backend="onnx",version="7"} 1.0',
        "mnistops_prediction_log_queue_depth",
        "mnistops_prediction_log_write_errors_total",
    ):
        assert name in text, name


def test_integral_floats_are_json_integers(client: TestClient) -> None:
    # JSON Schema's `integer` includes 7.0: the schema says integer, so 7.0 is accepted as 7
    r = client.post("/v1/predict", json={"pixels": [[0.0] * 28] * 28, "client": "floats"})
    assert r.status_code == 200, r.text
    pid = r.json()["prediction_id"]
    fb = client.post("/v1/feedback", json={"prediction_id": pid, "true_label": 7.0})
    assert fb.status_code == 200 and fb.json()["true_label"] == 7
    for bad in (7.5, "7", True, 10):
        r = client.post("/v1/feedback", json={"prediction_id": pid, "true_label": bad})
        assert r.status_code == 422, bad


def test_json_routes_refuse_other_media_types(client: TestClient) -> None:
    body = b'{"prediction_id": "x", "true_label": 1}'
    r = client.post("/v1/feedback", content=body, headers={"content-type": "text/plain"})
    assert r.status_code == 415 and r.json()["error"] == "unsupported_media_type"
    r = client.post(
        "/v1/predict/batch", content=b"items=1", headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert r.status_code == 415


def test_admin_requires_token(client: TestClient) -> None:
    # RFC 6750: a bare challenge without credentials, error="invalid_token" for a wrong one
    missing = client.post("/v1/admin/rollback", json={})
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == 'Bearer realm="mnistops"'
    bad = client.post("/v1/admin/rollback", json={}, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and bad.json()["error"] == "unauthorized"
    assert 'error="invalid_token"' in bad.headers["www-authenticate"]
    basic = client.post("/v1/admin/rollback", json={}, headers={"Authorization": "Basic czNjcmV0"})
    assert basic.status_code == 401 and "error=" not in basic.headers["www-authenticate"]
    # authentication comes first: an unauthenticated bad body is still a 401, not a 415/422
    assert (
        client.post("/v1/admin/promote", content=b"x", headers={"content-type": "text/plain"}).status_code
        == 401
    )
    # right token, but this app was built without a registry: the admin API is not there
    ok = client.post("/v1/admin/rollback", json={}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 404 and ok.json()["error"] == "admin_disabled"


def test_admin_api_absent_without_token(trained_model_dir: Path, tmp_path: Path) -> None:
    app = create_app(Settings(home=tmp_path), resolver=lambda: ("7", trained_model_dir))  # type: ignore[arg-type]
    with TestClient(app) as c:
        for method in ("POST", "GET", "DELETE"):
            r = c.request(method, "/v1/admin/promote", json={"version": "1"})
            assert r.status_code == 404 and r.json()["error"] == "admin_disabled", (method, r.text)
            assert "MNISTOPS_ADMIN_TOKEN" in r.json()["detail"]
        doc = c.get("/openapi.json").json()
        assert not [p for p in doc["paths"] if p.startswith("/v1/admin")]
        assert "disabled" in doc["info"]["description"]


def test_405_lists_allowed_methods_and_options_answers(client: TestClient) -> None:
    r = client.delete("/v1/predict")
    assert r.status_code == 405 and r.headers["allow"] == "POST, OPTIONS"
    assert r.json()["error"] == "method_not_allowed"
    r = client.put("/v1/model")
    assert r.status_code == 405 and r.headers["allow"] == "GET, OPTIONS"
    r = client.options("/v1/feedback")
    assert r.status_code == 204 and r.headers["allow"] == "POST, OPTIONS"
    assert client.post("/static/vendor/chart.umd.min.js").headers["allow"] == "GET, HEAD"


def test_allow_covers_every_route_of_a_path() -> None:
    from fastapi import APIRouter, FastAPI

    from mnistops.service.errors import install_error_handlers

    app, router = FastAPI(), APIRouter(prefix="/v1")
    router.add_api_route("/things", lambda: {}, methods=["GET"])
    router.add_api_route("/things", lambda: {}, methods=["POST"])
    install_error_handlers(app)
    app.include_router(router)
    r = TestClient(app).delete("/v1/things")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST, OPTIONS"


def test_served_schema_states_configured_batch_limit(trained_model_dir: Path, tmp_path: Path) -> None:
    s = Settings(home=tmp_path, max_batch=3)  # type: ignore[arg-type]
    with TestClient(create_app(s, resolver=lambda: ("7", trained_model_dir))) as c:
        doc = c.get("/openapi.json").json()
        assert doc["components"]["schemas"]["BatchIn"]["properties"]["items"]["maxItems"] == 3
        item = {"pixels": [[0] * 28] * 28}
        assert c.post("/v1/predict/batch", json={"items": [item] * 3}).status_code == 200
        assert c.post("/v1/predict/batch", json={"items": [item] * 4}).status_code == 422


def test_pages_served(client: TestClient) -> None:
    assert "canvas" in client.get("/").text
    assert client.get("/dashboard").status_code == 200
    assert client.get("/static/vendor/chart.umd.min.js").status_code == 200
    assert client.get("/v1/dashboard").json()["model"]["version"] == "7"


def test_startup_objects_are_frozen_for_the_collector_until_shutdown(
    trained_model_dir: Path, tmp_path: Path
) -> None:
    import gc

    app = create_app(Settings(home=tmp_path), resolver=lambda: ("7", trained_model_dir))  # type: ignore[arg-type]
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 200
        assert gc.get_freeze_count() > 0  # full collections skip what startup built
    assert gc.get_freeze_count() == 0  # shutdown hands them back to the collector
