"""A study as a picture's data: one node per spec step, the edges between steps, a layout.

``StepDag.from_graph`` folds an expanded ``StudyGraph`` (thousands of instances) into the
spec's steps, each with its instances in order; ``instance_edges`` unfolds the edges again
for a per-instance picture; ``layout`` places the steps in layers for a drawing that needs
no Graphviz (the dashboard). ``load_dag`` is the one function here that reads files: a spec
(expanded as ``enginectl validate`` does) or a study directory (its ``meta/study.json``).

Every edge has a kind, the strongest that applies, in this order:

- ``race``: the child's command (or restart) names ``$(race.<group>)`` and the parent is
  a member of that race group (``run.race``). The child waits until the race is decided
  (``engine.machines.race.waits_for_race``), so the edge exists even when the child does
  not list the members in ``depends``: such an edge is ``implied`` (no parent ends its
  wait alone; the race's outcome does). The members of one group have no edges between
  them: a race is a rivalry, not an order; pictures group them instead.
- ``when``: the child has a ``when:`` condition (``StepInstance.when``), so a parent's
  failure does not decide the child by Maestro's rule; the condition does.
- ``funnel``: the child depends on ``X_*`` (``StepInstance.funnel_parents``): it waits for
  every instance of ``X`` (or, with ``group_by``, those of its group).
- ``plain``: Maestro's ordinary dependency.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal

import msgspec

if TYPE_CHECKING:
    from engine.spec.graph import StudyGraph

__all__ = ["DagEdge", "DagNode", "EdgeKind", "StepDag", "layered_layout", "load_dag"]

EdgeKind = Literal["plain", "funnel", "when", "race"]

# The strongest kind wins when several apply to one pair of steps.
_RANK: dict[str, int] = {"plain": 0, "funnel": 1, "when": 2, "race": 3}
_KIND: dict[str, EdgeKind] = {"plain": "plain", "funnel": "funnel", "when": "when",
                              "race": "race", "implied-race": "race"}


class DagNode(msgspec.Struct, frozen=True, kw_only=True):
    """One spec step.

    Attributes:
        name: The spec step's name.
        instances: Its instances' names, in the study's (topological) order.
        sampled: A Merlin sampled step: each instance runs once per sample.
        description: The step's description (of its first instance, after substitution).
        when: Its ``when:`` condition ("" = Maestro's rule).
        race: The race group it belongs to ("" for none).
    """

    name: str
    instances: tuple[str, ...]
    sampled: bool = False
    description: str = ""
    when: str = ""
    race: str = ""


class DagEdge(msgspec.Struct, frozen=True, kw_only=True):
    """A dependency between two spec steps (see the module docstring for ``kind``).

    Attributes:
        source: The parent step.
        target: The child step.
        kind: ``plain``, ``funnel``, ``when`` or ``race``.
        implied: A ``race`` edge without a ``depends`` entry behind it: the child waits
            for the race's outcome only.
    """

    source: str
    target: str
    kind: EdgeKind = "plain"
    implied: bool = False


class StepDag(msgspec.Struct, frozen=True, kw_only=True, dict=True):
    """A study folded to its spec steps.

    Attributes:
        name: The study's name (``description.name``).
        nodes: One per spec step, in spec order (parents before children).
        edges: Step-level edges, sorted by (source, target) in node order; at most one
            per pair of steps.
        parents: Instance name -> the instances it depends on (``StepInstance.parents``).
    """

    name: str
    nodes: tuple[DagNode, ...]
    edges: tuple[DagEdge, ...]
    parents: dict[str, tuple[str, ...]] = {}

    @classmethod
    def from_graph(cls, graph: StudyGraph) -> StepDag:
        """Fold ``graph``'s instances into steps and classify every edge.

        Linear in the number of instances plus instance-level dependencies.
        """
        order: dict[str, int] = {}
        members: dict[str, list[str]] = {}
        first: dict[str, int] = {}
        step_of: dict[str, str] = {}
        for i, inst in enumerate(graph.steps):
            step_of[inst.name] = inst.step
            if inst.step not in order:
                order[inst.step] = len(order)
                first[inst.step] = i
            members.setdefault(inst.step, []).append(inst.name)
        race_groups: dict[str, set[str]] = {}  # group -> member steps
        sampled: dict[str, bool] = {}
        for inst in graph.steps:
            sampled[inst.step] = sampled.get(inst.step, False) or inst.sampled
            if inst.race:
                race_groups.setdefault(inst.race, set()).add(inst.step)
        kinds: dict[tuple[str, str], str] = {}
        for inst in graph.steps:
            funnels = set(inst.funnel_parents)
            named = [g for g in race_groups if _names_race(inst.cmd, inst.restart, g)]
            racers = {s for g in named for s in race_groups[g]} - {inst.step}
            for parent in inst.parents:
                source = step_of[parent]
                kind = ("race" if source in racers else "when" if inst.when
                        else "funnel" if source in funnels else "plain")
                key = (source, inst.step)
                if _RANK[kind] > _RANK.get(kinds.get(key, ""), -1):
                    kinds[key] = kind
            for source in racers:
                kinds.setdefault((source, inst.step), "implied-race")
        edges = sorted(kinds.items(), key=lambda kv: (order[kv[0][0]], order[kv[0][1]]))
        nodes = []
        for step, index in first.items():
            head = graph.steps[index]
            nodes.append(DagNode(name=step, instances=tuple(members[step]),
                                 sampled=sampled[step], description=head.description,
                                 when=head.when, race=head.race))
        return cls(
            name=graph.name,
            nodes=tuple(nodes),
            edges=tuple(DagEdge(source=s, target=t, kind=_KIND[k], implied=k == "implied-race")
                        for (s, t), k in edges),
            parents={inst.name: inst.parents for inst in graph.steps if inst.parents},
        )

    @property
    def by_name(self) -> dict[str, DagNode]:
        """Nodes by step name."""
        return {n.name: n for n in self.nodes}

    def instance_edges(self) -> Iterator[tuple[str, str, EdgeKind]]:
        """Instance-level edges ``(parent_instance, child_instance, kind)``: every
        dependency, with its steps' edge kind, then every implied race edge (each member
        instance to each instance of the waiting step). Children come in study order."""
        step_of = {i: n.name for n in self.nodes for i in n.instances}
        kinds = {(e.source, e.target): e.kind for e in self.edges}
        for node in self.nodes:
            for child in node.instances:
                for parent in self.parents.get(child, ()):
                    yield parent, child, kinds[(step_of[parent], node.name)]
        by_name = self.by_name
        for edge in self.edges:
            if edge.implied:
                for child in by_name[edge.target].instances:
                    for parent in by_name[edge.source].instances:
                        yield parent, child, edge.kind

    def layout(self, *, sweeps: int = 4) -> dict[str, tuple[int, int]]:
        """Layered positions of the steps: ``{step: (layer, position)}`` (see
        :func:`layered_layout`)."""
        return layered_layout([n.name for n in self.nodes],
                              [(e.source, e.target) for e in self.edges], sweeps=sweeps)


def _names_race(cmd: str, restart: str, group: str) -> bool:
    token = f"$(race.{group})"
    return token in cmd or token in restart


def layered_layout(names: Sequence[str], edges: Iterable[tuple[str, str]], *,
                   sweeps: int = 4) -> dict[str, tuple[int, int]]:
    """Place a directed graph in layers: ``{name: (layer, position)}``, deterministic.

    Longest-path layering from the roots (a node's layer is one more than its deepest
    parent's, so every edge goes from a lower layer to a higher one), then ``sweeps``
    down-and-up barycenter passes that order each layer by the mean relative position of
    its neighbours in the layers already placed, which removes most crossings. Ties keep
    the previous order, which starts as ``names``' order.

    An edge that closes a cycle (a spec whose race would deadlock) is ignored for the
    layering: the first node of ``names`` still waiting is placed as if it were free.
    Self-loops and edges naming unknown nodes are ignored. Time is
    O(sweeps * (V + E) log V).

    Args:
        names: The nodes, in their preferred order (e.g. spec order).
        edges: ``(source, target)`` pairs; duplicates are harmless.
        sweeps: Barycenter passes (each one down, then up).

    Returns:
        Every node's layer (0 for roots) and position in its layer (0-based).
    """
    index = {n: i for i, n in enumerate(names)}
    succ: list[set[int]] = [set() for _ in names]
    for source, target in edges:
        if source in index and target in index and source != target:
            succ[index[source]].add(index[target])
    pred: list[list[int]] = [[] for _ in names]
    for s, targets in enumerate(succ):
        for t in targets:
            pred[t].append(s)
    layer = _longest_path_layers(len(names), succ, pred)
    # Keep only edges that go downwards (a cycle's closing edge does not).
    down = [sorted(t for t in targets if layer[t] > layer[s]) for s, targets in enumerate(succ)]
    up: list[list[int]] = [[] for _ in names]
    for s, below in enumerate(down):
        for t in below:
            up[t].append(s)
    layers: list[list[int]] = [[] for _ in range(max(layer, default=-1) + 1)]
    for v in range(len(names)):
        layers[layer[v]].append(v)
    x = [0.0] * len(names)  # relative position in its layer, in (0, 1)
    for row in layers:
        _place(row, x)
    for _ in range(sweeps):
        for row in layers[1:]:
            _reorder(row, up, x)
        for row in reversed(layers[:-1]):
            _reorder(row, down, x)
    return {names[v]: (k, p) for k, row in enumerate(layers) for p, v in enumerate(row)}


def _longest_path_layers(n: int, succ: list[set[int]], pred: list[list[int]]) -> list[int]:
    """Kahn's algorithm in index order; a stuck cycle releases its first node."""
    missing = [len(p) for p in pred]
    layer = [0] * n
    done = [False] * n
    ready = [v for v in range(n) if not missing[v]]
    ready.reverse()  # a stack popping the lowest index first
    forced = 0
    placed = 0
    while placed < n:
        if not ready:
            while done[forced]:  # every node left waits for another: a cycle
                forced += 1
            ready.append(forced)
            missing[forced] = 0
        v = ready.pop()
        if done[v]:
            continue
        done[v] = True
        placed += 1
        layer[v] = max((layer[u] + 1 for u in pred[v] if done[u]), default=0)
        fresh = []
        for t in succ[v]:
            if not done[t]:
                missing[t] -= 1
                if missing[t] == 0:
                    fresh.append(t)
        ready.extend(sorted(fresh, reverse=True))
    return layer


def _place(row: list[int], x: list[float]) -> None:
    width = len(row)
    for p, v in enumerate(row):
        x[v] = (p + 0.5) / width


def _reorder(row: list[int], neighbours: list[list[int]], x: list[float]) -> None:
    """Sort ``row`` by its nodes' barycenters over ``neighbours``; a node without
    neighbours keeps its place's value, so it stays roughly where it was."""
    keys = {}
    for p, v in enumerate(row):
        near = neighbours[v]
        keys[v] = (sum(x[u] for u in near) / len(near) if near else x[v], p)
    row.sort(key=keys.__getitem__)
    _place(row, x)


def load_dag(path: str | os.PathLike[str], *, pgen: str | None = None,
             pargs: Sequence[str] = ()) -> StepDag:
    """The step DAG of a spec file or of a study directory.

    A spec is expanded as ``enginectl validate`` expands it (in the current directory,
    without creating anything); a directory is read as a study of ``enginectl run`` or
    ``serve`` (its ``meta/study.json``, the graph it was created with).

    Args:
        path: A spec file, or a study directory.
        pgen: A Maestro parameter generator for a spec (``--pgen``).
        pargs: Its arguments (``--pargs KEY:VALUE``).

    Returns:
        The study's step DAG.

    Raises:
        SpecError: the spec is missing, unreadable or invalid (one line naming the file).
        ConfigError: the directory is not a study directory; ``pargs`` without ``pgen``.
    """
    from engine.errors import ConfigError

    if os.path.isdir(path):
        if pgen or pargs:
            raise ConfigError(f"{path}: --pgen/--pargs apply to a spec, not a study directory")
        from engine.layout import read_study_graph

        return StepDag.from_graph(read_study_graph(path))
    from engine.spec import load_study

    graph = load_study(path, out_dir=os.devnull, now=dt.datetime.now(), cwd=os.getcwd(),
                       pgen=pgen, pargs=pargs)
    return StepDag.from_graph(graph)
