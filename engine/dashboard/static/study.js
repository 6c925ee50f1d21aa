// The study page: its steps as a DAG (SVG), a panel for a step or an instance, the
// controls once unlocked, and the timeline tab. Updates come from the server-sent events:
// a snapshot, then the steps that changed, coalesced by the server.
import { DONE, badges, crumbs, el, fmtDuration, fmtTime, getJSON, openStream, postJSON,
  progress, session, svg } from "./app.js";
import { drawTimeline } from "./timeline.js";
import { instancePanel, nodePanel } from "./panel.js";

const W = 190, H = 46, GAP_X = 70, GAP_Y = 26, R = 11, RING = 2 * Math.PI * R;

export function showStudy(id) {
  const page = {
    id, study: null, nodes: new Map(), shapes: new Map(), cells: new Map(),
    selected: null, tab: "graph", panel: null, timelineDue: 0,
  };
  const head = el("div", { class: "study-head" });
  const tabs = el("div", { class: "tabs" });
  const graph = el("section", { class: "card graph", id: "graph" });
  const panel = el("aside", { class: "card panel", id: "panel" },
    el("p", { class: "muted" }, "Click a step to see its instances, attempts and output."));
  const timeline = el("section", { class: "card timeline", id: "timeline", hidden: "" });
  page.panelEl = panel;
  document.getElementById("main").replaceChildren(head, legend(), tabs,
    el("div", { class: "layout" }, graph, panel), timeline);
  for (const [key, label] of [["graph", "Graph"], ["timeline", "Timeline"]]) {
    tabs.append(el("button", { "data-tab": key, class: key === "graph" ? "active" : "",
      on: { click: () => switchTab(page, key) } }, label));
  }
  page.head = head; page.graph = graph; page.timeline = timeline; page.tabs = tabs;
  crumbs(el("a", { href: "#/" }, "Studies"), el("span", { id: "crumb-study" }, id));
  openStream(id, {
    snapshot: (data) => renderSnapshot(page, data),
    nodes: (data) => applyNodes(page, data),
  });
  const onUnlock = () => { renderHead(page); if (page.panel) page.panel.refresh(); };
  window.addEventListener("troupe-unlocked", onUnlock);
  const timer = setInterval(() => {
    if (page.tab === "timeline" && page.timelineDue && Date.now() > page.timelineDue) {
      page.timelineDue = 0;
      drawTimeline(page);
    }
  }, 250);
  return () => { window.removeEventListener("troupe-unlocked", onUnlock); clearInterval(timer); };
}

function switchTab(page, key) {
  page.tab = key;
  for (const b of page.tabs.children) b.classList.toggle("active", b.dataset.tab === key);
  page.graph.parentElement.hidden = key !== "graph";
  page.timeline.hidden = key !== "timeline";
  if (key === "timeline") drawTimeline(page);
}

function legend() {
  const box = el("div", { class: "legend" });
  for (const kind of ["plain", "funnel", "when", "race"]) {
    const s = svg("svg", { width: 34, height: 10 });
    s.append(svg("line", { x1: 0, y1: 5, x2: 34, y2: 5, class: `edge kind-${kind}` }));
    box.append(el("span", {}, s, ` ${kind}`));
  }
  return box;
}

// ------------------------------------------------------------------ header and controls

export async function control(page, verb, body, button) {
  if (button) button.disabled = true;
  try {
    const res = await postJSON(`/api/${verb}`, { study: page.id, ...body });
    flash(page, res.detail || `${verb} sent`);
  } catch (err) {
    flash(page, `${verb} refused: ${err.message}`, true);
  } finally {
    if (button) button.disabled = false;
  }
}

function flash(page, text, bad = false) {
  const where = page.head.querySelector(".flash");
  if (where) { where.textContent = text; where.classList.toggle("error", bad); }
}

function renderHead(page) {
  const s = page.study;
  if (!s) return;
  const now = Date.now() / 1000;
  const end = s.ended ?? (s.state === "RUNNING" ? now : null);
  const controls = el("span", { class: "controls" });
  if (session.unlocked) {
    if (s.state === "RUNNING") {
      const b = el("button", { class: "danger", id: "cancel-study" }, "Cancel study");
      b.addEventListener("click", () => control(page, "cancel", {}, b));
      controls.append(b);
    } else if (s.state !== "FINISHED") {
      const b = el("button", { id: "restart-study" }, "Restart");
      b.addEventListener("click", () => control(page, "restart", {}, b));
      controls.append(b);
    }
  }
  page.head.replaceChildren(
    el("h1", {}, s.name),
    el("span", { class: `badge state-${s.state}`, id: "study-state" }, s.state),
    badges(s.counts || {}), progress(s.counts || {}),
    el("span", { class: "muted" }, `started ${fmtTime(s.created)}, ${end ? fmtDuration(end - s.created) : "--"}`),
    controls, el("span", { class: "flash muted" }));
  document.getElementById("crumb-study").textContent = s.name;
}

// ------------------------------------------------------------------ the DAG

function renderSnapshot(page, data) {
  page.study = data.study;
  page.nodes.clear();
  page.shapes.clear();
  renderHead(page);
  const root = svg("svg", { id: "dag", role: "img" });
  const defs = svg("defs");
  const marker = svg("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5,
    markerWidth: 6, markerHeight: 6, orient: "auto-start-reverse" });
  marker.append(svg("path", { d: "M0,0 L10,5 L0,10 z", fill: "#6b7280" }));
  defs.append(marker);
  const world = svg("g", { class: "world" });
  const edges = svg("g", { class: "edges" }), nodes = svg("g", { class: "nodes" });
  world.append(edges, nodes);
  root.append(defs, world);
  const at = new Map();
  let maxX = 0, maxY = 0;
  for (const n of data.nodes) {
    const x = n.layer * (W + GAP_X), y = n.position * (H + GAP_Y);
    at.set(n.name, [x, y]);
    maxX = Math.max(maxX, x + W); maxY = Math.max(maxY, y + H);
  }
  for (const e of data.edges) {
    const [sx, sy] = at.get(e.source), [tx, ty] = at.get(e.target);
    const x1 = sx + W, y1 = sy + H / 2, x2 = tx, y2 = ty + H / 2, mx = (x1 + x2) / 2;
    const path = svg("path", { d: `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`,
      class: `edge kind-${e.kind}`, "marker-end": "url(#arrow)", "data-kind": e.kind });
    const title = svg("title");
    title.textContent = `${e.source} → ${e.target} (${e.kind}${e.implied ? ", implied" : ""})`;
    path.append(title);
    edges.append(path);
  }
  for (const n of data.nodes) {
    page.nodes.set(n.name, n);
    const [x, y] = at.get(n.name);
    nodes.append(nodeShape(page, n, x, y));
  }
  page.graph.replaceChildren(root);
  panZoom(root, world, maxX, maxY);
  recordLatency([]);
}

function nodeShape(page, n, x, y) {
  const g = svg("g", { class: "node", transform: `translate(${x},${y})`, "data-node": n.name,
    "data-state": n.state, tabindex: 0 });
  const box = svg("rect", { class: `box state-${n.state}`, width: W, height: H, rx: 6 });
  const title = svg("title");
  title.textContent = n.description ? `${n.name}: ${n.description}` : n.name;
  const label = svg("text", { x: 8, y: 18 });
  label.textContent = n.name.length > 24 ? `${n.name.slice(0, 23)}…` : n.name;
  const count = svg("text", { x: 8, y: 36, class: "count" });
  const ringBg = svg("circle", { class: "ring-bg", cx: W - R - 8, cy: H / 2, r: R });
  const ring = svg("circle", { class: "ring", cx: W - R - 8, cy: H / 2, r: R,
    transform: `rotate(-90 ${W - R - 8} ${H / 2})` });
  g.append(box, title, label, count);
  const multi = n.total > 1 || n.sampled;
  if (multi) g.append(ringBg, ring);
  g.addEventListener("click", () => select(page, n.name));
  g.addEventListener("keydown", (e) => { if (e.key === "Enter") select(page, n.name); });
  page.shapes.set(n.name, { g, box, count, ring, multi });
  paintNode(page, n);
  return g;
}

function paintNode(page, n) {
  const shape = page.shapes.get(n.name);
  if (!shape) return;
  shape.g.setAttribute("data-state", n.state);
  shape.box.setAttribute("class", `box state-${n.state}`);
  let done = 0;
  for (const [s, k] of Object.entries(n.counts)) if (DONE.has(s)) done += k;
  const samples = n.samples && Object.keys(n.samples).length
    ? `, samples ${Object.entries(n.samples).map(([s, k]) => `${k} ${s.toLowerCase()}`).join(" ")}` : "";
  shape.count.textContent = shape.multi ? `${done}/${n.total} ${n.state.toLowerCase()}${samples}`
    : n.state.toLowerCase();
  if (shape.multi) {
    const frac = n.total ? done / n.total : 0;
    shape.ring.setAttribute("stroke-dasharray", `${(frac * RING).toFixed(2)} ${RING.toFixed(2)}`);
  }
}

function applyNodes(page, data) {
  page.study = data.study;
  for (const n of data.nodes) {
    const known = page.nodes.get(n.name);
    const merged = known ? { ...known, ...n } : n;
    page.nodes.set(n.name, merged);
    paintNode(page, merged);
  }
  for (const i of data.instances) {
    const cell = page.cells.get(i.name);
    if (cell) { cell.className = `cell state-${i.state}`; cell.dataset.state = i.state; }
  }
  renderHead(page);
  recordLatency(data.times);
  if (page.panel && data.instances.some((i) => page.panel.covers(i.name))) page.panel.soon();
  if (page.tab === "timeline" && !page.timelineDue) page.timelineDue = Date.now() + 1000;
}

// The latency of each event behind an update: engine time to the moment the DOM has it.
function recordLatency(times) {
  const now = Date.now() / 1000;
  const out = window.__troupeLatency;
  for (const t of times) out.push(now - t);
  if (out.length > 200000) out.splice(0, out.length - 200000);
}

function select(page, name) {
  const before = page.selected && page.shapes.get(page.selected);
  if (before) before.g.classList.remove("selected");
  page.selected = name;
  page.shapes.get(name).g.classList.add("selected");
  const n = page.nodes.get(name);
  page.cells.clear();
  page.panel = (n.total === 1 && !n.sampled)
    ? instancePanel(page, null) : nodePanel(page, n);
}

// Wheel to zoom around the pointer, drag to pan; starts fitted to the view.
function panZoom(root, world, width, height) {
  const box = root.getBoundingClientRect();
  const vw = box.width || 800, vh = box.height || 500;
  let k = Math.min(1.2, (vw - 20) / Math.max(width, 1), (vh - 20) / Math.max(height, 1));
  k = Math.max(k, 0.02);
  let tx = 10, ty = Math.max(10, (vh - height * k) / 2);
  const apply = () => world.setAttribute("transform", `translate(${tx},${ty}) scale(${k})`);
  apply();
  root.addEventListener("wheel", (e) => {
    e.preventDefault();
    const r = root.getBoundingClientRect(), px = e.clientX - r.left, py = e.clientY - r.top;
    const f = Math.exp(-e.deltaY * 0.0015), nk = Math.min(4, Math.max(0.01, k * f));
    tx = px - (px - tx) * (nk / k); ty = py - (py - ty) * (nk / k); k = nk;
    apply();
  }, { passive: false });
  let drag = null;
  root.addEventListener("pointerdown", (e) => { drag = [e.clientX - tx, e.clientY - ty]; });
  root.addEventListener("pointermove", (e) => {
    if (!drag) return;
    tx = e.clientX - drag[0]; ty = e.clientY - drag[1];
    apply();
  });
  for (const ev of ["pointerup", "pointerleave"]) root.addEventListener(ev, () => { drag = null; });
}
