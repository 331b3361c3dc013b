// Draw-a-digit page: a pointer-events canvas (mouse, pen, touch), live predictions and feedback.
//
// The canvas (280x280, white ink on black) is box-averaged down to 28x28 grey pixels here and sent as
// {"pixels", "preprocess": true}: the server applies the MNIST pipeline (crop to the ink, fit in 20x20,
// centre by mass) so the browser and the API share one implementation of it.
"use strict";

(() => {
  const SIDE = 28; // model input side
  const LINE_WIDTH = 22; // on the 280 px canvas: ~2.2 px at 28x28, like MNIST pen strokes
  const THROTTLE_MS = 300; // at most one live prediction per interval while drawing
  const TIMEOUT_MS = 10000;

  const $ = (sel) => document.querySelector(sel);
  const canvas = $("#canvas");
  const result = $("#result");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const els = {
    clear: $("#clear"),
    label: $("#label"),
    confidence: $("#confidence"),
    version: $("#version"),
    latency: $("#latency"),
    bars: Array.from(document.querySelectorAll("#bars .bar")),
    feedback: Array.from(document.querySelectorAll("#feedback button[data-digit]")),
    feedbackStatus: $("#feedback-status"),
    error: $("#error"),
  };

  const state = {
    drawing: false,
    pointerId: null,
    last: null, // last point of the current stroke, canvas coordinates
    ink: false,
    seq: 0, // id of the latest request sent
    shownSeq: 0, // id of the response on screen (older responses are dropped)
    inFlight: false,
    pending: null, // "draft" | "final" request waiting for the in-flight one
    lastSent: 0,
    predictionId: null,
  };

  // --- canvas -------------------------------------------------------------------------------
  function resetCanvas() {
    ctx.fillStyle = "#000";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    ctx.strokeStyle = "#fff";
    ctx.fillStyle = "#fff";
    ctx.lineWidth = LINE_WIDTH;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    state.ink = false;
  }

  function point(ev) {
    // CSS size may differ from the 280x280 backing store (responsive layout)
    const r = canvas.getBoundingClientRect();
    return { x: ((ev.clientX - r.left) * canvas.width) / r.width, y: ((ev.clientY - r.top) * canvas.height) / r.height };
  }

  function dot(p) {
    ctx.beginPath();
    ctx.arc(p.x, p.y, LINE_WIDTH / 2, 0, 2 * Math.PI);
    ctx.fill();
  }

  function segment(a, b) {
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x, b.y);
    ctx.stroke();
  }

  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.pointerType === "mouse" && ev.button !== 0) return;
    if (state.drawing) return; // ignore a second finger
    ev.preventDefault();
    canvas.setPointerCapture(ev.pointerId);
    state.drawing = true;
    state.pointerId = ev.pointerId;
    state.last = point(ev);
    state.ink = true;
    dot(state.last);
  });

  canvas.addEventListener("pointermove", (ev) => {
    if (!state.drawing || ev.pointerId !== state.pointerId) return;
    ev.preventDefault();
    // coalesced events keep fast strokes smooth where the browser batches moves
    const events = typeof ev.getCoalescedEvents === "function" ? ev.getCoalescedEvents() : [];
    for (const e of events.length ? events : [ev]) {
      const p = point(e);
      segment(state.last, p);
      state.last = p;
    }
    if (performance.now() - state.lastSent >= THROTTLE_MS) request("draft");
  });

  function endStroke(ev) {
    if (!state.drawing || ev.pointerId !== state.pointerId) return;
    state.drawing = false;
    state.pointerId = null;
    state.last = null;
    request("final");
  }
  canvas.addEventListener("pointerup", endStroke);
  canvas.addEventListener("pointercancel", endStroke);

  /** Box-average the canvas to SIDE x SIDE integer grey levels (ink bright on dark). */
  function toPixels() {
    const w = canvas.width;
    const h = canvas.height;
    const data = ctx.getImageData(0, 0, w, h).data; // RGBA, grey ink so R suffices
    const rows = [];
    for (let i = 0; i < SIDE; i++) {
      const y0 = Math.floor((i * h) / SIDE);
      const y1 = Math.floor(((i + 1) * h) / SIDE);
      const row = [];
      for (let j = 0; j < SIDE; j++) {
        const x0 = Math.floor((j * w) / SIDE);
        const x1 = Math.floor(((j + 1) * w) / SIDE);
        let sum = 0;
        for (let y = y0; y < y1; y++) for (let x = x0; x < x1; x++) sum += data[(y * w + x) * 4];
        row.push(Math.min(255, Math.round(sum / ((y1 - y0) * (x1 - x0)))));
      }
      rows.push(row);
    }
    return rows;
  }

  // --- API ----------------------------------------------------------------------------------
  async function postJson(url, body) {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), TIMEOUT_MS);
    let res;
    try {
      res = await fetch(url, {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify(body),
        signal: ctrl.signal,
      });
    } catch (err) {
      throw new Error(err.name === "AbortError" ? "The API did not answer in time." : "Cannot reach the API.");
    } finally {
      clearTimeout(timer);
    }
    let payload = null;
    try {
      payload = await res.json();
    } catch (_) {
      payload = null;
    }
    if (!res.ok) throw new Error(describeError(res.status, payload));
    return payload;
  }

  /** Readable text for an API error body {error, detail} (detail may be a validation list). */
  function describeError(status, payload) {
    if (!payload || typeof payload !== "object") return `Request failed (HTTP ${status}).`;
    let detail = payload.detail;
    if (Array.isArray(detail)) {
      detail = detail.map((d) => (d && typeof d === "object" ? d.msg || JSON.stringify(d) : String(d))).join("; ");
    } else if (detail && typeof detail === "object") {
      detail = JSON.stringify(detail);
    }
    const code = payload.error || `HTTP ${status}`;
    return detail ? `${code}: ${detail}` : String(code);
  }

  function showError(msg) {
    els.error.textContent = msg || "";
  }

  /** Send a prediction now, or after the request in flight ("final" wins over "draft"). */
  function request(kind) {
    if (!state.ink) return;
    if (state.inFlight) {
      if (state.pending !== "final") state.pending = kind;
      return;
    }
    const seq = ++state.seq;
    state.inFlight = true;
    state.lastSent = performance.now();
    // client tag lets the server tell half-drawn digits ("web-draft") from finished strokes
    const body = { pixels: toPixels(), preprocess: true, client: kind === "final" ? "web" : "web-draft" };
    postJson("/v1/predict", body)
      .then((pred) => {
        if (seq > state.shownSeq) {
          state.shownSeq = seq;
          render(pred);
          showError("");
        }
      })
      .catch((err) => {
        if (seq > state.shownSeq) {
          showError(err.message);
          markStale();
        }
      })
      .finally(() => {
        state.inFlight = false;
        const next = state.pending;
        state.pending = null;
        if (next) request(next);
      });
  }

  // --- rendering ----------------------------------------------------------------------------
  const pct = (x) => `${(100 * x).toFixed(1)}%`;
  // bar labels must fit ten columns on a phone: whole percents, "<1%" for the tail
  const shortPct = (x) => (x > 0 && x < 0.005 ? "<1%" : `${Math.round(100 * x)}%`);

  function render(pred) {
    result.classList.remove("stale");
    state.predictionId = pred.prediction_id;
    els.label.textContent = String(pred.label);
    els.label.classList.remove("empty");
    els.confidence.textContent = pct(pred.confidence);
    els.version.textContent = pred.model_version;
    els.latency.textContent = `${Number(pred.latency_ms).toFixed(1)} ms`;
    const probs = pred.probabilities || [];
    els.bars.forEach((bar) => {
      const d = Number(bar.dataset.digit);
      const p = Number(probs[d] || 0);
      bar.dataset.prob = p.toFixed(4);
      bar.querySelector(".fill").style.height = `${(100 * p).toFixed(1)}%`;
      bar.querySelector(".value").textContent = shortPct(p);
      bar.classList.toggle("top", d === pred.label);
      bar.setAttribute("aria-label", `${d}: ${pct(p)}`);
    });
    els.feedback.forEach((b) => {
      b.disabled = false;
      b.setAttribute("aria-pressed", "false");
    });
    setFeedbackStatus("");
  }

  /** The result on screen no longer matches the drawing: dim it, and no feedback on it. */
  function markStale() {
    result.classList.add("stale");
    els.feedback.forEach((b) => (b.disabled = true));
    setFeedbackStatus("");
  }

  function resetResult() {
    result.classList.remove("stale");
    state.predictionId = null;
    els.label.textContent = "–";
    els.label.classList.add("empty");
    els.confidence.textContent = "–";
    els.version.textContent = "–";
    els.latency.textContent = "–";
    els.bars.forEach((bar) => {
      delete bar.dataset.prob;
      bar.querySelector(".fill").style.height = "0";
      bar.querySelector(".value").textContent = "0%";
      bar.classList.remove("top");
      bar.removeAttribute("aria-label");
    });
    els.feedback.forEach((b) => {
      b.disabled = true;
      b.setAttribute("aria-pressed", "false");
    });
  }

  function setFeedbackStatus(text, failed = false) {
    els.feedbackStatus.textContent = text;
    els.feedbackStatus.classList.toggle("failed", failed);
  }

  // --- feedback -----------------------------------------------------------------------------
  els.feedback.forEach((btn) => {
    btn.addEventListener("click", async () => {
      const id = state.predictionId;
      if (!id) return;
      const trueLabel = Number(btn.dataset.digit);
      els.feedback.forEach((b) => (b.disabled = true));
      setFeedbackStatus("Sending…");
      try {
        const out = await postJson("/v1/feedback", { prediction_id: id, true_label: trueLabel });
        els.feedback.forEach((b) => b.setAttribute("aria-pressed", String(b === btn)));
        setFeedbackStatus(
          out && out.status === "unchanged"
            ? `Already recorded: it was a ${trueLabel}.`
            : `Thanks! Recorded that it was a ${trueLabel}.`,
        );
        showError("");
      } catch (err) {
        setFeedbackStatus("Feedback not recorded.", true);
        showError(err.message);
      } finally {
        // a Clear while the request ran leaves the buttons disabled
        if (state.predictionId === id) els.feedback.forEach((b) => (b.disabled = false));
      }
    });
  });

  // --- clear --------------------------------------------------------------------------------
  function clearAll() {
    state.seq += 1;
    state.shownSeq = state.seq; // responses still in flight are stale now
    state.pending = null;
    resetCanvas();
    resetResult();
    setFeedbackStatus("");
    showError("");
  }
  els.clear.addEventListener("click", clearAll);
  document.addEventListener("keydown", (ev) => {
    if (ev.key === "Escape") clearAll();
  });

  resetCanvas();
  resetResult();
})();
