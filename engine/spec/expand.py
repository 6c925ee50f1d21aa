"""Expand a validated spec into a :class:`StudyGraph`, following Maestro's ``Study._stage``.

Steps are visited in Maestro's own topological order (a depth-first sort from ``_source``).
For each step: substitute the environment; find the parameters it uses (a token anywhere in
the step, description and ``restart`` included) plus those of its non-funnel parents and of
the non-funnel steps whose ``$(X.workspace)`` it reads; then emit one instance per distinct
combination string (labels of the used parameters sorted by key, joined by ``.``), named
``<step>_<combo>`` with workspace ``<study>/<safe step>/<safe combo>``, or a single instance
``<step>`` in ``<study>/<safe step>`` when it uses none. A normal parent edge goes to the
parent instance with the same values; a funnel (``X_*`` or ``X*``) waits for every instance of
X and does not pass X's parameters on. The graph lists instances in file order of steps.
"""

from __future__ import annotations

import datetime
import os
import re

import msgspec
from collections.abc import Sequence
from typing import Any, NoReturn

from engine.errors import ConfigError, SpecError
from engine.spec.environment import (
    StudyEnvironment,
    build_environment,
    dependency_path,
    unresolved_tokens,
)
from engine.spec.graph import GitDependency, PathDependency, Resources, StepInstance, StudyGraph
from engine.spec.loader import funnel_target, load_spec
from engine.spec.model import INT_RESOURCE_KEYS, Spec, Step
from engine.spec.naming import (
    UnsafePath,
    contained_path,
    make_safe_path,
    study_dir_for,
    unsafe_dir_reason,
)
from engine.spec.pgen import ParameterTable, load_generator
from engine.spec.policy import MERLIN_CODES, parse_walltime
from engine.spec.safety import DEFAULT_MAX_INSTANCES, name_problem
from engine.spec.samples import (
    late_tokens,
    merlin_tokens,
    resolve_merlin_variables,
    uses_samples,
)

__all__ = ["expand_study", "load_study", "maestro_topological_order"]

_SOURCE = "_source"
# Maestro's WSREGEX character class, minus '$', '(' and ')': with them, two references that
# touch ('$(a.workspace)/x:$(b.workspace)') are read as one step named 'a.workspace)/x:$(b'.
_WS_REF = re.compile(r"\$\(([-!%\^&\*_\+\|~=`{}\[\]:;<>\?,\./\w]+)\.workspace\)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # a resource lands in a scheduler header
_INT_FIELDS = {k.replace(" ", "_") for k in INT_RESOURCE_KEYS}


def load_study(
    spec_path: str | os.PathLike[str], *, out_dir: str | None = None, now: datetime.datetime,
    cwd: str | None = None, pgen: str | None = None, pargs: Sequence[str] = (),
    text: str | None = None, executor: str | None = None,
) -> StudyGraph:  # fmt: skip
    """Load, validate and expand a spec into the graph the runtime executes.

    Args:
        spec_path: The spec file.
        out_dir: ``-o DIR``: the study directory as given, without timestamp.
        now: Launch time, for the timestamped study directory.
        cwd: Directory that relative paths (spec, OUTPUT_PATH, ``-o``) are resolved against;
            defaults to the process's working directory.
        pgen: A ``--pgen`` Python file whose generator replaces ``global.parameters``.
        pargs: ``--pargs KEY:VALUE`` items for the generator.
        executor: ``--executor``: replaces the spec's ``troupe.executor``.

    Returns:
        The expanded study.

    Raises:
        ConfigError: ``pargs`` without ``pgen``, or a malformed ``pargs`` item.
        SpecError: The spec (or pgen file) is invalid; the message is one line,
            ``FILE: FIELD.PATH: message``.
    """
    if pargs and not pgen:
        raise ConfigError("--pargs needs --pgen: there is no parameter generator to pass them to")
    cwd = os.path.abspath(cwd if cwd is not None else os.getcwd())
    spec = load_spec(spec_path, cwd=cwd, text=text, executor=executor)
    if spec.merlin:
        spec = resolve_merlin_variables(spec)
    spec_file = os.path.normpath(os.path.join(cwd, os.fspath(spec_path)))
    study_dir = study_dir_for(spec, out_dir=out_dir, now=now, cwd=cwd)
    spec_root = os.path.dirname(spec_file)
    env = build_environment(spec, study_dir=study_dir, spec_root=spec_root, cwd=cwd)
    if spec.merlin:
        for name, value in merlin_tokens(spec, study_dir, spec_file, now).items():
            env.add_variable(name, value)
    if pgen:
        table = load_generator(pgen, env, pargs, study_dir=study_dir, spec_root=spec_root)
    else:
        table = ParameterTable.from_spec(spec.parameters)
    return expand_study(spec, env, table, study_dir=study_dir, spec_file=spec_file, cwd=cwd)


def maestro_topological_order(study: Sequence[Step]) -> list[int]:
    """Return step indices in the order Maestro's ``DAG.topological_sort`` visits them.

    That order decides whether ``$(X.workspace)`` of a non-ancestor X is already known, so it
    is reproduced exactly: a depth-first post-order from ``_source``, then every node in
    insertion order, reversed. Edges are added in file order, duplicates dropped.
    """
    index = {step.name: i for i, step in enumerate(study)}
    children: dict[str, list[str]] = {_SOURCE: []} | {s.name: [] for s in study}
    for step in study:
        for parent in [funnel_target(d) for d in step.run.depends] or [_SOURCE]:
            if step.name not in children[parent]:
                children[parent].append(step.name)
    visited: set[str] = set()
    order: list[str] = []
    for root in children:
        if root in visited:
            continue
        visited.add(root)
        stack = [(root, iter(children[root]))]
        while stack:  # iterative DFS: a long chain must not hit the recursion limit
            node, it = stack[-1]
            child = next((c for c in it if c not in visited), None)
            if child is None:
                order.append(node)
                stack.pop()
            else:
                visited.add(child)
                stack.append((child, iter(children[child])))
    return [index[name] for name in reversed(order) if name != _SOURCE]


class _Combo:
    """One zipped combination: index ``i`` of every parameter (Maestro's ``Combination``)."""

    def __init__(self, table: ParameterTable, i: int) -> None:
        self.values = {k: table.values[j][i] for j, k in enumerate(table.keys)}
        self.labels = {k: table.labels[j][i] for j, k in enumerate(table.keys)}
        self.names = dict(zip(table.keys, table.names))

    def param_string(self, used: set[str]) -> str:
        return ".".join(self.labels[k] for k in sorted(used))

    def apply(self, text: str) -> str:
        # Maestro's order: every $(K.label), then every $(K), then every $(K.name).
        if "$(" not in text:
            return text
        for k, label in self.labels.items():
            text = text.replace(f"$({k}.label)", str(label))
        for k, value in self.values.items():
            text = text.replace(f"$({k})", str(value))
        for k, name in self.names.items():
            text = text.replace(f"$({k}.name)", str(name))
        return text


class _Node:
    """A step with the environment applied to every string in it (Maestro's ``add_step``)."""

    def __init__(self, step: Step, env: StudyEnvironment) -> None:
        self.name = step.name
        self.description = env.apply(step.description)
        self.cmd = env.apply(step.run.cmd)
        self.restart = env.apply(step.run.restart)
        self.depends = step.run.depends
        self.resources: dict[str, Any] = {}
        for key in Resources.__struct_fields__:
            value = getattr(step.run, key)
            if isinstance(value, dict):  # 1.2.1 {allocation, launcher}: the allocation half
                value = value.get("allocation")
            if value is not None:
                self.resources[key] = env.apply(value) if isinstance(value, str) else value
        run = step.run
        queue = run.task_queue or run.queue  # task_queue: $(VERIFY_QUEUE), as Merlin resolves
        ext = {"group": run.group, "restart_limit": run.restart_limit, "retry": run.retry,
               "when": run.when, "race": run.race, "inputs": run.inputs,
               "group_by": run.group_by,
               "max_retries": run.max_retries, "retry_delay": run.retry_delay,
               "shell": run.shell, "task_queue": env.apply(queue) if queue else None,
               "batch_type": (run.batch or {}).get("type")}  # fmt: skip
        self.extensions = {k: v for k, v in ext.items() if v is not None}
        self.group_by: tuple[str, ...] = tuple(run.group_by or ())
        other = [step.run.pre, step.run.post, *self.depends, *self.resources.values()]
        self.texts = [self.name, self.description, self.cmd, self.restart, *other]

    def used_params(self, keys: Sequence[str]) -> set[str]:
        # maestrowf 1.2.1 regex: $(KEY) or $(KEY.<word>); 1.1.11 also matched $(KEYX).
        found: set[str] = set()
        for key in keys:
            pattern = re.compile(r"\$\(" + re.escape(key) + r"(\.\w+)?\)")
            if any(isinstance(t, str) and pattern.search(t) for t in self.texts):
                found.add(key)
        return found


class _Expander:
    """Holds Maestro's per-step bookkeeping while the steps are staged."""

    def __init__(self, spec: Spec, table: ParameterTable, study_dir: str) -> None:
        self.spec = spec
        self.study_dir = study_dir
        self.keys = table.keys
        self.combos = [_Combo(table, i) for i in range(table.size)]
        self.used: dict[str, set[str]] = {}
        self.workspaces: dict[str, str] = {}  # step name (unparameterised) or instance name
        self.instances: dict[str, list[str]] = {}  # step -> its instance names, in order
        self.out: dict[str, StepInstance] = {}
        # One object per distinct value that many instances share (a sweep of 100,000).
        self.shared: dict[object, object] = {}
        self.by_workspace: dict[str, str] = {}  # workspace -> first instance using it
        self.warnings: list[str] = []
        self.labels = spec.samples.labels if spec.samples else ()
        self.late = late_tokens(self.labels)  # resolved per sample, at submission
        limits = spec.troupe.get("limits") or {}
        self.max_instances: int = limits.get("max_instances", DEFAULT_MAX_INSTANCES)

    def fail(self, field: str, message: str) -> NoReturn:
        raise SpecError(self.spec.path, field, message)

    def path(self, field: str, *parts: str) -> str:
        """``contained_path`` under the study directory, its refusal as a SpecError."""
        try:
            return contained_path(self.study_dir, *parts)
        except UnsafePath as exc:
            self.fail(field, str(exc))

    def stage(self, i: int, node: _Node) -> None:
        name, field = node.name, f"study[{i}].run"
        funnels = [funnel_target(d) for d in node.depends if "*" in d]
        normals = [d for d in node.depends if "*" not in d]
        used = node.used_params(self.keys)
        for parent in normals:
            used |= self.used[parent]
        for j, key in enumerate(node.group_by):
            if key not in self.keys:
                self.fail(f"{field}.group_by[{j}]", f"'{key}' is not a parameter")
            if not funnels:
                self.fail(f"{field}.group_by", "needs a funnel dependency (depends: [X_*])")
            for funnel in funnels:
                if key not in self.used[funnel]:
                    self.fail(f"{field}.group_by[{j}]", f"funnel parent '{funnel}' does not "
                              f"use parameter '{key}', so it cannot be grouped by it")
            used.add(key)  # one instance per value: Maestro's dedup of combinations
        refs = []
        for ref in dict.fromkeys(_WS_REF.findall(f"{node.cmd} {node.restart}")):
            if ref not in self.used:
                known = any(s.name == ref for s in self.spec.study)
                where = "cmd" if f"$({ref}.workspace)" in node.cmd else "restart"
                self.fail(f"{field}.{where}", f"$({ref}.workspace) is used before step '{ref}' "
                          f"would be generated (make '{ref}' an ancestor of '{name}')"
                          if known else f"$({ref}.workspace) names no step")  # fmt: skip
            refs.append(ref)
            if ref not in funnels:
                used |= self.used[ref]
        self.used[name] = used
        self.instances[name] = []
        if not used:
            ws = self.path(f"study[{i}].name", name)
            self.workspaces[name] = ws
            self.emit(i, node, name, ws, None, refs, funnels)
            return
        for combo in self.combos:
            combo_str = combo.param_string(used)
            inst = f"{name}_{combo_str}"
            if inst in self.out and self.out[inst].step == name:
                continue  # same labels as an earlier combination: one instance (Maestro)
            reason = unsafe_dir_reason(make_safe_path(combo_str), top_level=False)
            if reason:
                self.fail("global.parameters", f"step '{name}': combination '{combo_str}' {reason}")
            ws = self.path("global.parameters", name, combo_str)
            self.workspaces[inst] = ws
            self.emit(i, node, inst, ws, combo, refs, funnels)

    def emit(
        self, i: int, node: _Node, inst: str, ws: str, combo: _Combo | None, refs: list[str],
        funnels: list[str],
    ) -> None:  # fmt: skip
        if inst in self.out:
            self.fail(f"study[{i}].name", f"instance name '{inst}' is already taken by an "
                      f"instance of step '{self.out[inst].step}'")  # fmt: skip
        problem = name_problem(inst)
        if problem:
            self.fail("global.parameters" if combo else f"study[{i}].name",
                      f"step instance name {inst[:80]!r} {problem}")
        if len(self.out) >= self.max_instances:
            self.fail("troupe.limits.max_instances", f"the study expands to more than "
                      f"{self.max_instances} step instances; raise the limit with "
                      "troupe: {limits: {max_instances: N}}")  # fmt: skip
        # Invariant: one workspace per instance. Its script and output files are named after
        # the instance inside it, so no two instances can share those either.
        other = self.by_workspace.setdefault(ws, inst)
        if other != inst:  # e.g. labels 'P.a/b' and 'P.a:b' both sanitise to 'P.ab'
            self.fail(f"study[{i}]", f"instances '{other}' and '{inst}' would share the "
                      f"workspace {os.path.relpath(ws, self.study_dir)} (and its script and "
                      "output files); give the parameter values or labels that differ in "
                      "more than punctuation")  # fmt: skip
        apply = combo.apply if combo is not None else (lambda s: s)
        cmd, restart = apply(node.cmd), apply(node.restart)
        for ref in refs:
            if ref in funnels or not self.used[ref]:  # a funnel's: the dir of all its combos
                target = self.path(f"study[{i}].run.cmd", ref)
            else:
                assert combo is not None  # a parameterised ref makes this step parameterised
                target = self.workspaces[f"{ref}_{combo.param_string(self.used[ref])}"]
            cmd = cmd.replace(f"$({ref}.workspace)", target)
            restart = restart.replace(f"$({ref}.workspace)", target)
        cmd, restart = cmd.replace("$(WORKSPACE)", ws), restart.replace("$(WORKSPACE)", ws)
        for token, code in MERLIN_CODES.items():
            cmd = cmd.replace(f"$({token})", str(code))
            restart = restart.replace(f"$({token})", str(code))
        parents: list[str] = []
        for dep in node.depends:
            target = funnel_target(dep)
            if "*" in dep:
                members = self.instances[target]
                if node.group_by and combo is not None:  # only the matching group
                    want = {k: str(combo.values[k]) for k in node.group_by}
                    members = [m for m in members
                               if all(dict(self.out[m].params).get(k) == v
                                      for k, v in want.items())]
                parents.extend(members)
            elif self.used[target]:
                assert combo is not None
                parents.append(f"{target}_{combo.param_string(self.used[target])}")
            else:
                parents.append(target)
        used = self.used[node.name]
        params = tuple(sorted((k, str(combo.values[k])) for k in used)) if combo else ()
        resources = self.resources(node, apply, i)
        self.warn(node.name, [*unresolved_tokens(cmd), *unresolved_tokens(restart)])
        description = apply(node.description)
        description = self.shared.setdefault(description, description)
        self.out[inst] = StepInstance(
            name=inst, step=node.name, description=description, workspace=ws,
            cmd=cmd, restart=restart, parents=tuple(dict.fromkeys(parents)), params=params,
            resources=resources, funnel_parents=tuple(dict.fromkeys(funnels)),
            sampled=bool(self.labels) and uses_samples(cmd, restart, self.labels),
            **node.extensions,
        )  # fmt: skip
        self.instances[node.name].append(inst)

    def resources(self, node: _Node, apply: Any, i: int) -> Resources:
        fields: dict[str, Any] = {}
        for key, value in node.resources.items():
            if isinstance(value, str):
                value = apply(value)
                if _CONTROL.search(value):
                    self.fail(f"study[{i}].run.{key}", f"{value[:80]!r} must be one line once "
                              "variables and parameters are substituted")  # fmt: skip
                self.warn(node.name, unresolved_tokens(value), f" in run.{key}")
                if key in _INT_FIELDS and value.isdigit():
                    value = int(value)
                elif key == "exclusive" and value.lower() in ("true", "false"):
                    value = value.lower() == "true"
            fields[key] = value
        if "walltime" in fields:  # as engine.settings parses it at run time: refuse it now
            try:
                parse_walltime(fields["walltime"])
            except ValueError as exc:
                self.fail(f"study[{i}].run.walltime", str(exc))
        out = Resources(**fields)
        return self.shared.setdefault(out, out)  # type: ignore[return-value]

    def warn(self, step: str, tokens: list[str], where: str = "") -> None:
        for token in tokens:
            if token in self.late:
                continue
            text = f"step '{step}': unresolved token {token}{where} is left for the shell"
            if text not in self.warnings:
                self.warnings.append(text)


def expand_study(
    spec: Spec, env: StudyEnvironment, table: ParameterTable, *, study_dir: str,
    spec_file: str, cwd: str,
) -> StudyGraph:  # fmt: skip
    """Expand a validated spec with a built environment and parameter table.

    Args:
        spec: The validated spec.
        env: Its environment (see :func:`~engine.spec.environment.build_environment`).
        table: The parameters (from the spec or a pgen file).
        study_dir: The absolute study directory.
        spec_file: The absolute spec path.
        cwd: Directory relative dependency paths are resolved against.

    Returns:
        The study graph, instances in file order of their steps.

    Raises:
        SpecError: A ``$(X.workspace)`` reference to a step not staged yet, or a
            combination whose workspace would leave its step directory.
    """
    expander = _Expander(spec, table, study_dir)
    for i in maestro_topological_order(spec.study):
        expander.stage(i, _Node(spec.study[i], env))
    steps = tuple(expander.out[n] for s in spec.study for n in expander.instances[s.name])
    variables = {name: env.apply(f"$({name})") for name in spec.env.variables}
    variables |= {"OUTPUT_PATH": study_dir, "SPECROOT": os.path.dirname(spec_file)}
    deps = spec.env.dependencies
    return StudyGraph(
        name=spec.description.name,
        description=spec.description.description,
        spec_path=spec_file,
        study_dir=study_dir,
        steps=steps,
        batch={**spec.batch, "type": spec.batch.get("type") or "local"},
        variables=variables,
        git=tuple(
            GitDependency(name=g.name, path=dependency_path(env, g.path, cwd),
                          url=env.substitute_only(g.url), tag=g.tag, hash=g.hash, branch=g.branch)
            for g in deps.git
        ),  # fmt: skip
        paths=tuple(
            PathDependency(name=p.name, path=dependency_path(env, p.path, cwd)) for p in deps.paths
        ),
        warnings=(*spec.warnings, *expander.warnings),
        troupe=dict(spec.troupe),
        merlin=spec.merlin,
        samples=None if spec.samples is None else msgspec.structs.replace(
            spec.samples, file=env.apply(spec.samples.file),
            generate=env.apply(spec.samples.generate)),
    )
