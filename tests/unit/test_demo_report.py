"""demo_report.html: the Jinja2 template renders the figures, escapes event text, inlines Chart.js."""

from __future__ import annotations

import json
import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from mnistops.demo.loop import DemoResult
from mnistops.demo.report import render_report, write_report
from mnistops.demo.stream import Served

REPO = Path(__file__).resolve().parents[2]


def _result() -> DemoResult:
    timeline = [
        {"ts": 100.0, "seq": 10, "kind": "window", "detail": "window 1", "version": "1", "data": {}},
        {"ts": 112.5, "seq": 700, "kind": "alert", "detail": "<script>alert(1)</script> & co",
         "version": None, "data": {"rule": "InputDrift"}},
        {"ts": 140.0, "seq": 900, "kind": "promoted", "detail": "champion 1 → 2", "version": "2", "data": {}},
    ]  # fmt: skip
    return DemoResult(
        timeline=timeline, shift_start=500, drift_window_lag=1, acc_before=0.71, acc_after=0.93,
        promoted_version="2", broken_version="3", rollback_windows=2, seconds=151.0, requests=1200,
    )  # fmt: skip


def _served(n: int) -> list[Served]:
    return [Served(i, "clean", f"p{i}", i % 10, i % 10 if i % 4 else 0, "1", 0.0) for i in range(n)]


def test_report_has_summary_timeline_figures_and_escapes_event_text() -> None:
    page = render_report(_result(), _served(300))
    assert "1200 requests in 151 s" in page and "(+22.0 points)" in page
    assert "<td>12.5</td><td>700</td><td>alert</td><td></td>" in page  # t relative to the first event
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in page
    assert "<script>alert(1)" not in page
    assert "<tr><td>rollback_windows</td><td>2</td></tr>" in page
    assert "<tr><td>timeline</td>" not in page


def test_chart_data_is_json_and_chartjs_is_inlined_without_closing_our_script() -> None:
    page = render_report(_result(), _served(300))
    data = json.loads(re.search(r"const D = (.*);\n", page).group(1))  # type: ignore[union-attr]
    assert len(data["acc"]) == (300 - 100) // 10 + 1 and 0 <= data["acc"][0]["y"] <= 1
    assert [e["x"] for e in data["events"]] == [700, 900]  # windows are not chart events
    assert "\\u003cscript\\u003e" in page  # the event label inside the JSON is escaped too
    assert page.count("</script>") == 2  # Chart.js's own "</script" strings are escaped
    assert "Chart" in page.split("</script>")[0]


def test_write_report_writes_the_page(tmp_path: Path) -> None:
    path = write_report(_result(), [], tmp_path / "r.html")
    assert path.read_text().startswith("<!doctype html>")


def test_the_template_is_shipped_as_package_data() -> None:
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    template = "demo/templates/report.html.j2"
    assert (REPO / "src" / "mnistops" / template).is_file()
    assert any(fnmatch(template, g) for g in globs["mnistops"])
