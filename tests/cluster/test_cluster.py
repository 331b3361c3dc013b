"""The production topology for real: PostgreSQL, mlflow server, 2 replicas behind nginx, monitor,
controller, worker, Prometheus, Alertmanager, all as processes (``python -m mnistops.up.cluster``).

The demo's scenario is driven through nginx: clean digits, a harmful shift with delayed labels
(the app's drift alert and a Prometheus-evaluated alert delivered by Alertmanager), retrain by the
worker, shadow on both replicas, promotion, both replicas switch, a broken release forced in with
``mnistops promote --force``, rolled back by the controller. Then every PromQL expression of the
shipped dashboard and alert rules runs against the live Prometheus. Figures are printed (-s).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from helpers.cluster import REPO, WINDOW, Cluster
from helpers.processes import wait_until
from helpers.promql import Prometheus, alert_exprs, dashboard_exprs, metric_names, operands, scale_offsets
from mnistops.demo.loop import Traffic, make_broken
from mnistops.demo.stream import StreamClient
from mnistops.registry.core import Registry, configure
from mnistops.settings import Settings
from mnistops.training.data import Mnist
from mnistops.up.cluster import role_env
from mnistops.up.engines import database_url

pytestmark = pytest.mark.slow  # runs its own PostgreSQL: no MNISTOPS_TEST_POSTGRES_URL needed

SHIFT_TIMEOUT = 240.0  # shift → drift → retrain → shadow → promoted
ROLLBACK_TIMEOUT = 90.0


def test_every_component_is_healthy_and_scraped(cluster: Cluster) -> None:
    prom = Prometheus(cluster.url(cluster.cfg.ports.prometheus))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        targets = httpx.get(f"{prom.base_url}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
        if health and all(h == "up" for h in health.values()):
            break
        time.sleep(1)
    print("scrape targets:", health)
    jobs = {j for j, _ in health}
    assert {"mnistops-api", "mnistops-monitor", "mnistops-controller", "mnistops-worker"} <= jobs
    assert sum(j == "mnistops-api" for j, _ in health) == 2
    assert all(h == "up" for h in health.values()), health


# --- the scenario ------------------------------------------------------------------------------
@dataclass
class VersionWatch:
    """Polls each replica's ``/v1/model`` (4 Hz) and records when it first served each version."""

    urls: list[str]
    first_seen: list[dict[str, float]] = field(default_factory=list)
    challengers: list[set[str]] = field(default_factory=list)  # per replica: challengers it loaded

    def __post_init__(self) -> None:
        self.first_seen = [{} for _ in self.urls]
        self.challengers = [set() for _ in self.urls]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        with httpx.Client(timeout=2) as http:
            while not self._stop.is_set():
                for seen, ch, url in zip(self.first_seen, self.challengers, self.urls, strict=True):
                    try:
                        m = http.get(f"{url}/v1/model").json()
                    except (httpx.HTTPError, ValueError):
                        continue
                    seen.setdefault(str(m["version"]), time.time())
                    if m.get("challenger_version"):
                        ch.add(str(m["challenger_version"]))
                self._stop.wait(0.25)

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()
        self._thread.join()


@dataclass
class Scenario:
    """What the scenario saw."""

    client: StreamClient
    initial: str = ""
    shift_at: float = 0.0
    promoted: str | None = None
    broken: str | None = None
    rolled_back: dict[str, Any] | None = None
    lags: dict[str, list[float]] = field(default_factory=dict)  # version -> per-replica lag (s)
    events: list[dict[str, Any]] = field(default_factory=list)
    challengers: list[set[str]] = field(default_factory=list)  # per replica: challengers it loaded


def _audit(cluster: Cluster) -> list[dict[str, Any]]:
    return _sql(cluster, "SELECT * FROM promotion_events ORDER BY id")


def _sql(cluster: Cluster, query: str) -> list[dict[str, Any]]:
    """Rows of a query on the cluster's operational database."""
    eng = sa.create_engine(database_url(cluster.cfg.ports.postgres))
    try:
        with eng.connect() as c:
            return [dict(r) for r in c.execute(sa.text(query)).mappings().all()]
    finally:
        eng.dispose()


def _operator_settings(cluster: Cluster) -> Settings:
    """Settings of an operator's shell pointed at the cluster (its own home)."""
    env = {**role_env(cluster.cfg), "MNISTOPS_HOME": str(cluster.cfg.home("operator"))}
    return Settings(**{k.removeprefix("MNISTOPS_").lower(): v for k, v in env.items()})  # type: ignore[arg-type]


def _cluster_cli(cluster: Cluster, *args: str) -> str:
    """A mnistops command against the cluster's registry and database (the operator's view)."""
    env = {**role_env(cluster.cfg), "PATH": "/usr/bin:/bin", "HOME": str(cluster.cfg.root)}
    env["MNISTOPS_HOME"] = str(cluster.cfg.home("operator"))
    res = subprocess.run(
        [sys.executable, "-m", "mnistops", *args], env=env, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout.strip()


def _lag(cluster: Cluster, watch: VersionWatch, version: str) -> list[float]:
    """Seconds from the audit row that moved ``@champion`` to ``version`` until each replica served it."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not all(version in s for s in watch.first_seen):
        time.sleep(0.25)
    moved = max(r["time"].timestamp() for r in _audit(cluster) if r["to_version"] == version)
    return [s.get(version, float("inf")) - moved for s in watch.first_seen]


def _event(t: Traffic, kind: str, **match: Any) -> dict[str, Any] | None:
    return next(
        (e for e in t.events() if e["kind"] == kind and all(e.get(k) == v for k, v in match.items())), None
    )


@pytest.fixture(scope="module")
def scenario(cluster: Cluster, mnist: Mnist) -> Iterator[Scenario]:
    client = StreamClient(cluster.lb, concurrency=4, label_share=0.5, label_lag=100)
    t, sc = Traffic(client, mnist, seed=0), Scenario(client)
    watch = VersionWatch([cluster.url(p) for p in cluster.cfg.ports.serve])
    try:
        sc.initial = str(client.get("/v1/model")["version"])  # type: ignore[index]
        for _ in range(3 * WINDOW // 50):  # phase 1: clean
            t.send(50, False, "clean")
        sc.shift_at = time.time()
        deadline = time.monotonic() + SHIFT_TIMEOUT
        while sc.promoted is None and time.monotonic() < deadline:  # phase 2: shift until promoted
            ev = _event(t, "promoted")
            if ev is not None and ev["version"] != sc.initial:
                sc.promoted = ev["version"]
                break
            job_running = _event(t, "retrain_started") is not None and _event(t, "retrain_finished") is None
            # while the worker trains, a trickle (the 2 cores are busy training)
            t.send(10 if job_running else 50, True, "shift")
            time.sleep(0.5 if job_running else 0.05)
        if sc.promoted is not None:
            sc.lags[sc.promoted] = _lag(cluster, watch, sc.promoted)
            # the post-promotion watch of the broken release compares with this version's windows
            after = 0
            while after < 2 * WINDOW:
                after += sum(s.version == sc.promoted for s in t.send(50, True, "shift"))
            # phase 3: a broken copy of the new champion, forced in by an operator
            op = _operator_settings(cluster)
            configure(op)
            _, champ = Registry(op).resolve_alias("champion")
            # half the classes suppressed: a drop no small-n confidence bound can excuse
            broken = make_broken(champ, cluster.cfg.root / "broken-model", classes=(0, 2, 3, 5, 8))
            sc.broken = _cluster_cli(cluster, "register", str(broken), "--quiet").splitlines()[-1]
            _cluster_cli(cluster, "promote", sc.broken, "--force", "--reason", "cluster test: broken release")
            # traffic once both replicas serve it, at a pace where one window (200) outlasts the
            # switch lag: a window judged as the broken release's holds the broken release's answers
            wait_until(lambda: all(sc.broken in s for s in watch.first_seen), timeout=15, interval=0.1)
            deadline = time.monotonic() + ROLLBACK_TIMEOUT
            while sc.rolled_back is None and time.monotonic() < deadline:
                t.send(50, True, "broken")
                time.sleep(0.4)
                ev = _event(t, "rollback")
                if ev is not None and ev["data"].get("from_version") == sc.broken:
                    sc.rolled_back = ev
            if sc.broken in watch.first_seen[0]:
                sc.lags[sc.broken] = _lag(cluster, watch, sc.broken)
        client.flush_labels(all_=True)
        sc.events, sc.challengers = t.events(), watch.challengers
        yield sc
    finally:
        watch.stop()
        client.close()


# --- what the scenario must show ------------------------------------------------------------------
def _deliveries(cluster: Cluster) -> list[dict[str, Any]]:
    r = httpx.get(f"{cluster.url(cluster.cfg.ports.receiver)}/deliveries", timeout=5)
    return list(r.json())


def test_no_failed_request_and_every_prediction_is_in_postgres(cluster: Cluster, scenario: Scenario) -> None:
    served = scenario.client.served
    ids = {s.prediction_id for s in served}
    deadline = time.monotonic() + 10  # rows are committed up to log_flush_seconds after the answer
    while time.monotonic() < deadline:
        stored = {r["id"] for r in _sql(cluster, "SELECT id FROM predictions")}
        if ids <= stored:
            break
        time.sleep(0.5)
    print(f"requests {len(served)}, labels {scenario.client.labels_sent}, failed {scenario.client.errors}, "
          f"missing from PostgreSQL {len(ids - stored)}")  # fmt: skip
    assert served and scenario.client.errors == 0
    assert ids <= stored


def test_drift_alert_and_alertmanager_delivery(cluster: Cluster, scenario: Scenario) -> None:
    items = _deliveries(cluster)
    app = [d for d in items if d["path"].startswith("/alerts") and d["received_at"] > scenario.shift_at]
    am = [
        d
        for d in items
        if d["path"].startswith("/hooks/")
        and d["received_at"] > scenario.shift_at
        and any(a["status"] == "firing" for a in d["payload"].get("alerts", []))
    ]
    names = sorted({a["labels"]["alertname"] for d in am for a in d["payload"]["alerts"]})
    if app:
        print(f"app webhook after the shift: {app[0]['received_at'] - scenario.shift_at:.1f} s")
    if am:
        print(
            f"Alertmanager delivery {am[0]['received_at'] - scenario.shift_at:.1f} s after the shift: {names}"
        )
    assert app, "the monitor's drift alert never reached the webhook"
    assert am, "no Prometheus alert was delivered by Alertmanager after the shift"


def test_retrained_challenger_shadowed_on_both_replicas_then_promoted(
    cluster: Cluster, scenario: Scenario
) -> None:
    kinds = [e["kind"] for e in scenario.events]
    print("timeline:", [k for k in kinds if k != "window"])
    assert scenario.promoted is not None, "no retrained challenger was promoted"
    for k in ("alert", "retrain_started", "retrain_finished", "shadow", "shadow_passed", "promoted"):
        assert k in kinds, k
    print("challengers each replica loaded:", scenario.challengers)
    assert len(scenario.challengers) == 2 and all(scenario.promoted in c for c in scenario.challengers)
    prom = Prometheus(cluster.url(cluster.cfg.ports.prometheus))
    shadowed = prom.query('count by (instance) (mnistops_shadow_agreement_ratio{job="mnistops-api"})')
    print("replicas that shadowed (agreement gauge):", [r["metric"]["instance"] for r in shadowed])
    assert len(shadowed) == 2


def test_both_replicas_follow_the_alias_within_5_s(scenario: Scenario) -> None:
    for version, lags in scenario.lags.items():
        print(f"alias move -> replica lag for version {version}: {[f'{x:.2f} s' for x in lags]}")
    assert scenario.promoted in scenario.lags
    assert all(0 <= x <= 5 for lags in scenario.lags.values() for x in lags)


def test_broken_release_rolled_back_and_audited(cluster: Cluster, scenario: Scenario) -> None:
    after = [e for e in scenario.events if e["kind"] in ("promoted", "watch", "rollback", "rollback_failed")]
    for e in after:
        print(f"  {e['kind']:<10} v{e.get('version')}: {e['detail']} {e.get('data')}")
    assert scenario.rolled_back is not None, "the forced broken release was not rolled back"
    assert scenario.rolled_back["version"] == scenario.promoted
    trail = [
        (r["action"], r["from_version"], r["to_version"], r["actor"], r["forced"]) for r in _audit(cluster)
    ]
    print("audit trail:", trail)
    actions = [(a, to) for a, _, to, _, _ in trail]
    assert ("promote", scenario.initial) in actions
    assert ("promote", scenario.promoted) in actions
    assert any(a == "promote" and to == scenario.broken and forced for a, _, to, _, forced in trail)
    assert any(a in ("rollback", "auto-rollback") and to == scenario.promoted for a, _, to, _, _ in trail)


def test_every_dashboard_and_alert_query_returns_data(cluster: Cluster, scenario: Scenario) -> None:
    prom = Prometheus(cluster.url(cluster.cfg.ports.prometheus))
    empty = []
    for e in dashboard_exprs(REPO / "deploy" / "grafana" / "mnistops.json"):
        n = len(prom.query(e))
        print(f"  dashboard {n:3d} series  {e}")
        if n == 0:
            empty.append(e)
    for name, e in alert_exprs(REPO / "deploy" / "prometheus" / "alerts.yml").items():
        for part in operands(scale_offsets(e, cluster.cfg.rule_speedup, cap=5)):
            n = len(prom.query(part))
            print(f"  {name:<36} {n:3d} series  {part}")
            if n == 0:
                empty.append(f"{name}: {part}")
    missing = sorted({m for e in alert_exprs(REPO / "deploy" / "prometheus" / "alerts.yml").values()
                      for m in metric_names(e) if not prom.has_series(m)})  # fmt: skip
    print("metric names with no series:", missing)
    assert not empty, empty
