"""Helpers for tests that run the real service as a subprocess (`python -m mnistops serve`).

A test gets its own MLflow store with registered copies of the session's trained model, starts
the service on a free loopback port with a private MNISTOPS_HOME, drives it with plain
``http.client`` connections from threads, and stops it with SIGTERM like an orchestrator would.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mnistops.settings import Settings
from mnistops.training.data import FILES

REPO = Path(__file__).resolve().parents[2]
CLEAN_EXIT = (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a graceful shutdown


@dataclass
class RegistryHome:
    """An MLflow store (and data dir) shared by one or more service homes."""

    root: Path
    data_dir: Path
    tracking_uri: str
    versions: list[str] = field(default_factory=list)

    def settings(self, home: Path) -> Settings:
        """Settings of a service home that uses this store."""
        return Settings(home=home, data_dir=self.data_dir, tracking_uri=self.tracking_uri)

    def env(self, home: Path, **extra: str) -> dict[str, str]:
        """Environment for the server subprocess (no stray MNISTOPS_* from the caller)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MNISTOPS_")}
        env.update(
            MNISTOPS_HOME=str(home),
            MNISTOPS_DATA_DIR=str(self.data_dir),
            MNISTOPS_TRACKING_URI=self.tracking_uri,
            PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""),
            **{f"MNISTOPS_{k.upper()}": v for k, v in extra.items()},
        )
        return env


def make_registry(root: Path, cached_data_dir: Path, model_dir: Path, n_versions: int) -> RegistryHome:
    """A fresh MLflow store with ``n_versions`` registered copies of ``model_dir``; version 1 is champion.

    Each copy gets its own MLflow run (the copied ``run_id`` belongs to another store), so the
    versions are distinct registry entries with identical weights; responses tell them apart
    by ``model_version``.
    """
    from mnistops.registry.core import Registry

    data = root / "data"
    data.mkdir(parents=True)
    for name in FILES:
        (data / name).symlink_to((cached_data_dir / name).resolve())
    reg_home = RegistryHome(root, data, f"sqlite:///{root / 'mlflow.db'}")
    reg = Registry(reg_home.settings(root / "registrar"))
    for i in range(n_versions):
        dest = root / "models" / f"m{i + 1}"
        shutil.copytree(model_dir, dest)
        metrics = json.loads((dest / "metrics.json").read_text())
        metrics.pop("run_id", None)
        (dest / "metrics.json").write_text(json.dumps(metrics))
        reg_home.versions.append(reg.register(dest, profile=False))
    reg.promote(reg_home.versions[0], actor="test", reason="initial", force=True)
    return reg_home


def free_port() -> int:
    """A currently free loopback TCP port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """``python -m mnistops serve`` in a subprocess (output in ``<home>/serve.log``)."""

    def __init__(self, env: dict[str, str], home: Path) -> None:
        self.port = free_port()
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / "serve.log"
        self._log = self.log_path.open("wb")
        cmd = [sys.executable, "-m", "mnistops", "serve", "--port", str(self.port), "--log-level", "info"]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=home)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until /readyz answers 200 (raises with the server log if it never does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited ({self.proc.returncode}):\n{self.log()}")
            try:
                status, _ = self.get("/readyz")
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.log()}")

    def get(self, path: str) -> tuple[int, dict[str, Any]]:
        """GET a JSON endpoint on a fresh connection."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, json.loads(r.read() or b"{}")
        finally:
            conn.close()

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit code (SIGKILL only if it hangs past ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def log(self) -> str:
        """The tail of the server's output."""
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]


def post_json(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST on a keep-alive connection; returns (status, JSON body)."""
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"{}")
