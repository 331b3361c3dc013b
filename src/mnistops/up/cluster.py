"""``mnistops up --cluster``: the production topology on loopback, with real engines.

Order: PostgreSQL (the operational database and MLflow's backend store) and ``mlflow server`` are
the foundation, started first and waited for (they are not supervised: everything else needs
them, and the champion must exist before the replicas start); ``mnistops seed`` makes sure the
registry has a champion; then :class:`~mnistops.up.supervisor.Supervisor` runs the rest (two
``mnistops serve`` replicas behind nginx, monitor, controller, worker, Prometheus, Alertmanager
and the loopback webhook receiver) until a stop signal. Stopping stops the supervised roles
first, then mlflow, then PostgreSQL. Every role gets ``MNISTOPS_DATABASE_URL`` (the cluster's
PostgreSQL), ``MNISTOPS_TRACKING_URI`` (the mlflow server) and ``MNISTOPS_WEBHOOK_URLS`` (the
receiver); each replica has its own ``MNISTOPS_HOME``.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from mnistops.errors import ConfigError
from mnistops.up import engines
from mnistops.up.engines import Engine, Ports
from mnistops.up.foundation import Foundation
from mnistops.up.procfile import Role
from mnistops.up.supervisor import RestartPolicy, Supervisor

MNISTOPS = f"{shlex.quote(sys.executable)} -m mnistops"  # the roles run this interpreter's package


@dataclass(frozen=True)
class ClusterConfig:
    """Where the cluster lives and how fast its clocks run.

    Args:
        root: every engine's data, configuration and logs (PostgreSQL needs it traversable by
            user ``postgres`` when run as root).
        data_dir: the MNIST cache the roles read.
        ports: loopback ports.
        deploy: the repository's ``deploy/`` folder (Prometheus and Alertmanager configuration).
        profile: extra ``MNISTOPS_*`` for every mnistops role (window size, cooldowns …).
        rule_speedup: every ``for:`` of alerts.yml divided by this.
        group_wait: Alertmanager's group_wait/group_interval (None: the file's).
        scrape_seconds: Prometheus scrape and evaluation interval.
        seed_model: a trained model folder the seed step registers instead of training one.
    """

    root: Path
    data_dir: Path
    ports: Ports = field(default_factory=Ports)
    deploy: Path = Path("deploy")
    profile: Mapping[str, str] = field(default_factory=dict)
    rule_speedup: float = 1.0
    group_wait: str | None = None
    scrape_seconds: int = 1
    seed_model: Path | None = None

    def home(self, role: str) -> Path:
        """``MNISTOPS_HOME`` of one role."""
        return self.root / "home" / role


def role_env(cfg: ClusterConfig) -> dict[str, str]:
    """``MNISTOPS_*`` shared by every mnistops role of the cluster (homes and API ports are per role)."""
    p = cfg.ports
    return {
        **cfg.profile,
        "MNISTOPS_HOST": "127.0.0.1",
        "MNISTOPS_DATA_DIR": str(cfg.data_dir.resolve()),
        "MNISTOPS_DATABASE_URL": engines.database_url(p.postgres, "mnistops"),
        "MNISTOPS_TRACKING_URI": f"http://127.0.0.1:{p.mlflow}",
        "MNISTOPS_WEBHOOK_URLS": f"http://127.0.0.1:{p.receiver}/alerts",
        "MNISTOPS_MONITOR_PORT": str(p.monitor),
        "MNISTOPS_CONTROLLER_PORT": str(p.controller),
        "MNISTOPS_WORKER_PORT": str(p.worker),
        "MNISTOPS_HOME": str(cfg.home("seed")),
    }


def _cmd(engine: Engine) -> str:
    return shlex.join(engine.argv)


def cluster_roles(cfg: ClusterConfig) -> list[Role]:
    """The supervised roles, as shell commands (per-role settings inline through env(1))."""
    p, root = cfg.ports, cfg.root
    roles = [
        Role(
            f"serve-{i}",
            f"env MNISTOPS_HOME={shlex.quote(str(cfg.home(f'serve-{i}')))} MNISTOPS_PORT={port} "
            f"{MNISTOPS} serve",
        )
        for i, port in enumerate(p.serve, 1)
    ]
    for name, sub in (("monitor", "monitor run"), ("controller", "controller run"), ("worker", "worker run")):
        roles.append(Role(name, f"env MNISTOPS_HOME={shlex.quote(str(cfg.home(name)))} {MNISTOPS} {sub}"))
    prom = engines.prometheus(
        root, cfg.deploy, p, rule_speedup=cfg.rule_speedup, scrape_seconds=cfg.scrape_seconds
    )
    am = engines.alertmanager(root, cfg.deploy, p, group_wait=cfg.group_wait)
    lb = engines.nginx(root, p)
    for e in (prom, am, lb):
        e.prepare()
    receiver = f"{shlex.quote(sys.executable)} -m mnistops.up.receiver --port {p.receiver} --out " + (
        shlex.quote(str(root / "receiver" / "deliveries.jsonl"))
    )
    return [*roles, Role("nginx", _cmd(lb)), Role("prometheus", _cmd(prom)), Role("alertmanager", _cmd(am)),
            Role("receiver", receiver)]  # fmt: skip


def cluster_urls(cfg: ClusterConfig) -> list[tuple[str, str]]:
    """``(label, url)`` of everything the cluster serves."""
    p, h = cfg.ports, "http://127.0.0.1"
    out = [
        ("API (nginx)", f"{h}:{p.lb}/"),
        ("dashboard", f"{h}:{p.lb}/dashboard"),
        *((f"replica {i}", f"{h}:{port}/") for i, port in enumerate(p.serve, 1)),
        ("monitor metrics", f"{h}:{p.monitor}/metrics"),
        ("controller metrics", f"{h}:{p.controller}/metrics"),
        ("worker metrics", f"{h}:{p.worker}/metrics"),
        ("MLflow", f"{h}:{p.mlflow}/"),
        ("Prometheus", f"{h}:{p.prometheus}/"),
        ("Alertmanager", f"{h}:{p.alertmanager}/"),
        ("webhook receiver", f"{h}:{p.receiver}/deliveries"),
        ("PostgreSQL", engines.database_url(p.postgres, "mnistops")),
    ]
    return out


def health_urls(cfg: ClusterConfig) -> list[str]:
    """What answers 200 once the cluster is up (the test and ``--wait`` callers poll these)."""
    p, h = cfg.ports, "http://127.0.0.1"
    return [
        f"{h}:{p.lb}/readyz",
        *(f"{h}:{port}/readyz" for port in p.serve),
        *(f"{h}:{port}/healthz" for port in (p.monitor, p.controller, p.worker)),
        f"{h}:{p.prometheus}/-/ready",
        f"{h}:{p.alertmanager}/-/ready",
        f"{h}:{p.receiver}/healthz",
        f"{h}:{p.mlflow}/health",
    ]


def run_cluster(
    cfg: ClusterConfig,
    env: Mapping[str, str],
    policy: RestartPolicy | None = None,
    out: TextIO | None = None,
    on_started: Callable[[Supervisor], None] | None = None,
) -> int:
    """Start the foundation, seed, supervise the rest; stop everything on a signal.

    Args:
        env: the children's base environment (PATH …; its ``MNISTOPS_*`` are overridden).
        on_started: called with the supervisor before it runs (tests keep it to stop it).

    Returns:
        the supervisor's exit code.
    """
    out = out or sys.stdout
    if not (cfg.deploy / "prometheus" / "prometheus.yml").is_file():
        raise ConfigError(f"{cfg.deploy}: no prometheus/prometheus.yml (run from the repository root)")
    cfg.root.mkdir(parents=True, exist_ok=True)
    base = {**{k: v for k, v in env.items() if not k.startswith("MNISTOPS_")}, **role_env(cfg)}
    roles = cluster_roles(cfg)  # which() fails here, before anything starts, if an engine is missing
    with Foundation(cfg.root, cfg.ports, base, out) as foundation:
        foundation.seed(cfg.seed_model)
        sup = Supervisor(roles, base, policy or RestartPolicy(), out)
        for label, url in cluster_urls(cfg):
            sup.log("up", f"{label:<18} {url}")
        sup.log("up", f"logs of postgres and mlflow: {cfg.root / 'logs'}")
        if on_started is not None:
            on_started(sup)
        started = time.monotonic()
        code = sup.run()
        sup.log("up", f"cluster ran {time.monotonic() - started:.0f} s; stopping mlflow and PostgreSQL")
    return code


# --- a cluster described by a JSON file (tests and scripts; the CLI builds its own config) ----------
def config_to_json(cfg: ClusterConfig) -> str:
    """``cfg`` as JSON (paths as strings)."""
    d = asdict(cfg)
    return json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in d.items()}, indent=1)


def config_from_json(text: str) -> ClusterConfig:
    """The inverse of :func:`config_to_json`."""
    d = json.loads(text)
    p = d["ports"]
    return ClusterConfig(
        root=Path(d["root"]),
        data_dir=Path(d["data_dir"]),
        ports=Ports(**{**p, "serve": tuple(p["serve"])}),
        deploy=Path(d["deploy"]),
        profile=dict(d["profile"]),
        rule_speedup=float(d["rule_speedup"]),
        group_wait=d["group_wait"],
        scrape_seconds=int(d["scrape_seconds"]),
        seed_model=Path(d["seed_model"]) if d["seed_model"] else None,
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m mnistops.up.cluster CONFIG.json``: run the cluster until SIGTERM/SIGINT."""
    import argparse
    import os

    from mnistops.up.process import child_env

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("config", type=Path)
    args = ap.parse_args(argv)
    sys.exit(run_cluster(config_from_json(args.config.read_text()), child_env(os.environ)))


if __name__ == "__main__":
    main()
