"""The cluster fixture: ``python -m mnistops.up.cluster`` with free ports and a fast profile.

The whole topology runs once per module (real PostgreSQL, mlflow server, nginx, Prometheus,
Alertmanager from Debian; the roles as processes). A missing Debian binary skips with its name
and the package to install; nothing else skips.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from helpers.cluster import REPO, WINDOW, Cluster
from mnistops.errors import ConfigError
from mnistops.up import engines
from mnistops.up.cluster import ClusterConfig, cluster_urls, config_to_json, health_urls
from mnistops.up.engines import Ports
from mnistops.up.process import die_with_parent

START_TIMEOUT = 240.0  # mlflow's first start migrates its schema: ~30 s on a loaded 2-core box
STOP_TIMEOUT = 90.0

# The fast clock of the test cluster (every mnistops role): small windows, quick ticks, a short
# cooldown and a small retraining epoch, so the whole scenario fits the test's budget.
FAST_PROFILE = {
    "MNISTOPS_WINDOW_SIZE": str(WINDOW),
    "MNISTOPS_MONITOR_INTERVAL_SECONDS": "0.5",
    "MNISTOPS_CONTROLLER_TICK_SECONDS": "0.5",
    "MNISTOPS_WORKER_POLL_SECONDS": "0.5",
    "MNISTOPS_MODEL_POLL_SECONDS": "1",
    "MNISTOPS_SHADOW_REQUESTS": "400",
    "MNISTOPS_SHADOW_MIN_LABELLED": "40",
    "MNISTOPS_RETRAIN_MIN_LABELLED": "150",
    "MNISTOPS_RETRAIN_COOLDOWN_SECONDS": "60",
    "MNISTOPS_RETRAIN_PRODUCTION_SHARE": "0.3",
    "MNISTOPS_RETRAIN_EPOCH_SIZE": "6000",
    "MNISTOPS_WATCH_WINDOWS": "2",
    "MNISTOPS_ROLLBACK_TOLERANCE": "0.05",
    "MNISTOPS_ADMIN_TOKEN": "cluster-test-token",
}


def _missing_engines() -> list[str]:
    missing = []
    for cmd in (*engines.DEBIAN_PACKAGES, "initdb"):
        try:
            engines.which(cmd)
        except ConfigError as exc:
            missing.append(str(exc))
    return missing


def _healthy(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def cluster(
    trained_model_dir: Path, cached_data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """The cluster, healthy (every URL of :func:`health_urls` answers 200); stopped afterwards."""
    missing = _missing_engines()
    if missing:
        pytest.skip("cluster engines missing: " + "; ".join(missing))
    # not under pytest's 0700 tmp dir: PostgreSQL runs as user postgres and must reach its data dir
    root = Path(tempfile.mkdtemp(prefix="mnistops-cluster-", dir="/tmp"))
    root.chmod(0o755)
    cfg = ClusterConfig(
        root=root / "c",
        data_dir=cached_data_dir,
        ports=Ports.free(),
        deploy=REPO / "deploy",
        profile=FAST_PROFILE,
        rule_speedup=60.0,  # alerts.yml's `for: 2m` becomes 2 s
        group_wait="1s",
        scrape_seconds=1,
        seed_model=trained_model_dir,
    )
    (root / "cluster.json").write_text(config_to_json(cfg))
    log = root / "cluster.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNISTOPS_")}
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mnistops.up.cluster", str(root / "cluster.json")],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
    c = Cluster(cfg, proc, log)
    try:
        t0, pending = time.monotonic(), health_urls(cfg)
        while pending and time.monotonic() - t0 < START_TIMEOUT and proc.poll() is None:
            pending = [u for u in pending if not _healthy(u)]
            time.sleep(0.5)
        if pending:
            tail = log.read_text(errors="replace")[-4000:]
            pytest.fail(f"cluster not healthy after {time.monotonic() - t0:.0f} s: {pending}\n{tail}")
        print(f"\ncluster healthy after {time.monotonic() - t0:.1f} s")
        for label, url in cluster_urls(cfg):
            print(f"  {label:<18} {url}")
        yield c
    finally:
        _stop(proc)
        kept = tmp_path_factory.mktemp("cluster") / "cluster.log"  # pytest keeps the last 3 runs
        shutil.copy(log, kept)
        print(f"cluster log: {kept}")
        shutil.rmtree(root, ignore_errors=True)
