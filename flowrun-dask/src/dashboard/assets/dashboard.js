// The flowrun dashboard: renders the state of a flow run's cluster.
// DATA holds the state when the page was served; live, the page then
// follows api/events (Server-Sent Events) for every change. Everything is
// drawn here as SVG and HTML: nothing loads from elsewhere.
"use strict";

const MAX_BARS = 3000;
const PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#76b7b2", "#edc948",
  "#b07aa1", "#ff9da7", "#9c755f", "#8cd17d", "#499894", "#a0cbe8", "#bab0ac"];

const view = { state: null, bars: [], next: 0, updates: 0, colors: new Map() };

function esc(text) {
  return String(text).replace(/[&<>"']/g, c => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function colorOf(task) {
  if (!view.colors.has(task)) {
    const i = view.colors.size;
    view.colors.set(task, i < PALETTE.length ? PALETTE[i]
      : `hsl(${(i * 137.5) % 360}, 55%, 55%)`);
  }
  return view.colors.get(task);
}

function seconds(us) { return us / 1e6; }

function duration(s) {
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  if (s < 60) return `${s.toFixed(s < 10 ? 2 : 1)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.round(s - m * 60)} s`;
}

function clock(s) {
  s = Math.max(0, Math.floor(s));
  const m = Math.floor(s / 60);
  return `${m}:${String(s % 60).padStart(2, "0")}`;
}

function natural(a, b) {
  return a.localeCompare(b, undefined, { numeric: true });
}

// Axis ticks every 1, 2 or 5 x 10^k seconds, about `count` of them.
function ticks(span, count) {
  const raw = span / Math.max(1, count);
  const p = Math.pow(10, Math.floor(Math.log10(raw || 1)));
  const step = [1, 2, 5, 10].map(f => f * p).find(s => s >= raw) || raw;
  const out = [];
  for (let t = 0; t <= span + 1e-9; t += step) out.push(t);
  return out;
}

function merge(message) {
  view.state = message.state;
  const s = message.stream;
  const skip = Math.max(0, view.next - s.from);
  for (const e of s.entries.slice(skip)) view.bars.push(e);
  if (view.bars.length > MAX_BARS) view.bars.splice(0, view.bars.length - MAX_BARS);
  view.next = Math.max(view.next, s.next);
  view.updates += 1;
  document.body.dataset.updates = view.updates;
  render();
}

function render() {
  const st = view.state;
  if (!st) return;
  for (const p of st.progress || []) colorOf(p.task);
  renderHeader(st);
  renderStream(st);
  renderProgress(st);
  renderWorkers(st);
  renderWorkerCount(st);
  renderWaiting(st);
  renderSubflows(st);
  if (st.summary) renderSummary(st);
}

function endTime(st) {
  let end = st.flow.now;
  if (st.report) for (const b of view.bars) end = Math.max(end, b.end);
  return end;
}

function renderHeader(st) {
  const f = st.flow;
  document.getElementById("flow-title").textContent = `Flow run '${f.run}'`;
  document.title = `${f.run} · flowrun`;
  const elapsed = seconds(endTime(st) - f.started);
  document.getElementById("flow-meta").textContent =
    `flow '${f.name}' · ${f.cluster} · ${elapsed < 60 ? duration(elapsed) : clock(elapsed)} ${f.ended ? "in all" : "so far"}`;
  const badge = document.getElementById("badge");
  if (st.report) {
    badge.textContent = "performance report";
    badge.className = "badge ended";
  } else if (f.ended) {
    badge.textContent = "flow run ended";
    badge.className = "badge ended";
  } else if (view.lost) {
    badge.textContent = "reconnecting";
    badge.className = "badge lost";
  } else {
    badge.textContent = "live";
    badge.className = "badge live";
  }
  document.body.dataset.state = st.report ? "report" : f.ended ? "ended" : "live";
  const t = { total: 0, completed: 0, running: 0, pending: 0, failed: 0 };
  for (const p of st.progress || []) {
    t.total += p.total;
    t.completed += p.completed;
    t.running += p.running;
    t.pending += p.pending + p.awaiting_retry;
    t.failed += p.failed + p.crashed + p.cancelled;
  }
  const item = (n, what, cls) => `<span class="${cls || ""}"><b>${n}</b> ${what}</span>`;
  document.getElementById("totals").innerHTML =
    item(t.total, "task runs") + item(t.completed, "completed") +
    item(t.running, "running") + item(t.pending, "pending") +
    item(t.failed, "failed", t.failed ? "failed" : "") +
    (st.workers ? item(st.workers.length, "workers") : "");
}

// Lanes: every thread of every worker there is or was, in name order.
function lanes(st) {
  const threads = new Map();
  for (const w of st.workers || []) threads.set(w.name, Math.max(threads.get(w.name) || 0, w.nthreads));
  for (const b of view.bars) threads.set(b.worker, Math.max(threads.get(b.worker) || 0, b.thread + 1));
  for (const r of st.running || []) if (r.worker && !threads.has(r.worker)) threads.set(r.worker, 1);
  const out = [];
  for (const name of [...threads.keys()].sort(natural)) {
    for (let i = 0; i < threads.get(name); i++) out.push({ worker: name, thread: i });
  }
  return out;
}

function renderStream(st) {
  const el = document.getElementById("task-stream");
  const all = lanes(st);
  const width = Math.max(480, el.clientWidth || 960);
  const left = 110, right = 12, top = 6, laneH = all.length > 24 ? 12 : 20, axis = 22;
  const height = top + Math.max(1, all.length) * laneH + axis;
  const t0 = st.flow.started;
  const t1 = Math.max(endTime(st), t0 + 1e6);
  const span = seconds(t1 - t0);
  const plot = width - left - right;
  const x = us => left + (seconds(us - t0) / span) * plot;
  const index = new Map(all.map((l, i) => [`${l.worker}#${l.thread}`, i]));
  const parts = [`<svg viewBox="0 0 ${width} ${height}" height="${height}" role="img" aria-label="task stream">`,
    `<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">`,
    `<rect width="3" height="6" fill="#d62728" opacity=".55"/></pattern></defs>`];
  for (const t of ticks(span, Math.max(2, Math.floor(plot / 90)))) {
    const px = left + (t / span) * plot;
    parts.push(`<line class="grid" x1="${px}" x2="${px}" y1="${top}" y2="${height - axis}"/>`,
      `<text x="${px}" y="${height - 6}" text-anchor="middle">${esc(t >= 60 ? clock(t) : +t.toFixed(2) + " s")}</text>`);
  }
  all.forEach((l, i) => {
    parts.push(`<text class="lane-label" x="${left - 8}" y="${top + i * laneH + laneH * 0.7}" text-anchor="end">${esc(l.worker)} · ${l.thread}</text>`);
  });
  const bar = (b, lane, end, cls) => {
    const bx = x(b.start), bw = Math.max(1.5, x(end) - bx);
    const y = top + lane * laneH + 1, h = laneH - 3;
    const label = `${b.run} on ${b.worker} · ${b.thread === undefined ? "running" : "thread " + b.thread}: ` +
      `${duration(seconds(end - b.start))}, ${cls}`;
    let svg = `<rect class="bar ${cls}" data-run="${esc(b.run)}" data-task="${esc(b.task)}" data-outcome="${cls}" ` +
      `x="${bx.toFixed(1)}" y="${y}" width="${bw.toFixed(1)}" height="${h}" rx="2" fill="${colorOf(b.task)}">` +
      `<title>${esc(label)}</title></rect>`;
    if (cls === "failed" || cls === "crashed") {
      svg += `<rect x="${bx.toFixed(1)}" y="${y}" width="${bw.toFixed(1)}" height="${h}" fill="url(#hatch)" pointer-events="none"/>`;
    }
    return svg;
  };
  for (const b of view.bars) {
    const lane = index.get(`${b.worker}#${b.thread}`);
    if (lane !== undefined) parts.push(bar(b, lane, b.end, b.outcome));
  }
  // Running runs take the free lanes of their worker, oldest first.
  const taken = new Map();
  for (const r of st.running || []) {
    if (!r.worker) continue;
    const used = taken.get(r.worker) || 0;
    taken.set(r.worker, used + 1);
    const lane = index.get(`${r.worker}#${used}`);
    if (lane !== undefined) parts.push(bar(r, lane, st.flow.now, "running"));
  }
  if (!all.length) {
    parts.push(`<text class="empty" x="${left}" y="${top + 14}">No worker has started yet.</text>`);
  }
  parts.push("</svg>");
  el.innerHTML = parts.join("");
}

function renderProgress(st) {
  const rows = (st.progress || []).map(p => {
    const total = Math.max(1, p.total);
    const pct = n => `${(100 * n / total).toFixed(2)}%`;
    const failed = p.failed + p.crashed + p.cancelled;
    const done = p.completed + failed;
    const notes = [];
    if (p.running) notes.push(`${p.running} running`);
    if (p.pending) notes.push(`${p.pending} pending`);
    if (p.awaiting_retry) notes.push(`${p.awaiting_retry} awaiting retry`);
    if (failed) notes.push(`<span class="f">${failed} failed</span>`);
    return `<div class="prow" data-task="${esc(p.task)}" data-total="${p.total}" data-completed="${p.completed}" ` +
      `data-failed="${failed}" data-running="${p.running}" data-pending="${p.pending}">` +
      `<span class="pname"><span class="swatch" style="background:${colorOf(p.task)}"></span>${esc(p.task)}</span>` +
      `<div class="pbar"><span style="width:${pct(p.completed)};background:${colorOf(p.task)}"></span>` +
      `<span class="failed" style="width:${pct(failed)}"></span>` +
      `<span class="running" style="width:${pct(p.running + p.awaiting_retry)}"></span></div>` +
      `<span class="pcount">${done}/${p.total}${notes.length ? " · " + notes.join(" · ") : ""}</span></div>`;
  });
  document.getElementById("progress").innerHTML =
    rows.join("") || `<p class="note">No task run yet.</p>`;
}

function resources(w) {
  const names = Object.keys(w.resources || {}).sort();
  if (!names.length) return "–";
  return names.map(n => `${esc(n)} ${+(w.free_resources[n] || 0).toFixed(3)}/${+w.resources[n].toFixed(3)} free`).join("<br>");
}

function renderWorkers(st) {
  const el = document.getElementById("workers");
  if (!st.workers) {
    el.innerHTML = `<tr><td class="note">This cluster does not report its workers.</td></tr>`;
    return;
  }
  const head = `<tr><th>Worker</th><th>State</th><th class="num">PID</th><th>Busy threads</th>` +
    `<th>Running</th><th class="num">Queued</th><th>Resources</th></tr>`;
  const rows = [...st.workers].sort((a, b) => natural(a.name, b.name)).map(w => {
    const pct = w.nthreads ? (100 * w.busy / w.nthreads) : 0;
    return `<tr data-worker="${esc(w.name)}" data-busy="${w.busy}" data-nthreads="${w.nthreads}">` +
      `<td>${esc(w.name)}</td><td>${esc(w.state)}</td><td class="num">${w.pid ?? "thread"}</td>` +
      `<td>${w.busy}/${w.nthreads}<span class="busy"><span style="width:${pct}%"></span></span></td>` +
      `<td class="runs">${w.running.map(esc).join(", ") || "–"}</td>` +
      `<td class="num">${w.queued}</td><td>${resources(w)}</td></tr>`;
  });
  el.innerHTML = head + (rows.join("") ||
    `<tr><td colspan="7" class="note">No worker right now.</td></tr>`);
}

function renderWorkerCount(st) {
  const el = document.getElementById("worker-count");
  const history = st.worker_counts || [];
  if (!history.length) {
    el.innerHTML = `<p class="note">No worker count reported.</p>`;
    return;
  }
  const width = Math.max(320, el.clientWidth || 460), height = 150;
  const left = 30, right = 10, top = 10, bottom = 22;
  const t0 = st.flow.started, t1 = Math.max(endTime(st), t0 + 1e6);
  const span = seconds(t1 - t0);
  const most = Math.max(1, ...history.map(h => h[1]));
  const x = us => left + Math.max(0, seconds(us - t0) / span) * (width - left - right);
  const y = n => top + (1 - n / most) * (height - top - bottom);
  let path = `M${x(t0)},${y(0)}`;
  for (const [t, n] of history) path += ` H${x(Math.max(t, t0)).toFixed(1)} V${y(n).toFixed(1)}`;
  path += ` H${x(t1).toFixed(1)}`;
  const parts = [`<svg viewBox="0 0 ${width} ${height}" height="${height}" id="worker-count-chart" ` +
    `data-counts="${history.map(h => h[1]).join(",")}" role="img" aria-label="workers over time">`];
  for (let n = 0; n <= most; n += Math.max(1, Math.ceil(most / 4))) {
    parts.push(`<line class="grid" x1="${left}" x2="${width - right}" y1="${y(n)}" y2="${y(n)}"/>`,
      `<text x="${left - 6}" y="${y(n) + 4}" text-anchor="end">${n}</text>`);
  }
  for (const t of ticks(span, 5)) {
    parts.push(`<text x="${x(t0 + t * 1e6)}" y="${height - 6}" text-anchor="middle">${esc(t >= 60 ? clock(t) : +t.toFixed(2) + " s")}</text>`);
  }
  parts.push(`<path d="${path}" fill="none" stroke="#4e79a7" stroke-width="2"/>`);
  for (const [t, n] of history) {
    parts.push(`<circle cx="${x(Math.max(t, t0)).toFixed(1)}" cy="${y(n).toFixed(1)}" r="3" fill="#4e79a7">` +
      `<title>${n} worker${n === 1 ? "" : "s"} at ${duration(Math.max(0, seconds(t - t0)))}</title></circle>`);
  }
  parts.push("</svg>");
  el.innerHTML = parts.join("");
}

function renderWaiting(st) {
  const el = document.getElementById("waiting");
  const waiting = st.waiting || [];
  const queued = st.queued ? `<p class="note">${st.queued} task run${st.queued === 1 ? "" : "s"} queued for a free worker.</p>` : "";
  if (!waiting.length) {
    el.innerHTML = `<p class="note">No task run is waiting.</p>` + queued;
    return;
  }
  el.innerHTML = `<table><tr><th>Task run</th><th>Why it waits</th></tr>` +
    waiting.map(w => `<tr data-run="${esc(w.run)}"><td class="run">${esc(w.run)}</td><td class="reason">${esc(w.reason)}</td></tr>`).join("") +
    `</table>` + queued;
}

function renderSubflows(st) {
  const el = document.getElementById("subflows");
  const subflows = st.subflows || [];
  if (!subflows.length) {
    el.innerHTML = `<p class="note">No subflow run.</p>`;
    return;
  }
  el.innerHTML = `<table><tr><th>Flow run</th><th>Flow</th><th>Called by</th><th>State</th><th>Task runs</th></tr>` +
    subflows.map(s => `<tr data-subflow="${esc(s.run)}"><td class="run">${esc(s.run)}</td><td>${esc(s.flow)}</td>` +
      `<td>${s.task_run ? "task run " + esc(s.task_run) : "the flow"}</td><td class="state">${esc(s.state)}</td>` +
      `<td>${s.completed} completed${s.failed ? ", " + s.failed + " failed" : ""} of ${s.total}</td></tr>`).join("") +
    `</table>`;
}

function renderSummary(st) {
  const s = st.summary;
  document.getElementById("summary").hidden = false;
  const card = (value, what) => `<div><b>${value}</b><span>${what}</span></div>`;
  const total = (st.progress || []).reduce((n, p) => n + p.total, 0);
  document.getElementById("summary-cards").innerHTML =
    card(duration(s.duration), "flow run") +
    card(total, "task runs") +
    card(`${s.throughput.toFixed(s.throughput < 10 ? 2 : 0)}/s`, "task runs per second") +
    card(duration(s.busy), "time in tasks") +
    (s.utilisation != null ? card(`${Math.round(100 * s.utilisation)}%`, "worker threads busy") : "") +
    (s.max_workers != null ? card(s.max_workers, "workers at most") : "");
  for (const el of document.querySelectorAll(".at-end")) el.hidden = false;
  const head = `<tr><th>Task</th><th class="num">Runs</th><th class="num">Completed</th><th class="num">Failed</th>` +
    `<th class="num">Attempts</th><th class="num">Min</th><th class="num">Median</th><th class="num">Mean</th>` +
    `<th class="num">Max</th><th class="num">Time in task</th></tr>`;
  // Runs and outcomes from the flow run; durations per attempt that ran.
  const attempts = new Map(s.tasks.map(t => [t.task, t]));
  const rows = (st.progress || []).map(p => {
    const t = attempts.get(p.task);
    const d = v => t ? duration(v) : "–";
    return `<tr data-task="${esc(p.task)}" data-runs="${p.total}" data-attempts="${t ? t.runs : 0}">` +
      `<td><span class="swatch" style="background:${colorOf(p.task)}"></span>${esc(p.task)}</td>` +
      `<td class="num">${p.total}</td><td class="num">${p.completed}</td>` +
      `<td class="num">${p.failed + p.crashed + p.cancelled}</td><td class="num">${t ? t.runs : 0}</td>` +
      `<td class="num">${d(t && t.min)}</td><td class="num">${d(t && t.median)}</td>` +
      `<td class="num">${d(t && t.mean)}</td><td class="num">${d(t && t.max)}</td>` +
      `<td class="num">${d(t && t.total)}</td></tr>`;
  });
  document.getElementById("summary-table").innerHTML = head + rows.join("");
}

function follow() {
  const events = new EventSource(`api/events?since=${view.next}`);
  events.onmessage = e => {
    view.lost = false;
    const message = JSON.parse(e.data);
    merge(message);
    if (message.state.flow.ended) events.close();
  };
  events.onerror = () => {
    if (view.state && view.state.flow.ended) {
      events.close();
      return;
    }
    view.lost = true;
    render();
  };
}

merge(DATA);
if (LIVE && !DATA.state.flow.ended) follow();
window.addEventListener("resize", render);
