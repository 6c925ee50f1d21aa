"""engine/dag.py: a study folded to its steps, edge kinds, instance edges, the layout."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from engine.dag import DagEdge, StepDag, layered_layout, load_dag
from engine.errors import ConfigError, SpecError
from engine.spec.graph import StepInstance, StudyGraph

ROOT = Path(__file__).resolve().parents[2]


def inst(name: str, step: str | None = None, *parents: str, **kw: object) -> StepInstance:
    return StepInstance(name=name, step=step or name, description=f"{name}!",
                        workspace=f"/s/{name}", cmd=str(kw.pop("cmd", "true")),
                        parents=parents, **kw)  # type: ignore[arg-type]


def study(*steps: StepInstance) -> StudyGraph:
    return StudyGraph(name="s", description="", spec_path="/s.yaml", study_dir="/s",
                      steps=steps)


def crossings(pos: dict[str, tuple[int, int]], edges: list[tuple[str, str]]) -> int:
    """Pairs of edges between the same two adjacent layers that cross."""
    spans = [(pos[s], pos[t]) for s, t in edges if pos[t][0] == pos[s][0] + 1]
    return sum(1 for i, (a, b) in enumerate(spans) for c, d in spans[i + 1:]
               if a[0] == c[0] and (a[1] - c[1]) * (b[1] - d[1]) < 0)


def assert_valid_layering(pos: dict[str, tuple[int, int]], edges: list[tuple[str, str]]) -> None:
    for s, t in edges:
        assert pos[s][0] < pos[t][0], (s, t)
    by_layer: dict[int, list[int]] = {}
    for layer, p in pos.values():
        by_layer.setdefault(layer, []).append(p)
    for places in by_layer.values():
        assert sorted(places) == list(range(len(places)))


def test_instances_fold_into_their_steps_in_study_order() -> None:
    dag = StepDag.from_graph(study(
        inst("a"), inst("b_X.1", "b", "a"), inst("b_X.2", "b", "a"),
        inst("c", None, "b_X.1", "b_X.2", funnel_parents=("b",)),
    ))
    assert ["a", "b", "c"] == [n.name for n in dag.nodes]
    assert ("b_X.1", "b_X.2") == dag.by_name["b"].instances
    assert "b_X.1!" == dag.by_name["b"].description
    assert (DagEdge(source="a", target="b", kind="plain"),
            DagEdge(source="b", target="c", kind="funnel")) == dag.edges


def test_a_condition_makes_every_incoming_edge_a_when_edge() -> None:
    dag = StepDag.from_graph(study(
        inst("a"), inst("b"), inst("c", None, "a", "b", when="a.completed or b.completed"),
    ))
    assert {("a", "c", "when"), ("b", "c", "when")} == {(e.source, e.target, e.kind)
                                                       for e in dag.edges}
    assert "a.completed or b.completed" == dag.by_name["c"].when


def test_a_step_naming_a_race_gets_race_edges_from_every_member_even_undeclared() -> None:
    """`report` depends on the solvers (race beats when); `late` only names the race."""
    dag = StepDag.from_graph(study(
        inst("solver_A.1", "solver", race="solve"), inst("solver_A.2", "solver", race="solve"),
        inst("other", race="solve"),
        inst("report", None, "solver_A.1", "solver_A.2", cmd="cat $(race.solve)/x",
             funnel_parents=("solver",), when="any(solver_*.completed)"),
        inst("late", None, "report", restart="ls $(race.solve)"),
    ))
    assert [
        DagEdge(source="solver", target="report", kind="race"),
        DagEdge(source="solver", target="late", kind="race", implied=True),
        DagEdge(source="other", target="report", kind="race", implied=True),
        DagEdge(source="other", target="late", kind="race", implied=True),
        DagEdge(source="report", target="late", kind="plain"),
    ] == list(dag.edges)
    assert "solve" == dag.by_name["other"].race
    assert [
        ("solver_A.1", "report", "race"), ("solver_A.2", "report", "race"),
        ("report", "late", "plain"),
        ("solver_A.1", "late", "race"), ("solver_A.2", "late", "race"),
        ("other", "report", "race"), ("other", "late", "race"),
    ] == list(dag.instance_edges())


def test_a_race_member_naming_its_own_race_has_no_edge_to_itself() -> None:
    dag = StepDag.from_graph(study(inst("a", race="g", cmd="echo $(race.g)")))
    assert () == dag.edges


def test_a_sampled_step_is_marked_sampled() -> None:
    dag = StepDag.from_graph(study(inst("gen"), inst("sim", None, "gen", sampled=True)))
    assert [False, True] == [n.sampled for n in dag.nodes]


def test_instance_edges_keep_the_instance_dependencies() -> None:
    graph = study(inst("a_X.1", "a"), inst("a_X.2", "a"),
                  inst("b_X.1", "b", "a_X.1"), inst("b_X.2", "b", "a_X.2"))
    assert [("a_X.1", "b_X.1", "plain"), ("a_X.2", "b_X.2", "plain")] == list(
        StepDag.from_graph(graph).instance_edges())


def test_layout_puts_a_child_below_its_deepest_parent() -> None:
    dag = StepDag.from_graph(study(inst("a"), inst("b", None, "a"), inst("c", None, "a", "b")))
    assert {"a": (0, 0), "b": (1, 0), "c": (2, 0)} == dag.layout()


def test_barycenter_sweeps_untangle_two_crossed_chains() -> None:
    names = ["a", "b", "y", "x"]
    edges = [("a", "x"), ("b", "y")]
    pos = layered_layout(names, edges)
    assert_valid_layering(pos, edges)
    assert 0 == crossings(pos, edges)


def test_layout_survives_a_cycle_and_ignores_self_loops_and_strangers() -> None:
    pos = layered_layout(["a", "b", "c"], [("a", "b"), ("b", "c"), ("c", "b"), ("a", "a"),
                                           ("a", "nobody")])
    assert {"a", "b", "c"} == set(pos)
    assert pos["a"][0] < pos["b"][0] < pos["c"][0]


def test_layout_of_a_big_random_study_is_valid_deterministic_and_fast() -> None:
    """300 steps, 10,000 instances: folding and laying out take well under a second."""
    rng = random.Random(17)
    steps: list[StepInstance] = []
    made: list[list[str]] = []
    for s in range(300):
        width = 1 if s % 3 == 0 else 50
        picks = rng.sample(range(s), k=min(s, rng.randint(0, 3)))
        names = [f"s{s}_I.{i}" for i in range(width)]
        for i, name in enumerate(names):
            parents = tuple(made[p][i % len(made[p])] for p in picks)
            steps.append(inst(name, f"s{s}", *parents))
        made.append(names)
    graph = study(*steps[:10_000])
    assert 10_000 == len(graph.steps)
    started = time.perf_counter()
    dag = StepDag.from_graph(graph)
    pos = dag.layout()
    elapsed = time.perf_counter() - started
    edges = [(e.source, e.target) for e in dag.edges]
    assert_valid_layering(pos, edges)
    assert pos == StepDag.from_graph(graph).layout()
    assert elapsed < 1.0, f"{elapsed:.3f} s"


def test_load_dag_expands_a_spec_as_validate_does() -> None:
    dag = load_dag(ROOT / "examples" / "race" / "race.yaml")
    assert "race" == dag.name
    assert ["solver", "report"] == [n.name for n in dag.nodes]
    assert 3 == len(dag.by_name["solver"].instances)


def test_load_dag_of_a_missing_spec_is_a_spec_error(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"^.*nope\.yaml: .*$"):
        load_dag(tmp_path / "nope.yaml")


def test_load_dag_of_a_directory_that_is_no_study_says_so(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^.*: not a study directory \(no readable "
                                          r"meta/study\.json: .*\)$"):
        load_dag(tmp_path)
