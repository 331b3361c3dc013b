"""The demo's topology: its own home and store, every role on its own port, the user's env left out."""

from __future__ import annotations

from pathlib import Path

from mnistops.demo.loop import drift_lag
from mnistops.demo.topology import LoopDemoConfig, Ports, env_settings, health_urls, loop_env, process_env
from mnistops.settings import Settings


def test_free_ports_are_four_different_ones_and_standard_ports_are_the_settings() -> None:
    assert len(set(vars(Ports.pick(Settings(), standard=False)).values())) == 4
    s = Settings(port=9100, monitor_port=9101, controller_port=9102, worker_port=9103)
    assert Ports.pick(s, standard=True) == Ports(9100, 9101, 9102, 9103)


def test_loop_env_keeps_every_store_in_the_demo_home(tmp_path: Path) -> None:
    base = Settings(home=tmp_path / "project")
    (tmp_path / "demo").mkdir()
    env = loop_env(base, tmp_path / "demo", Ports(1, 2, 3, 4), LoopDemoConfig(window=200))
    s = env_settings(env)
    assert s.database == f"sqlite:///{(tmp_path / 'demo' / 'predictions.db').resolve()}"
    assert s.tracking.endswith(str(tmp_path / "demo" / "mlflow.db"))
    assert s.data_path == base.data_path.resolve()  # MNIST is shared, not copied
    assert (s.port, s.monitor_port, s.controller_port, s.worker_port) == (1, 2, 3, 4)
    assert s.window_size == 200 and s.gates_file is not None and s.gates_file.is_file()
    assert "MNISTOPS_LOOP_IN_SERVE" not in env  # the loop runs in the controller and worker roles
    assert health_urls(env) == [
        "http://127.0.0.1:1/readyz",
        "http://127.0.0.1:2/healthz",
        "http://127.0.0.1:3/healthz",
        "http://127.0.0.1:4/healthz",
    ]


def test_the_users_mnistops_settings_do_not_leak_into_the_demo() -> None:
    inherited = {"PATH": "/bin", "MNISTOPS_DATABASE_URL": "postgresql://prod", "MNISTOPS_WEBHOOK_URLS": "x"}
    env = process_env({"MNISTOPS_HOME": "/tmp/demo"}, inherited)
    assert env == {"PATH": "/bin", "MNISTOPS_HOME": "/tmp/demo"}


def test_drift_lag_counts_windows_that_hold_shifted_inputs() -> None:
    def window(end: int, drifted: bool) -> dict[str, object]:
        return {"kind": "window", "data": {"end_seq": end, "drifted": drifted}}

    timeline = [window(250, False), window(500, False), {"kind": "alert", "data": {}}, window(750, True)]
    assert drift_lag(timeline, shift_start=400) == 2  # window 2 (251-500) holds the first shifted inputs
    assert drift_lag(timeline[:2], shift_start=400) is None
