"""The real engines of the production topology, as foreground commands a supervisor can run.

``mnistops up --cluster`` runs, on loopback, PostgreSQL (the operational database and MLflow's
backend store), ``mlflow server`` (tracking + registry, artifacts proxied), nginx (the load
balancer in front of the API replicas), Prometheus (scraping every role, evaluating
``deploy/prometheus/alerts.yml``) and Alertmanager (``deploy/alertmanager/alertmanager.yml``,
receivers pointed at a loopback webhook). Each engine is an :class:`Engine`: ``prepare()`` writes
its configuration under the cluster folder (idempotent), ``argv`` runs it in the foreground.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mnistops.errors import ConfigError

DEBIAN_PACKAGES = {  # command -> Debian package
    "postgres": "postgresql",
    "nginx": "nginx",
    "prometheus": "prometheus",
    "prometheus-alertmanager": "prometheus-alertmanager",
}


@dataclass(frozen=True)
class Ports:
    """Loopback ports of the topology (the defaults avoid the single-machine ones)."""

    postgres: int = 55440
    mlflow: int = 5055
    lb: int = 8100  # nginx: what clients talk to
    serve: tuple[int, ...] = (8101, 8102)
    monitor: int = 8111
    controller: int = 8112
    worker: int = 8113
    prometheus: int = 9190
    alertmanager: int = 9193
    receiver: int = 9195  # the loopback webhook Alertmanager and the monitor deliver to

    @classmethod
    def free(cls, replicas: int = 2) -> Ports:
        """Ports the kernel hands out now (for tests: all bound at once, so all different)."""
        socks = [socket.socket() for _ in range(9 + replicas)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            p = [int(s.getsockname()[1]) for s in socks]
        finally:
            for s in socks:
                s.close()
        return cls(p[0], p[1], p[2], tuple(p[9:]), p[3], p[4], p[5], p[6], p[7], p[8])


@dataclass
class Engine:
    """One engine: a name, a foreground command, and the files it needs."""

    name: str
    argv: list[str]
    files: dict[Path, str] = field(default_factory=dict)  # written by prepare()
    user: str | None = None  # run as this user (PostgreSQL refuses root)

    def prepare(self) -> None:
        """Write the configuration files."""
        for path, text in self.files.items():
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)

    def popen_user(self) -> str | None:
        """The user to start it as (``subprocess.Popen(user=...)``): only when we are root."""
        return self.user if self.user and os.geteuid() == 0 else None


def which(cmd: str) -> str:
    """Path of an engine binary, or a ConfigError naming the Debian package to install."""
    found = shutil.which(cmd) or next(
        (str(p) for p in (Path("/usr/sbin") / cmd, *_pg_bins(cmd)) if p.exists()), None
    )
    if found is None:
        pkg = DEBIAN_PACKAGES.get(cmd, cmd)
        raise ConfigError(f"{cmd} not found: apt-get install -y {pkg}")
    return found


def _pg_bins(cmd: str) -> list[Path]:
    return sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{cmd}"), key=lambda p: p.parts[-3])[::-1]


# --- PostgreSQL ------------------------------------------------------------------------------------
def postgres(root: Path, port: int) -> Engine:
    """A throwaway cluster in ``root/pg`` (trust auth on loopback, fsync on), initialised once."""
    data, sock = root / "pg" / "data", root / "pg" / "sock"
    user = "postgres" if os.geteuid() == 0 else None
    if not (data / "PG_VERSION").exists():
        data.mkdir(parents=True, exist_ok=True)
        sock.mkdir(parents=True, exist_ok=True)
        if user:
            shutil.chown(data.parent, user)
            for p in (data, sock):
                shutil.chown(p, user)
        initdb = [which("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
        subprocess.run(initdb, check=True, capture_output=True, user=user)
    argv = [which("postgres"), "-D", str(data), "-p", str(port), "-k", str(sock), "-h", "127.0.0.1"]
    return Engine("postgres", argv, user=user)


def create_databases(port: int, names: tuple[str, ...] = ("mnistops", "mlflow")) -> None:
    """Create the databases that do not exist yet (the server must be up)."""
    from sqlalchemy import create_engine, text

    eng = create_engine(
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres", isolation_level="AUTOCOMMIT"
    )
    try:
        with eng.connect() as conn:
            have = {r[0] for r in conn.execute(text("SELECT datname FROM pg_database"))}
            for n in names:
                if n not in have:
                    conn.execute(text(f'CREATE DATABASE "{n}"'))
    finally:
        eng.dispose()


def database_url(port: int, name: str = "mnistops") -> str:
    """SQLAlchemy URL of a database of the cluster's PostgreSQL."""
    return f"postgresql+psycopg://postgres@127.0.0.1:{port}/{name}"


# --- MLflow tracking server ------------------------------------------------------------------------
def mlflow_server(root: Path, ports: Ports) -> Engine:
    """``mlflow server``: backend store in PostgreSQL, artifacts proxied from a local folder."""
    argv = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        database_url(ports.postgres, "mlflow"),
        "--artifacts-destination",
        str(root / "mlartifacts"),
        "--serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(ports.mlflow),
        "--workers",
        "1",
    ]
    return Engine("mlflow", argv)


# --- nginx -----------------------------------------------------------------------------------------
def nginx(root: Path, ports: Ports) -> Engine:
    """nginx in the foreground: one upstream of the API replicas, retried on connection errors."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("mnistops.up"), undefined=StrictUndefined, autoescape=False)
    conf = env.get_template("nginx.conf.j2").render(
        root=root / "nginx", listen=ports.lb, replicas=[f"127.0.0.1:{p}" for p in ports.serve]
    )
    path = root / "nginx" / "nginx.conf"
    for sub in ("logs", "tmp"):
        (root / "nginx" / sub).mkdir(parents=True, exist_ok=True)
    argv = [which("nginx"), "-p", str(root / "nginx"), "-c", str(path), "-g", "daemon off;"]
    return Engine("nginx", argv, files={path: conf})


# --- Prometheus + Alertmanager ---------------------------------------------------------------------
ROLE_JOBS = {  # scrape job of deploy/prometheus/prometheus.yml -> the role it scrapes
    "mnistops-api": "serve",
    "mnistops-monitor": "monitor",
    "mnistops-controller": "controller",
    "mnistops-worker": "worker",
}


def prometheus_config(deploy: Path, ports: Ports, *, scrape_seconds: int = 1) -> dict[str, Any]:
    """``deploy/prometheus/prometheus.yml`` with every target pointed at this topology's ports."""
    cfg: dict[str, Any] = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
    targets = {
        "serve": [f"127.0.0.1:{p}" for p in ports.serve],
        "monitor": [f"127.0.0.1:{ports.monitor}"],
        "controller": [f"127.0.0.1:{ports.controller}"],
        "worker": [f"127.0.0.1:{ports.worker}"],
    }
    cfg["global"].update(scrape_interval=f"{scrape_seconds}s", evaluation_interval=f"{scrape_seconds}s")
    for job in cfg["scrape_configs"]:
        job.pop("scrape_interval", None)
        role = ROLE_JOBS.get(job["job_name"])
        if role is not None:
            job["static_configs"][0]["targets"] = targets[role]
        elif job["job_name"] == "prometheus":
            job["static_configs"][0]["targets"] = [f"127.0.0.1:{ports.prometheus}"]
    missing = set(ROLE_JOBS) - {j["job_name"] for j in cfg["scrape_configs"]}
    if missing:
        raise ConfigError(f"deploy/prometheus/prometheus.yml lacks scrape jobs {sorted(missing)}")
    cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{ports.alertmanager}"]
    cfg["rule_files"] = ["alerts.yml"]
    return cfg


def fast_rules(text: str, factor: float) -> str:
    """alerts.yml with every ``for:`` duration divided by ``factor`` (a test cluster's fast clock)."""

    def scale(m: re.Match[str]) -> str:
        n, unit = int(m.group(2)), m.group(3)
        secs = n * {"s": 1, "m": 60, "h": 3600}[unit]
        return f"{m.group(1)}{max(1, round(secs / factor))}s"

    return re.sub(r"(\bfor:\s*)(\d+)([smh])\b", scale, text)


def prometheus(
    root: Path, deploy: Path, ports: Ports, *, rule_speedup: float = 1.0, scrape_seconds: int = 1
) -> Engine:
    """Prometheus scraping every role and evaluating the rules."""
    d = root / "prometheus"
    rules = (deploy / "prometheus" / "alerts.yml").read_text()
    files = {
        d / "prometheus.yml": yaml.safe_dump(
            prometheus_config(deploy, ports, scrape_seconds=scrape_seconds), sort_keys=False
        ),
        d / "alerts.yml": fast_rules(rules, rule_speedup) if rule_speedup != 1 else rules,
    }
    argv = [
        which("prometheus"),
        f"--config.file={d / 'prometheus.yml'}",
        f"--storage.tsdb.path={d / 'data'}",
        f"--web.listen-address=127.0.0.1:{ports.prometheus}",
        "--web.enable-lifecycle",
    ]
    return Engine("prometheus", argv, files=files)


def alertmanager_config(deploy: Path, receiver_url: str, *, group_wait: str | None = None) -> dict[str, Any]:
    """``deploy/alertmanager/alertmanager.yml`` with every webhook sent to ``receiver_url``/<name>."""
    cfg: dict[str, Any] = yaml.safe_load((deploy / "alertmanager" / "alertmanager.yml").read_text())
    for r in cfg["receivers"]:
        for w in r.get("webhook_configs", []):
            w["url"] = f"{receiver_url}/hooks/{r['name']}"
    if group_wait is not None:
        routes = [cfg["route"], *cfg["route"].get("routes", [])]
        for route in routes:
            route.update(group_wait=group_wait, group_interval=group_wait)
    return cfg


def alertmanager(root: Path, deploy: Path, ports: Ports, *, group_wait: str | None = None) -> Engine:
    """Alertmanager (no HA gossip) routing to the loopback receiver."""
    d = root / "alertmanager"
    cfg = alertmanager_config(deploy, f"http://127.0.0.1:{ports.receiver}", group_wait=group_wait)
    argv = [
        which("prometheus-alertmanager"),
        f"--config.file={d / 'alertmanager.yml'}",
        f"--storage.path={d / 'data'}",
        f"--web.listen-address=127.0.0.1:{ports.alertmanager}",
        "--cluster.listen-address=",
    ]
    return Engine("alertmanager", argv, files={d / "alertmanager.yml": yaml.safe_dump(cfg, sort_keys=False)})
