"""`mnistops monitor run` as a role process: rows in the store → windows, alerts, webhook, /metrics, SIGTERM.

The prediction log is written the way API replicas write it (champion rows with the served
model's probabilities, feedback labels); a real monitor subprocess against a real MLflow
registry (version 1 with its reference profile) turns it into windows in the store, fires
``DataDrift`` once the stream shifts, POSTs it to a loopback webhook and exports the gauges on
its own ``/metrics``. SIGTERM exits 0 after the current window. A restarted monitor resumes
after the last stored window: it writes only the new window and never notifies the
still-firing alert twice.
"""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from live_server import RegistryHome, RoleProcess, free_port, make_registry

from mnistops.demo.scenarios import compose, noise, rotate
from mnistops.registry.core import PROFILE_PATH, Registry
from mnistops.service.inference import load_model_dir
from mnistops.store.predictions import PredictionStore
from mnistops.store.records import PredictionRecord
from mnistops.training.data import Mnist, split_train_val

pytestmark = pytest.mark.slow
N_REF = 2000  # validation images in the profile; the next ones are clean held-out traffic
WINDOW = 100


def wait_for(cond: Callable[[], bool], timeout: float = 90.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


@pytest.fixture(scope="module")
def registry_home(
    tmp_path_factory: pytest.TempPathFactory,
    cached_data_dir: Path,
    trained_model_dir: Path,
    profile_dir: Path,
) -> RegistryHome:
    """Version 1 = the session's model, champion, with the validation reference profile."""
    reg_home = make_registry(tmp_path_factory.mktemp("monitor-role"), cached_data_dir, trained_model_dir, 1)
    reg = Registry(reg_home.settings(reg_home.root / "registrar"))
    reg.log_artifacts("1", profile_dir, PROFILE_PATH)
    reg.set_tags("1", {"profile": "true"})
    return reg_home


def log_served(store: PredictionStore, model_dir: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Champion predictions as a replica logs them, each with its feedback label."""
    probs, _ = load_model_dir("1", model_dir).classifier.predict(images)
    records = [PredictionRecord.create(img, p, "1", 1.0) for img, p in zip(images, probs, strict=True)]
    store.insert_many(records)
    for rec, y in zip(records, labels, strict=True):
        store.add_feedback(rec.id, int(y))


def metric(text: str, series: str) -> float | None:
    """Value of one exposed series (exact name and labels), or None."""
    m = re.search(rf"^{re.escape(series)} (\S+)$", text, re.MULTILINE)
    return None if m is None else float(m.group(1))


def scrape(proc: RoleProcess, port: int) -> str:
    """The role's /metrics text."""
    status, raw = proc.request(port, "/metrics")
    assert status == 200
    return raw.decode()


def firing(received: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    return [
        a
        for body in list(received)
        for a in body["alerts"]
        if a["status"] == "firing" and a["labels"]["alertname"] == rule
    ]


def start_monitor(reg_home: RegistryHome, home: Path, port: int, hook: str) -> RoleProcess:
    env = reg_home.env(
        home,
        window_size=str(WINDOW),
        monitor_interval_seconds="0.2",
        monitor_port=str(port),
        webhook_urls=hook,
    )
    proc = RoleProcess(["monitor", "run"], env, home, "monitor")
    proc.wait_http(port, "/healthz")
    return proc


def test_monitor_role_windows_alerts_metrics_and_clean_stop(
    registry_home: RegistryHome,
    trained_model_dir: Path,
    mnist: Mnist,
    tmp_path: Path,
    webhook: tuple[str, list[dict[str, Any]]],
) -> None:
    hook, received = webhook
    home = tmp_path / "home"
    store = PredictionStore(registry_home.settings(home).database)
    s = split_train_val(mnist)
    clean_x = s.val_x[N_REF : N_REF + 2 * WINDOW].numpy()
    clean_y = s.val_y[N_REF : N_REF + 2 * WINDOW].numpy()
    rng = np.random.default_rng(0)
    idx = rng.choice(len(mnist.test_images), 3 * WINDOW, replace=False)
    drift_x = compose(rotate(40), noise(50))(mnist.test_images[idx].numpy(), rng)
    drift_y = mnist.test_labels[idx].numpy()
    log_served(store, trained_model_dir, clean_x, clean_y)
    log_served(store, trained_model_dir, drift_x[: 2 * WINDOW], drift_y[: 2 * WINDOW])

    port = free_port()
    proc = start_monitor(registry_home, home, port, hook)
    try:
        assert wait_for(lambda: metric(scrape(proc, port), "mnistops_monitor_windows_total") == 4), proc.log()
        windows = store.latest_windows(10)
        assert [w.window for w in windows] == [0, 1, 2, 3] and all(w.n == WINDOW for w in windows)
        assert [w.drifted for w in windows[:2]] == [False, False]
        assert windows[2].drifted or windows[3].drifted  # within 2 windows of the shift
        assert wait_for(lambda: bool(firing(received, "DataDrift")), 30), received
        assert "DataDrift" in {a.rule for a in store.list_alerts(state="firing")}

        text = scrape(proc, port)
        assert metric(text, "mnistops_monitor_windows_total") == 4.0
        assert metric(text, 'mnistops_alerts_firing{rule="DataDrift",severity="warning"}') == 1.0
        assert metric(text, 'mnistops_drift_detected{detector="combined"}') == 1.0
        assert metric(text, 'mnistops_drift_score{detector="mmd"}') is not None
        for name in ("mnistops_estimated_accuracy", "mnistops_ood_rate", "mnistops_realized_accuracy"):
            value = metric(text, name)
            assert value is not None and 0 <= value <= 1, (name, value)
        assert metric(text, "mnistops_monitor_last_window_end_seq") == float(windows[-1].end_seq)
        status, _ = proc.request(port, "/healthz")
        assert status == 200
    finally:
        code = proc.terminate(sig=signal.SIGTERM)
    assert code == 0, proc.log()
    assert "Traceback" not in proc.log()

    # restart: only the new window is evaluated; the alert still fires but is not notified again
    notified = len(firing(received, "DataDrift"))
    log_served(store, trained_model_dir, drift_x[2 * WINDOW :], drift_y[2 * WINDOW :])
    proc = start_monitor(registry_home, home, port, hook)
    try:
        assert wait_for(lambda: metric(scrape(proc, port), "mnistops_monitor_windows_total") == 1), proc.log()
        assert [w.window for w in store.latest_windows(10)] == [0, 1, 2, 3, 4]
        text = scrape(proc, port)
        assert metric(text, 'mnistops_alerts_firing{rule="DataDrift",severity="warning"}') == 1.0
    finally:
        code = proc.terminate(sig=signal.SIGTERM)
    assert code == 0, proc.log()
    assert len(firing(received, "DataDrift")) == notified
    assert len(store.list_alerts(state="firing")) == len({a.rule for a in store.list_alerts(state="firing")})
    store.close()
