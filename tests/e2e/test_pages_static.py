"""Static checks of the web pages and the deploy/ monitoring configs (no server, no browser).

The pages: every element id the browser tests rely on exists, every asset is local and present
(no CDN, no web fonts), and the vendored chart library matches its recorded checksum.
deploy/: configs parse, alert rules are well-formed, the Grafana dashboard is consistent, every
series the rules and the dashboard query (names derived from their PromQL) is exported by some
role's ``metrics_registry()``, and Prometheus scrapes every role on its default port; `promtool`
checks and rule unit tests run where it is installed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry
from prometheus_client.core import Metric

from mnistops.settings import Settings

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "src" / "mnistops" / "service" / "static"
DEPLOY = REPO / "deploy"

# Each role exposes the series it exports through one function, ``metrics_registry()`` in its
# metrics module; the deploy/ configs may only query series some role exports.
ROLE_METRICS = {
    "serve": "mnistops.service.metrics",
    "monitor": "mnistops.monitor.metrics",
    "controller": "mnistops.controller.metrics",
    "worker": "mnistops.worker.metrics",
}
# series a role must export whatever the configs say (they are part of the contract)
OWNED = {
    "serve": {"mnistops_http_requests_total", "mnistops_model_info", "mnistops_prediction_log_spill_backlog"},
    "monitor": {"mnistops_monitor_windows_total", "mnistops_alerts_firing", "mnistops_drift_detected"},
    "controller": {"mnistops_rollbacks_total"},
    "worker": {"mnistops_retrain_jobs_total"},
}
TARGET_LABELS = {"job", "instance"}  # attached by Prometheus at scrape time, not by the roles
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_SELECTOR = re.compile(r"(?<![\w:])(mnistops_[a-zA-Z0-9_:]+|up)\b(?!\s*\()(\{[^}]*\})?")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


class _Elements(HTMLParser):
    """Collects (tag, attrs) of every start tag."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _parse(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed((STATIC / page).read_text(encoding="utf-8"))
    return parser.tags


def _ids(tags: list[tuple[str, dict[str, str | None]]]) -> list[str]:
    return [i for _, a in tags if (i := a.get("id"))]


def _selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names it is matched on) of each series selector in a PromQL expression.

    Only our series (``mnistops_*``) and ``up``; string literals are blanked first, so label values
    never look like names, and ``name(`` is a function call, not a series.
    """
    out = []
    for m in _SELECTOR.finditer(_STRING.sub('""', expr)):
        out.append((m.group(1), set(_MATCHER_LABEL.findall(m.group(2) or ""))))
    return out


def _metric_names(expr: str) -> set[str]:
    """Our series names in a PromQL expression (``up`` excluded: Prometheus makes it)."""
    return {name for name, _ in _selectors(expr) if name != "up"}


def _series(family: Metric) -> set[str]:
    """Names PromQL may use for a metric family: counters as ``_total``, histograms with their suffixes."""
    n = family.name
    if family.type == "counter":
        return {f"{n}_total"}
    if family.type == "histogram":
        return {n, f"{n}_bucket", f"{n}_count", f"{n}_sum"}
    if family.type == "summary":
        return {n, f"{n}_count", f"{n}_sum"}
    if family.type == "info":
        return {f"{n}_info"}
    return {n}


def _role_registry(role: str) -> CollectorRegistry:
    module = ROLE_METRICS[role]
    wire = f"{role}: wire `def metrics_registry() -> CollectorRegistry` in {module}"
    try:
        fn = getattr(importlib.import_module(module), "metrics_registry", None)
    except ModuleNotFoundError as exc:
        raise AssertionError(f"{wire} ({exc})") from exc
    assert callable(fn), wire
    reg = fn()
    assert isinstance(reg, CollectorRegistry), f"{module}.metrics_registry() returned {type(reg)}"
    return reg


def _exported(role: str) -> dict[str, set[str] | None]:
    """Series a role exports -> the label names its samples carry (None: no sample to tell yet)."""
    out: dict[str, set[str] | None] = {}
    for family in _role_registry(role).collect():
        labels = {k for s in family.samples for k in s.labels if k not in ("le", "quantile")} or None
        for name in _series(family):
            out[name] = None if labels is None else labels | ({"le"} if name.endswith("_bucket") else set())
    return out


def _queries() -> dict[str, list[str]]:
    """Every PromQL expression of deploy/ by where it is: alert rules, dashboard panels and variables."""
    dash = json.loads((DEPLOY / "grafana" / "mnistops.json").read_text(encoding="utf-8"))
    out = {f"alert {r['alert']}": [r["expr"]] for r in _rules()}

    def panels(ps: list[dict[str, Any]]) -> None:
        for p in ps:
            out[f"panel {p['title']}"] = [t["expr"] for t in p.get("targets", []) if "expr" in t]
            panels(p.get("panels", []))  # rows nest panels

    panels(dash["panels"])
    for v in dash["templating"]["list"]:
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if v.get("type") == "query" and isinstance(q, str):
            out[f"variable {v['name']}"] = [q]
    return out


# --- pages -----------------------------------------------------------------------------------
def test_draw_page_has_the_ids_the_browser_tests_use() -> None:
    tags = _parse("index.html")
    ids = _ids(tags)
    assert len(ids) == len(set(ids)), "duplicate ids"
    for required in [
        "canvas",
        "clear",
        "label",
        "confidence",
        "version",
        "bars",
        "feedback",
        "feedback-status",
        "error",
    ]:
        assert required in ids
    bars = [a["data-digit"] for _, a in tags if "bar" in (a.get("class") or "").split()]
    assert bars == [str(d) for d in range(10)]
    buttons = [a["data-digit"] for t, a in tags if t == "button" and a.get("data-digit") is not None]
    assert buttons == [str(d) for d in range(10)]


def test_dashboard_page_has_the_ids_the_browser_tests_use() -> None:
    ids = _ids(_parse("dashboard.html"))
    assert len(ids) == len(set(ids)), "duplicate ids"
    for required in [
        "model-version",
        "history",
        "chart-traffic",
        "chart-classes",
        "detectors",
        "chart-accuracy",
        "alerts",
        "suspicious",
        "last-updated",
        "error",
    ]:
        assert required in ids


@pytest.mark.parametrize("page", ["index.html", "dashboard.html"])
def test_pages_load_only_local_assets_that_exist(page: str) -> None:
    tags = _parse(page)
    refs = [a.get("src") or a.get("href") for t, a in tags if t in {"script", "link", "img"}]
    assert refs, "no assets found"
    for ref in refs:
        assert ref is not None
        if ref.startswith("data:"):
            continue
        assert ref.startswith("/static/"), f"{page} loads {ref} from outside /static/"
        assert (STATIC / ref.removeprefix("/static/")).is_file(), f"{page}: {ref} missing"


@pytest.mark.parametrize("name", ["index.html", "dashboard.html", "draw.js", "dashboard.js", "style.css"])
def test_own_files_make_no_external_requests(name: str) -> None:
    text = (STATIC / name).read_text(encoding="utf-8")
    assert not re.search(r"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text), (
        f"{name} references an external URL"
    )
    assert "@import" not in text and "@font-face" not in text


def test_vendored_chart_library_matches_its_readme() -> None:
    readme = (STATIC / "vendor" / "README.md").read_text(encoding="utf-8")
    lib = (STATIC / "vendor" / "chart.umd.min.js").read_bytes()
    assert hashlib.sha256(lib).hexdigest() in readme
    version = re.search(r"Chart\.js v(\d+\.\d+\.\d+)", lib[:200].decode()).group(1)  # type: ignore[union-attr]
    assert f"| {version} |" in readme
    assert "MIT" in (STATIC / "vendor" / "chart.js.LICENSE.md").read_text(encoding="utf-8")


# --- deploy: Prometheus / Alertmanager / Grafana ----------------------------------------------
def _rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    return [r for g in doc["groups"] for r in g["rules"]]


def test_alert_rules_are_complete_and_use_exported_metrics() -> None:
    rules = _rules()
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names))
    for r in rules:
        assert r["labels"]["severity"] in {"warning", "critical"}, r["alert"]
        assert r["annotations"]["summary"] and r["annotations"]["description"], r["alert"]
    exprs = " ".join(r["expr"] for r in rules)
    for needed in [
        "mnistops_drift_detected",
        "mnistops_estimated_accuracy",
        "mnistops_realized_accuracy",
        "mnistops_ood_rate",
        "mnistops_prediction_log_spill_backlog",
        "histogram_quantile(0.99",
        "up{",
    ]:
        assert needed in exprs


def test_prometheus_and_alertmanager_configs_parse() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    for rule_file in prom["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()
    jobs = {j["job_name"]: j for j in prom["scrape_configs"]}
    assert len(jobs["mnistops-api"]["static_configs"][0]["targets"]) > 1, (
        "example should show several replicas"
    )
    defaults = Settings()
    ports = {
        "mnistops-api": defaults.port,
        "mnistops-monitor": defaults.monitor_port,
        "mnistops-controller": defaults.controller_port,
        "mnistops-worker": defaults.worker_port,
    }
    for job, port in ports.items():  # every role is scraped, on the port it listens on by default
        targets = [t for c in jobs[job]["static_configs"] for t in c["targets"]]
        assert targets and all(t.endswith(f":{port}") for t in targets), (job, targets)
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
    for where, exprs in _queries().items():  # up{job="..."} names a scrape job that exists
        wanted = {j for e in exprs for j in re.findall(r'(?<![\w:])up\{[^}]*job="([^"]+)"', e)}
        assert wanted <= set(jobs), f"{where} asks for jobs {wanted - set(jobs)}"
    am = yaml.safe_load((DEPLOY / "alertmanager" / "alertmanager.yml").read_text(encoding="utf-8"))
    receivers = {r["name"] for r in am["receivers"]}
    routed = {am["route"]["receiver"]} | {r["receiver"] for r in am["route"]["routes"]}
    assert routed <= receivers
    assert any('severity="critical"' in m for r in am["route"]["routes"] for m in r.get("matchers", []))


def test_grafana_dashboard_is_consistent() -> None:
    dash = json.loads((DEPLOY / "grafana" / "mnistops.json").read_text(encoding="utf-8"))
    assert dash["uid"] == "mnistops"
    assert any(v["name"] == "DS_PROMETHEUS" and v["type"] == "datasource" for v in dash["templating"]["list"])
    panels = dash["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    exprs: list[str] = []
    for p in panels:
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
            exprs.append(t["expr"])
    used = set().union(*(_metric_names(e) for e in exprs))
    assert {
        "mnistops_http_request_duration_seconds_bucket",
        "mnistops_drift_p_value",
        "mnistops_realized_accuracy",
    } <= used
    for sub in ("datasources", "dashboards"):
        files = list((DEPLOY / "grafana" / "provisioning" / sub).glob("*.yml"))
        assert files and all(yaml.safe_load(f.read_text(encoding="utf-8"))["apiVersion"] == 1 for f in files)


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (apt-get install prometheus)"
)
def test_promtool_accepts_config_and_rule_unit_tests_pass() -> None:
    prom = DEPLOY / "prometheus"
    for args in (["check", "config", "prometheus.yml"], ["test", "rules", "alerts_test.yml"]):
        out = subprocess.run(["promtool", *args], cwd=prom, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr


# --- deploy/ against the roles' metric registries -----------------------------------------------
@pytest.mark.parametrize("role", sorted(ROLE_METRICS))
def test_each_role_exposes_its_metrics_registry(role: str) -> None:
    exported = _exported(role)
    assert exported and all(n.startswith("mnistops_") for n in exported), sorted(exported)
    missing = OWNED[role] - set(exported)
    assert not missing, f"{role} ({ROLE_METRICS[role]}.metrics_registry()) does not export {missing}"


def test_every_queried_series_is_exported_by_a_role() -> None:
    exported: dict[str, set[str] | None] = {}
    unwired = []
    for role in ROLE_METRICS:
        try:
            exported.update(_exported(role))
        except AssertionError as exc:  # a role not wired yet: reported below with what is missing
            unwired.append(str(exc))
    problems = []
    for where, exprs in sorted(_queries().items()):
        for name, labels in (sel for e in exprs for sel in _selectors(e)):
            if name == "up":
                continue
            if name not in exported:
                owner = next((r for r, names in OWNED.items() if name in names), "no role")
                problems.append(f"{where}: {name} is not exported (expected from: {owner})")
                continue
            have = exported[name]
            if have is not None and labels - TARGET_LABELS - have:
                problems.append(f"{where}: {name} has no label {sorted(labels - TARGET_LABELS - have)}")
    assert not problems, "\n".join(problems + unwired)
