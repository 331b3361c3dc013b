"""The PromQL of the shipped dashboard and alert rules, and a client that runs it on a live Prometheus."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import yaml

# what Grafana substitutes for the dashboard's template variables (all jobs, a short rate window)
GRAFANA_VARS = {"$__rate_interval": "15s", "$job": ".+"}
_METRIC = re.compile(r"\b(mnistops_[a-z0-9_]+|up)\b(?=\s*[{\[)])")
_TRAILING_CMP = re.compile(r"\s*(==|!=|<=|>=|<|>)\s*[0-9.]+\s*$")


def dashboard_exprs(path: Path) -> list[str]:
    """Every panel target's ``expr`` of a Grafana dashboard, template variables substituted."""
    out: list[str] = []

    def walk(panel: dict[str, Any]) -> None:
        out.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
        for sub in panel.get("panels", []):
            walk(sub)

    for p in json.loads(path.read_text())["panels"]:
        walk(p)
    subst = []
    for e in out:
        for var, value in GRAFANA_VARS.items():
            e = e.replace(var, value)
        subst.append(e)
    return subst


def alert_exprs(path: Path) -> dict[str, str]:
    """``alert name -> expr`` of a Prometheus rules file."""
    groups = yaml.safe_load(path.read_text())["groups"]
    return {r["alert"]: " ".join(r["expr"].split()) for g in groups for r in g["rules"] if "alert" in r}


def operands(expr: str) -> list[str]:
    """The series an alert compares: each side of a top-level ``and``, its threshold stripped."""
    return [_TRAILING_CMP.sub("", part.strip()) for part in re.split(r"\s+and\s+on\s*\(\s*\)\s+", expr)]


def scale_offsets(expr: str, factor: float, cap: float | None = None) -> str:
    """``offset`` durations divided by ``factor`` (the test cluster's fast clock; ``offset 1h`` looks
    further back than a cluster a few minutes old has data), at most ``cap`` seconds: on a fast
    machine the whole scenario may be shorter than the scaled offset."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}

    def scale(m: re.Match[str]) -> str:
        secs = max(1, round(int(m.group(1)) * units[m.group(2)] / factor))
        return f"offset {secs if cap is None else min(secs, int(cap))}s"

    return re.sub(r"offset\s+(\d+)([smhd])\b", scale, expr)


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects."""
    return set(_METRIC.findall(expr))


class Prometheus:
    """``/api/v1/query`` of a live Prometheus."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector (or scalar as one sample) of ``expr`` now."""
        r = httpx.get(f"{self.base_url}/api/v1/query", params={"query": expr}, timeout=10)
        r.raise_for_status()
        data = r.json()["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"value": data["result"]}]
        return list(data["result"])

    def has_series(self, metric: str) -> bool:
        """True when Prometheus holds at least one current series named ``metric``."""
        return bool(self.query(f"count({metric})"))
