"""The demo's closed loop on `mnistops up` (serve, monitor, controller, worker as processes), smaller.

Drift, retrain in the worker, shadow, promote, recovery, a forced bad release and its automatic
rollback, all decided by the roles; the test only sends traffic and reads serve's timeline.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mnistops.demo.loop import DemoResult, run_loop_demo
from mnistops.demo.topology import LoopDemoConfig, stop_up
from mnistops.settings import Settings
from mnistops.training.data import Mnist

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loop_result(settings: Settings, mnist: Mnist, trained_model_dir: Path) -> DemoResult:
    cfg = LoopDemoConfig(
        window=200, clean_windows=2, retrain_epoch=20000, shift_timeout=420, rollback_timeout=180
    )
    res, client, proc = run_loop_demo(settings, mnist, trained_model_dir, serve=False, cfg=cfg)
    client.close()
    stop_up(proc)  # SIGTERM to `up`: every role stops (serve flushes its log first)
    assert proc.returncode == 0, f"mnistops up exited with {proc.returncode}"
    return res


def _kinds(timeline: list[dict[str, Any]]) -> list[str]:
    return [e["kind"] for e in timeline]


def test_events_happen_in_order(loop_result: DemoResult) -> None:
    kinds = _kinds(loop_result.timeline)
    order = [
        "alert",
        "retrain_started",
        "retrain_finished",
        "shadow",
        "shadow_passed",
        "promoted",
        "rollback",
    ]
    positions = [kinds.index(k) for k in order]  # ValueError = a step never happened
    assert positions == sorted(positions), kinds


def test_drift_detected_within_two_windows(loop_result: DemoResult) -> None:
    assert loop_result.drift_window_lag is not None and loop_result.drift_window_lag <= 2


def test_accuracy_recovers_on_the_shifted_stream(loop_result: DemoResult) -> None:
    assert loop_result.acc_before is not None and loop_result.acc_after is not None
    assert loop_result.acc_after - loop_result.acc_before >= 0.05


def test_broken_release_rolled_back_automatically(loop_result: DemoResult) -> None:
    assert loop_result.rollback_windows is not None and loop_result.rollback_windows <= 3
    rollback = next(e for e in loop_result.timeline if e["kind"] == "rollback")
    assert rollback["data"]["from_version"] == loop_result.broken_version
    assert rollback["version"] == loop_result.promoted_version


def test_no_request_failed(loop_result: DemoResult) -> None:
    assert loop_result.errors == 0 and loop_result.requests > 0
