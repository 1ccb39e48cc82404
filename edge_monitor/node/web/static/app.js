// edge-monitor node page: live state, score chart, log-mel spectrogram, events with clips and labels.
// No build step, no CDN: uPlot (vendored) draws the chart; everything else is plain DOM and <canvas>.
//
// Why Server-Sent Events and not WebSocket or polling: one HTTP connection carries state, spectrum rows
// and events, pushed by the server as they happen; the browser reconnects by itself (retry: 3000); no
// library on either side. When SSE fails (a proxy that buffers, a closed stream), the page falls back to
// polling /api/state, /api/events?since= and /api/spectrum, and tries SSE again later.
"use strict";
(function () {
  const TOKEN = new URLSearchParams(location.search).get("token");
  const WINDOW_S = 600;          // chart span: the last 10 minutes
  const SPEC_COLS = 320;         // spectrogram columns kept on screen (one per log-mel frame)
  const STATE_WORD = {normal: "normal", anomaly: "ANOMALY", stopped: "stopped",
    sensor_fault: "sensor fault", starting: "starting"};
  const STATE_CLASS = {normal: "ok", anomaly: "bad", stopped: "idle", sensor_fault: "warn", starting: "idle"};
  const monitors = new Map();    // name → {el, plot, data, spec, ...}
  const shown = new Set();       // event seqs already on the page
  let nextSeq = 0;               // highest event seq seen
  let mode = "sse";
  let es = null;
  let lastMessage = 0;
  let pollTimer = null;

  // Every URL the page builds carries the token (EventSource, <audio> and <img> cannot set headers).
  function url(path, params) {
    const q = new URLSearchParams(params || {});
    if (TOKEN) q.set("token", TOKEN);
    const s = q.toString();
    return path + (s ? "?" + s : "");
  }
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function fmt(x, d) { return (x === null || x === undefined || !isFinite(x)) ? "–" : Number(x).toFixed(d === undefined ? 2 : d); }
  function clock(t) { return new Date(t * 1000).toLocaleTimeString(); }
  async function getJSON(path, params) {
    const r = await fetch(url(path, params), {cache: "no-store"});
    if (!r.ok) throw new Error(path + ": HTTP " + r.status);
    return r.json();
  }

  // ---- monitors --------------------------------------------------------------------------------------
  function card(m) {
    const c = el("div", "card");
    c.dataset.monitor = m.name;
    const h = el("h3");
    h.append(el("span", "", m.name), el("span", "what", m.machine_type + " " + m.machine_id));
    const state = el("span", "state idle", "…");
    const score = el("div", "score");
    const chart = el("div", "chart");
    const spec = el("canvas", "spec");
    spec.width = SPEC_COLS; spec.height = m.n_mels || 128;
    const meter = el("div", "meter"); const bar = el("div"); meter.append(bar);
    const level = el("div", "small");
    const health = el("div", "small");
    c.append(h, state, score, chart, el("div", "small", "Sound (log-mel, low pitch at the bottom, newest at the right)"),
      spec, meter, level, health);
    document.getElementById("monitors").append(c);
    const data = [[], [], []];
    const opts = {width: 300, height: 150, legend: {show: true, live: false}, cursor: {show: false},
      scales: {x: {time: true}}, axes: [{}, {size: 40}],
      series: [{}, {label: "score", stroke: "#1565c0", width: 1.5},
        {label: "threshold", stroke: "#c62828", width: 1.5, dash: [6, 4]}]};
    const plot = new uPlot(opts, data, chart);
    const mon = {c, state, score, chart, spec, ctx: spec.getContext("2d"), bar, level, health, plot, data,
      frame: 0, lo: -80, hi: -20};
    new ResizeObserver(() => plot.setSize({width: Math.max(200, chart.clientWidth), height: 150})).observe(chart);
    monitors.set(m.name, mon);
    return mon;
  }
  function monitor(m) { return monitors.get(m.name) || card(m); }
  function trim(data, now) {
    let i = 0;
    while (i < data[0].length && data[0][i] < now - WINDOW_S) i++;
    if (i) for (const s of data) s.splice(0, i);
  }
  function showMonitor(m, now) {
    const mon = monitor(m);
    mon.state.textContent = STATE_WORD[m.state] || m.state;
    mon.state.className = "state " + (STATE_CLASS[m.state] || "idle");
    const ratio = (m.threshold > 0 && m.score !== null) ? m.score / m.threshold : null;
    mon.score.textContent = "score " + fmt(m.score) + " / threshold " + fmt(m.threshold) +
      (ratio !== null ? "  (" + Math.round(ratio * 100) + " % of the alarm level)" : "") +
      " · anomalies so far " + (m.anomalies_total || 0);
    showLevel(mon, m.level_dbfs);
    const h = (m.health || []).length ? "needs attention: " + m.health.join(", ").replace(/_/g, " ") : "input ok";
    mon.health.textContent = h + " · clipped " + fmt(100 * (m.clip_fraction || 0), 1) + " % · dropped blocks " +
      (m.drops || 0) + " · inference " + fmt(m.inference_ms) + " ms";
    if (m.history) {                       // /api/state: the whole last 10 minutes
      mon.data[0] = m.history.map(p => p[0]); mon.data[1] = m.history.map(p => p[1]);
      mon.data[2] = m.history.map(p => p[2]);
    } else if (m.point) {                  // SSE state: one new point
      const d = mon.data;
      if (!d[0].length || m.point[0] > d[0][d[0].length - 1]) { d[0].push(m.point[0]); d[1].push(m.point[1]); d[2].push(m.point[2]); }
    }
    trim(mon.data, now);
    mon.plot.setData(mon.data);
  }
  function showLevel(mon, db) {
    if (db === null || db === undefined) return;
    const pct = Math.max(0, Math.min(100, (db + 90) / 90 * 100));   // -90 dBFS … 0 dBFS
    mon.bar.style.width = pct + "%";
    mon.level.textContent = "level " + fmt(db, 1) + " dBFS" + (db > -3 ? " — too loud, move the microphone away" :
      db < -70 ? " — very quiet, is the microphone connected?" : "");
  }
  function showState(s) {
    document.getElementById("node").textContent = "edge-monitor · " + s.node + " · v" + s.version;
    const bits = [];
    if (s.mqtt) bits.push(s.mqtt.enabled ? (s.mqtt.connected ? "MQTT connected" : "MQTT DISCONNECTED") +
      " · sent " + s.mqtt.published + " · waiting " + s.mqtt.outbox_depth + " · dropped " + s.mqtt.dropped : "MQTT off");
    if (s.storage) bits.push(s.storage.ok ? "storage ok" : "STORAGE PROBLEM");
    if (s.storage) bits.push("clips " + (s.storage.evidence_bytes / 1e6).toFixed(1) + " MB");
    const nh = document.getElementById("nodehealth");
    nh.textContent = bits.join(" · ");
    nh.className = "small " + ((s.mqtt && s.mqtt.enabled && !s.mqtt.connected) || (s.storage && !s.storage.ok) ? "pill bad" : "");
    nh.style.color = "#cfd";
    for (const m of s.monitors || []) showMonitor(m, s.time);
  }

  // ---- spectrogram: fixed colour map, scale follows the signal slowly ---------------------------------
  const CMAP = (function () {            // dark blue → purple → orange → yellow, 256 entries
    const stops = [[0, 0, 4], [80, 18, 123], [182, 54, 121], [251, 136, 97], [252, 253, 191]];
    const out = new Uint8ClampedArray(256 * 3);
    for (let i = 0; i < 256; i++) {
      const f = i / 255 * (stops.length - 1), k = Math.min(stops.length - 2, Math.floor(f)), t = f - k;
      for (let j = 0; j < 3; j++) out[i * 3 + j] = stops[k][j] + (stops[k + 1][j] - stops[k][j]) * t;
    }
    return out;
  })();
  function showSpectrum(msg) {
    const mon = monitors.get(msg.monitor);
    if (!mon) return;
    if (msg.frame !== undefined) mon.frame = msg.frame;
    showLevel(mon, msg.level_dbfs);
    const rows = msg.rows || [];
    if (!rows.length) return;
    const ctx = mon.ctx, w = mon.spec.width, h = mon.spec.height, n = Math.min(rows.length, w);
    ctx.drawImage(mon.spec, -n, 0);                         // scroll left by the new columns
    const img = ctx.createImageData(n, h);
    for (let c = 0; c < n; c++) {
      const row = rows[rows.length - n + c];
      let lo = Infinity, hi = -Infinity;
      for (const v of row) { if (v < lo) lo = v; if (v > hi) hi = v; }
      mon.lo += (lo - mon.lo) * 0.02; mon.hi += (hi - mon.hi) * 0.02;
      const span = Math.max(1e-6, mon.hi - mon.lo);
      for (let b = 0; b < h; b++) {
        const v = row[b] === undefined ? mon.lo : row[b];
        const i = Math.max(0, Math.min(255, Math.round((v - mon.lo) / span * 255))) * 3;
        const p = ((h - 1 - b) * n + c) * 4;                // low mel bands at the bottom
        img.data[p] = CMAP[i]; img.data[p + 1] = CMAP[i + 1]; img.data[p + 2] = CMAP[i + 2]; img.data[p + 3] = 255;
      }
    }
    ctx.putImageData(img, w - n, 0);
  }

  // ---- events ----------------------------------------------------------------------------------------
  function describe(e) {
    const a = e.anomaly || {};
    const bands = e.explanation && e.explanation.bands && e.explanation.bands.length ?
      " · loudest change " + e.explanation.bands.map(b => Math.round(b.hz[0]) + "–" + Math.round(b.hz[1]) + " Hz (" +
        Math.round(100 * b.share) + " %)").join(", ") : "";
    switch (e.type) {
      case "anomaly_start": return "Anomaly started: score " + fmt(e.score) + " over threshold " + fmt(e.threshold) + bands;
      case "anomaly_update": return "Anomaly continues: " + fmt(a.duration_s, 1) + " s, peak score " + fmt(a.peak_score) + bands;
      case "anomaly_end": return "Anomaly ended after " + fmt(a.duration_s, 1) + " s (" + String(a.reason || "").replace(/_/g, " ") +
        "), peak score " + fmt(a.peak_score) + " vs threshold " + fmt(e.threshold) + bands;
      case "health": return (e.health.status === "bad" ? "Input problem: " : "Input ok again: ") + e.health.message;
      case "machine_stopped": return "Machine stopped: " + e.machine_state.message;
      case "machine_running": return "Machine running again: " + e.machine_state.message;
      default: return e.type;
    }
  }
  function showEvent(e) {
    if (shown.has(e.seq)) return;
    shown.add(e.seq);
    if (e.seq > nextSeq) nextSeq = e.seq;
    const li = el("li", e.type);
    li.dataset.seq = e.seq; li.dataset.type = e.type; li.dataset.id = e.id;
    li.dataset.shownMs = Date.now();      // read by tests/test_web_page.py to time event → row
    li.append(el("div", "small", new Date(e.time_ms).toLocaleString() + " · " + e.monitor), el("div", "", describe(e)));
    const ev = e.evidence;
    if (ev && ev.wav) {
      const clip = el("div", "clip");
      const audio = el("audio"); audio.controls = true; audio.preload = "metadata"; audio.src = url(ev.wav);
      const img = el("img"); img.loading = "lazy"; img.alt = "log-mel picture of the clip"; img.src = url(ev.png);
      const label = el("span", "small label");
      const buttons = ["normal", "anomaly"].map(v => {
        const b = el("button", "", v); b.type = "button"; b.dataset.verdict = v;
        b.onclick = () => sendLabel(e.id, v, buttons, label);
        return b;
      });
      showLabel(ev.label, buttons, label);
      clip.append(audio, el("span", "small", "Was it?"), ...buttons, label);
      li.append(clip, img);
    }
    const list = document.getElementById("events");
    let before = list.firstChild;                      // newest first
    while (before && Number(before.dataset.seq) > e.seq) before = before.nextSibling;
    list.insertBefore(li, before);
    while (list.children.length > 200) list.lastChild.remove();
  }
  function showLabel(v, buttons, label) {
    for (const b of buttons) b.classList.toggle("on", b.dataset.verdict === v);
    label.textContent = v ? "labelled " + v : "not labelled yet";
    label.dataset.label = v || "";
  }
  async function sendLabel(id, verdict, buttons, label) {
    label.textContent = "saving…";
    try {
      const r = await fetch(url("/api/label"), {method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify({id: id, verdict: verdict})});
      if (!r.ok) throw new Error("HTTP " + r.status);
      showLabel((await r.json()).verdict, buttons, label);
    } catch (err) { label.textContent = "not saved (" + err.message + ")"; }
  }

  // ---- transport: SSE, polling fallback ----------------------------------------------------------------
  function link(text, cls) { const l = document.getElementById("link"); l.textContent = text; l.className = "pill " + cls; }
  function startSSE() {
    mode = "sse";
    es = new EventSource(url("/api/stream"));
    const seen = () => { lastMessage = Date.now(); link("live", "ok"); };
    es.addEventListener("state", m => { seen(); showState(JSON.parse(m.data)); });
    es.addEventListener("spectrum", m => { seen(); showSpectrum(JSON.parse(m.data)); });
    es.addEventListener("event", m => { seen(); showEvent(JSON.parse(m.data)); });
    es.onopen = () => { catchUp(); };              // events missed while reconnecting
    es.onerror = () => {
      link("reconnecting…", "warn");
      if (es.readyState === EventSource.CLOSED) startPolling();   // the browser gave up (401, wrong type, …)
    };
    lastMessage = Date.now();
  }
  function startPolling() {
    if (es) { es.close(); es = null; }
    if (mode === "poll") return;
    mode = "poll";
    let ticks = 0;
    const tick = async () => {
      try {
        const s = await getJSON("/api/state");
        showState(s);
        await catchUp();
        for (const name of monitors.keys()) {
          const sp = await getJSON("/api/spectrum", {monitor: name, since: monitors.get(name).frame});
          showSpectrum(sp);
        }
        link("live (polling)", "warn");
      } catch (err) { link("no connection to the node", "bad"); }
      if (++ticks >= 60) { clearInterval(pollTimer); pollTimer = null; startSSE(); }   // try SSE again
    };
    pollTimer = setInterval(tick, 1000);
    tick();
  }
  async function catchUp() {
    try {
      const r = await getJSON("/api/events", nextSeq ? {since: nextSeq} : {});
      for (const e of r.events) showEvent(e);
    } catch (err) { /* shown by the link pill */ }
  }
  setInterval(() => {                                 // a stream that went silent (buffering proxy): poll
    if (mode === "sse" && Date.now() - lastMessage > 20000) startPolling();
  }, 5000);

  async function start() {
    try { showState(await getJSON("/api/state")); } catch (err) { link("no connection to the node", "bad"); }
    await catchUp();
    if (window.EventSource) startSSE(); else startPolling();
  }
  window.edgeMonitorPage = {monitors, shown, mode: () => mode};
  start();
})();
