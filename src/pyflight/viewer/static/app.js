// pyflight timeline: one canvas drawn from the server's levels of detail (/api/slices).
// Every string from the trace reaches the page through textContent, title or canvas
// fillText, never parsed as HTML. Times are ns since the start of the trace.
"use strict";

(function () {
  const LABEL_W = 210, RULER_H = 24, ROW_H = 18, GROUP_H = 18, MIN_SPAN = 1000;
  const COLLAPSED_GROUPS = new Set(["pyflight threads", "samples"]);
  const BASE_COLORS = {
    running: "#3f9c4a", ready: "#e0b020", blocked: "#c0504d", gc: "#8e5cc7", idle: "#dcdcdc",
    unknown: "#b9b9b9", stall: "#d62d20", task: "#2a9d8f", region: "#8fb3d9",
    "blocked:lock": "#d13b3b", "blocked:sleep": "#8d8fb8", "blocked:io": "#4a7fc1",
    "blocked:await": "#9cc3e6", "blocked:condition": "#e07b39", "blocked:queue": "#e39a5b",
    "blocked:select": "#5f9ea0", "blocked:join": "#b07aa1", "blocked:future": "#c49c6b",
    "blocked:other": "#e377c2",
  };

  // ------------------------------------------------------------------ helpers
  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else node.setAttribute(k, v);
    }
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function fmtNs(ns) {
    const a = Math.abs(ns);
    if (a >= 1e9) return (ns / 1e9).toFixed(a >= 1e10 ? 2 : 3) + " s";
    if (a >= 1e6) return (ns / 1e6).toFixed(a >= 1e7 ? 1 : 2) + " ms";
    if (a >= 1e3) return (ns / 1e3).toFixed(a >= 1e4 ? 1 : 2) + " µs";
    return Math.round(ns) + " ns";
  }
  function hashColor(name) {
    let h = 0;
    for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) | 0;
    return "hsl(" + (Math.abs(h) % 360) + ",45%,60%)";
  }
  function colorOf(code) {
    if (BASE_COLORS[code]) return BASE_COLORS[code];
    if (code.startsWith("sample:")) return colorOf(code.slice(7));
    if (code.startsWith("blocked:")) return hashColor(code);
    const base = code.split(":")[0];
    return BASE_COLORS[base] || hashColor(code);
  }
  async function getJSON(path) {
    const response = await fetch(path, { cache: "no-store", credentials: "same-origin" });
    if (!response.ok) throw new Error(path + ": " + response.status);
    return response.json();
  }

  // ------------------------------------------------------------------ state
  const canvas = document.getElementById("canvas");
  const ctx = canvas.getContext("2d");
  const timeline = document.getElementById("timeline");
  const statusEl = document.getElementById("status");
  const S = {
    meta: null, rows: [], layout: [], collapsed: new Set(), scrollY: 0,
    view: { t0: 0, t1: 1 }, duration: 1, cache: null, inflight: false, wanted: false, seq: 0,
    selected: null, details: null, highlight: null, range: null, drag: null, keys: new Set(),
    ready: false, frames: [], rowById: new Map(), firstDraw: null,
  };

  function trackWidth() { return Math.max(10, canvas.clientWidth - LABEL_W); }
  function nsPerPx() { return (S.view.t1 - S.view.t0) / trackWidth(); }
  function xOf(t) { return LABEL_W + (t - S.view.t0) / nsPerPx(); }
  function tOf(x) { return S.view.t0 + (x - LABEL_W) * nsPerPx(); }

  function buildLayout() {
    const layout = [];
    let y = 0, group = null;
    for (const row of S.rows) {
      if (row.group !== group) {
        group = row.group;
        layout.push({ type: "group", name: group, y, h: GROUP_H });
        y += GROUP_H;
      }
      if (S.collapsed.has(group)) continue;
      const h = row.kind === "counter" ? ROW_H + 10 : ROW_H;
      layout.push({ type: "row", row, y, h });
      row.y = y; row.h = h;
      y += h;
    }
    for (const row of S.rows) if (S.collapsed.has(row.group)) row.y = null;
    S.layout = layout;
    S.contentH = y;
  }
  function clampScroll() {
    const viewH = canvas.clientHeight - RULER_H;
    S.scrollY = Math.max(0, Math.min(S.scrollY, Math.max(0, S.contentH - viewH)));
  }
  function visibleRows() {
    const top = S.scrollY - 200, bottom = S.scrollY + canvas.clientHeight + 200;
    return S.layout.filter((it) => it.type === "row" && it.y + it.h >= top && it.y <= bottom).map((it) => it.row);
  }

  function setView(t0, t1, keepHash) {
    let span = Math.max(MIN_SPAN, t1 - t0);
    span = Math.min(span, S.duration * 1.2);
    const mid = (t0 + t1) / 2;
    t0 = mid - span / 2; t1 = mid + span / 2;
    const pad = S.duration * 0.1;
    if (t0 < -pad) { t1 += -pad - t0; t0 = -pad; }
    if (t1 > S.duration + pad) { t0 -= t1 - S.duration - pad; t1 = S.duration + pad; }
    S.view = { t0, t1 };
    if (!keepHash) scheduleHash();
    requestData();
    redraw();
  }
  let hashTimer = null;
  function scheduleHash() {
    clearTimeout(hashTimer);
    hashTimer = setTimeout(() => {
      history.replaceState(null, "", "#t=" + Math.round(S.view.t0) + "," + Math.round(S.view.t1));
    }, 150);
  }
  function viewFromHash() {
    const m = /^#t=(-?\d+(?:\.\d+)?),(-?\d+(?:\.\d+)?)$/.exec(location.hash);
    if (!m) return false;
    const a = Number(m[1]), b = Number(m[2]);
    if (!(b > a)) return false;
    setView(a, b, true);
    return true;
  }

  // ------------------------------------------------------------------ data
  function cacheCovers(rows) {
    const c = S.cache;
    if (!c) return false;
    if (S.view.t0 < c.t0 && c.t0 > 0) return false;
    if (S.view.t1 > c.t1 && c.t1 < S.duration) return false;
    const ratio = nsPerPx() / c.nsPerPx;
    if (ratio < 0.66 || ratio > 2.5) return false;
    for (const row of rows) if (!(row.id in c.rows)) return false;
    return true;
  }
  function requestData() {
    if (!S.meta) return;
    if (cacheCovers(visibleRows())) return;
    if (S.inflight) { S.wanted = true; return; }
    fetchSlices();
  }
  // the first slices are what the user waits for: the side panel's requests go after them
  let firstSlicesDone = null;
  const firstSlices = new Promise((resolve) => { firstSlicesDone = resolve; });
  async function fetchSlices() {
    const rows = visibleRows();
    const span = S.view.t1 - S.view.t0;
    // the view and half a view on each side: panning redraws from this until it runs out
    const t0 = Math.max(0, Math.floor(S.view.t0 - span / 2)), t1 = Math.min(S.duration, Math.ceil(S.view.t1 + span / 2));
    const w = Math.max(1, Math.round((t1 - t0) / nsPerPx()));
    const ids = rows.map((r) => r.id).join(",");
    S.inflight = true;
    const seq = ++S.seq;
    statusEl.textContent = "loading…";
    try {
      const answer = await getJSON("/api/slices?t0=" + t0 + "&t1=" + t1 + "&w=" + w + "&rows=" + ids);
      if (seq === S.seq) {
        S.cache = { t0: answer.t0, t1: answer.t1, nsPerPx: answer.ns_per_px, rows: answer.rows };
        let n = 0;
        for (const d of Object.values(answer.rows)) n += d.s ? d.s.length : d.p.length;
        statusEl.textContent = n + " slices, " + fmtNs(answer.ns_per_px) + "/px";
      }
    } catch (err) {
      statusEl.textContent = "error: " + err.message;
    } finally {
      S.inflight = false;
      redraw();
      firstSlicesDone();
      if (S.wanted) { S.wanted = false; requestData(); }
    }
  }

  // ------------------------------------------------------------------ drawing
  let drawQueued = false;
  function redraw() {
    if (drawQueued) return;
    drawQueued = true;
    requestAnimationFrame(() => { drawQueued = false; draw(); });
  }
  function lowerBound(arr, value) {
    let lo = 0, hi = arr.length;
    while (lo < hi) { const mid = (lo + hi) >> 1; if (arr[mid] <= value) lo = mid + 1; else hi = mid; }
    return lo;
  }
  function draw() {
    const started = performance.now();
    const dpr = window.devicePixelRatio || 1;
    const W = canvas.clientWidth, H = canvas.clientHeight;
    if (canvas.width !== Math.round(W * dpr) || canvas.height !== Math.round(H * dpr)) {
      canvas.width = Math.round(W * dpr); canvas.height = Math.round(H * dpr);
    }
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, W, H);
    if (!S.meta) return;
    clampScroll();
    const codes = S.meta.codes;
    const colors = codes.map(colorOf);
    const c = S.cache;
    ctx.font = "11px system-ui, sans-serif";
    ctx.textBaseline = "middle";
    ctx.save();
    ctx.beginPath(); ctx.rect(0, RULER_H, W, H - RULER_H); ctx.clip();
    const scale = 1 / nsPerPx();
    for (const item of S.layout) {
      const y = RULER_H + item.y - S.scrollY;
      if (y + item.h < RULER_H || y > H) continue;
      if (item.type === "group") {
        ctx.fillStyle = "#eef0f4"; ctx.fillRect(0, y, W, item.h);
        ctx.fillStyle = "#333";
        ctx.fillText((S.collapsed.has(item.name) ? "▸ " : "▾ ") + item.name, 4, y + item.h / 2);
        continue;
      }
      const row = item.row;
      if (S.highlight && S.highlight.row === row.id) { ctx.fillStyle = "#fff3c4"; ctx.fillRect(0, y, W, item.h); }
      const d = c && c.rows[row.id];
      if (d && d.s) {
        const e = d.e, s = d.s, cc = d.c, n = s.length;
        let k = lowerBound(e, S.view.t0);
        const labels = [];
        // Slices of one color that touch (within half a pixel) are drawn as one rectangle,
        // and fillStyle is set only when the color changes: with millions of events a
        // busy row holds thousands of slices, and each fillRect / fillStyle costs.
        let runC = -1, runX = 0, runEnd = -1, style = -1;
        const top = y + 2, h = item.h - 4;
        for (; k < n; k++) {
          if (s[k] > S.view.t1) break;
          const x0 = LABEL_W + (s[k] - S.view.t0) * scale;
          let w = (e[k] - s[k]) * scale;
          const x = Math.max(LABEL_W, x0);
          w = Math.min(W, x0 + w) - x;
          if (w < 1) { if (x - runEnd < 1) continue; w = 1; }
          if (cc[k] === runC && x - runEnd < 0.5) {
            if (x + w > runEnd) runEnd = x + w;
          } else {
            if (runC >= 0) {
              if (runC !== style) { ctx.fillStyle = colors[runC]; style = runC; }
              ctx.fillRect(runX, top, runEnd - runX, h);
            }
            runC = cc[k]; runX = x; runEnd = x + w;
          }
          if (w > 40 && d.l[k]) labels.push([x, w, d.l[k]]);
        }
        if (runC >= 0) {
          if (runC !== style) ctx.fillStyle = colors[runC];
          ctx.fillRect(runX, top, runEnd - runX, h);
        }
        ctx.fillStyle = "#111";
        for (const [x, w, text] of labels) {
          ctx.save(); ctx.beginPath(); ctx.rect(x + 2, y, w - 4, item.h); ctx.clip();
          ctx.fillText(text, x + 3, y + item.h / 2); ctx.restore();
        }
      } else if (d && d.p) {
        drawCounter(d.p, y, item.h, W);
      }
      ctx.fillStyle = "#fafafa"; ctx.fillRect(0, y, LABEL_W, item.h);
      ctx.fillStyle = "#222";
      ctx.save(); ctx.beginPath(); ctx.rect(0, y, LABEL_W - 4, item.h); ctx.clip();
      ctx.fillText(row.name, 14, y + item.h / 2); ctx.restore();
      ctx.strokeStyle = "#eee"; ctx.beginPath(); ctx.moveTo(0, y + item.h - 0.5); ctx.lineTo(W, y + item.h - 0.5); ctx.stroke();
    }
    drawSelection(H);
    ctx.restore();
    drawRuler(W);
    if (S.range) {
      const a = Math.max(LABEL_W, xOf(S.range.t0)), b = Math.min(W, xOf(S.range.t1));
      if (b > a) {
        ctx.fillStyle = "rgba(40,90,200,0.12)"; ctx.fillRect(a, RULER_H, b - a, H - RULER_H);
        ctx.strokeStyle = "rgba(40,90,200,0.8)"; ctx.strokeRect(a + 0.5, RULER_H, b - a - 1, H - RULER_H);
      }
    }
    document.getElementById("range").textContent =
      fmtNs(S.view.t0) + " – " + fmtNs(S.view.t1) + " (" + fmtNs(S.view.t1 - S.view.t0) + ")";
    if (S.firstDraw === null && c) S.firstDraw = performance.now();
    S.frames.push(performance.now() - started);
    if (S.frames.length > 600) S.frames.splice(0, 300);
  }
  function drawCounter(points, y, h, W) {
    if (!points.length) return;
    let max = 0;
    for (const p of points) if (p[1] > max) max = p[1];
    if (max <= 0) max = 1;
    ctx.fillStyle = "rgba(70,110,190,0.35)"; ctx.strokeStyle = "#4668b0";
    ctx.beginPath();
    const base = y + h - 2;
    ctx.moveTo(LABEL_W, base);
    let prevY = base;
    for (const [t, v] of points) {
      const x = Math.max(LABEL_W, Math.min(W, xOf(t)));
      const py = base - (v / max) * (h - 6);
      ctx.lineTo(x, prevY); ctx.lineTo(x, py); prevY = py;
    }
    ctx.lineTo(W, prevY); ctx.lineTo(W, base); ctx.closePath(); ctx.fill(); ctx.stroke();
    ctx.fillStyle = "#333";
    ctx.fillText(String(points[points.length - 1][1]) + " (max " + max + ")", W - 140, y + 8);
  }
  function rowY(rowId) {
    const row = S.rowById.get(rowId);
    if (!row || row.y === null || row.y === undefined) return null;
    return RULER_H + row.y - S.scrollY;
  }
  function drawSelection(H) {
    for (const [mark, color] of [[S.highlight, "#e8590c"], [S.selected, "#000"]]) {
      if (!mark || mark.start === undefined) continue;
      const y = rowY(mark.row);
      if (y === null) continue;
      const a = xOf(mark.start), b = Math.max(a + 2, xOf(mark.end));
      ctx.lineWidth = 2; ctx.strokeStyle = color;
      ctx.strokeRect(a, y + 1, b - a, ROW_H - 2); ctx.lineWidth = 1;
    }
    const d = S.details;
    if (d && d.waker && d.waker.row !== null && d.waker.row !== undefined) {
      const ya = rowY(d.waker.row), yb = rowY(d.row);
      if (ya !== null && yb !== null) {
        drawArrow(xOf(d.waker.time), ya + ROW_H / 2, xOf(d.end), yb + ROW_H / 2);
      }
    }
  }
  function drawArrow(x0, y0, x1, y1) {
    ctx.strokeStyle = "#c2185b"; ctx.fillStyle = "#c2185b"; ctx.lineWidth = 1.5;
    ctx.beginPath(); ctx.moveTo(x0, y0);
    ctx.bezierCurveTo(x0 + 30, y0, x1 - 30, y1, x1, y1); ctx.stroke();
    const angle = Math.atan2(y1 - y0, Math.max(1, x1 - x0) + 30);
    ctx.beginPath(); ctx.moveTo(x1, y1);
    ctx.lineTo(x1 - 8 * Math.cos(angle - 0.4), y1 - 8 * Math.sin(angle - 0.4));
    ctx.lineTo(x1 - 8 * Math.cos(angle + 0.4), y1 - 8 * Math.sin(angle + 0.4));
    ctx.closePath(); ctx.fill(); ctx.lineWidth = 1;
    ctx.beginPath(); ctx.arc(x0, y0, 3, 0, 2 * Math.PI); ctx.fill();
  }
  function niceStep(ns) {
    const p = Math.pow(10, Math.floor(Math.log10(ns)));
    for (const m of [1, 2, 5, 10]) if (p * m >= ns) return p * m;
    return p * 10;
  }
  function drawRuler(W) {
    ctx.fillStyle = "#f4f4f6"; ctx.fillRect(0, 0, W, RULER_H);
    ctx.strokeStyle = "#bbb"; ctx.beginPath(); ctx.moveTo(0, RULER_H - 0.5); ctx.lineTo(W, RULER_H - 0.5); ctx.stroke();
    const step = niceStep(nsPerPx() * 100);
    ctx.fillStyle = "#333";
    for (let t = Math.ceil(S.view.t0 / step) * step; t <= S.view.t1; t += step) {
      const x = xOf(t);
      if (x < LABEL_W) continue;
      ctx.beginPath(); ctx.moveTo(x + 0.5, RULER_H - 8); ctx.lineTo(x + 0.5, RULER_H); ctx.stroke();
      ctx.fillText(fmtNs(t), x + 3, RULER_H / 2);
    }
    ctx.fillStyle = "#555"; ctx.fillText(S.meta.rows.length + " rows", 6, RULER_H / 2);
  }

  // ------------------------------------------------------------------ hit testing
  function itemAt(y) {
    const cy = y - RULER_H + S.scrollY;
    for (const item of S.layout) if (cy >= item.y && cy < item.y + item.h) return item;
    return null;
  }
  function sliceAt(row, x) {
    const d = S.cache && S.cache.rows[row.id];
    if (!d || !d.s) return null;
    const t = tOf(x), tol = 2 * nsPerPx();
    let best = null;
    let k = Math.max(0, lowerBound(d.e, t - tol) - 1);
    for (; k < d.s.length && d.s[k] <= t + tol; k++) {
      if (d.e[k] + tol < t) continue;
      const dist = t < d.s[k] ? d.s[k] - t : t > d.e[k] ? t - d.e[k] : 0;
      if (best === null || dist < best.dist) best = { k, dist };
    }
    return best && { d, k: best.k };
  }

  // ------------------------------------------------------------------ side panel
  function kvTable(pairs) {
    const table = el("table", { class: "kv" });
    for (const [k, v] of pairs) {
      if (v === undefined || v === null || v === "") continue;
      const tr = el("tr");
      tr.append(el("td", {}, k));
      const td = el("td");
      if (v instanceof Node) td.append(v); else td.textContent = String(v);
      tr.append(td); table.append(tr);
    }
    return table;
  }
  function stackList(frames) {
    const ol = el("ol", { class: "stack" });
    for (const f of frames) ol.append(el("li", {}, f.function + " (" + f.file + ":" + f.line + ")"));
    return ol;
  }
  function swatch(code) {
    const span = el("span");
    const sw = el("span", { class: "swatch" }); sw.style.background = colorOf(code);
    span.append(sw, document.createTextNode(code));
    const note = S.meta && S.meta.notes ? S.meta.notes[code] : undefined;
    if (note) span.title = note;  // what the state means (the server's words)
    return span;
  }
  function showLegend() {
    // every state code but the samples' (they take their state's colour)
    const box = document.getElementById("legend");
    box.replaceChildren();
    for (const code of S.meta.codes) {
      if (code.startsWith("sample:")) continue;
      const item = swatch(code);
      item.className = "legend-item";
      item.dataset.code = code;
      box.append(item);
    }
  }
  async function selectSlice(rowId, i) {
    const d = await getJSON("/api/slice?row=" + rowId + "&i=" + i);
    if (!d) return;
    S.selected = { row: rowId, i, start: d.start, end: d.end };
    S.details = d;
    showDetails(d);
    redraw();
  }
  function showDetails(d) {
    const box = document.getElementById("details");
    box.replaceChildren();
    box.append(kvTable([
      ["row", d.row_name], ["task", d.task], ["state", swatch(d.state)], ["what", d.label], ["duration", fmtNs(d.duration)],
      ["start", fmtNs(d.start)], ["end", fmtNs(d.end)], ["reason", d.reason], ["detail", d.detail],
      ["object", d.object ? "0x" + Number(d.object).toString(16) : null],
    ]));
    if (d.waker) {
      const p = el("p", { class: "waker" });
      p.append(document.createTextNode("Woken by "), el("strong", {}, d.waker.thread),
        document.createTextNode(" at " + fmtNs(d.waker.time) + (d.waker.reason ? " (" + d.waker.reason + ")" : "")));
      if (d.waker.row !== null && d.waker.row !== undefined) {
        const go = el("button", { class: "link", type: "button" }, "go to the waking slice");
        go.addEventListener("click", () => { ensureRowVisible(d.waker.row); selectSlice(d.waker.row, d.waker.i); });
        p.append(document.createTextNode(" "), go);
      }
      box.append(p);
    } else if (d.state && d.state.startsWith("blocked")) {
      box.append(el("p", { class: "hint" }, "No wake-up recorded for this wait."));
    }
    if (d.holder) {
      const p = el("p", { class: "holder" });
      p.append(document.createTextNode("The lock was held by "), el("strong", {}, d.holder.thread),
        document.createTextNode(" when this wait began"));
      if (d.holder.row !== null && d.holder.row !== undefined) {
        const go = el("button", { class: "link", type: "button" }, "go to the holder then");
        go.addEventListener("click", () => { ensureRowVisible(d.holder.row); selectSlice(d.holder.row, d.holder.i); });
        p.append(document.createTextNode(" "), go);
      }
      box.append(p);
    }
    if (d.stack_start && d.stack_start.length) { box.append(el("h3", {}, "Stack at start")); box.append(stackList(d.stack_start)); }
    if (d.stack_end && d.stack_end.length) { box.append(el("h3", {}, "Stack at end")); box.append(stackList(d.stack_end)); }
    if (d.logs && d.logs.length) {
      box.append(el("h3", {}, "Log"));
      const ol = el("ol", { class: "stack" });
      for (const log of d.logs) ol.append(el("li", {}, fmtNs(log.time) + " [" + log.category + "] " + log.message));
      box.append(ol);
    }
  }
  async function showSummary(row, d, k) {
    S.selected = null; S.details = null;
    const box = document.getElementById("details");
    box.replaceChildren();
    const r = await getJSON("/api/range?t0=" + d.s[k] + "&t1=" + d.e[k] + "&rows=" + row.id);
    const pairs = [["row", row.name], ["slices", d.n[k] + " merged (zoom in to see them)"], ["span", fmtNs(d.e[k] - d.s[k])]];
    const totals = r.rows.length ? r.rows[0].totals : {};
    for (const [code, ns] of Object.entries(totals).sort((a, b) => b[1] - a[1])) pairs.push([code, fmtNs(ns)]);
    box.append(kvTable(pairs));
  }

  async function selectRange(t0, t1) {
    S.range = { t0, t1 };
    redraw();
    const r = await getJSON("/api/range?t0=" + Math.round(t0) + "&t1=" + Math.round(t1));
    const box = document.getElementById("range-details");
    document.getElementById("range-section").hidden = false;
    box.replaceChildren();
    box.append(kvTable([["range", fmtNs(r.t0) + " – " + fmtNs(r.t1)], ["duration", fmtNs(r.t1 - r.t0)], ["samples", r.samples]]));
    const totals = Object.entries(r.totals).sort((a, b) => b[1] - a[1]);
    box.append(el("h3", {}, "Time per state (all threads)"));
    box.append(kvTable(totals.map(([code, ns]) => [code, fmtNs(ns)])));
    box.append(el("h3", {}, "Flame graph"));
    box.append(flameGraph(r.flame));
    const top = r.rows.slice().sort((a, b) => sum(b.totals) - sum(a.totals)).slice(0, 30);
    if (top.length) {
      box.append(el("h3", {}, "Per row"));
      const table = el("table", { class: "kv" });
      for (const item of top) {
        const tr = el("tr");
        tr.append(el("td", {}, item.name));
        const parts = Object.entries(item.totals).sort((a, b) => b[1] - a[1]).map(([c, ns]) => c + " " + fmtNs(ns));
        tr.append(el("td", {}, parts.join(", ")));
        table.append(tr);
      }
      box.append(table);
    }
  }
  function sum(obj) { let s = 0; for (const v of Object.values(obj)) s += v; return s; }
  function flameGraph(root) {
    const box = el("div", { class: "flame" });
    if (!root || !root.value) { box.append(el("p", { class: "hint" }, "No samples in this range.")); return box; }
    const width = 355, H = 16;
    let depthMax = 0;
    function walk(node, x, depth) {
      const w = (node.value / root.value) * width;
      if (w < 1) return;
      depthMax = Math.max(depthMax, depth);
      const div = el("div", { class: "frame" }, node.name.split(" (")[0]);
      div.title = node.name + " — " + fmtNs(node.value);
      div.style.left = x + "px"; div.style.width = w + "px"; div.style.top = depth * H + "px";
      div.style.background = hashColor(node.name.split(" (")[0]);
      div.dataset.name = node.name;
      box.append(div);
      let cx = x;
      for (const child of node.children) { walk(child, cx, depth + 1); cx += (child.value / root.value) * width; }
    }
    walk(root, 0, 0);
    box.style.height = (depthMax + 1) * H + "px";
    return box;
  }

  function zoomTo(t0, t1) {
    const span = Math.max(MIN_SPAN, t1 - t0);
    setView(t0 - span * 0.25, t1 + span * 0.25);
  }
  function ensureRowVisible(rowId) {
    const row = S.rowById.get(rowId);
    if (!row) return;
    if (S.collapsed.has(row.group)) { S.collapsed.delete(row.group); buildLayout(); }
    const viewH = canvas.clientHeight - RULER_H;
    if (row.y < S.scrollY || row.y + row.h > S.scrollY + viewH) S.scrollY = row.y - viewH / 3;
    clampScroll();
    requestData();
    redraw();
  }

  async function loadFindings() {
    // the timeline is served while the rules still run: say so, and ask again
    const list = document.getElementById("findings");
    let findings = await getJSON("/api/findings");
    while (!Array.isArray(findings) && findings.error === undefined) {
      list.replaceChildren(el("li", { class: "hint" }, "Finding the problems…"));
      await new Promise((resolve) => setTimeout(resolve, 300));
      findings = await getJSON("/api/findings");
    }
    list.replaceChildren();
    if (!Array.isArray(findings)) {
      list.append(el("li", { class: "hint" }, "No findings: " + findings.error));
      return;
    }
    if (!findings.length) list.append(el("li", { class: "hint" }, "No findings."));
    for (const f of findings) {
      const li = el("li", { class: "finding" });
      li.append(el("span", { class: "severity-" + f.severity }, f.score + " "));
      const a = el("a", { href: "#t=" + Math.round(f.at[0]) + "," + Math.round(f.at[1]), class: "finding-link" }, f.title);
      a.addEventListener("click", (ev) => { ev.preventDefault(); goToFinding(f); });
      li.append(a);
      if (f.culprit) li.append(el("div", { class: "culprit" }, "culprit: " + f.culprit.function + " (" + f.culprit.file + ":" + f.culprit.line + ")"));
      if (f.hint) li.append(el("div", { class: "hint" }, f.hint));
      list.append(li);
    }
  }
  function goToFinding(f) {
    zoomTo(f.at[0], f.at[1]);
    if (f.row !== null && f.row !== undefined) {
      S.highlight = { row: f.row, i: f.i, start: f.at[0], end: f.at[1] };
      ensureRowVisible(f.row);
      selectSlice(f.row, f.i);
    }
  }

  let searchTimer = null;
  function onSearch() {
    clearTimeout(searchTimer);
    searchTimer = setTimeout(runSearch, 200);
  }
  async function runSearch() {
    const q = document.getElementById("search").value;
    const section = document.getElementById("search-section");
    const list = document.getElementById("search-results");
    list.replaceChildren();
    if (!q.trim()) { section.hidden = true; return; }
    const hits = await getJSON("/api/search?q=" + encodeURIComponent(q));
    section.hidden = false;
    if (!hits.length) list.append(el("li", { class: "hint" }, "Nothing found."));
    for (const h of hits) {
      const li = el("li", { class: "search-hit" });
      const a = el("a", { href: "#t=" + Math.round(h.t0) + "," + Math.round(h.t1) }, h.text);
      a.addEventListener("click", (ev) => {
        ev.preventDefault();
        zoomTo(h.t0, h.t1);
        if (h.row !== null && h.row !== undefined) {
          ensureRowVisible(h.row);
          S.highlight = { row: h.row };
          if (h.i !== undefined) selectSlice(h.row, h.i);
        }
        redraw();
      });
      li.append(el("span", { class: "hint" }, h.kind + " "), a, el("div", { class: "hint" }, h.detail));
      list.append(li);
    }
  }

  async function loadHistograms() {
    const groups = await getJSON("/api/histograms");
    if (!groups.length) return;
    document.getElementById("histograms-section").hidden = false;
    const box = document.getElementById("histograms");
    for (const g of groups.slice(0, 12)) {
      box.append(el("h3", {}, g.name + " (" + g.runs.length + " runs)"));
      box.append(histogram(g.runs));
    }
  }
  function histogram(runs) {
    const durations = runs.map((r) => r[0]);
    const lo = Math.max(1, Math.min(...durations)), hi = Math.max(lo + 1, Math.max(...durations));
    const BINS = 24, llo = Math.log(lo), lhi = Math.log(hi) + 1e-9;
    const bins = Array.from({ length: BINS }, () => []);
    for (const r of runs) bins[Math.min(BINS - 1, Math.floor(((Math.log(Math.max(1, r[0])) - llo) / (lhi - llo)) * BINS))].push(r);
    const sorted = durations.slice().sort((a, b) => a - b);
    const p95 = sorted[Math.floor(0.95 * (sorted.length - 1))];
    const maxCount = Math.max(...bins.map((b) => b.length));
    const wrap = el("div");
    const bars = el("div", { class: "bars" });
    bins.forEach((bin, n) => {
      const bar = el("div", { class: "bar" });
      bar.style.height = bin.length ? Math.max(2, (bin.length / maxCount) * 100) + "%" : "0";
      if (!bin.length) { bar.style.visibility = "hidden"; bars.append(bar); return; }
      const slowest = bin.reduce((a, b) => (b[0] > a[0] ? b : a));
      if (slowest[0] > p95 && runs.length > 1) bar.classList.add("outlier");
      bar.title = bin.length + " run(s), up to " + fmtNs(slowest[0]) + ": click to see the slowest";
      bar.dataset.bin = String(n);
      bar.addEventListener("click", () => {
        zoomTo(slowest[1], slowest[2]);
        if (slowest[3] >= 0) {
          S.highlight = { row: slowest[3], i: slowest[4], start: slowest[1], end: slowest[2] };
          ensureRowVisible(slowest[3]);
          selectSlice(slowest[3], slowest[4]);
        }
      });
      bars.append(bar);
    });
    const axis = el("div", { class: "axis" });
    axis.append(el("span", {}, fmtNs(lo)), el("span", {}, fmtNs(hi)));
    wrap.append(bars, axis);
    return wrap;
  }

  // ------------------------------------------------------------------ input
  function onWheel(ev) {
    ev.preventDefault();
    const rect = canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left;
    if (x < LABEL_W || ev.ctrlKey === false && Math.abs(ev.deltaX) > Math.abs(ev.deltaY)) {
      if (x < LABEL_W) { S.scrollY += ev.deltaY; clampScroll(); requestData(); redraw(); return; }
      const dt = ev.deltaX * nsPerPx();
      setView(S.view.t0 + dt, S.view.t1 + dt);
      return;
    }
    const factor = Math.exp(ev.deltaY * (ev.deltaMode === 1 ? 0.05 : 0.002));
    const t = tOf(x);
    setView(t - (t - S.view.t0) * factor, t + (S.view.t1 - t) * factor);
  }
  function onDown(ev) {
    if (ev.button !== 0) return;
    timeline.focus();
    const rect = canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    S.drag = { x, y, x0: x, y0: y, t: tOf(x), shift: ev.shiftKey, moved: false, view: { ...S.view }, scrollY: S.scrollY };
    canvas.setPointerCapture(ev.pointerId);
  }
  function onMove(ev) {
    const dr = S.drag;
    if (!dr) return;
    const rect = canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    if (Math.abs(x - dr.x0) + Math.abs(y - dr.y0) > 3) dr.moved = true;
    if (!dr.moved) return;
    if (dr.shift) {
      const t = tOf(x);
      S.range = { t0: Math.min(dr.t, t), t1: Math.max(dr.t, t) };
      redraw();
    } else {
      const dt = (x - dr.x0) * ((dr.view.t1 - dr.view.t0) / trackWidth());
      S.scrollY = dr.scrollY - (y - dr.y0);
      setView(dr.view.t0 - dt, dr.view.t1 - dt);
    }
  }
  function onUp(ev) {
    const dr = S.drag;
    S.drag = null;
    if (!dr) return;
    const rect = canvas.getBoundingClientRect();
    const x = ev.clientX - rect.left, y = ev.clientY - rect.top;
    if (dr.moved) {
      if (dr.shift && S.range && S.range.t1 > S.range.t0) selectRange(S.range.t0, S.range.t1);
      return;
    }
    if (y < RULER_H) return;
    const item = itemAt(y);
    if (!item) return;
    if (item.type === "group") {
      if (S.collapsed.has(item.name)) S.collapsed.delete(item.name); else S.collapsed.add(item.name);
      buildLayout(); clampScroll(); requestData(); redraw();
      return;
    }
    if (x < LABEL_W) return;
    const hit = sliceAt(item.row, x);
    if (!hit) return;
    if (hit.d.i[hit.k] >= 0) selectSlice(item.row.id, hit.d.i[hit.k]);
    else showSummary(item.row, hit.d, hit.k);
  }
  function onKey(ev, down) {
    if (ev.target && ev.target.tagName === "INPUT") return;
    const key = ev.key.toLowerCase();
    if (down && key === "escape") { S.range = null; S.selected = null; S.details = null; S.highlight = null; redraw(); return; }
    if (!"wasd".includes(key) || key.length !== 1) return;
    ev.preventDefault();
    if (down) { if (!S.keys.size) requestAnimationFrame(keyLoop); S.keys.add(key); } else S.keys.delete(key);
  }
  function keyLoop() {
    if (!S.keys.size) return;
    const span = S.view.t1 - S.view.t0, mid = (S.view.t0 + S.view.t1) / 2;
    let t0 = S.view.t0, t1 = S.view.t1;
    if (S.keys.has("w")) { t0 = mid - span * 0.46; t1 = mid + span * 0.46; }
    if (S.keys.has("s")) { t0 = mid - span * 0.54; t1 = mid + span * 0.54; }
    const shift = (S.keys.has("d") ? 1 : 0) - (S.keys.has("a") ? 1 : 0);
    t0 += shift * span * 0.03; t1 += shift * span * 0.03;
    setView(t0, t1);
    requestAnimationFrame(keyLoop);
  }

  // ------------------------------------------------------------------ start
  async function start() {
    // the server answers while it still analyses the trace: show how far, ask again
    let meta = await getJSON("/api/meta");
    while (meta.loading !== undefined && meta.error === undefined) {
      statusEl.textContent = "analysing the trace… " + Math.round(100 * meta.loading) + "%";
      await new Promise((resolve) => setTimeout(resolve, 150));
      meta = await getJSON("/api/meta");
    }
    if (meta.error !== undefined) throw new Error(meta.error);
    S.meta = meta;
    S.duration = meta.duration;
    S.rows = meta.rows;
    for (const row of S.rows) S.rowById.set(row.id, row);
    const groupSizes = {};
    for (const row of S.rows) groupSizes[row.group] = (groupSizes[row.group] || 0) + 1;
    for (const [group, n] of Object.entries(groupSizes)) if (COLLAPSED_GROUPS.has(group) || (group.startsWith("tasks: ") && n > 40)) S.collapsed.add(group);
    document.getElementById("trace-name").textContent = meta.name;
    showLegend();
    document.title = "pyflight timeline — " + meta.name;
    buildLayout();
    if (!viewFromHash()) setView(0, S.duration, true);
    canvas.addEventListener("wheel", onWheel, { passive: false });
    canvas.addEventListener("pointerdown", onDown);
    canvas.addEventListener("pointermove", onMove);
    canvas.addEventListener("pointerup", onUp);
    window.addEventListener("keydown", (ev) => onKey(ev, true));
    window.addEventListener("keyup", (ev) => onKey(ev, false));
    window.addEventListener("blur", () => S.keys.clear());
    window.addEventListener("resize", () => { requestData(); redraw(); });
    window.addEventListener("hashchange", viewFromHash);
    document.getElementById("search").addEventListener("input", onSearch);
    await firstSlices;
    await Promise.all([loadFindings(), loadHistograms()]);
    S.ready = true;
  }

  // what the tests and the benchmark drive: read-only views of the state, and a way in
  window.pyflightViewer = {
    get view() { return { t0: S.view.t0, t1: S.view.t1 }; },
    get ready() { return S.ready && S.cache !== null && !S.inflight; },
    get frames() { return S.frames.slice(); },
    get firstDraw() { return S.firstDraw; },  // performance.now() of the first draw with slices
    get details() { return S.details; },
    get range() { return S.range; },
    setView: (t0, t1) => setView(t0, t1),
    rowId: (name) => { const row = S.rows.find((r) => r.name === name); return row ? row.id : null; },
    showRow: (id) => ensureRowVisible(id),
    // page coordinates of the middle of raw slice i of a row, if drawn
    slicePoint: (rowId, i) => {
      const d = S.cache && S.cache.rows[rowId];
      const y = rowY(rowId);
      if (!d || !d.s || y === null) return null;
      const k = d.i.indexOf(i);
      if (k < 0) return null;
      const rect = canvas.getBoundingClientRect();
      const a = Math.max(LABEL_W, xOf(d.s[k])), b = Math.min(canvas.clientWidth, xOf(d.e[k]));
      if (b <= a) return null;
      return { x: rect.left + (a + b) / 2, y: rect.top + y + ROW_H / 2 };
    },
    drawNow: () => draw(),
  };
  start().catch((err) => { statusEl.textContent = "error: " + err.message; });
})();
