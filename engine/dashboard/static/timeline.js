// The timeline: a Gantt of the study's latest attempts: on workers, one row per worker (and
// per task it ran at once); otherwise one row per slot (the first slot free when the
// attempt was handed over, as a local process slot is). The
// grey part of a bar is the wait between hand-over and start; the coloured part, the run.
import { el, fmtDuration, getJSON, svg } from "./app.js";

const ROW = 16, PROFILE = 44, MIN_WIDTH = 900;
let LEFT = 70;  // widened to the longest row label (a worker's name) when drawn
const TOP = 24 + PROFILE + 8;

export async function drawTimeline(page) {
  let data;
  try {
    data = await getJSON("/api/timeline", { study: page.id, limit: 2000 });
  } catch (err) {
    page.timeline.replaceChildren(el("p", { class: "error" }, err.message));
    return;
  }
  const bars = data.bars;
  if (!bars.length) {
    page.timeline.replaceChildren(el("p", { class: "muted" }, "No attempt has started yet."));
    return;
  }
  const labels = data.labels || [];
  LEFT = Math.max(70, 12 + 7 * Math.max(0, ...labels.map((l) => l.length)));
  const now = Date.now() / 1000;
  const begin = (b) => (b.submit ?? b.start);
  const t0 = Math.min(...bars.map((b) => Math.min(b.ready ?? Infinity, begin(b))));
  const t1 = Math.max(...bars.map((b) => b.end ?? now));
  const span = Math.max(t1 - t0, 0.001);
  const width = Math.max(MIN_WIDTH, page.timeline.clientWidth - 30);
  const scale = (width - LEFT - 10) / span;
  const height = TOP + data.rows * ROW + 10;
  const root = svg("svg", { id: "gantt", width, height });
  const axis = svg("g", { class: "axis" });
  const ticks = 8;
  for (let i = 0; i <= ticks; i++) {
    const x = LEFT + (i / ticks) * (width - LEFT - 10);
    axis.append(svg("line", { x1: x, y1: 20, x2: x, y2: height }));
    const label = svg("text", { x, y: 14, "text-anchor": "middle" });
    label.textContent = `+${fmtDuration((i / ticks) * span)}`;
    axis.append(label);
  }
  for (let r = 0; r < data.rows; r++) {
    const label = svg("text", { x: 4, y: TOP + r * ROW + ROW - 4 });
    label.textContent = labels[r] || `slot ${r + 1}`;
    axis.append(label);
  }
  root.append(axis);
  root.append(waitingProfile(bars, t0, scale, now));
  const layer = svg("g", { class: "bars" });
  for (const b of bars) {
    const y = TOP + b.row * ROW + 2, h = ROW - 4;
    const x0 = LEFT + (begin(b) - t0) * scale;
    const xs = b.start !== null ? LEFT + (b.start - t0) * scale : null;
    const xe = LEFT + ((b.end ?? now) - t0) * scale;
    const g = svg("g", { "data-step": b.step, "data-state": b.state });
    const title = svg("title");
    const ran = b.start !== null ? fmtDuration((b.end ?? now) - b.start) : "not started";
    title.textContent = `${b.step} #${b.attempt} ${b.state} (job ${b.job_id || "--"}): ` +
      `waited ${fmtDuration((b.start ?? b.end ?? now) - begin(b))}, ran ${ran}`;
    g.append(title);
    if (b.ready !== null && b.ready < begin(b)) {  // ready, waiting for a slot
      const xr = LEFT + (b.ready - t0) * scale;
      g.append(svg("rect", { class: "bar-ready", x: xr, y, width: Math.max(x0 - xr, 0.5), height: 2 }));
    }
    const waitEnd = xs ?? xe;
    if (waitEnd - x0 > 0.5) {
      g.append(svg("rect", { class: "bar-wait", x: x0, y, width: waitEnd - x0, height: h }));
    }
    if (xs !== null) {
      g.append(svg("rect", { class: `state-${b.state}`, x: xs, y, width: Math.max(xe - xs, 1), height: h }));
    }
    layer.append(g);
  }
  root.append(layer);
  const note = el("p", { class: "muted" },
    `${bars.length} attempts (the latest ${data.limit} at most) on ${data.rows} rows, ` +
    `${fmtDuration(span)} from the first hand-over. Top: steps ready and waiting for a slot. ` +
    "Thin line: ready, waiting; grey: handed over, not yet running; colour: running, by final state.");
  page.timeline.replaceChildren(note, root);
}

// How many steps were ready but not yet running, over time: where the study waited.
function waitingProfile(bars, t0, scale, now) {
  const changes = [];
  for (const b of bars) {
    const from = b.ready ?? b.submit ?? b.start, to = b.start ?? b.end ?? now;
    if (from !== null && to > from) changes.push([from, 1], [to, -1]);
  }
  changes.sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  let level = 0, peak = 1;
  for (const [, d] of changes) { level += d; peak = Math.max(peak, level); }
  const g = svg("g", { class: "profile" });
  const base = 24 + PROFILE;
  let d = `M${LEFT},${base}`;
  level = 0;
  for (const [t, step] of changes) {
    const x = LEFT + (t - t0) * scale;
    d += ` L${x},${base - (level / peak) * PROFILE}`;
    level += step;
    d += ` L${x},${base - (level / peak) * PROFILE}`;
  }
  const last = changes.length ? changes[changes.length - 1][0] : t0;
  d += ` L${LEFT + (last - t0) * scale},${base} Z`;
  g.append(svg("path", { d, class: "waiting-area" }));
  const label = svg("text", { x: 4, y: 24 + 12 });
  label.textContent = `waiting (max ${peak})`;
  g.append(label);
  return g;
}
