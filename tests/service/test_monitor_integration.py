"""The monitor inside the service: a drifted stream replayed through the API fires an alert that reaches a
loopback webhook, /metrics and the dashboard data."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient

from mnistops.monitor.runner import MonitorRunner, attach_to_service
from mnistops.service.app import create_app
from mnistops.service.state import ServiceState
from mnistops.settings import Settings
from mnistops.training.data import Mnist, split_train_val
from mnistops.training.evaluate import rotate

pytestmark = pytest.mark.slow
N_REF = 2000  # validation images in the profile; the next ones are clean held-out traffic


def start_monitor(state: ServiceState) -> None:
    """``on_start`` hook (create_app types it as returning None)."""
    attach_to_service(state)


def wait_for(cond: Callable[[], bool], timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def post_images(client: TestClient, images: torch.Tensor, batch: int = 100) -> None:
    for i in range(0, len(images), batch):
        items = [{"pixels": img.tolist()} for img in images[i : i + batch]]
        r = client.post("/v1/predict/batch", json={"items": items})
        assert r.status_code == 200, r.text


def test_drifted_stream_alerts_webhook_metrics_dashboard(
    trained_model_dir: Path,
    fake_registry: Any,
    mnist: Mnist,
    tmp_path: Path,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    url, received = webhook
    settings = Settings(
        home=tmp_path,
        window_size=200,
        monitor_interval_seconds=0.2,
        webhook_urls=[url],
        shadow_requests=0,
    )
    registry = fake_registry
    app = create_app(
        settings,
        resolver=lambda: ("1", trained_model_dir),
        registry_ops=registry,
        on_start=start_monitor,
    )
    s = split_train_val(mnist)
    clean = s.val_x[N_REF : N_REF + 400]  # held out from the profile and from training
    perm = torch.randperm(len(mnist.test_images), generator=torch.Generator().manual_seed(0))[:400]
    drifted = rotate(mnist.test_images[perm], max_deg=40.0, seed=0)
    with TestClient(app) as client:
        state = app.state.service
        runner = next(bg for bg in state.background if isinstance(bg, MonitorRunner))
        post_images(client, clean)
        post_images(client, drifted)
        assert wait_for(lambda: state.store.count() == 800), "prediction log not flushed"
        runner.step()  # deterministic: everything logged is processed when this returns
        windows = state.store.latest_windows(10)
        assert [w.drifted for w in windows[:2]] == [False, False]
        assert len(windows) == 4
        assert windows[2].drifted or windows[3].drifted  # within 2 windows of the shift

        def hook_has_firing() -> bool:
            return any(
                a["status"] == "firing" and a["labels"]["alertname"] == "DataDrift"
                for body in list(received)
                for a in body["alerts"]
            )

        assert wait_for(hook_has_firing), f"webhook got {received}"

        metrics = client.get("/metrics").text
        assert 'mnistops_alerts_firing{rule="DataDrift",severity="warning"} 1.0' in metrics
        assert 'mnistops_drift_detected{detector="combined"} 1.0' in metrics
        assert 'mnistops_drift_score{detector="mmd"}' in metrics
        assert "mnistops_monitor_windows_total 4.0" in metrics
        assert "mnistops_estimated_accuracy " in metrics

        dash = client.get("/v1/dashboard").json()
        firing = [a for a in dash["alerts"] if a["state"] == "firing"]
        assert "DataDrift" in {a["rule"] for a in firing}
        assert len(dash["windows"]) == 4 and any(w["drifted"] for w in dash["windows"])
        for w in dash["windows"]:
            assert {"bbsd", "mmd", "prior", "inputs", "ood", "combined"} <= set(w["detectors"])
            assert w["estimated_accuracy"] is not None and w["n"] == 200
    assert not runner.running  # stopped with the app
