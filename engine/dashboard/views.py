"""The dashboard's picture of one study, kept current from its events (pure: no I/O, no clock).

A ``StudyView`` holds every step instance's state and attempts, and per spec step (a node
of ``engine.dag.StepDag``) the number of instances in each state, so a page never needs
the instances of a 10,000-instance step to draw its node. It starts from a status reply
(``StudyView.load``) and then takes the study's events (``StudyView.apply``); what changed
since the last look is collected for the server-sent events (``StudyView.take_changes``),
which therefore carry only the steps that changed, however many events arrived.

Consistency: the events received while the status request was out may or may not be in
its reply. Such an event is applied only if it continues the instance's known history
(its ``previous`` is the instance's state), so one the reply already holds is not
applied twice. Events after the reply are always newer: the engine publishes its events
and its replies on one connection, and NATS keeps one publisher's order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from engine.dagformat import dominant_state
from engine.messages import SamplesChanged, StepState, StepStateChanged

if TYPE_CHECKING:
    from engine.dag import StepDag
    from engine.messages.bus import StepSummary

__all__ = ["Attempt", "Changes", "InstanceView", "StudyView", "slot_rows"]

TERMINAL = frozenset({"FINISHED", "FAILED", "CANCELLED", "TIMEDOUT", "HWFAILURE", "UNKNOWN",
                      "DRYRUN", "SKIPPED", "CACHED"})
"""States an instance ends in (a failed attempt that runs again leaves FAILED later)."""
_BAD = ("FAILED", "TIMEDOUT", "HWFAILURE", "UNKNOWN")
_ORDER = [s.value for s in StepState]


class Attempt(msgspec.Struct, kw_only=True):
    """One attempt of an instance: when it was ready (WAITING for a slot), handed over
    (PENDING), ran and ended (seconds since the epoch; None while unknown)."""

    attempt: int
    job_id: str = ""
    ready: float | None = None
    submit: float | None = None
    start: float | None = None
    end: float | None = None
    state: str = ""
    exit_code: int | None = None
    reason: str = ""


class InstanceView(msgspec.Struct, kw_only=True):
    """One step instance as the page shows it (mutable: updated in place)."""

    name: str
    node: str
    state: str = "INITIALIZED"
    attempt: int = 0
    job_id: str = ""
    exit_code: int | None = None
    reason: str = ""
    ready: float | None = None  # when it last became WAITING
    attempts: list[Attempt] = msgspec.field(default_factory=list)

    def record(self, number: int) -> Attempt:
        """Attempt ``number``'s record (made on first use, kept in order)."""
        for att in reversed(self.attempts):
            if att.attempt == number:
                return att
        att = Attempt(attempt=number)
        self.attempts.append(att)
        self.attempts.sort(key=lambda a: a.attempt)
        return att


class Changes(msgspec.Struct, frozen=True, kw_only=True):
    """What changed since the last ``take_changes``: node names, instance names, and the
    engine time of every event applied (for the page's latency record)."""

    nodes: tuple[str, ...] = ()
    instances: tuple[str, ...] = ()
    times: tuple[float, ...] = ()
    study: bool = False


class StudyView:
    """Every instance of one study, aggregated per spec step (see the module docstring).

    Invariant: ``counts[node][s]`` is the number of ``node``'s instances in state ``s``.
    """

    def __init__(self, study_id: str, dag: StepDag) -> None:
        self.study_id = study_id
        self.dag = dag
        self.instances: dict[str, InstanceView] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.samples: dict[str, dict[str, int]] = {}  # sampled node -> sample counts
        for node in dag.nodes:
            self.counts[node.name] = {"INITIALIZED": len(node.instances)} if node.instances else {}
            for name in node.instances:
                self.instances[name] = InstanceView(name=name, node=node.name)
        self.loaded = False
        self.state = "RUNNING"
        self._nodes: set[str] = set()
        self._changed: set[str] = set()
        self._times: list[float] = []
        self._study_changed = False

    # ------------------------------------------------------------------ input

    def load(self, steps: Iterable[StepSummary]) -> None:
        """Take the states of a status reply (each instance's latest attempt included)."""
        for s in steps:
            inst = self.instances.get(s.step)
            if inst is None:
                continue
            self._move(inst, s.state)
            inst.attempt, inst.job_id = s.attempt, s.job_id
            inst.exit_code, inst.reason = s.exit_code, s.reason
            if s.attempt and (s.submit_time or s.start_time):
                att = inst.record(s.attempt)
                att.job_id = s.job_id or att.job_id
                att.submit = att.submit or s.submit_time
                att.start = att.start or s.start_time
                if s.end_time is not None and s.state in TERMINAL:
                    att.end, att.state = s.end_time, s.state
                    att.exit_code, att.reason = s.exit_code, s.reason
        self.loaded = True

    def load_states(self, states: Iterable[tuple[str, str]]) -> None:
        """Take ``(instance, state)`` pairs (an ended study's ``status.csv``: a first
        picture, before a status reply adds attempts, exit codes and reasons)."""
        for name, state in states:
            inst = self.instances.get(name)
            if inst is not None:
                self._move(inst, state)
        self.loaded = True

    def apply(self, event: StepStateChanged, *, buffered: bool = False) -> bool:
        """Apply one step event; False if it was not applied (unknown instance, or a
        ``buffered`` event that the status reply already held)."""
        inst = self.instances.get(event.step)
        if inst is None:
            return False
        state = str(event.state)
        if buffered and (state == inst.state or str(event.previous) != inst.state):
            return False
        self._history(inst, event)
        self._move(inst, state)
        inst.attempt = event.attempt or inst.attempt
        inst.job_id = event.job_id or inst.job_id
        if state in TERMINAL or state in _BAD:
            inst.exit_code, inst.reason = event.exit_code, event.reason
        self._times.append(event.time)
        return True

    def history(self, events: Iterable[StepStateChanged]) -> None:
        """Merge earlier attempts from replayed events into the instances' histories (the
        states are not touched: the status reply and live events own them)."""
        for event in events:
            inst = self.instances.get(event.step)
            if inst is not None:
                self._history(inst, event)

    def apply_samples(self, event: SamplesChanged) -> None:
        """Count the samples of a sampled step that entered a state (a terminal state is a
        sample's end; RUNNING moves it from the not-started count)."""
        inst = self.instances.get(event.step)
        if inst is None:
            return
        counts = self.samples.setdefault(inst.node, {})
        state = str(event.state)
        if state == "RUNNING" or state in TERMINAL:
            counts[state] = counts.get(state, 0) + len(event.samples)
            if state in TERMINAL and counts.get("RUNNING"):
                counts["RUNNING"] = max(0, counts["RUNNING"] - len(event.samples))
        self._nodes.add(inst.node)
        self._times.append(event.time)

    def end(self, state: str) -> None:
        """The study ended in ``state``."""
        self.state = state
        self._study_changed = True

    def _move(self, inst: InstanceView, state: str) -> None:
        if state == inst.state:
            return
        counts = self.counts[inst.node]
        counts[inst.state] = counts.get(inst.state, 0) - 1
        if not counts[inst.state]:
            del counts[inst.state]
        counts[state] = counts.get(state, 0) + 1
        inst.state = state
        self._nodes.add(inst.node)
        self._changed.add(inst.name)

    @staticmethod
    def _history(inst: InstanceView, event: StepStateChanged) -> None:
        state = str(event.state)
        if state == "WAITING":
            inst.ready = event.time  # for the attempt that follows
            return
        if not event.attempt:
            return  # e.g. FAILED by a dependency: no attempt ran
        if state == "PENDING":
            att = inst.record(event.attempt)
            att.submit, att.ready = event.time, att.ready or inst.ready
        elif state == "RUNNING":
            att = inst.record(event.attempt)
            att.start, att.job_id = event.time, event.job_id or att.job_id
        elif state in TERMINAL:
            att = inst.record(event.attempt)
            if att.submit is None and att.start is None:
                return  # ended before it was handed over (cancelled while WAITING)
            att.end, att.state = event.time, state
            att.exit_code, att.reason = event.exit_code, event.reason
            att.job_id = event.job_id or att.job_id

    # ------------------------------------------------------------------ output

    def take_changes(self) -> Changes:
        """What changed since the last call (and forget it)."""
        out = Changes(nodes=tuple(self._nodes), instances=tuple(self._changed),
                      times=tuple(self._times), study=self._study_changed)
        self._nodes, self._changed, self._times = set(), set(), []
        self._study_changed = False
        return out

    def totals(self) -> dict[str, int]:
        """Instances per state over the whole study, in ``StepState`` order."""
        total: dict[str, int] = {}
        for counts in self.counts.values():
            for state, n in counts.items():
                total[state] = total.get(state, 0) + n
        return {s: total[s] for s in _ORDER if total.get(s)}

    def node(self, name: str) -> dict[str, Any]:
        """A node's data for the page: its counts, its colour (its instances' dominant
        state, as ``enginectl graph`` colours a step) and its sample counts."""
        counts = self.counts[name]
        return {"name": name, "state": dominant_state(counts) or "INITIALIZED",
                "counts": dict(counts),
                "total": sum(counts.values()), "samples": dict(self.samples.get(name, {}))}

    def instance(self, name: str) -> dict[str, Any]:
        """An instance's data for the page (its attempts included)."""
        return msgspec.to_builtins(self.instances[name])  # type: ignore[no-any-return]

    def page(self, node: str, offset: int, limit: int) -> list[dict[str, str]]:
        """Instances ``offset`` to ``offset + limit`` of a node: name and state each."""
        names = self.dag.by_name[node].instances[offset:offset + limit]
        return [{"name": n, "state": self.instances[n].state} for n in names]

    def bars(self, *, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` attempts (by start, else submit time) as timeline bars."""
        out = []
        for inst in self.instances.values():
            for att in inst.attempts:
                begin = att.submit if att.submit is not None else att.start
                if begin is None:
                    continue
                out.append({"step": inst.name, "node": inst.node, "attempt": att.attempt,
                            "job_id": att.job_id, "ready": att.ready, "submit": att.submit,
                            "start": att.start,
                            "end": att.end, "state": att.state or inst.state})
        out.sort(key=lambda b: b["submit"] if b["submit"] is not None else b["start"])
        return out[-limit:] if limit else out


_WORKER_SLACK = 0.05


def worker_rows(bars: list[dict[str, Any]], who: list[str]) -> list[str]:
    """Give each bar a ``row`` by who ran it (``who[i]`` for ``bars[i]``: ``worker NAME``,
    or "" when unknown, as for a local process or a Slurm job): a worker's attempts in
    rows of its own (packed within it: one per task it ran at once), the rest in shared
    slots (``slot_rows``). Returns the rows' labels, workers first."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for bar, name in zip(bars, who, strict=True):
        groups.setdefault(name.removeprefix("worker ") if name.startswith("worker ") else "",
                          []).append(bar)
    labels: list[str] = []
    for name in sorted(groups, key=lambda g: (g == "", g)):
        # A worker's task occupies it from its start (it may wait queued before that).
        n = slot_rows(groups[name], on_start=bool(name))
        for bar in groups[name]:
            bar["row"] += len(labels)
        if name:
            labels += [name] if n == 1 else [f"{name} #{i + 1}" for i in range(n)]
        else:
            labels += [f"slot {i + 1}" for i in range(n)]
    return labels


def slot_rows(bars: list[dict[str, Any]], *, on_start: bool = False) -> int:
    """Give each bar (sorted by hand-over time, as ``StudyView.bars`` sorts them) a
    ``row``: the first slot free when it was handed over (with ``on_start``, when it
    started, and a slot is free again 50 ms before the engine saw its last task end: a
    worker's report and its next task's start reach the engine by different paths), as a
    local process slot is; returns the number of rows."""
    ends: list[float] = []
    slack = _WORKER_SLACK if on_start else 0.0
    if on_start:
        bars.sort(key=lambda b: b["start"] if b["start"] is not None else b["submit"])
    for bar in bars:
        first = ("start", "submit") if on_start else ("submit", "start")
        begin = bar[first[0]] if bar[first[0]] is not None else bar[first[1]]
        for row, end in enumerate(ends):
            if end <= begin + slack:
                break
        else:
            row = len(ends)
            ends.append(0.0)
        ends[row] = bar["end"] if bar["end"] is not None else float("inf")
        bar["row"] = row
    return len(ends)
