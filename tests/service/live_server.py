"""Helpers for tests that run the real service as a subprocess (`python -m mnistops serve`).

A test gets its own MLflow store with registered copies of the session's trained model, starts
the service (or another role, :class:`RoleProcess`) on a free loopback port with a private
MNISTOPS_HOME, drives it with plain ``http.client`` connections from threads (:class:`Load`), and
stops it with SIGTERM like an orchestrator would (or SIGKILL, like a crash).
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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helpers.processes import stop_process
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
        return stop_process(self.proc, self._log, sig, timeout)

    def kill(self) -> int:
        """SIGKILL (no shutdown code runs: the crash of an OOM kill or a lost node) and reap it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
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


def wait_for(cond: Callable[[], bool], timeout: float, what: str, server: LiveServer) -> None:
    """Poll ``cond`` every 0.2 s; fail with the server log if it stays false."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}\n{server.log()}")
        time.sleep(0.2)


class Load:
    """Client threads posting predictions until told to stop or the server goes away.

    Each thread keeps one keep-alive connection and remembers every ``prediction_id`` answered
    200. With ``feedback_every=k`` it also sends a true label for every k-th of them, then a
    correction, and remembers the last label each id was answered 200 for (``labels``) and a
    label whose answer never came because the server died (``maybe_labels``).
    """

    def __init__(
        self,
        port: int,
        bodies: list[bytes],
        per_thread: int,
        *,
        threads: int = 6,
        pause: float = 0.0,
        feedback_every: int = 0,
    ) -> None:
        self.port, self.bodies, self.per_thread, self.pause = port, bodies, per_thread, pause
        self.feedback_every = feedback_every
        self.ok_ids: list[str] = []
        self.labels: dict[str, int] = {}
        self.maybe_labels: dict[str, int] = {}
        self.failed: list[int] = []  # non-200 statuses (transport errors end a thread instead)
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(threads)]

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.join()

    def join(self, timeout: float = 60.0) -> None:
        """Wait for every client thread."""
        for t in self._threads:
            t.join(timeout)

    @property
    def n_ok(self) -> int:
        """Predictions answered 200 so far."""
        with self._lock:
            return len(self.ok_ids)

    def _run(self, k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            for i in range(self.per_thread):
                if self.stop.is_set():
                    return
                try:
                    status, body = post_json(conn, "/v1/predict", self.bodies[(k * 7 + i) % len(self.bodies)])
                    with self._lock:
                        if status != 200:
                            self.failed.append(status)
                            continue
                        self.ok_ids.append(body["prediction_id"])
                    if self.feedback_every and i % self.feedback_every == 0:
                        for label in (i % 10, (i + 1) % 10):  # a label, then a correction
                            self._feedback(conn, body["prediction_id"], label)
                except (OSError, http.client.HTTPException):
                    return  # the server went away: that request was not accepted
                if self.pause:
                    time.sleep(self.pause)
        finally:
            conn.close()

    def _feedback(self, conn: http.client.HTTPConnection, pid: str, label: int) -> None:
        with self._lock:
            self.maybe_labels[pid] = label
        body = json.dumps({"prediction_id": pid, "true_label": label}).encode()
        status, _ = post_json(conn, "/v1/feedback", body)  # raises if the server died meanwhile
        with self._lock:
            del self.maybe_labels[pid]
            if status == 200:
                self.labels[pid] = label
            else:
                self.failed.append(status)
