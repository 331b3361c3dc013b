"""The servers `make bench-serve` compares, each a subprocess on loopback, and the payloads they get.

- ``mnistops serve`` (prediction log on SQLite WAL in the bench's home; ``MNISTOPS_DURABILITY``
  process or power) on ``POST /v1/predict`` with ``{"pixels": 28x28}``;
- ``bench/naive_server.py`` (eager torch, one SQLite commit per request) on the same payload;
- ``mlflow models serve`` on the same registered version (the pyfunc of
  :mod:`mnistops.registry.pyfunc`, onnxruntime inside) on ``POST /invocations`` with MLflow's
  ``{"inputs": [28x28]}``: the same images, in the format MLflow users send.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from mnistops.settings import Settings
from mnistops.training.data import load_mnist
from serve_load import start

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Payloads:
    """JSON-lines files of the same MNIST test digits, one per request format."""

    pixels: Path  # {"pixels": 28x28} for mnistops and the naive server
    mlflow: Path  # {"inputs": [28x28]} for mlflow models serve


def write_payloads(settings: Settings, tmp: Path, n: int = 1000) -> Payloads:
    """Both request bodies for the first ``n`` MNIST test digits."""
    x = load_mnist(settings.data_path).test_images[:n].numpy().tolist()
    out = Payloads(tmp / "bodies.jsonl", tmp / "bodies-mlflow.jsonl")
    dump = json.dumps
    out.pixels.write_text("".join(dump({"pixels": img}, separators=(",", ":")) + "\n" for img in x))
    out.mlflow.write_text("".join(dump({"inputs": [img]}, separators=(",", ":")) + "\n" for img in x))
    return out


def service_env(s: Settings, **extra: str) -> dict[str, str]:
    """Environment pointing at the bench's home and MLflow store (no stray MNISTOPS_* variables)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MNISTOPS_", "MLFLOW_"))}
    env.update(
        MNISTOPS_HOME=str(s.home),
        MNISTOPS_DATA_DIR=str(s.data_path),
        MNISTOPS_TRACKING_URI=str(s.tracking),
        MLFLOW_TRACKING_URI=str(s.tracking),
        PYTHONPATH=str(REPO / "src") + os.pathsep + env.get("PYTHONPATH", ""),
        # mlflow models serve execs `uvicorn` from PATH: the venv's, not whatever else is installed
        PATH=str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", ""),
    )
    env.update(extra)
    return env


def start_mnistops(
    s: Settings, port: int, workers: int, durability: str, db_url: str, log: Path
) -> subprocess.Popen[bytes]:
    """``mnistops serve`` on a fresh prediction log; returns once ``/readyz`` answers."""
    env = service_env(s, MNISTOPS_DATABASE_URL=db_url, MNISTOPS_DURABILITY=durability)
    cmd = [sys.executable, "-m", "mnistops", "serve", "--port", str(port), "--workers", str(workers)]
    return start(cmd, env, f"http://127.0.0.1:{port}/readyz", log)


def start_naive(s: Settings, port: int, model_dir: Path, tmp: Path) -> subprocess.Popen[bytes]:
    """The naive FastAPI + PyTorch baseline (one SQLite commit per request)."""
    cmd = [sys.executable, str(REPO / "bench" / "naive_server.py"), "--model", str(model_dir / "model.pt")]
    cmd += ["--db", str(tmp / "naive.db"), "--port", str(port)]
    return start(cmd, service_env(s), f"http://127.0.0.1:{port}/readyz", tmp / "naive.log")


def start_mlflow(s: Settings, port: int, version: str, tmp: Path) -> subprocess.Popen[bytes]:
    """``mlflow models serve`` (one uvicorn worker, the local environment) on the registered version."""
    uri = f"models:/{s.model_name}/{version}"
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
    cmd += ["-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    return start(cmd, service_env(s), f"http://127.0.0.1:{port}/ping", tmp / "mlflow.log")
