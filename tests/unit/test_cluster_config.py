"""The cluster's configuration, without engines: templated Prometheus/Alertmanager, roles, JSON."""

from __future__ import annotations

from pathlib import Path

import yaml

from mnistops.up.cluster import ClusterConfig, cluster_urls, config_from_json, config_to_json, role_env
from mnistops.up.engines import Ports, alertmanager_config, fast_rules, prometheus_config

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_prometheus_targets_every_role_on_the_cluster_ports() -> None:
    ports = Ports.free()
    cfg = prometheus_config(DEPLOY, ports, scrape_seconds=1)
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in cfg["scrape_configs"]}
    assert targets["mnistops-api"] == [f"127.0.0.1:{p}" for p in ports.serve]
    assert targets["mnistops-worker"] == [f"127.0.0.1:{ports.worker}"]
    assert cfg["global"]["scrape_interval"] == "1s"
    assert cfg["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        f"127.0.0.1:{ports.alertmanager}"
    ]


def test_fast_rules_divides_every_for_and_stays_valid_yaml() -> None:
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    fast = yaml.safe_load(fast_rules(text, 60))
    durations = [r["for"] for g in fast["groups"] for r in g["rules"] if "for" in r]
    assert durations and all(d.endswith("s") and int(d[:-1]) <= 60 for d in durations)
    assert fast_rules("for: 10m", 60) == "for: 10s" and fast_rules("for: 30s", 60) == "for: 1s"


def test_alertmanager_sends_every_receiver_to_the_loopback_webhook() -> None:
    cfg = alertmanager_config(DEPLOY, "http://127.0.0.1:9", group_wait="1s")
    urls = [w["url"] for r in cfg["receivers"] for w in r.get("webhook_configs", [])]
    assert urls and all(u.startswith("http://127.0.0.1:9/hooks/") for u in urls)
    assert cfg["route"]["group_wait"] == "1s"


def test_config_json_round_trip_and_role_env(tmp_path: Path) -> None:
    cfg = ClusterConfig(tmp_path, tmp_path / "data", Ports.free(), DEPLOY, {"MNISTOPS_WINDOW_SIZE": "200"})
    assert config_from_json(config_to_json(cfg)) == cfg
    env = role_env(cfg)
    assert env["MNISTOPS_DATABASE_URL"].endswith(f":{cfg.ports.postgres}/mnistops")
    assert env["MNISTOPS_TRACKING_URI"] == f"http://127.0.0.1:{cfg.ports.mlflow}"
    assert env["MNISTOPS_WINDOW_SIZE"] == "200"
    labels = [label for label, _ in cluster_urls(cfg)]
    assert {"API (nginx)", "MLflow", "Prometheus", "Alertmanager", "replica 2"} <= set(labels)
