"""Static checks of the web pages and the deploy/ monitoring configs (no server, no browser).

The pages: every element id the browser tests rely on exists, every asset is local and present
(no CDN, no web fonts), and the vendored chart library matches its recorded checksum.
deploy/: configs parse, alert rules are well-formed and only use metric names we export, the
Grafana dashboard is consistent; `promtool` checks and rule unit tests run where it is installed.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
STATIC = REPO / "src" / "mnistops" / "service" / "static"
DEPLOY = REPO / "deploy"

# the contract's metric names (counters as exposed, with _total; histograms by base name)
METRICS = {
    "mnistops_http_requests_total",
    "mnistops_http_request_duration_seconds",
    "mnistops_predictions_total",
    "mnistops_prediction_confidence",
    "mnistops_model_info",
    "mnistops_prediction_log_queue_depth",
    "mnistops_prediction_log_write_errors_total",
    "mnistops_prediction_log_spill_backlog",
    "mnistops_drift_p_value",
    "mnistops_drift_score",
    "mnistops_drift_threshold",
    "mnistops_drift_detected",
    "mnistops_estimated_accuracy",
    "mnistops_estimated_accuracy_lower",
    "mnistops_estimated_accuracy_upper",
    "mnistops_realized_accuracy",
    "mnistops_ood_rate",
    "mnistops_alerts_firing",
    "mnistops_monitor_windows_total",
    "mnistops_shadow_agreement_ratio",
    "mnistops_rollbacks_total",
    "mnistops_retrain_jobs_total",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


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


def _metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression, histogram series mapped to their base name."""
    out = set()
    for name in re.findall(r"\bmnistops_[a-z0-9_]+", expr):
        base = next((name.removesuffix(s) for s in HISTOGRAM_SUFFIXES if name.endswith(s)), name)
        out.add(base if base in METRICS else name)
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
        unknown = _metric_names(r["expr"]) - METRICS
        assert not unknown, f"{r['alert']} uses unknown metrics {unknown}"
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
    assert "mnistops-monitor" in jobs
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
    unknown = set().union(*(_metric_names(e) for e in exprs)) - METRICS
    assert not unknown, f"dashboard uses unknown metrics {unknown}"
    used = set().union(*(_metric_names(e) for e in exprs))
    assert {
        "mnistops_http_request_duration_seconds",
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
