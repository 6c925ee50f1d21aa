"""Text pictures of a ``StepDag``: Graphviz DOT and Mermaid, with step states as colours.

Pure: ``to_dot`` and ``to_mermaid`` return text; ``instance_states`` reads rows of a
``status.csv`` already parsed (``engine.status.read_status``). A spec's names reach the
text only through the escapers here, so a step named ``a"b\\c{d}<e>|f`` or one with a
newline keeps the output valid: DOT names go in double quotes with ``\\`` and ``"``
escaped (labels first pass through ``printable``, so a newline shows as ``\\n`` and a
label stays one line per field); Mermaid nodes get ids ``n0``, ``n1``, ... and labels in
double quotes with ``"``, ``#``, ``<``, ``>`` and ``&`` written as entity codes.

A step-level node takes its instances' dominant state (``dominant_state``): the first in
``STATE_ORDER`` that any of them is in: a failure first, then what is active, then what
waits, then the quiet ends (cancelled, skipped), and FINISHED/CACHED last.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from engine.errors import printable

if TYPE_CHECKING:
    from engine.dag import DagNode, StepDag

__all__ = [
    "STATE_COLOURS",
    "STATE_ORDER",
    "dominant_state",
    "instance_states",
    "to_dot",
    "to_mermaid",
]

STATE_ORDER = (
    "FAILED", "TIMEDOUT", "HWFAILURE", "UNKNOWN", "RUNNING", "PENDING", "WAITING",
    "INITIALIZED", "CANCELLED", "SKIPPED", "DRYRUN", "FINISHED", "CACHED",
)
"""Step states, most telling first: the order ``dominant_state`` picks by."""

STATE_COLOURS = {
    "FAILED": "#f28b82", "TIMEDOUT": "#f6ae6b", "HWFAILURE": "#e06666", "UNKNOWN": "#c9c9c9",
    "RUNNING": "#7fb2f0", "PENDING": "#b4d3f7", "WAITING": "#dbe8f8", "INITIALIZED": "#f1f1f1",
    "CANCELLED": "#cdb4e0", "SKIPPED": "#f3efc0", "DRYRUN": "#e3e3e3", "FINISHED": "#93d3a2",
    "CACHED": "#c2e6c9",
}
"""Fill colour of a node by state (light enough for black text)."""

_EDGE_STYLE = {
    "plain": 'style="solid"',
    "funnel": 'style="bold", penwidth="2"',
    "when": 'style="dashed"',
    "race": 'style="dotted", color="#a0522d"',
}

Counts = Mapping[str, Mapping[str, int]]


def dominant_state(counts: Mapping[str, int]) -> str:
    """The state a group of steps is shown in: the first of ``STATE_ORDER`` with a
    non-zero count ("" for none; a state unknown to this version comes last)."""
    present = [s for s, n in counts.items() if n > 0]
    if not present:
        return ""
    rank = {s: i for i, s in enumerate(STATE_ORDER)}
    return min(present, key=lambda s: (rank.get(s, len(rank)), s))


def instance_states(dag: StepDag, rows: Iterable[Mapping[str, str]]) -> dict[str, dict[str, int]]:
    """Per instance, how many of its status rows are in each state.

    An ordinary instance has one row. A sampled step has one row per state of its
    samples (``Job ID`` ``N samples``: N count) or, with ``--per-sample-status``, one row
    per sample named ``<instance>/<sample path>``. Rows naming no instance are ignored.
    """
    known = {i for node in dag.nodes for i in node.instances}
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        name, state = row.get("Step Name", ""), row.get("State", "")
        owner = name if name in known else _owner(name, known)
        if owner is None or not state:
            continue
        job = row.get("Job ID", "")
        count = int(job.split()[0]) if job.endswith(" samples") and job.split()[0].isdigit() else 1
        slot = out.setdefault(owner, {})
        slot[state] = slot.get(state, 0) + count
    return out


def _owner(name: str, known: set[str]) -> str | None:
    """The instance a per-sample row ``<instance>/<path>`` belongs to, if any."""
    at = name.find("/")
    while at > 0:
        if name[:at] in known:
            return name[:at]
        at = name.find("/", at + 1)
    return None


def _groups(dag: StepDag) -> list[tuple[str, list[DagNode]]]:
    """The nodes in study order, a race group's members together at its first member's
    place: ``(group, members)``, group "" for a step that races with none."""
    out: list[tuple[str, list[DagNode]]] = []
    at: dict[str, int] = {}
    for node in dag.nodes:
        if not node.race:
            out.append(("", [node]))
        elif node.race in at:
            out[at[node.race]][1].append(node)
        else:
            at[node.race] = len(out)
            out.append((node.race, [node]))
    return out


def _step_counts(node: DagNode, states: Counts) -> dict[str, int]:
    total: dict[str, int] = {}
    for inst in node.instances:
        for state, n in states.get(inst, {}).items():
            total[state] = total.get(state, 0) + n
    return total


def _counts_text(counts: Mapping[str, int]) -> str:
    rank = {s: i for i, s in enumerate(STATE_ORDER)}
    ordered = sorted(counts.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))
    return ", ".join(f"{n} {s}" for s, n in ordered if n)


def _step_label(node: DagNode) -> str:
    extra = ", per sample" if node.sampled else ""
    return f"{node.name} (x{len(node.instances)}{extra})"


def _lines(node: DagNode, head: str, counts: Mapping[str, int] | None) -> list[str]:
    """A node's label lines: its name, its condition, its states (raw text)."""
    lines = [head]
    if node.when:
        lines.append(f"when: {node.when}")
    if counts:
        lines.append(_counts_text(counts))
    return lines


# ----------------------------------------------------------------------------- DOT


_ID_CONTROL = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F]}


def _id(name: str) -> str:
    """A DOT id for a name, one to one: ``\\`` doubled and ``"`` escaped (a single
    backslash before anything else can then only be ours: control characters become
    ``\\xHH``, so the id stays on one line)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"').translate(_ID_CONTROL) + '"'


def _dq(text: str) -> str:
    """A DOT label or attribute for any text, shown as ``printable`` shows it: only
    ``"`` is an escape in DOT's lexer; doubling backslashes also keeps a trailing one
    from escaping the closing quote, and label escapes (``\\N``, ``\\l``) from being
    interpreted."""
    return '"' + printable(text).replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dq_lines(lines: list[str]) -> str:
    r"""Several lines as one DOT label, joined by DOT's centred line break ``\n``."""
    return '"' + "\\n".join(_dq(line)[1:-1] for line in lines) + '"'


def to_dot(dag: StepDag, *, instances: bool = False, states: Counts | None = None) -> str:
    """The study as a Graphviz ``digraph``.

    Args:
        dag: The study.
        instances: One node per instance instead of one per spec step (instances of a
            step are boxed together).
        states: Per instance, its states' counts (``instance_states``): nodes are then
            filled with their (dominant) state's colour and list their counts.

    Returns:
        DOT text: node ids are the quoted step (or instance) names; a ``plain`` edge is
        solid, ``funnel`` bold, ``when`` dashed (the condition as tooltip), ``race`` dotted
        (an implied one with a hollow arrow); a race group's members share a dotted box.
    """
    out = [f"digraph {_id(dag.name)} {{",
           f"  graph [label={_dq(dag.name)}, labelloc=\"t\", rankdir=\"TB\", charset=\"UTF-8\"];",
           '  node [shape="box", style="rounded", fontname="Helvetica"];',
           '  edge [fontname="Helvetica", fontsize="10"];']
    for k, (race, members) in enumerate(_groups(dag)):
        indent = "  "
        if race:
            out.append(f"  subgraph \"cluster_race_{k}\" {{")
            out.append(f"    label={_dq('race: ' + race)}; style=\"dotted\";")
            indent = "    "
        for node in members:
            out.extend(indent + line for line in _dot_node(node, instances, states))
        if race:
            out.append("  }")
    when = {n.name: n.when for n in dag.nodes}
    if instances:
        implied = {(e.source, e.target) for e in dag.edges if e.implied}
        step_of = {i: n.name for n in dag.nodes for i in n.instances}
        for parent, child, kind in dag.instance_edges():
            pair = (step_of[parent], step_of[child])
            out.append(f"  {_id(parent)} -> {_id(child)} "
                       f"[{_dot_edge_attrs(kind, when[pair[1]], pair in implied)}];")
    else:
        for edge in dag.edges:
            out.append(f"  {_id(edge.source)} -> {_id(edge.target)} "
                       f"[{_dot_edge_attrs(edge.kind, when[edge.target], edge.implied)}];")
    out.append("}")
    return "\n".join(out) + "\n"


def _dot_node(node: DagNode, instances: bool, states: Counts | None) -> list[str]:
    if not instances:
        counts = _step_counts(node, states) if states is not None else None
        return [f"{_id(node.name)} [{_dot_node_attrs(node, _step_label(node), counts)}];"]
    lines = []
    boxed = len(node.instances) > 1
    if boxed:
        lines.append(f"subgraph {_id('cluster_step_' + node.name)} {{")
        lines.append(f"  label={_dq(_step_label(node))}; style=\"rounded\"; color=\"#999999\";")
    pad = "  " if boxed else ""
    for inst in node.instances:
        counts = dict(states.get(inst, {})) if states is not None else None
        lines.append(f"{pad}{_id(inst)} [{_dot_node_attrs(node, inst, counts)}];")
    if boxed:
        lines.append("}")
    return lines


def _dot_node_attrs(node: DagNode, head: str, counts: Mapping[str, int] | None) -> str:
    attrs = [f"label={_dq_lines(_lines(node, head, counts))}",
             f"tooltip={_dq(node.description or node.name)}"]
    state = dominant_state(counts or {})
    if state:
        colour = STATE_COLOURS.get(state, "#ffffff")
        attrs.append(f'style="rounded,filled", fillcolor="{colour}"')
    return ", ".join(attrs)


def _dot_edge_attrs(kind: str, when: str, implied: bool) -> str:
    attrs = [_EDGE_STYLE[kind]]
    if kind == "when":
        attrs.append(f"tooltip={_dq('when: ' + when)}")
    if kind == "race":
        attrs.append(f"tooltip={_dq('waits for the race' if implied else 'race')}")
        if implied:
            attrs.append('arrowhead="empty"')
    return ", ".join(attrs)


# ------------------------------------------------------------------------- Mermaid


def _mq(text: str) -> str:
    """A Mermaid double-quoted label: entity codes for what Mermaid would parse."""
    text = printable(text).replace("#", "#35;").replace("&", "#amp;").replace('"', "#quot;")
    return text.replace("<", "#lt;").replace(">", "#gt;")


def _mq_lines(lines: list[str]) -> str:
    return '"' + "<br>".join(_mq(line) for line in lines) + '"'


def to_mermaid(dag: StepDag, *, instances: bool = False, states: Counts | None = None) -> str:
    """The study as a Mermaid ``flowchart TD``.

    Args:
        dag: The study.
        instances: One node per instance instead of one per spec step.
        states: Per instance, its states' counts: nodes get a class per dominant state
            (``classDef`` with the state's colour) and list their counts.

    Returns:
        Mermaid text; node ids are ``n0``, ``n1``, ... in study order, labels quoted;
        ``plain`` edges ``-->``, ``funnel`` ``==>``, ``when`` and ``race`` ``-.->`` with
        a label; a race group's members form a subgraph.
    """
    ids: dict[str, str] = {}
    out = ["flowchart TD"]
    classes: dict[str, list[str]] = {}
    for k, (race, members) in enumerate(_groups(dag)):
        if race:
            out.append(f"  subgraph r{k}[{_mq_lines(['race: ' + race])}]")
        for node in members:
            names = node.instances if instances else (node.name,)
            for name in names:
                ids[name] = f"n{len(ids)}"
                if instances:
                    counts = dict(states.get(name, {})) if states is not None else None
                    label = _lines(node, name, counts)
                else:
                    counts = _step_counts(node, states) if states is not None else None
                    label = _lines(node, _step_label(node), counts)
                out.append(f"  {ids[name]}[{_mq_lines(label)}]")
                state = dominant_state(counts or {})
                if state:
                    classes.setdefault(state, []).append(ids[name])
        if race:
            out.append("  end")
    edges = (dag.instance_edges() if instances
             else ((e.source, e.target, e.kind) for e in dag.edges))
    for source, target, kind in edges:
        arrow = {"plain": "-->", "funnel": "==>"}.get(kind, f'-.->|"{kind}"|')
        out.append(f"  {ids[source]} {arrow} {ids[target]}")
    for k, (state, ids_in) in enumerate(classes.items()):
        css = state if state.isascii() and state.isalpha() else f"state{k}"
        out.append(f"  classDef {css} fill:{STATE_COLOURS.get(state, '#ffffff')},color:#000")
        out.append(f"  class {','.join(ids_in)} {css}")
    return "\n".join(out) + "\n"
