"""The demo's closed loop on the real topology: ``mnistops up`` (serve, monitor, controller, worker).

The demo gets a scratch home of its own (registry, operational store, models), so every run tells
the same story and nothing of the user's state is read or changed: inherited ``MNISTOPS_*``
variables are dropped and the demo's own are set. ``up`` runs in its own session, tied to the
demo's life (PR_SET_PDEATHSIG on Linux), its merged log in a file; stopping is SIGTERM to ``up``,
which stops the roles (serve flushes its prediction log first).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from mnistops.settings import Settings
from mnistops.training.data import Mnist
from mnistops.up.process import die_with_parent

UP_GRACE_SECONDS = 30.0  # up's SIGTERM → SIGKILL grace for each role


@dataclass(frozen=True)
class LoopDemoConfig:
    """Sizes and time limits of the closed-loop scenario (the e2e test uses a smaller one)."""

    window: int = 250  # monitoring window (predictions)
    clean_windows: int = 3  # phase 1 length
    retrain_epoch: int = 20000  # images per retraining epoch (MNIST + production share)
    shift_timeout: float = 240.0  # seconds for detection → retrain → shadow → promotion
    rollback_timeout: float = 120.0  # seconds for the watch to roll the broken model back
    label_share: float = 0.5  # share of predictions that get (delayed) feedback
    start_timeout: float = 120.0  # seconds for every role to answer its health check


@dataclass(frozen=True)
class Ports:
    """Where each role listens (serve: the API; the others: /metrics and /healthz)."""

    serve: int
    monitor: int
    controller: int
    worker: int

    @classmethod
    def pick(cls, settings: Settings, standard: bool) -> Ports:
        """The settings' ports (``standard``: the dashboard stays up where users expect it) or free ones."""
        if standard:
            return cls(settings.port, settings.monitor_port, settings.controller_port, settings.worker_port)
        socks = [socket.socket() for _ in range(4)]
        try:  # all four bound at once, so the kernel hands out four different ports
            for s in socks:
                s.bind(("127.0.0.1", 0))
            return cls(*(int(s.getsockname()[1]) for s in socks))
        finally:
            for s in socks:
                s.close()


def loop_env(base: Settings, home: Path, ports: Ports, cfg: LoopDemoConfig) -> dict[str, str]:
    """``MNISTOPS_*`` of the demo's roles: its own registry and store, fast loop timings."""
    env = {
        "MNISTOPS_HOME": str(home),
        "MNISTOPS_DATA_DIR": str(base.data_path.resolve()),
        "MNISTOPS_TRACKING_URI": f"sqlite:///{(home / 'mlflow.db').resolve()}",
        "MNISTOPS_DATABASE_URL": f"sqlite:///{(home / 'predictions.db').resolve()}",
        "MNISTOPS_HOST": "127.0.0.1",
        "MNISTOPS_PORT": str(ports.serve),
        "MNISTOPS_MONITOR_PORT": str(ports.monitor),
        "MNISTOPS_CONTROLLER_PORT": str(ports.controller),
        "MNISTOPS_WORKER_PORT": str(ports.worker),
        "MNISTOPS_WINDOW_SIZE": str(cfg.window),
        "MNISTOPS_MONITOR_INTERVAL_SECONDS": "0.5",
        "MNISTOPS_CONTROLLER_TICK_SECONDS": "0.5",
        "MNISTOPS_WORKER_POLL_SECONDS": "0.5",
        "MNISTOPS_MODEL_POLL_SECONDS": "1",
        "MNISTOPS_SHADOW_REQUESTS": "400",
        "MNISTOPS_SHADOW_MIN_LABELLED": "40",
        "MNISTOPS_RETRAIN_MIN_LABELLED": "150",
        "MNISTOPS_RETRAIN_COOLDOWN_SECONDS": "60",
        "MNISTOPS_RETRAIN_PRODUCTION_SHARE": "0.3",
        "MNISTOPS_RETRAIN_EPOCH_SIZE": str(cfg.retrain_epoch),
        "MNISTOPS_WATCH_WINDOWS": "2",
        "MNISTOPS_ROLLBACK_TOLERANCE": "0.05",
        "MNISTOPS_ADMIN_TOKEN": secrets.token_hex(8),
        "MNISTOPS_GATES_FILE": str(home / "gates.yaml"),
    }
    # The loop's gate profile: a challenger adapted to a shifted population may give up a little
    # clean accuracy (the production gate's 0.5-point tolerance), so the clean-test checks against
    # the champion use that tolerance and a stricter McNemar level instead of the release defaults.
    (home / "gates.yaml").write_text(
        "min_test_accuracy: 0.985\nmax_accuracy_drop: 0.005\nmcnemar_alpha: 0.001\n"
    )
    return env


def env_settings(env: dict[str, str]) -> Settings:
    """The Settings the roles will see for ``env`` (for the demo's own registry calls)."""
    return Settings(**{k.removeprefix("MNISTOPS_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]


def seed_registry(env: dict[str, str], model_dir: Path, mnist: Mnist) -> str:
    """Register, gate and promote ``model_dir`` as the demo registry's first champion."""
    from mnistops.registry.core import Registry, configure

    s = env_settings(env)
    s.ensure_dirs()
    configure(s)
    reg = Registry(s)
    # this registry is a separate MLflow store: the project run's id gets a local stand-in run
    local = Path(env["MNISTOPS_HOME"]) / "initial-model"
    shutil.copytree(model_dir, local)
    v = reg.register(local, mnist=mnist)
    report = reg.gate(v, mnist=mnist)
    reg.promote(v, reason="demo: initial champion", force=not report.passed)
    return v


def health_urls(env: dict[str, str]) -> list[str]:
    """What must answer 200 before traffic starts: serve's /readyz and each role's /healthz."""
    base = "http://127.0.0.1:"
    roles = ("MNISTOPS_MONITOR_PORT", "MNISTOPS_CONTROLLER_PORT", "MNISTOPS_WORKER_PORT")
    return [f"{base}{env['MNISTOPS_PORT']}/readyz", *(f"{base}{env[k]}/healthz" for k in roles)]


def process_env(env: Mapping[str, str], inherited: Mapping[str, str]) -> dict[str, str]:
    """``inherited`` without its ``MNISTOPS_*`` (the user's database, registry …) plus ``env``."""
    return {**{k: v for k, v in inherited.items() if not k.startswith("MNISTOPS_")}, **env}


def start_up(env: dict[str, str], log_path: Path, timeout: float = 120.0) -> subprocess.Popen[bytes]:
    """Start ``mnistops up`` with ``env``; return once every role is healthy (else stop it and raise)."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mnistops", "up", "--grace", str(UP_GRACE_SECONDS)],
            cwd=env["MNISTOPS_HOME"],  # no Procfile there: the built-in four roles
            env=process_env(env, os.environ),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl+C reaches the demo only; the demo stops `up`
            preexec_fn=die_with_parent(),
        )
    pending, deadline = health_urls(env), time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mnistops up exited with {proc.returncode}; see {log_path}")
        pending = [u for u in pending if not _ok(u)]
        time.sleep(0.3)
    if pending:
        stop_up(proc)
        raise RuntimeError(f"roles not healthy after {timeout:.0f} s: {pending}; see {log_path}")
    return proc


def _ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def stop_up(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to ``up`` (it stops every role, serve flushing its log), SIGKILL after its grace."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=UP_GRACE_SECONDS + 15)
    except subprocess.TimeoutExpired:
        proc.kill()  # its roles get SIGTERM from the kernel (PR_SET_PDEATHSIG)
        proc.wait()
