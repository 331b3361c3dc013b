"""`demo_report.html`: one self-contained page (Chart.js inlined from the vendored copy, no CDN).

The page is the Jinja2 template ``demo/templates/report.html.j2`` (shipped as package data),
rendered with autoescaping; the chart's data goes in through ``tojson``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, ClassVar, Protocol

import jinja2
import numpy as np

from mnistops.demo.stream import Served
from mnistops.service.routes.ops import static_dir

ROLLING = 100  # requests per point of the accuracy curve
EVENT_KINDS = ("alert", "retrain_started", "retrain_finished", "promoted", "rollback", "shadow")


class Result(Protocol):
    """What the report reads of a :class:`mnistops.demo.run.DemoResult` (a dataclass)."""

    __dataclass_fields__: ClassVar[dict[str, Any]]  # asdict() gives the figures table
    timeline: list[dict[str, Any]]
    acc_before: float | None
    acc_after: float | None
    requests: int
    seconds: float
    drift_window_lag: int | None
    rollback_windows: int | None


def _rolling(served: list[Served], k: int = ROLLING) -> list[dict[str, float]]:
    if not served:
        return []
    ok = np.array([s.label == s.true_label for s in served], dtype=float)
    c = np.cumsum(np.insert(ok, 0, 0))
    return [{"x": served[i - 1].index, "y": float((c[i] - c[i - k]) / k)} for i in range(k, len(ok) + 1, 10)]


def _summary(result: Result) -> str:
    gain = (
        "n/a"
        if result.acc_before is None or result.acc_after is None
        else f"{100 * (result.acc_after - result.acc_before):+.1f} points"
    )
    return (
        f"{result.requests} requests in {result.seconds:.0f} s; shifted-stream accuracy "
        f"{result.acc_before} → {result.acc_after} ({gain}); drift detected "
        f"{result.drift_window_lag} window(s) after the shift; broken model rolled back after "
        f"{result.rollback_windows} window(s)."
    )


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("mnistops.demo", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a missing variable is an error, not an empty cell
        keep_trailing_newline=True,
    )


def render_report(result: Result, served: list[Served]) -> str:
    """The report page as HTML."""
    timeline = result.timeline
    events = [
        {"x": e["seq"], "y": 1.02, "label": f"{e['kind']}: {e['detail'][:80]}"}
        for e in timeline
        if e["kind"] in EVENT_KINDS
    ]
    chartjs = (static_dir() / "vendor" / "chart.umd.min.js").read_text()
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            chartjs=chartjs.replace("</script", "<\\/script"),
            summary=_summary(result),
            rolling_k=ROLLING,
            timeline=timeline,
            t0=timeline[0]["ts"] if timeline else 0.0,
            figures=[(k, v) for k, v in asdict(result).items() if k != "timeline"],
            data={"acc": _rolling(served), "events": events},
        )
    )


def write_report(result: Result, served: list[Served], path: Path) -> Path:
    """Write the HTML report of a :class:`mnistops.demo.run.DemoResult` to ``path``."""
    path.write_text(render_report(result, served))
    return path
