"""`demo_report.html`: one self-contained page (Chart.js inlined from the vendored copy, no CDN)."""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mnistops.demo.stream import Served
from mnistops.service.routes.ops import static_dir

TEMPLATE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>mnistops demo report</title>
<style>body{font:14px system-ui,sans-serif;margin:24px;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:12px 0}td,th{border:1px solid #ddd;padding:4px 8px;text-align:left}
th{background:#f4f4f4}.ok{color:#137333}.bad{color:#b00020}canvas{max-height:360px}</style>
<script>__CHARTJS__</script></head><body>
<h1>mnistops closed-loop demo</h1>
<p>__SUMMARY__</p>
<h2>Accuracy on the live stream (rolling 100 requests)</h2><canvas id="acc"></canvas>
<h2>Timeline</h2>__TIMELINE__
<h2>Figures</h2>__FIGURES__
<script>
const D = __DATA__;
new Chart(document.getElementById('acc'), {type: 'line', data: {datasets: [
  {label: 'rolling accuracy', data: D.acc, pointRadius: 0, borderWidth: 2, borderColor: '#1a73e8'},
  {label: 'events', type: 'scatter', data: D.events, pointRadius: 6, backgroundColor: '#d93025'}]},
  options: {parsing: false, animation: false, scales: {
  x: {type: 'linear', title: {display: true, text: 'sample'}},
  y: {min: 0, max: 1.05, title: {display: true, text: 'accuracy'}}},
  plugins: {tooltip: {callbacks: {label: (c) => c.raw.label || ('acc ' + c.raw.y.toFixed(3))}}}}});
</script></body></html>"""


def _rolling(served: list[Served], k: int = 100) -> list[dict[str, float]]:
    if not served:
        return []
    ok = np.array([s.label == s.true_label for s in served], dtype=float)
    c = np.cumsum(np.insert(ok, 0, 0))
    out = []
    for i in range(k, len(ok) + 1, 10):
        out.append({"x": served[i - 1].index, "y": float((c[i] - c[i - k]) / k)})
    return out


def write_report(result: Any, served: list[Served], path: Path) -> Path:
    """Write the HTML report of a :class:`mnistops.demo.run.DemoResult`."""
    chartjs = (static_dir() / "vendor" / "chart.umd.min.js").read_text()
    timeline = result.timeline
    t0 = timeline[0]["ts"] if timeline else 0.0
    rows = "".join(
        f"<tr><td>{e['ts'] - t0:.1f}</td><td>{e['seq']}</td><td>{html.escape(e['kind'])}</td>"
        f"<td>{html.escape(e.get('version') or '')}</td><td>{html.escape(e['detail'])}</td></tr>"
        for e in timeline
    )
    head = "<tr><th>t (s)</th><th>sample</th><th>event</th><th>version</th><th>detail</th></tr>"
    table = f"<table>{head}{rows}</table>"
    figs = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{html.escape(str(v))}</td></tr>"
        for k, v in asdict(result).items()
        if k != "timeline"
    )
    events = [
        {"x": e["seq"], "y": 1.02, "label": f"{e['kind']}: {e['detail'][:80]}"}
        for e in timeline
        if e["kind"] in ("alert", "retrain_started", "retrain_finished", "promoted", "rollback", "shadow")
    ]
    gain = (
        "n/a"
        if result.acc_before is None or result.acc_after is None
        else f"{100 * (result.acc_after - result.acc_before):+.1f} points"
    )
    summary = (
        f"{result.requests} requests in {result.seconds:.0f} s; shifted-stream accuracy "
        f"{result.acc_before} → {result.acc_after} ({gain}); drift detected "
        f"{result.drift_window_lag} window(s) after the shift; broken model rolled back after "
        f"{result.rollback_windows} window(s)."
    )
    page = (
        TEMPLATE.replace("__CHARTJS__", chartjs.replace("</script", "<\\/script"))
        .replace("__SUMMARY__", html.escape(summary))
        .replace("__TIMELINE__", table)
        .replace("__FIGURES__", f"<table>{figs}</table>")
        .replace("__DATA__", json.dumps({"acc": _rolling(served), "events": events}))
    )
    path.write_text(page)
    return path
