"""The shared background-service lifecycle and the roles' /metrics + /healthz endpoint."""

from __future__ import annotations

import time

import httpx
from prometheus_client import CollectorRegistry, Counter

from mnistops.runtime import BackgroundService, RoleEndpoint, health_dict


class Flaky(BackgroundService):
    """Fails on its second step."""

    def __init__(self) -> None:
        super().__init__("flaky", 0.01)
        self.calls = 0

    def step(self) -> None:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("boom")


def test_a_failing_step_is_counted_and_the_loop_goes_on() -> None:
    svc = Flaky().start()
    deadline = time.time() + 5
    while svc.calls < 5 and time.time() < deadline:
        time.sleep(0.01)
    svc.stop()
    h = svc.health()
    assert h.errors == 1 and h.steps >= 4 and h.last_error is None and not h.alive


def test_endpoint_serves_metrics_and_health() -> None:
    reg = CollectorRegistry()
    Counter("mnistops_probe", "probe", registry=reg).inc(3)
    svc = Flaky().start()
    ep = RoleEndpoint(0, reg, lambda: health_dict(svc, role="test")).start()
    try:
        base = f"http://127.0.0.1:{ep.port}"
        assert "mnistops_probe_total 3.0" in httpx.get(base + "/metrics").text
        ok = httpx.get(base + "/healthz")
        assert ok.status_code == 200 and ok.json()["role"] == "test"
        svc.stop()
        assert httpx.get(base + "/healthz").status_code == 503
        assert httpx.get(base + "/nope").status_code == 404
    finally:
        svc.stop()
        ep.stop()
