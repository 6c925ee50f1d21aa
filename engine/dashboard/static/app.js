// Troupe dashboard: the router, the helpers every page uses, the studies page and the
// controls' unlock. Plain JavaScript, no library. Data from the server is only ever put
// into the page as text (textContent, setAttribute), never as HTML.
import { showStudy } from "./study.js";

export const session = { csrf: "", unlocked: false };
export const STATES = ["INITIALIZED", "WAITING", "PENDING", "RUNNING", "FINISHED", "FAILED",
  "TIMEDOUT", "HWFAILURE", "UNKNOWN", "CANCELLED", "DRYRUN", "SKIPPED", "CACHED"];
export const DONE = new Set(["FINISHED", "FAILED", "TIMEDOUT", "HWFAILURE", "UNKNOWN",
  "CANCELLED", "DRYRUN", "SKIPPED", "CACHED"]);
window.__troupeLatency = window.__troupeLatency || [];

const SVGNS = "http://www.w3.org/2000/svg";

// An element: el("td", {class: "x"}, "text", child, ...); strings become text nodes.
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "on") for (const [ev, fn] of Object.entries(v)) node.addEventListener(ev, fn);
    else if (v !== undefined && v !== null) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

export function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

export function query(params) {
  return new URLSearchParams(params).toString();
}

export async function getJSON(path, params = {}) {
  const res = await fetch(`${path}?${query(params)}`, { credentials: "same-origin" });
  if (res.status === 401) { location.href = "/"; throw new Error("token required"); }
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

export async function postJSON(path, body) {
  const res = await fetch(path, {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-Troupe-Token": session.csrf },
    body: JSON.stringify(body),
  });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data.error || data.detail || res.statusText);
  return data;
}

export function fmtTime(t) {
  if (t === null || t === undefined) return "--";
  const d = new Date(t * 1000);
  return d.toLocaleString(undefined, { hour12: false });
}

export function fmtClock(t) {
  if (t === null || t === undefined) return "--";
  const d = new Date(t * 1000);
  return `${d.toLocaleTimeString(undefined, { hour12: false })}.${String(d.getMilliseconds()).padStart(3, "0")}`;
}

export function fmtDuration(s) {
  if (s === null || s === undefined || s < 0) return "--";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60), h = Math.floor(m / 60);
  return h ? `${h} h ${m % 60} min` : `${m} min ${Math.floor(s % 60)} s`;
}

export function badges(counts) {
  const span = el("span");
  for (const s of STATES) {
    if (counts[s]) span.append(el("span", { class: `badge state-${s}`, title: s }, `${counts[s]} ${s}`));
  }
  return span;
}

export function progress(counts) {
  let total = 0, done = 0;
  for (const [s, n] of Object.entries(counts)) { total += n; if (DONE.has(s)) done += n; }
  const frac = total ? done / total : 0;
  const bar = el("span", { class: "progress", title: `${done}/${total}` }, el("span"));
  bar.firstChild.style.width = `${(frac * 100).toFixed(1)}%`;
  return el("span", {}, bar, ` ${done}/${total}`);
}

// One EventSource at a time: the page being shown.
let source = null;
export function openStream(study, handlers) {
  if (source) source.close();
  source = new EventSource(`/api/stream?${query({ study })}`);
  for (const [kind, fn] of Object.entries(handlers)) {
    source.addEventListener(kind, (e) => fn(JSON.parse(e.data)));
  }
  return source;
}

export function crumbs(...parts) {
  const nav = document.getElementById("crumbs");
  nav.replaceChildren(...parts.flatMap((p, i) => (i ? [" / ", p] : [p])));
}

// ------------------------------------------------------------------ studies page

function studyRow(s) {
  const now = Date.now() / 1000;
  const end = s.ended ?? (s.state === "RUNNING" ? now : null);
  const link = el("a", { href: `#/study/${encodeURIComponent(s.study_id)}` }, s.name);
  return el("tr", { "data-study": s.study_id, "data-state": s.state },
    el("td", {}, link, el("div", { class: "muted" }, s.study_id)),
    el("td", {}, el("span", { class: `badge state-${s.state}` }, s.state)),
    el("td", {}, badges(s.counts || {})),
    el("td", {}, progress(s.counts || {})),
    el("td", {}, fmtTime(s.created)),
    el("td", {}, end ? fmtDuration(end - s.created) : "--"));
}

function showStudies() {
  crumbs(el("span", {}, "Studies"));
  const studies = new Map();
  const stateSel = el("select", { "aria-label": "state" }, el("option", { value: "" }, "every state"),
    ...["RUNNING", "FINISHED", "FAILURE", "CANCELLED"].map((s) => el("option", { value: s }, s)));
  const nameIn = el("input", { type: "search", placeholder: "name filter", "aria-label": "name" });
  const body = el("tbody");
  const table = el("table", { id: "studies" }, el("thead", {}, el("tr", {},
    ...["Study", "State", "Steps", "Progress", "Started", "Duration"].map((h) => el("th", {}, h)))), body);
  const empty = el("p", { class: "muted" }, "No study yet.");
  function render() {
    const want = stateSel.value, name = nameIn.value.toLowerCase();
    const rows = [...studies.values()]
      .filter((s) => (!want || s.state === want) && (!name || s.name.toLowerCase().includes(name)))
      .sort((a, b) => b.created - a.created);
    body.replaceChildren(...rows.map(studyRow));
    empty.hidden = rows.length > 0;
  }
  stateSel.addEventListener("change", render);
  nameIn.addEventListener("input", render);
  document.getElementById("main").replaceChildren(el("section", { class: "card" },
    el("div", { class: "filters" }, stateSel, nameIn), table, empty));
  const timer = setInterval(render, 1000); // durations of running studies tick
  openStream("", {
    snapshot(data) { studies.clear(); for (const s of data.studies) studies.set(s.study_id, s); render(); },
    studies(data) {
      for (const s of data.studies) studies.set(s.study_id, s);
      render();
    },
  });
  return () => clearInterval(timer);
}

// ------------------------------------------------------------------ session and router

async function loadSession() {
  const data = await getJSON("/api/session");
  session.csrf = data.csrf;
  setUnlocked(data.unlocked);
}

function setUnlocked(on) {
  session.unlocked = on;
  document.body.classList.toggle("unlocked", on);
  document.getElementById("unlock-status").textContent = on ? "controls unlocked" : "";
  window.dispatchEvent(new Event("troupe-unlocked"));
}

document.getElementById("unlock").addEventListener("submit", async (e) => {
  e.preventDefault();
  const input = document.getElementById("unlock-password");
  const status = document.getElementById("unlock-status");
  status.textContent = "checking...";
  try {
    await postJSON("/api/unlock", { password: input.value });
    input.value = "";
    setUnlocked(true);
  } catch (err) {
    status.textContent = err.message;
  }
});

let leave = null;
function route() {
  if (leave) leave();
  const hash = location.hash;
  leave = hash.startsWith("#/study/") ? showStudy(decodeURIComponent(hash.slice(8))) : showStudies();
}
window.addEventListener("hashchange", route);
loadSession().then(route);
