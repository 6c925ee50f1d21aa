"""engine/dagformat.py: DOT and Mermaid text, state colours, and names that try to break them."""

from __future__ import annotations

import itertools
import re

import pytest

from engine.dag import StepDag
from engine.dagformat import (
    STATE_COLOURS,
    dominant_state,
    instance_states,
    to_dot,
    to_mermaid,
)
from tests.unit.test_dag import inst, study

HOSTILE = ['a"b', "c\\", "d\ne", "<x>{y}|z", 'back\\"q', "tab\tx", "\\N", "nl\\n", "-> [x]",
           "é ünï", "semi;colon", "{", "}", "#35;", 'x"];evil[y="']

# A DOT token: a quoted string (only \" is an escape in Graphviz's lexer), an arrow, a
# punctuation mark, or a bare word.
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|->|[\[\]{};=,]|[^\s\[\]{};=,"]+|\s+', re.DOTALL)


def dot_tokens(text: str) -> list[str]:
    """The tokens of a DOT text; fails on anything the lexer would not take (an
    unterminated string)."""
    pos, out = 0, []
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        assert m is not None, f"cannot lex {text[pos:pos + 40]!r}"
        if not m.group().isspace():
            out.append(m.group())
        pos = m.end()
    return out


def dot_id(token: str) -> str:
    """The name behind one of our DOT ids (the lexer's \\" first, then our escapes)."""
    assert token.startswith('"') and token.endswith('"')
    body = token[1:-1].replace('\\"', '"')
    return re.sub(r"\\\\|\\x([0-9a-f]{2})",
                  lambda m: "\\" if m.group() == "\\\\" else chr(int(m.group(1), 16)), body)


def parse_dot(text: str) -> tuple[dict[str, dict[str, str]], list[tuple[str, str, dict[str, str]]]]:
    """Nodes (id -> attributes) and edges of a DOT text as ``to_dot`` writes it."""
    tokens = dot_tokens(text)
    assert tokens.count("{") == tokens.count("}")
    nodes: dict[str, dict[str, str]] = {}
    edges = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith('"') and tokens[i - 1] in ("{", ";", "}"):
            if tokens[i + 1] == "->":
                source, target = dot_id(tok), dot_id(tokens[i + 2])
                attrs, i = _attrs(tokens, i + 3)
                edges.append((source, target, attrs))
                continue
            if tokens[i + 1] == "[":
                attrs, i = _attrs(tokens, i + 1)
                nodes[dot_id(tok)] = attrs
                continue
        i += 1
    return nodes, edges


def _attrs(tokens: list[str], i: int) -> tuple[dict[str, str], int]:
    assert tokens[i] == "["
    out = {}
    i += 1
    while tokens[i] != "]":
        key, eq, value = tokens[i:i + 3]
        assert eq == "="
        out[key] = value[1:-1] if value.startswith('"') else value
        i += 3
        if tokens[i] == ",":
            i += 1
    return out, i + 1


def chain(*names: str, **kw: object) -> StepDag:
    steps = [inst(names[0])] + [inst(n, None, names[i], **kw) for i, n in enumerate(names[1:])]
    return StepDag.from_graph(study(*steps))


def sample_dag() -> StepDag:
    return StepDag.from_graph(study(
        inst("gen"),
        inst("sim_X.1", "sim", "gen"), inst("sim_X.2", "sim", "gen"),
        inst("agg", None, "sim_X.1", "sim_X.2", funnel_parents=("sim",)),
        inst("pick", None, "sim_X.1", "sim_X.2", funnel_parents=("sim",),
             when="any(sim_*.completed)"),
        inst("r1", None, "agg", race="g"), inst("r2", None, "agg", race="g"),
        inst("use", None, "r1", cmd="cat $(race.g)/x"),
    ))


def test_dominant_state_prefers_failure_then_activity_then_the_quiet_ends() -> None:
    assert "FAILED" == dominant_state({"FINISHED": 9, "RUNNING": 2, "FAILED": 1})
    assert "RUNNING" == dominant_state({"FINISHED": 9, "RUNNING": 2, "CANCELLED": 1})
    assert "CANCELLED" == dominant_state({"FINISHED": 9, "CANCELLED": 1})
    assert "FINISHED" == dominant_state({"FINISHED": 9, "FAILED": 0})
    assert "" == dominant_state({})


def test_status_rows_of_plain_summarised_and_per_sample_steps_count_per_instance() -> None:
    dag = StepDag.from_graph(study(inst("a"), inst("s", None, "a", sampled=True)))
    rows = [
        {"Step Name": "a", "Job ID": "123", "State": "FINISHED"},
        {"Step Name": "s", "Job ID": "40 samples", "State": "FINISHED"},
        {"Step Name": "s", "Job ID": "2 samples", "State": "FAILED"},
        {"Step Name": "s/00/07", "Job ID": "--", "State": "RUNNING"},
        {"Step Name": "stranger", "Job ID": "1", "State": "FAILED"},
        {"Step Name": "a/but/not/sampled/x", "Job ID": "1", "State": "FAILED"},
    ]
    assert {"a": {"FINISHED": 1, "FAILED": 1},
            "s": {"FINISHED": 40, "FAILED": 2, "RUNNING": 1}} == instance_states(dag, rows)


def test_dot_draws_one_node_per_step_with_its_count_and_each_edge_kind_in_its_style() -> None:
    nodes, edges = parse_dot(to_dot(sample_dag()))
    assert ["gen", "sim", "agg", "pick", "r1", "r2", "use"] == list(nodes)
    assert "sim (x2)" == nodes["sim"]["label"]
    assert "pick (x1)\\nwhen: any(sim_*.completed)" == nodes["pick"]["label"]
    styles = {(s, t): a["style"] for s, t, a in edges}
    assert {("gen", "sim"): "solid", ("sim", "agg"): "bold", ("sim", "pick"): "dashed",
            ("agg", "r1"): "solid", ("agg", "r2"): "solid", ("r1", "use"): "dotted",
            ("r2", "use"): "dotted"} == styles
    when = next(a for s, t, a in edges if t == "pick")
    assert "when: any(sim_*.completed)" == when["tooltip"]
    implied = next(a for s, t, a in edges if (s, t) == ("r2", "use"))
    assert "empty" == implied["arrowhead"]


def test_dot_boxes_the_members_of_a_race_together() -> None:
    text = to_dot(sample_dag())
    cluster = re.search(r'subgraph "cluster_race_\d+" \{\n    label="race: g";.*?\n  \}', text, re.DOTALL)
    assert cluster is not None
    assert '"r1" [' in cluster.group() and '"r2" [' in cluster.group()
    assert '"use" [' not in cluster.group()


def test_dot_with_instances_draws_every_instance_and_every_dependency() -> None:
    nodes, edges = parse_dot(to_dot(sample_dag(), instances=True))
    assert ["gen", "sim_X.1", "sim_X.2", "agg", "pick", "r1", "r2", "use"] == list(nodes)
    assert ("gen", "sim_X.1") in {(s, t) for s, t, _ in edges}
    assert 2 == sum(1 for s, t, _ in edges if t == "agg")
    assert 'subgraph "cluster_step_sim" {' in to_dot(sample_dag(), instances=True)


def test_dot_fills_nodes_with_the_dominant_state_and_counts_the_states() -> None:
    states = {"gen": {"FINISHED": 1}, "sim_X.1": {"FINISHED": 1}, "sim_X.2": {"RUNNING": 1}}
    nodes, _ = parse_dot(to_dot(sample_dag(), states=states))
    assert STATE_COLOURS["FINISHED"] == nodes["gen"]["fillcolor"]
    assert STATE_COLOURS["RUNNING"] == nodes["sim"]["fillcolor"]
    assert "sim (x2)\\n1 RUNNING, 1 FINISHED" == nodes["sim"]["label"]
    assert "fillcolor" not in nodes["agg"]  # no row yet: no colour, no claim
    nodes, _ = parse_dot(to_dot(sample_dag(), instances=True, states=states))
    assert STATE_COLOURS["RUNNING"] == nodes["sim_X.2"]["fillcolor"]


@pytest.mark.parametrize("instances", [False, True])
def test_dot_keeps_hostile_names_intact_and_the_text_lexable(instances: bool) -> None:
    dag = chain(*HOSTILE, when="x.completed")
    text = to_dot(dag, instances=instances, states={n: {"FAILED": 1} for n in HOSTILE})
    nodes, edges = parse_dot(text)
    assert HOSTILE == list(nodes)
    assert list(itertools.pairwise(HOSTILE)) == [(s, t) for s, t, _ in edges]
    assert len(text.splitlines()) == text.count(";\n") + text.count("{\n") + text.count("}\n")


def test_a_label_shows_a_newline_in_a_name_as_backslash_n_on_one_line() -> None:
    nodes, _ = parse_dot(to_dot(chain("d\ne")))
    assert "d\\\\ne (x1)" == nodes["d\ne"]["label"]


def test_mermaid_uses_safe_ids_and_styles_edges_by_kind() -> None:
    text = to_mermaid(sample_dag())
    lines = text.splitlines()
    assert "flowchart TD" == lines[0]
    assert '  n1["sim (x2)"]' in lines
    assert "  n0 --> n1" in lines
    assert "  n1 ==> n2" in lines
    assert '  n1 -.->|"when"| n3' in lines
    assert '  n4 -.->|"race"| n6' in lines
    assert '  subgraph r4["race: g"]' in lines


def test_mermaid_colours_nodes_by_state() -> None:
    text = to_mermaid(sample_dag(), states={"gen": {"FINISHED": 1}, "sim_X.1": {"FAILED": 1}})
    assert f"  classDef FINISHED fill:{STATE_COLOURS['FINISHED']},color:#000" in text
    assert "  class n0 FINISHED" in text and "  class n1 FAILED" in text


@pytest.mark.parametrize("instances", [False, True])
def test_mermaid_escapes_hostile_names_inside_quoted_labels(instances: bool) -> None:
    text = to_mermaid(chain(*HOSTILE), instances=instances)
    node_lines = [line for line in text.splitlines() if re.match(r"  n\d+\[", line)]
    assert len(HOSTILE) == len(node_lines)
    for line in node_lines:
        assert re.fullmatch(r'  n\d+\["[^"<>\n]*"\]', line), line
    assert "#quot;back\\#quot;q" not in text and "back\\#quot;q" in text
    assert "#35;35;" in text  # a literal '#35;' stays literal
