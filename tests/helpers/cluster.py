"""The running test cluster as the cluster tests see it."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from mnistops.up.cluster import ClusterConfig

REPO = Path(__file__).resolve().parents[2]
WINDOW = 200  # monitoring window of the test cluster (predictions)


@dataclass
class Cluster:
    """A running cluster: its config, its process, its merged log."""

    cfg: ClusterConfig
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def lb(self) -> str:
        """The load balancer's base URL (what clients talk to)."""
        return f"http://127.0.0.1:{self.cfg.ports.lb}"

    def url(self, port: int) -> str:
        """Base URL of a loopback port."""
        return f"http://127.0.0.1:{port}"
