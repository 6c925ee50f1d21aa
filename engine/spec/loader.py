"""Read a spec file with ``yaml.safe_load`` and validate it with Maestro's rules (plus ours).

Validation is as strict as Maestro's JSON schema and code checks: closed ``env``, step and
``run`` blocks, resource keys that are integers or exactly ``$(VAR)``, parameters with only
``values`` and a string ``label``, equal-length value lists, one namespace for variables,
labels, dependencies and parameters, and ``depends`` entries that name steps defined
earlier. Troupe adds a few checks Maestro lacks (labels need ``%%``, step names cannot
escape or shadow the study directory, duplicate step names). Every problem is raised as one
:class:`~engine.errors.SpecError` naming the file and the field path; nothing is expanded.
"""

from __future__ import annotations

import os
import re
from typing import Any, NoReturn

import msgspec
import yaml

from engine.errors import SpecError
from engine.spec.extensions import (
    MERLIN_RUN_KEYS,
    TROUPE_RUN_KEYS,
    check_run_extensions,
    check_troupe_block,
)
from engine.spec.model import INT_RESOURCE_KEYS, RUN_KEYS, Description, Env, Parameter, Spec, Step
from engine.spec.naming import make_safe_path, unsafe_dir_reason
from engine.spec.ignored import ignored_keys
from engine.spec.samples import parse_samples
from engine.spec.safety import (
    MAX_COUNT,
    Refused,
    SpecLoader,
    check_spec_names,
    max_spec_bytes,
)

__all__ = ["funnel_target", "load_spec", "parse_spec", "validate_spec"]

_VAR_REF = re.compile(r"^\$\(\w+\)$")  # Maestro's schema pattern for resource values
_FUNNEL = re.compile(r"_\*|\*")  # study.py ALL_COMBOS: 'X_*' and 'X*' both mean X
_PRIORITIES = frozenset({"held", "minimal", "low", "medium", "high", "expedited"})
_ENV_KEYS = ("variables", "labels", "sources", "dependencies")
_RESERVED_NAMES = frozenset({"SPECROOT"})  # Maestro adds it itself; a second one is an error


def funnel_target(dep: str) -> str:
    """Return the step a ``depends`` entry names (``'run_*'`` and ``'run*'`` give ``'run'``)."""
    return _FUNNEL.sub("", dep)


def load_spec(
    spec_path: str | os.PathLike[str], *, cwd: str | None = None, text: str | None = None,
    executor: str | None = None,
) -> Spec:
    """Load and validate a spec file, without expanding it.

    Args:
        spec_path: Path of the YAML spec; error messages quote it as given.
        cwd: Directory a relative ``spec_path`` is opened from (default: the process's).
        text: The spec's text, if it was read elsewhere (a client's submission).
        executor: ``--executor``: replaces the spec's ``troupe.executor`` (a Merlin spec
            runs unmodified on workers, as ``merlin run`` sends its tasks to Celery).

    Returns:
        The validated spec.

    Raises:
        SpecError: The file cannot be read, is not valid (safe) YAML, or breaks a rule.
    """
    file = os.fspath(spec_path)
    if text is not None:  # submitted text: the file need not be readable here
        return validate_spec(file, _with_executor(parse_spec(file, text), executor))
    try:
        with open(os.path.join(cwd or "", file), encoding="utf-8") as fh:
            text = fh.read(max_spec_bytes() + 1)  # never read more than the limit allows
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(file, "", f"cannot read spec: {exc}") from exc
    return validate_spec(file, _with_executor(parse_spec(file, text), executor))


def _with_executor(top: Any, executor: str | None) -> Any:
    """``top`` with ``troupe.executor`` set to ``executor`` (validated as the spec's own)."""
    if not executor or not isinstance(top, dict):
        return top
    troupe = top.get("troupe")
    if troupe is None:
        troupe = {}
    if not isinstance(troupe, dict):  # validation names the field
        return top
    return {**top, "troupe": {**troupe, "executor": executor}}


def parse_spec(file: str, text: str) -> Any:
    """Parse YAML text with ``yaml.safe_load`` (anchors and ``<<:`` merges work; tags do not).

    The loader is :class:`~engine.spec.safety.SpecLoader`: ``safe_load``'s semantics, with
    the size, alias-expansion, duplicate-key and control-character rules of
    :mod:`engine.spec.safety` checked before any object is built.

    Raises:
        SpecError: Malformed YAML (with line and column), a Python/unknown tag, or a
            broken safety rule (naming the field and the limit).
    """
    limit = max_spec_bytes()
    if len(text) > limit or len(text.encode("utf-8", "surrogatepass")) > limit:
        raise SpecError(file, "", f"the spec is larger than {limit} bytes; raise the limit with "
                        "the environment variable TROUPE_MAX_SPEC_BYTES")  # fmt: skip
    try:
        # safe_load's semantics, with libyaml's C parser when PyYAML has it (10x faster on
        # big sweeps): CSafeLoader builds plain data only, exactly like SafeLoader.
        return yaml.load(text, Loader=SpecLoader)  # noqa: S506 - a safe loader
    except Refused as exc:
        raise SpecError(file, exc.field, exc.message) from exc
    except yaml.constructor.ConstructorError as exc:
        where = _where(exc)
        tag = re.search(r"tag '([^']*)'", str(exc.problem))
        if tag is None:
            raise SpecError(file, "", f"malformed YAML{where}: {exc.problem}") from exc
        shown = tag.group(1).replace("tag:yaml.org,2002:", "!!")
        raise SpecError(
            file, "", f"YAML tag '{shown}'{where} is not allowed: specs are loaded with "
            "yaml.safe_load, which builds only plain data"
        ) from exc
    except yaml.MarkedYAMLError as exc:
        raise SpecError(file, "", f"malformed YAML{_where(exc)}: {exc.problem}") from exc
    except yaml.YAMLError as exc:
        raise SpecError(file, "", f"malformed YAML: {exc}") from exc


def _where(exc: yaml.MarkedYAMLError) -> str:
    mark = exc.problem_mark or exc.context_mark
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def validate_spec(file: str, data: Any) -> Spec:
    """Validate parsed YAML and convert it into a :class:`Spec`.

    Unknown top-level blocks are ignored, as in Maestro, with a warning
    (``engine.spec.ignored``); ``troupe:`` is kept.

    Raises:
        SpecError: The first rule the spec breaks.
    """
    return _Validator(file).spec(data)


class _Validator:
    """Walks the parsed YAML; each method checks one block and fails on the first problem."""

    def __init__(self, file: str) -> None:
        self.file = file

    def fail(self, field: str, message: str) -> NoReturn:
        raise SpecError(self.file, field, message)

    def mapping(self, value: Any, field: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(field, f"must be a mapping, not {_kind(value)}")
        for key in value:
            if not isinstance(key, str) or not key:
                self.fail(f"{field}.{key}", "keys must be non-empty strings")
        return value

    def text(self, value: Any, field: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(field, f"must be a non-empty string, not {_kind(value)}")
        return value

    def closed(self, block: dict[str, Any], field: str, allowed: tuple[str, ...], what: str) -> None:
        for key in block:
            if key not in allowed:
                self.fail(f"{field}.{key}", f"unknown key '{key}' in {what}")

    # -- top level -------------------------------------------------------------------------

    def spec(self, data: Any) -> Spec:
        if data is None:
            self.fail("", "the spec is empty")
        if not isinstance(data, dict):
            self.fail("", f"the top level must be a mapping, not {_kind(data)}")
        top = data
        if "description" not in top:
            self.fail("description", "required block is missing")
        desc = self.mapping(top["description"], "description")
        for key in ("name", "description"):
            if key not in desc:
                self.fail(f"description.{key}", "required key is missing")
            self.text(desc[key], f"description.{key}")
        env = self.env(top["env"]) if "env" in top else {}
        batch = self.mapping(top.get("batch") or {}, "batch")
        troupe = self.mapping(top.get("troupe") or {}, "troupe")
        check_troupe_block(troupe, self.fail)
        self.merlin = "merlin" in top or _looks_like_merlin(top.get("study"))
        merlin = top.get("merlin")
        if merlin is not None and not isinstance(merlin, dict):
            self.fail("merlin", f"must be a mapping, not {_kind(merlin)}")
        samples = parse_samples((merlin or {}).get("samples"), self.fail)
        self.run_keys = RUN_KEYS + TROUPE_RUN_KEYS + (MERLIN_RUN_KEYS if self.merlin else ())
        study = self.study(top.get("study"))
        params = self.parameters(top.get("global.parameters") or {})
        self.namespace(env, params)
        for i, label in enumerate(samples.labels if samples else ()):
            if label in params or label in env.get("variables", {}):
                self.fail(f"merlin.samples.column_labels[{i}]", f"'{label}' is also a "
                          f"{'parameter' if label in params else 'variable'}")
        check_spec_names(top, self.fail)
        ignored = ignored_keys(top, self.fail)
        try:
            return Spec(
                path=self.file,
                description=Description(name=desc["name"], description=desc["description"]),
                env=msgspec.convert(env, Env),
                batch=dict(batch),
                study=msgspec.convert(study, tuple[Step, ...]),
                parameters=msgspec.convert(params, dict[str, Parameter]),
                troupe=dict(troupe),
                merlin=self.merlin,
                samples=samples,
                warnings=tuple(ignored),
            )
        except msgspec.ValidationError as exc:  # a gap in the checks above: still report it
            msg, _, path = str(exc).rpartition(" - at `$")
            self.fail(path.rstrip("`").lstrip("."), msg or str(exc))

    # -- env -------------------------------------------------------------------------------

    def env(self, value: Any) -> dict[str, Any]:
        env = self.mapping(value, "env")
        self.closed(env, "env", _ENV_KEYS, "env (allowed: " + ", ".join(_ENV_KEYS) + ")")
        for name, val in self.mapping(env.get("variables", {}), "env.variables").items():
            ok = (isinstance(val, str) and val) or (
                isinstance(val, (int, float)) and not isinstance(val, bool)
            )
            if not ok:
                self.fail(
                    f"env.variables.{name}",
                    f"must be a non-empty string or a number, not {_kind(val)}",
                )
        for name, val in self.mapping(env.get("labels", {}), "env.labels").items():
            if not isinstance(val, (str, int, float)):
                self.fail(f"env.labels.{name}", f"must be a string or a number, not {_kind(val)}")
        if not isinstance(env.get("sources", []), list):
            self.fail("env.sources", f"must be a list, not {_kind(env['sources'])}")
        deps = self.mapping(env.get("dependencies", {}), "env.dependencies")
        self.closed(deps, "env.dependencies", ("paths", "git", "spack"),
                    "env.dependencies (allowed: paths, git, spack)")  # fmt: skip
        for kind, required, optional in (
            ("paths", ("name", "path"), ()),
            ("git", ("name", "path", "url"), ("tag", "hash", "branch")),
        ):
            items = deps.get(kind, [])
            if not isinstance(items, list):
                self.fail(f"env.dependencies.{kind}", f"must be a list, not {_kind(items)}")
            for i, item in enumerate(items):
                field = f"env.dependencies.{kind}[{i}]"
                item = self.mapping(item, field)
                self.closed(item, field, required + optional, f"a {kind} dependency")
                for key in required:
                    if key not in item:
                        self.fail(f"{field}.{key}", "required key is missing")
                for key in item:
                    self.text(item[key], f"{field}.{key}")
                if sum(key in item for key in optional) > 1:
                    self.fail(field, "give at most one of tag, hash and branch")
        if "spack" in deps:
            self.mapping(deps["spack"], "env.dependencies.spack")
        return env

    # -- study -----------------------------------------------------------------------------

    def study(self, value: Any) -> list[dict[str, Any]]:
        if value is None or value == []:
            self.fail("study", "a study must contain at least one step")
        if not isinstance(value, list):
            self.fail("study", f"must be a list of steps, not {_kind(value)}")
        names: dict[str, int] = {}
        dirs: dict[str, str] = {}
        for i, raw in enumerate(value):
            step = self.step(raw, i)
            name = step["name"]
            if name in names:
                self.fail(f"study[{i}].name",
                          f"duplicate step name '{name}' (first used by study[{names[name]}])")  # fmt: skip
            names[name] = i
            safe = make_safe_path(name)
            if safe in dirs:
                self.fail(f"study[{i}].name", f"steps '{dirs[safe]}' and '{name}' would share "
                          f"the workspace directory '{safe}'")  # fmt: skip
            dirs[safe] = name
        for i, step in enumerate(value):
            self.depends(step, i, names, value)
        return value

    def step(self, raw: Any, i: int) -> dict[str, Any]:
        field = f"study[{i}]"
        step = self.mapping(raw, field)
        if "name" not in step:
            self.fail(f"{field}.name", f"required key 'name' is missing from study step #{i}")
        name = self.text(step["name"], f"{field}.name")
        what = f"study step '{name}'"
        self.closed(step, field, ("name", "description", "run"), what)
        for key in ("description", "run"):
            if key not in step:
                self.fail(f"{field}.{key}", f"required key '{key}' is missing from {what}")
        self.text(step["description"], f"{field}.description")
        if "/" in name or "\0" in name:
            self.fail(f"{field}.name", f"step name '{name}' must not contain '/'")
        reason = unsafe_dir_reason(make_safe_path(name), top_level=True)
        if reason:
            self.fail(f"{field}.name", f"step name '{name}' {reason}")
        self.run(self.mapping(step["run"], f"{field}.run"), f"{field}.run", what)
        return step

    def run(self, run: dict[str, Any], field: str, what: str) -> None:
        self.closed(run, field, self.run_keys, what)
        check_run_extensions(run, field, self.fail)
        if "cmd" not in run:
            self.fail(f"{field}.cmd", f"required key 'cmd' is missing from {what}")
        for key in ("cmd", "restart", "pre", "post", "bind", "bind gpus", "reservation", "qos"):
            if key in run:
                self.text(run[key], f"{field}.{key}")
        deps = run.get("depends", [])
        if not isinstance(deps, list):
            self.fail(f"{field}.depends", f"must be a list of step names, not {_kind(deps)}")
        for j, dep in enumerate(deps):
            self.text(dep, f"{field}.depends[{j}]")
            if dep in deps[:j]:
                self.fail(f"{field}.depends", f"'{dep}' is listed twice")
        for key, low in INT_RESOURCE_KEYS.items():
            if key in run and not _int_or_ref(run[key], low):
                self.fail(f"{field}.{key}", f"must be an integer >= {low} or exactly '$(VAR)', "
                          f"not {_short(run[key])}" + (f" (at most {MAX_COUNT})" if isinstance(
                              run[key], int) and run[key] > MAX_COUNT else ""))  # fmt: skip
        if "walltime" in run and not (
            _int_or_ref(run["walltime"], 0) or (isinstance(run["walltime"], str) and run["walltime"])
        ):
            self.fail(f"{field}.walltime", "must be a non-empty string, an integer >= 0 or '$(VAR)'")
        self.exclusive(run, field)
        for key in ("nested", "waitable"):
            if key in run and not isinstance(run[key], bool):
                self.fail(f"{field}.{key}", f"must be true or false, not {run[key]!r}")
        if "priority" in run:
            p = run["priority"]
            named = isinstance(p, str) and p.lower() in _PRIORITIES and p in (
                p.upper(), p.lower(), p.capitalize())
            number = isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 1
            if not (named or number):
                self.fail(f"{field}.priority", "must be one of HELD, MINIMAL, LOW, MEDIUM, HIGH, "
                          f"EXPEDITED or a number between 0 and 1, not {p!r}")  # fmt: skip

    def exclusive(self, run: dict[str, Any], field: str) -> None:
        if "exclusive" not in run:
            return
        value = run["exclusive"]
        parts = value if isinstance(value, dict) else {"": value}
        if isinstance(value, dict):
            self.closed(value, f"{field}.exclusive", ("allocation", "launcher"),
                        "exclusive (allowed: allocation, launcher)")  # fmt: skip
        for key, part in parts.items():
            if not (isinstance(part, bool) or (isinstance(part, str) and _VAR_REF.match(part))):
                sub = f"{field}.exclusive" + (f".{key}" if key else "")
                self.fail(sub, f"must be true, false or '$(VAR)', not {part!r}")

    def depends(self, step: dict[str, Any], i: int, names: dict[str, int], steps: list) -> None:
        name = step["name"]
        field = f"study[{i}].run.depends"
        for dep in step["run"].get("depends", []):
            target = funnel_target(dep)
            if target == name:
                self.fail(field, f"step '{name}' depends on itself")
            if target not in names:
                self.fail(field, f"unknown step '{target}'" + (f" (from '{dep}')" if dep != target else ""))
            if names[target] > i:
                cycle = _find_path(target, name, names, steps)
                if cycle:
                    self.fail(field, "dependency cycle: " + " -> ".join([name, *cycle]))
                self.fail(field, f"step '{target}' is defined later; a step may only depend on "
                          "steps defined before it (as in Maestro)")  # fmt: skip

    # -- parameters and names --------------------------------------------------------------

    def parameters(self, value: Any) -> dict[str, Any]:
        params = self.mapping(value, "global.parameters")
        length: tuple[str, int] | None = None
        for key, raw in params.items():
            field = f"global.parameters.{key}"
            param = self.mapping(raw, field)
            self.closed(param, field, ("values", "label"),
                        f"parameter '{key}' (allowed: values, label)")  # fmt: skip
            for part in ("values", "label"):
                if part not in param:
                    self.fail(f"{field}.{part}", "required key is missing")
            values, label = param["values"], param["label"]
            if not isinstance(values, list) or not values:
                self.fail(f"{field}.values", f"must be a non-empty list, not {_kind(values)}")
            for j, v in enumerate(values):
                if isinstance(v, (list, dict)) or v is None:
                    self.fail(f"{field}.values[{j}]", f"must be a scalar, not {_kind(v)}")
            if not isinstance(label, str):
                self.fail(f"{field}.label", f"must be a string, not {_kind(label)}")
            if "%%" not in label:
                self.fail(f"{field}.label", f"must contain '%%' (the value goes there), got {label!r}")
            if length is None:
                length = (key, len(values))
            elif len(values) != length[1]:
                self.fail(f"{field}.values", f"has {len(values)} values but '{length[0]}' has "
                          f"{length[1]}; all parameters must have the same number of values")  # fmt: skip
        return params

    def namespace(self, env: dict[str, Any], params: dict[str, Any]) -> None:
        """Variables, labels, dependency names and parameters share one namespace."""
        deps = env.get("dependencies", {})
        fields = [f"env.variables.{n}" for n in env.get("variables", {})]
        fields += [f"env.labels.{n}" for n in env.get("labels", {})]
        names = [f.split(".", 2)[2] for f in fields]
        for kind in ("paths", "git"):
            for i, item in enumerate(deps.get(kind, [])):
                fields.append(f"env.dependencies.{kind}[{i}].name")
                names.append(item["name"])
        fields += [f"global.parameters.{n}" for n in params]
        names += list(params)
        seen: set[str] = set()
        for name, field in zip(names, fields):
            if name in _RESERVED_NAMES:
                self.fail(field, f"name '{name}' is reserved (Maestro sets it itself)")
            if name in seen:
                self.fail(field, f"Variable name '{name}' is already taken: variables, labels, "
                          "dependencies and parameters share one namespace")  # fmt: skip
            seen.add(name)


def _int_or_ref(value: Any, low: int) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return low <= value <= MAX_COUNT
    return isinstance(value, str) and _VAR_REF.match(value) is not None


def _find_path(start: str, goal: str, names: dict[str, int], steps: list) -> list[str]:
    """Return a dependency path ``start -> ... -> goal`` (following ``depends``), or []."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        node, path = stack.pop()
        if node == goal:
            return path
        if node in seen or node not in names:
            continue
        seen.add(node)
        for dep in steps[names[node]]["run"].get("depends", []):
            stack.append((funnel_target(dep), [*path, funnel_target(dep)]))
    return []


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({value})"
    if value == "":
        return "an empty string"
    return {dict: "a mapping", list: "a list", str: "a string"}.get(
        type(value), f"{type(value).__name__} {_short(value)}"
    )


def _looks_like_merlin(study: Any) -> bool:
    """A spec is a Merlin spec if a step uses a Merlin-only key or a ``$(MERLIN_...)``
    exit-code token; Maestro would reject the first and leave the second to the shell,
    so neither can be a Maestro spec that means something else."""
    if not isinstance(study, list):
        return False
    for step in study:
        run = step.get("run") if isinstance(step, dict) else None
        if not isinstance(run, dict):
            continue
        if any(key in run for key in MERLIN_RUN_KEYS):
            return True
        if any(isinstance(run.get(k), str) and "$(MERLIN_" in run[k] for k in ("cmd", "restart")):
            return True
    return False
