"""A drifted stream replayed through the live API: alert, webhook, /metrics, and the dashboard in Chromium.

Clean held-out digits (2 windows of 100), then rotated + noisy test digits (2 windows), each posted
to ``POST /v1/predict`` with its true label sent as feedback. The monitor runs beside the API
replica, as the monitor role does: a :class:`MonitorRunner` on the same store with its own
``/metrics`` endpoint (here in the test process, over the fake registry). Expected: no drift on
the clean windows, the ``DataDrift`` alert fires within 2 windows of the shift, the loopback
webhook receives it, the monitor's ``/metrics`` shows it firing, and ``/dashboard`` renders the
firing alert, the detector charts, suspicious inputs and the model version.
A screenshot is saved to artifacts/screenshots/dashboard.png.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest

from helpers.processes import wait_until as wait_for
from mnistops.demo.scenarios import compose, noise, rotate
from mnistops.monitor.metrics import MonitorMetrics
from mnistops.monitor.runner import MonitorRunner
from mnistops.runtime import RoleEndpoint, health_dict
from mnistops.settings import Settings
from mnistops.training.data import Mnist, split_train_val

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

pytestmark = [pytest.mark.browser, pytest.mark.slow]

N_REF = 2000  # first validation images are the reference profile (see conftest.profile_dir)
WINDOW = 100
N_CLEAN = 2 * WINDOW
N_DRIFT = 2 * WINDOW
DETECTORS = {"bbsd", "mmd", "prior", "inputs", "ood", "combined"}


def replay(client: httpx.Client, images: np.ndarray, labels: np.ndarray) -> list[int]:
    """POST each image to /v1/predict, then its true label to /v1/feedback; returns predicted labels."""
    predicted = []
    for img, y in zip(images, labels, strict=True):
        r = client.post("/v1/predict", json={"pixels": img.tolist()})
        assert r.status_code == 200, r.text
        pred = r.json()
        predicted.append(int(pred["label"]))
        f = client.post("/v1/feedback", json={"prediction_id": pred["prediction_id"], "true_label": int(y)})
        assert f.status_code == 200 and f.json()["status"] == "recorded", f.text
    return predicted


def firing_in_webhook(received: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    """Firing alerts named ``rule`` among the webhook bodies received so far."""
    return [
        a
        for body in list(received)
        for a in body.get("alerts", [])
        if a.get("status") == "firing" and a.get("labels", {}).get("alertname") == rule
    ]


def point_radii(page: Page, detector: str) -> list[float]:
    """Radius of each point of a detector's score line as drawn (drifted windows get big red points)."""
    radii: list[float] = page.evaluate(
        """name => {
            const canvas = document.querySelector(`#detectors .detector[data-detector="${name}"] canvas`);
            return Chart.getChart(canvas).getDatasetMeta(0).data.map(p => p.options.radius);
        }""",
        detector,
    )
    return radii


def test_drifted_stream_alert_reaches_webhook_metrics_and_dashboard(
    browser: Browser,
    live_server: Callable[..., Any],  # conftest.LiveServer factory
    fake_registry: Any,
    webhook: tuple[str, list[dict[str, Any]]],
    mnist: Mnist,
    settings: Settings,  # clears MNISTOPS_* from the environment for the session
    tmp_path: Path,
    screenshot_path: Callable[[str], Path],
) -> None:
    hook_url, received = webhook
    role_settings = Settings(
        home=tmp_path,
        window_size=WINDOW,
        monitor_interval_seconds=0.2,
        webhook_urls=[hook_url],
        shadow_requests=0,
    )
    live = live_server(role_settings)
    monitor_metrics = MonitorMetrics()
    runner = MonitorRunner(role_settings, live.state.store, fake_registry, metrics=monitor_metrics).start()
    endpoint = RoleEndpoint(0, monitor_metrics.registry, lambda: health_dict(runner)).start()
    s = split_train_val(mnist)
    # clean traffic: validation images the profile did not use (and training never saw)
    clean_x = s.val_x[N_REF : N_REF + N_CLEAN].numpy()
    clean_y = s.val_y[N_REF : N_REF + N_CLEAN].numpy()
    # drifted traffic: test digits, rotated by 20-40 degrees and noisy (a new scanner)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(mnist.test_images), N_DRIFT, replace=False)
    shift = compose(rotate(40), noise(50))  # scenarios rotate_40 then noise_50
    drift_x = shift(mnist.test_images[idx].numpy(), rng)
    drift_y = mnist.test_labels[idx].numpy()
    shift_at = N_CLEAN // WINDOW  # first window made of drifted traffic
    n_windows = (N_CLEAN + N_DRIFT) // WINDOW

    context = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on(
        "console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
    )
    client = httpx.Client(base_url=live.url, timeout=30, trust_env=False)
    try:
        # 1) clean traffic: windows without drift, no alert; the dashboard is opened on it
        pred_clean = replay(client, clean_x, clean_y)
        assert np.mean(np.array(pred_clean) == clean_y) > 0.95
        assert wait_for(lambda: len(client.get("/v1/windows").json()) >= shift_at, timeout=90)
        assert [w["drifted"] for w in client.get("/v1/windows").json()] == [False] * shift_at, "false alarm"
        assert client.get("/v1/alerts").json() == []

        page.goto(live.url + "/dashboard", wait_until="load")
        page.wait_for_function("Number(document.body.dataset.refreshes || 0) >= 1", timeout=30_000)
        assert page.locator("#alerts tr.alert").count() == 0
        assert page.locator('#detectors .detector[data-detector="combined"]').get_attribute(
            "data-drifted"
        ) == ("false")

        # 2) the shift, replayed while the page stays open
        pred_drift = replay(client, drift_x, drift_y)
        assert np.mean(np.array(pred_drift) == drift_y) < np.mean(np.array(pred_clean) == clean_y)
        assert wait_for(lambda: len(client.get("/v1/windows").json()) >= n_windows, timeout=90), (
            f"monitor processed {len(client.get('/v1/windows').json())} of {n_windows} windows"
        )
        listed = client.get("/v1/windows").json()  # documented: oldest first (checked at the end)
        windows = sorted(listed, key=lambda w: w["window"])
        assert [w["window"] for w in windows] == list(range(n_windows))
        for w in windows:
            assert w["n"] == WINDOW and w["model_version"] == "1"
            assert set(w["detectors"]) >= DETECTORS, w["detectors"].keys()
            assert w["estimated_accuracy"] is not None and w["realized_accuracy"] is not None
        first_drift = next((w["window"] for w in windows if w["drifted"]), None)
        assert first_drift is not None and first_drift - shift_at < 2, f"drift first flagged in {first_drift}"

        firing = {a["rule"]: a for a in client.get("/v1/alerts").json() if a["state"] == "firing"}
        assert "DataDrift" in firing and firing["DataDrift"]["severity"] == "warning", firing

        # 3) the webhook got the DataDrift firing notification of a window within 2 of the shift
        assert wait_for(lambda: bool(firing_in_webhook(received, "DataDrift")), timeout=30), received
        hooked = firing_in_webhook(received, "DataDrift")[0]
        assert shift_at <= hooked["window"] < shift_at + 2, hooked
        assert hooked["model_version"] == "1" and hooked["annotations"]["summary"]

        # 4) Prometheus sees it (on the monitor's endpoint)
        metrics = httpx.get(f"http://127.0.0.1:{endpoint.port}/metrics", trust_env=False).text
        assert 'mnistops_alerts_firing{rule="DataDrift",severity="warning"} 1.0' in metrics
        assert 'mnistops_drift_detected{detector="combined"} 1.0' in metrics
        assert f"mnistops_monitor_windows_total {float(n_windows)}" in metrics

        # 5) the open dashboard picks it all up on its own (auto-refresh)
        page.locator('#alerts tr.alert.firing[data-rule="DataDrift"]').wait_for(timeout=30_000)
        page.wait_for_function(
            "n => Chart.getChart(document.querySelector('#chart-accuracy')).data.labels.length === n",
            arg=n_windows,
            timeout=30_000,
        )
        assert page.locator("#error").inner_text().strip() == ""
        assert page.locator("#model-version").inner_text().strip().startswith("v1")
        assert page.locator("#last-updated").inner_text().startswith("Updated")
        assert page.locator("#alerts tr.alert.firing").count() == len(firing)
        assert "FIRING" in page.locator('#alerts tr.alert.firing[data-rule="DataDrift"]').inner_text()

        detectors = page.locator("#detectors .detector")
        names = {detectors.nth(i).get_attribute("data-detector") for i in range(detectors.count())}
        assert names >= DETECTORS, names
        # every chart canvas was laid out with a real size (Chart.js sizes it to its box)
        for sel in ("#chart-traffic", "#chart-classes", "#chart-accuracy", "#detectors .detector canvas"):
            for canvas in page.locator(sel).all():
                box = canvas.bounding_box()
                assert box is not None and box["width"] > 50 and box["height"] > 50, (sel, box)

        # traffic: a line needs 2 time buckets; a fast replay may fill only one, drawn as points then
        traffic = page.evaluate(
            "Chart.getChart(document.querySelector('#chart-traffic'))"
            ".getDatasetMeta(0).data.map(p => p.options.radius)"
        )
        assert len(traffic) >= 2 or (len(traffic) == 1 and traffic[0] > 0), (
            f"traffic chart draws nothing: {traffic}"
        )
        assert page.locator("#suspicious img").count() > 0
        # the PNGs decoded (a broken data: URL has naturalWidth 0)
        assert page.evaluate(
            "[...document.querySelectorAll('#suspicious img')]"
            ".every(i => i.complete && i.naturalWidth === 28)"
        )
        page.screenshot(path=str(screenshot_path("dashboard.png")), full_page=True)
        assert problems == []

        # time runs left to right; drifted windows drawn as big points; "latest" = the newest window
        chart_labels = page.evaluate("Chart.getChart(document.querySelector('#chart-accuracy')).data.labels")
        radii = point_radii(page, "combined")
        combined = page.locator('#detectors .detector[data-detector="combined"]').get_attribute(
            "data-drifted"
        )
    finally:
        client.close()
        context.close()
        runner.stop()
        endpoint.stop()
    assert chart_labels == [f"#{i}" for i in range(n_windows)], "dashboard windows are not oldest first"
    assert [r > 3 for r in radii] == [w["drifted"] for w in windows], f"point radii {radii}"
    assert combined == str(windows[-1]["drifted"]).lower(), "detector state is not the newest window's"
    assert [w["window"] for w in listed] == list(range(n_windows)), "GET /v1/windows is not oldest first"
