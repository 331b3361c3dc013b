// Monitoring dashboard: polls GET /v1/dashboard every 5 s and renders it with the vendored Chart.js.
//
// Charts are created once and updated in place (no animation) so refreshes do not flicker. All text
// coming from the API (reasons, summaries, rule names) goes through textContent, never innerHTML.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const TIMEOUT_MS = 8000;
  const $ = (sel) => document.querySelector(sel);

  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue(name).trim();
  const C = {
    accent: color("--accent"),
    ref: color("--ref"),
    bad: color("--bad"),
    warn: color("--warn"),
    ok: color("--ok"),
    muted: color("--muted"),
    border: color("--border"),
    text: color("--text"),
  };
  const alpha = (hex, a) => {
    const h = hex.replace("#", "");
    const n = parseInt(h.length === 3 ? h.replace(/./g, "$&$&") : h, 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
  };

  const state = { charts: {}, detectorCharts: new Map(), timer: null, paused: false, refreshes: 0 };

  // --- formatting ---------------------------------------------------------------------------
  const pad2 = (n) => String(n).padStart(2, "0");
  const clock = (d) => `${pad2(d.getHours())}:${pad2(d.getMinutes())}:${pad2(d.getSeconds())}`;
  const fmtEpoch = (s) => clock(new Date(s * 1000));
  /** Compact local time: "HH:MM:SS" today, "MM-DD HH:MM" before (full ISO goes in the title). */
  function fmtIso(iso) {
    if (!iso) return "–";
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    if (d.toDateString() === new Date().toDateString()) return clock(d);
    return `${pad2(d.getMonth() + 1)}-${pad2(d.getDate())} ${pad2(d.getHours())}:${pad2(d.getMinutes())}`;
  }
  const timeCell = (iso) => el("td", { class: "num", text: fmtIso(iso), title: iso || "" });
  const pct = (x, digits = 1) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(digits)}%`);

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  // --- charts -------------------------------------------------------------------------------
  function baseOptions(extra = {}) {
    return {
      responsive: true,
      maintainAspectRatio: false,
      animation: false,
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { labels: { boxWidth: 12, boxHeight: 12 } } },
      ...extra,
    };
  }

  function setupCharts() {
    Chart.defaults.color = C.muted;
    Chart.defaults.borderColor = alpha(C.muted, 0.18);
    Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;

    // a line needs two points: markers while there are few time buckets, else one bucket draws nothing
    // (scriptable, so it is re-evaluated on every update instead of cached by Chart.js)
    const fewPoints = (c) => (c.dataset.data.length < 3 ? 3 : 0);
    state.charts.traffic = new Chart($("#chart-traffic"), {
      type: "line",
      data: {
        datasets: [
          { label: "requests/s", data: [], yAxisID: "y", borderColor: C.accent, backgroundColor: alpha(C.accent, 0.12), fill: true, pointRadius: fewPoints, tension: 0.25 },
          { label: "p50 ms", data: [], yAxisID: "y1", borderColor: C.ok, pointRadius: fewPoints, tension: 0.25 },
          { label: "p95 ms", data: [], yAxisID: "y1", borderColor: C.warn, pointRadius: fewPoints, tension: 0.25 },
        ],
      },
      options: baseOptions({
        scales: {
          x: { type: "linear", ticks: { callback: (v) => fmtEpoch(v), maxTicksLimit: 7 } },
          y: { beginAtZero: true, title: { display: true, text: "req/s" } },
          y1: { beginAtZero: true, position: "right", grid: { drawOnChartArea: false }, title: { display: true, text: "ms" } },
        },
        plugins: {
          legend: { labels: { boxWidth: 12, boxHeight: 12 } },
          tooltip: { callbacks: { title: (items) => (items.length ? fmtEpoch(items[0].parsed.x) : "") } },
        },
      }),
    });

    state.charts.classes = new Chart($("#chart-classes"), {
      type: "bar",
      data: {
        labels: ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"],
        datasets: [
          { label: "reference", data: [], backgroundColor: alpha(C.ref, 0.75) },
          { label: "current", data: [], backgroundColor: C.accent },
        ],
      },
      options: baseOptions({
        scales: { y: { beginAtZero: true, ticks: { callback: (v) => pct(v, 0) } } },
        plugins: {
          legend: { labels: { boxWidth: 12, boxHeight: 12 } },
          tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${pct(c.parsed.y)}` } },
        },
      }),
    });

    state.charts.accuracy = new Chart($("#chart-accuracy"), {
      type: "line",
      data: {
        labels: [],
        datasets: [
          // band = area between upper (filled down to the next dataset) and lower
          { label: "estimate upper", data: [], borderColor: "transparent", backgroundColor: alpha(C.accent, 0.15), fill: "+1", pointRadius: 0 },
          { label: "estimate lower", data: [], borderColor: "transparent", pointRadius: 0, fill: false },
          { label: "estimated", data: [], borderColor: C.accent, pointRadius: 2, tension: 0.2 },
          { label: "realized", data: [], borderColor: C.ok, backgroundColor: C.ok, pointRadius: 3, borderDash: [4, 3], spanGaps: true },
        ],
      },
      options: baseOptions({
        scales: { y: { suggestedMin: 0.8, suggestedMax: 1, ticks: { callback: (v) => pct(v, 0) } } },
        plugins: {
          legend: { labels: { boxWidth: 12, boxHeight: 12, filter: (item) => !item.text.startsWith("estimate ") } },
          tooltip: { callbacks: { label: (c) => `${c.dataset.label}: ${pct(c.parsed.y)}` } },
        },
      }),
    });
  }

  function detectorChart(name) {
    let entry = state.detectorCharts.get(name);
    if (entry) return entry;
    const box = el("div", { class: "detector", "data-detector": name });
    const title = el("h3", {}, el("span", { text: name }), el("span", { class: "state", text: "" }));
    const canvas = el("canvas", { role: "img", "aria-label": `${name}: score and threshold per window` });
    box.append(title, el("div", { class: "chart-box small" }, canvas));
    $("#detectors").append(box);
    const chart = new Chart(canvas, {
      type: "line",
      data: {
        labels: [],
        datasets: [
          { label: "score", data: [], borderColor: C.accent, pointRadius: [], pointBackgroundColor: [], pointBorderColor: [], tension: 0.2 },
          { label: "threshold", data: [], borderColor: C.bad, borderDash: [6, 4], borderWidth: 1.5, pointRadius: 0, stepped: true },
        ],
      },
      options: baseOptions({
        plugins: {
          legend: { display: false },
          tooltip: { callbacks: { afterBody: (items) => entry.notes[items[0].dataIndex] || "" } },
        },
        scales: { x: { ticks: { maxTicksLimit: 8 } } },
      }),
    });
    entry = { box, chart, state: title.querySelector(".state"), notes: [] };
    state.detectorCharts.set(name, entry);
    return entry;
  }

  // --- renderers ----------------------------------------------------------------------------
  function renderModel(data) {
    const m = data.model || {};
    $("#model-version").textContent = m.version ? `v${m.version}${m.backend ? ` · ${m.backend}` : ""}` : "none";
    const metrics = m.metrics || {};
    const windows = data.windows || [];
    const last = windows.length ? windows[windows.length - 1] : null;
    // realized accuracy lags (labels arrive late): show the newest window that has one
    const realized = windows.map((w) => w.realized_accuracy).filter((x) => x !== null && x !== undefined);
    const firing = (data.alerts || []).filter((a) => a.state === "firing").length;
    const kpis = [
      ["test accuracy", pct(metrics.test_accuracy, 2)],
      ["estimated now", last ? pct(last.estimated_accuracy) : "–"],
      ["realized (latest)", realized.length ? pct(realized[realized.length - 1]) : "–"],
      ["alerts firing", String(firing)],
    ];
    $("#kpis").replaceChildren(
      ...kpis.map(([k, v]) => el("div", { class: "kpi" }, el("div", { class: "k", text: k }), el("div", { class: "v", text: v }))),
    );

    const rows = [...(data.history || [])].sort((a, b) => String(b.time).localeCompare(String(a.time)));
    const body = $("#history tbody");
    if (!rows.length) {
      body.replaceChildren(el("tr", { class: "empty-row" }, el("td", { colspan: "4", text: "No promotions yet." })));
      return;
    }
    body.replaceChildren(
      ...rows.map((h) =>
        el(
          "tr",
          { class: `history-row ${h.action}` },
          timeCell(h.time),
          el("td", {}, el("span", { class: `pill ${h.action}`, text: h.action })),
          el("td", { class: "num", text: `${h.from_version ?? "∅"} → ${h.to_version}` }),
          el("td", {}, h.reason || "", el("small", { class: "muted actor", text: h.actor ? `by ${h.actor}` : "" })),
        ),
      ),
    );
  }

  function renderTraffic(data) {
    const t = data.traffic || [];
    const ds = state.charts.traffic.data.datasets;
    ds[0].data = t.map((p) => ({ x: p.t, y: p.rps }));
    ds[1].data = t.map((p) => ({ x: p.t, y: p.p50_ms }));
    ds[2].data = t.map((p) => ({ x: p.t, y: p.p95_ms }));
    // pin the axis to the data so the auto-range does not leave empty margins (pad a single bucket)
    const x = state.charts.traffic.options.scales.x;
    const pad = t.length === 1 ? 5 : 0;
    x.min = t.length ? t[0].t - pad : undefined;
    x.max = t.length ? t[t.length - 1].t + pad : undefined;
    state.charts.traffic.update("none");
  }

  function renderClasses(data) {
    const cd = data.class_distribution || {};
    const ds = state.charts.classes.data.datasets;
    ds[0].data = cd.reference || [];
    ds[1].data = cd.current || [];
    state.charts.classes.update("none");
  }

  function renderAccuracy(windows) {
    const chart = state.charts.accuracy;
    chart.data.labels = windows.map((w) => `#${w.window}`);
    const [up, lo, est, real] = chart.data.datasets;
    up.data = windows.map((w) => w.estimated_upper ?? null);
    lo.data = windows.map((w) => w.estimated_lower ?? null);
    est.data = windows.map((w) => w.estimated_accuracy ?? null);
    real.data = windows.map((w) => w.realized_accuracy ?? null);
    chart.update("none");
  }

  function renderDetectors(windows) {
    const names = [];
    for (const w of windows) for (const n of Object.keys(w.detectors || {})) if (!names.includes(n)) names.push(n);
    const container = $("#detectors");
    if (!names.length) {
      for (const { chart } of state.detectorCharts.values()) chart.destroy();
      state.detectorCharts.clear();
      container.replaceChildren(el("p", { class: "muted", text: "No monitoring windows yet." }));
      return;
    }
    container.querySelectorAll("p.muted").forEach((p) => p.remove());
    for (const [name, entry] of state.detectorCharts) {
      if (!names.includes(name)) {
        entry.chart.destroy();
        entry.box.remove();
        state.detectorCharts.delete(name);
      }
    }
    for (const name of names) {
      const entry = detectorChart(name);
      const rows = windows.map((w) => (w.detectors || {})[name] || null);
      const chart = entry.chart;
      const [score, thr] = chart.data.datasets;
      chart.data.labels = windows.map((w) => `#${w.window}`);
      score.data = rows.map((r) => (r ? r.score : null));
      thr.data = rows.map((r) => (r ? r.threshold : null));
      score.pointRadius = rows.map((r) => (r && r.drifted ? 4.5 : 2));
      score.pointBackgroundColor = rows.map((r) => (r && r.drifted ? C.bad : C.accent));
      score.pointBorderColor = score.pointBackgroundColor;
      entry.notes = rows.map((r, i) => {
        if (!r) return "";
        const lines = [`n = ${windows[i].n}`, `ended ${fmtEpoch(windows[i].end_ts)}`];
        if (r.p_value !== null && r.p_value !== undefined) lines.unshift(`p-value: ${Number(r.p_value).toPrecision(3)}`);
        if (r.drifted) lines.unshift("DRIFT");
        return lines;
      });
      chart.update("none");
      const latest = rows[rows.length - 1];
      const drifted = Boolean(latest && latest.drifted);
      entry.box.classList.toggle("drifted", drifted);
      entry.box.dataset.drifted = String(drifted);
      entry.state.textContent = latest ? (drifted ? "drift" : "ok") : "no data";
    }
  }

  function renderAlerts(data) {
    const alerts = [...(data.alerts || [])].sort((a, b) => {
      if (a.state !== b.state) return a.state === "firing" ? -1 : 1;
      // alerts of one window share a start time: newest event first keeps the order stable
      return String(b.started_at).localeCompare(String(a.started_at)) || b.id - a.id;
    });
    const body = $("#alerts tbody");
    if (!alerts.length) {
      body.replaceChildren(el("tr", { class: "empty-row" }, el("td", { colspan: "6", text: "No alerts." })));
      return;
    }
    body.replaceChildren(
      ...alerts.map((a) =>
        el(
          "tr",
          { class: `alert ${a.state === "firing" ? "firing" : "resolved"}`, "data-rule": a.rule },
          el("td", { text: a.state === "firing" ? "FIRING" : "resolved" }),
          el("td", { text: a.rule }),
          el("td", {}, el("span", { class: `pill ${a.severity}`, text: a.severity })),
          timeCell(a.started_at),
          timeCell(a.resolved_at),
          el("td", { text: a.summary || "" }),
        ),
      ),
    );
  }

  function renderSuspicious(data) {
    const items = data.suspicious || [];
    const box = $("#suspicious");
    if (!items.length) {
      box.replaceChildren(el("p", { class: "muted empty", text: "Nothing suspicious in the latest window." }));
      return;
    }
    box.replaceChildren(
      ...items.map((s) => {
        const img = el("img", {
          src: `data:image/png;base64,${s.image_png_base64}`,
          alt: `input predicted ${s.label} at ${pct(s.confidence, 0)} confidence${s.ood ? ", out of distribution" : ""}`,
          title: s.prediction_id,
          width: "84",
          height: "84",
        });
        const cap = el("figcaption", { text: `${s.label} · ${pct(s.confidence, 0)}${s.ood ? " · OOD" : ""}` });
        return el("figure", { class: s.ood ? "ood" : "", "data-prediction-id": s.prediction_id }, img, cap);
      }),
    );
  }

  function render(payload) {
    // charts run left to right in time and "latest" means the newest window, whatever order the API uses
    const windows = [...(payload.windows || [])].sort((a, b) => a.window - b.window);
    const data = { ...payload, windows };
    renderModel(data);
    renderTraffic(data);
    renderClasses(data);
    renderAccuracy(windows);
    renderDetectors(windows);
    renderAlerts(data);
    renderSuspicious(data);
  }

  // --- polling ------------------------------------------------------------------------------
  function describeError(status, payload) {
    if (payload && typeof payload === "object" && payload.error) {
      const d = typeof payload.detail === "string" ? payload.detail : JSON.stringify(payload.detail);
      return `${payload.error}: ${d}`;
    }
    return `Dashboard request failed (HTTP ${status}).`;
  }

  async function refresh() {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
    const updated = $("#last-updated");
    try {
      const res = await fetch("/v1/dashboard", { headers: { Accept: "application/json" }, cache: "no-store", signal: ctrl.signal });
      let payload = null;
      try {
        payload = await res.json();
      } catch (_) {
        payload = null;
      }
      if (!res.ok) throw new Error(describeError(res.status, payload));
      render(payload);
      state.refreshes += 1;
      document.body.dataset.refreshes = String(state.refreshes);
      updated.textContent = `Updated ${clock(new Date())}`;
      updated.classList.remove("stale");
      $("#error").textContent = "";
    } catch (err) {
      const msg = err.name === "AbortError" ? "The API did not answer in time." : err.message || "Cannot reach the API.";
      $("#error").textContent = `${msg} (showing the last data received)`;
      updated.classList.add("stale");
      if (!state.refreshes) updated.textContent = "not loaded";
    } finally {
      clearTimeout(timer);
      schedule();
    }
  }

  function schedule() {
    clearTimeout(state.timer);
    if (!state.paused) state.timer = setTimeout(refresh, REFRESH_MS);
  }

  $("#pause").addEventListener("click", (ev) => {
    state.paused = !state.paused;
    ev.currentTarget.setAttribute("aria-pressed", String(state.paused));
    ev.currentTarget.textContent = state.paused ? "Resume" : "Pause";
    if (state.paused) clearTimeout(state.timer);
    else refresh();
  });

  setupCharts();
  refresh();
})();
