// The side panel of the study page: a step's instances (a page at a time, on demand) or
// one instance's attempts, hosts, exit code or reason, times and output tails.
import { DONE, badges, el, fmtClock, fmtDuration, getJSON, session } from "./app.js";
import { control } from "./study.js";

const PAGE = 200;

function throttled(fn, ms) {
  let due = null;
  return () => { if (!due) due = setTimeout(() => { due = null; fn(); }, ms); };
}

export function nodePanel(page, node) {
  let shown = 0;
  const cells = el("div", { class: "cells", id: "cells" });
  const more = el("button", { id: "more-instances" }, "more");
  const head = el("div");
  async function loadMore() {
    const data = await getJSON("/api/instances", { study: page.id, node: node.name, offset: shown, limit: PAGE });
    for (const i of data.instances) {
      const cell = el("span", { class: `cell state-${i.state}`, title: i.name, "data-instance": i.name,
        "data-state": i.state, on: { click: () => { page.panel = instancePanel(page, i.name, node); } } });
      page.cells.set(i.name, cell);
      cells.append(cell);
    }
    shown += data.instances.length;
    more.hidden = shown >= data.total;
    more.textContent = `more (${shown} of ${data.total} shown)`;
  }
  function renderHead() {
    const n = page.nodes.get(node.name) || node;
    const parts = [el("h2", {}, n.name), n.description ? el("p", { class: "muted" }, n.description) : "",
      badges(n.counts)];
    if (n.when) parts.push(el("p", {}, `when: ${n.when}`));
    if (n.race) parts.push(el("p", {}, `race: ${n.race}`));
    if (n.samples && Object.keys(n.samples).length) {
      parts.push(el("p", {}, "samples: ", badges(n.samples)));
    }
    const active = Object.entries(n.counts).some(([s, k]) => k && !DONE.has(s));
    if (session.unlocked && active && page.study.state === "RUNNING") {
      const b = el("button", { class: "danger", id: "cancel-step" }, `Cancel ${n.name}`);
      b.addEventListener("click", () => control(page, "cancel", { step: n.name }, b));
      parts.push(el("p", {}, b));
    }
    head.replaceChildren(...parts.filter((p) => p !== ""));
  }
  more.addEventListener("click", loadMore);
  renderHead();
  page.panelEl.replaceChildren(head, el("p", { class: "muted" }, "Instances (click one):"), cells, more);
  loadMore();
  const refresh = () => renderHead();
  return { covers: () => true, soon: throttled(refresh, 300), refresh };
}

export function instancePanel(page, name, fromNode = null) {
  const box = el("div", { id: "instance" });
  page.panelEl.replaceChildren(box);
  let current = name;
  async function refresh() {
    if (!current) {
      const node = page.nodes.get(page.selected);
      const data = await getJSON("/api/instances", { study: page.id, node: node.name, limit: 1 });
      current = data.instances[0].name;
    }
    let d;
    try {
      d = await getJSON("/api/instance", { study: page.id, name: current });
    } catch (err) {
      box.replaceChildren(el("p", { class: "error" }, err.message));
      return;
    }
    const parts = [];
    if (fromNode) {
      parts.push(el("a", { href: "#", on: { click: (e) => { e.preventDefault(); page.panel = nodePanel(page, fromNode); } } },
        `← ${fromNode.name}`));
    }
    parts.push(el("h2", {}, d.name),
      el("p", {}, el("span", { class: `badge state-${d.state}`, id: "instance-state" }, d.state),
        d.exit_code !== null ? ` exit code ${d.exit_code}` : "", d.reason ? ` — ${d.reason}` : ""));
    if (session.unlocked && !DONE.has(d.state) && page.study.state === "RUNNING") {
      const b = el("button", { class: "danger", id: "cancel-instance" }, "Cancel this step");
      b.addEventListener("click", () => control(page, "cancel", { step: d.name }, b));
      parts.push(el("p", {}, b));
    }
    parts.push(attemptsTable(d));
    if (d.workspace) parts.push(el("p", { class: "muted" }, `workspace ${d.workspace}`));
    box.replaceChildren(...parts);
    for (const suffix of [".out", ".err"]) {
      const file = d.files.find((f) => f.name.endsWith(suffix));
      if (!file) continue;
      const pre = el("pre", { "data-file": file.name }, "…");
      box.append(el("div", { class: "muted" }, `${file.name} (${file.size} bytes), last lines:`), pre);
      getJSON("/api/output", { study: page.id, name: d.name, file: file.name })
        .then((t) => { pre.textContent = t.text || "(empty)"; })
        .catch((err) => { pre.textContent = err.message; });
    }
  }
  refresh();
  return { covers: (n) => n === current, soon: throttled(refresh, 500), refresh };
}

function attemptsTable(d) {
  if (!d.attempts.length) return el("p", { class: "muted" }, "No attempt yet.");
  const rows = d.attempts.map((a) => el("tr", {},
    el("td", {}, String(a.attempt)), el("td", {}, a.job_id || "--"),
    el("td", {}, d.hosts[a.attempt] || "--"),
    el("td", {}, fmtClock(a.submit)), el("td", {}, fmtClock(a.start)), el("td", {}, fmtClock(a.end)),
    el("td", {}, a.start && a.end ? fmtDuration(a.end - a.start) : "--"),
    el("td", {}, a.state || "--"),
    el("td", {}, a.exit_code !== null ? String(a.exit_code) : (a.reason || "--"))));
  return el("table", { class: "attempts" }, el("thead", {}, el("tr", {},
    ...["#", "job", "host", "submitted", "started", "ended", "ran", "state", "exit / reason"]
      .map((h) => el("th", {}, h)))), el("tbody", {}, ...rows));
}
