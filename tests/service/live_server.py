"""Helpers for tests that run the real service as a subprocess (`python -m mnistops serve`).

A test gets its own MLflow store with registered copies of the session's trained model, starts
the service (or another role, :class:`RoleProcess`) on a free loopback port with a private
MNISTOPS_HOME, drives it with plain ``http.client`` connections from threads, and stops it with
SIGTERM like an orchestrator would.
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
# uvicorn re-raises the captured SIGTERM after its graceful shutdown: -15 is a clean exit too
CLEAN_EXIT = (0, -signal.SIGTERM)


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


MODULES_SCRIPT = Path(__file__).with_name("record_modules.py")


class RoleProcess:
    """``python -m mnistops <args>`` in a subprocess (output in ``<home>/<name>.log``).

    With ``modules_out`` the command runs through ``record_modules.py``, which writes the names of
    every module the process imported to that file when it exits (cleanly, e.g. after SIGTERM).
    """

    def __init__(
        self, args: list[str], env: dict[str, str], home: Path, name: str, modules_out: Path | None = None
    ) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.log_path = home / f"{name}.log"
        self._log = self.log_path.open("wb")
        prefix = ["-m", "mnistops"] if modules_out is None else [str(MODULES_SCRIPT), str(modules_out)]
        cmd = [sys.executable, *prefix, *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=home)

    def request(self, port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
        """One request on a fresh connection: (status, raw body)."""
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request(method, path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def wait_http(self, port: int, path: str, timeout: float = 90.0) -> None:
        """Block until ``path`` answers 200 (raises with the log if the process exits or never does)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"process exited ({self.proc.returncode}):\n{self.log()}")
            try:
                if self.request(port, path)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{path} not 200 after {timeout} s:\n{self.log()}")

    def terminate(self, timeout: float = 60.0, sig: signal.Signals = signal.SIGTERM) -> int:
        """Send ``sig`` and wait for the exit code (SIGKILL only if it hangs past ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)

    def log(self) -> str:
        """The tail of the process's output."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")[-4000:]


class LiveServer(RoleProcess):
    """``python -m mnistops serve`` on a free loopback port (output in ``<home>/serve.log``)."""

    def __init__(self, env: dict[str, str], home: Path, modules_out: Path | None = None) -> None:
        self.port = free_port()
        args = ["serve", "--port", str(self.port), "--log-level", "info"]
        super().__init__(args, env, home, "serve", modules_out)

    def wait_ready(self, timeout: float = 90.0) -> None:
        """Block until /readyz answers 200 (raises with the server log if it never does)."""
        self.wait_http(self.port, "/readyz", timeout)

    def get(self, path: str) -> tuple[int, Any]:
        """GET a JSON endpoint on a fresh connection."""
        status, body = self.request(self.port, path)
        return status, json.loads(body or b"{}")


def post_json(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """POST on a keep-alive connection; returns (status, JSON body)."""
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"{}")
