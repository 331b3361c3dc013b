"""`mnistops serve` is an API replica only: it never imports monitor, controller, worker or training code.

A real `mnistops serve` subprocess (real MLflow registry, real uvicorn) answers predictions,
feedback, the dashboard data routes and the closed-loop timeline, then stops on SIGTERM; the
list of modules it imported (written at exit by ``record_modules.py``) is checked against the
import contract of docs/control-plane.md, under default settings and with every optional feature
on (torch backend, canary share, admin token, shadowing challenger). The dashboard reads what the
monitor and controller wrote to the store: a window's reference class shares, the timeline rows.
"""

from __future__ import annotations

import http.client
import json
import time
from pathlib import Path

import pytest
import torch
from live_server import CLEAN_EXIT, LiveServer, RegistryHome, make_registry
from sqlalchemy import create_engine, insert

from mnistops.registry.core import Registry
from mnistops.store.predictions import PredictionStore
from mnistops.store.records import MonitorWindow
from mnistops.store.schema import timeline

pytestmark = pytest.mark.slow

TOKEN = "tok-serve-role"
# module prefixes an API replica must never import, whatever its settings (docs/control-plane.md)
FORBIDDEN = (
    "mnistops.monitor",
    "mnistops.controller",
    "mnistops.worker",
    "mnistops.gates",
    "mnistops.demo",
    "mnistops.up",
    "mnistops.training.train",
    "mnistops.training.augment",
    "mnistops.training.optim",
    "mnistops.training.evaluate",
    "mnistops.training.data",
)
REFERENCE = [0.09, 0.11, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]
SETTINGS = {
    "defaults": {},
    "everything-on": {
        "inference_backend": "torch",
        "canary_share": "0.5",
        "admin_token": TOKEN,
        "shadow_requests": "50",
        "model_poll_seconds": "0.5",
    },
}


@pytest.fixture(scope="module")
def registry_home(
    tmp_path_factory: pytest.TempPathFactory, cached_data_dir: Path, trained_model_dir: Path
) -> RegistryHome:
    """Versions 1 (champion) and 2 (challenger: the shadow runner loads it)."""
    reg_home = make_registry(tmp_path_factory.mktemp("serve-role"), cached_data_dir, trained_model_dir, 2)
    Registry(reg_home.settings(reg_home.root / "registrar")).set_challenger(reg_home.versions[1])
    return reg_home


def seed_store(url: str) -> None:
    """What the other roles would have written: one monitor window, two timeline events."""
    store = PredictionStore(url)
    results = {
        "combined": {"score": 0.5, "threshold": 2.0, "p_value": 0.3, "drifted": False, "details": {}},
        "metrics": {"ood_rate": 0.02, "concept.accuracy": 0.97, "concept.change_points": 0},
        "reference": {"class_freq": REFERENCE, "accuracy": 0.98},
    }
    store.insert_window(MonitorWindow(0, 99, time.time(), 100, "1", results, estimated_accuracy=0.97))
    store.close()
    engine = create_engine(url)
    rows = [
        {
            "ts": 1.0,
            "seq": 99,
            "kind": "window",
            "detail": "window 0: ok",
            "version": "1",
            "data": {"window": 0},
        },
        {
            "ts": 2.0,
            "seq": 120,
            "kind": "alert",
            "detail": "DataDrift",
            "version": None,
            "data": {"rule": "DataDrift"},
        },
    ]
    with engine.begin() as conn:
        conn.execute(insert(timeline), rows)
    engine.dispose()


def call(
    server: LiveServer, method: str, path: str, body: object = None, token: str | None = None
) -> tuple[int, object]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
        r = conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw and r.getheader("content-type", "").startswith(
            "application/json"
        ) else raw
    finally:
        conn.close()


def exercise(server: LiveServer, images: torch.Tensor, admin: bool) -> None:
    """Every replica route that could pull in control-plane code, with its expected answer."""
    status, pred = call(server, "POST", "/v1/predict", {"pixels": images[0].tolist()})
    assert status == 200 and isinstance(pred, dict), pred
    status, batch = call(
        server, "POST", "/v1/predict/batch", {"items": [{"pixels": x.tolist()} for x in images[1:40]]}
    )
    assert status == 200, batch
    status, fb = call(
        server, "POST", "/v1/feedback", {"prediction_id": pred["prediction_id"], "true_label": 7}
    )
    assert status == 200, fb
    status, dash = call(server, "GET", "/v1/dashboard")
    assert status == 200 and isinstance(dash, dict), dash
    assert dash["class_distribution"]["reference"] == REFERENCE  # from the window the monitor wrote
    (w,) = dash["windows"]
    assert w["ood_rate"] == 0.02 and w["concept"] == {"accuracy": 0.97, "change_points": 0}
    assert set(w["detectors"]) == {"combined"}
    status, events = call(server, "GET", "/v1/loop/events")
    assert status == 200 and isinstance(events, list)
    assert [(e["id"], e["kind"]) for e in events] == [(1, "window"), (2, "alert")]
    assert events[1]["data"] == {"rule": "DataDrift"}
    status, later = call(server, "GET", "/v1/loop/events?since_id=1")
    assert status == 200 and isinstance(later, list) and [e["id"] for e in later] == [2]
    for path in ("/v1/windows", "/v1/alerts", "/v1/jobs", "/v1/model", "/readyz", "/metrics"):
        assert call(server, "GET", path)[0] == 200, path
    if admin:  # the everything-on case: the challenger shadows (and answers the canary share)
        status, model = call(server, "GET", "/v1/model")
        assert status == 200 and isinstance(model, dict) and model["challenger_version"] == "2", model
        status, job = call(server, "POST", "/v1/admin/retrain", {"reason": "test"}, token=TOKEN)
        assert status == 200 and isinstance(job, dict) and job["state"] == "queued", job
        status, again = call(server, "POST", "/v1/admin/retrain", {"reason": "again"}, token=TOKEN)
        assert status == 200 and isinstance(again, dict) and again["job_id"] == job["job_id"]  # one at a time
        status, ch = call(
            server, "POST", "/v1/admin/promote", {"version": "2", "reason": "t", "force": True}, token=TOKEN
        )
        assert status == 200 and isinstance(ch, dict) and ch["to_version"] == "2", ch


@pytest.mark.parametrize("case", sorted(SETTINGS))
def test_api_replica_imports_no_control_plane_code(
    case: str,
    registry_home: RegistryHome,
    tmp_path: Path,
    mnist_test_data: tuple[torch.Tensor, torch.Tensor],
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    seed_store(f"sqlite:///{home / 'predictions.db'}")
    modules_file = tmp_path / "modules.txt"
    server = LiveServer(registry_home.env(home, **SETTINGS[case]), home, modules_out=modules_file)
    try:
        server.wait_ready()
        exercise(server, mnist_test_data[0][:40], admin="admin_token" in SETTINGS[case])
    finally:
        code = server.terminate()
    assert code in CLEAN_EXIT, server.log()
    modules = modules_file.read_text().split()
    assert "mnistops.service.app" in modules and "mnistops.store.timeline" in modules  # the list is real
    leaked = sorted(m for m in modules if m.startswith(FORBIDDEN))
    assert leaked == [], f"serve ({case}) imported {leaked}"
    torch_backend = SETTINGS[case].get("inference_backend") == "torch"
    assert ("mnistops.training.model" in modules) == torch_backend
    assert ("torch" in modules) == torch_backend, "the ONNX path must not import torch"
