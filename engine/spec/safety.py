"""Bounds and character rules that keep a hostile spec from costing or breaking more than it may.

A spec is untrusted text (``serve`` accepts it from any client), so before anything is built
from it: the file is at most ``MAX_SPEC_BYTES``; the YAML, with every alias expanded, has at
most ``MAX_YAML_NODES`` nodes (counted on the composed node graph, where an alias is one
shared node, so a "billion laughs" is refused after linear work and no expansion); no mapping
repeats a key; no scalar holds a control character other than tab and newline; and names
that become file names, NATS subject tokens or scheduler header values are one line of at
most ``MAX_NAME_BYTES``. After expansion a study has at most ``troupe.limits.max_instances``
step instances. Numbers the engine computes with are bounded (``MAX_COUNT``, ``MAX_SECONDS``).
``docs/security.md`` ("Hostile specs") lists every rule; the two parse-time limits can be
raised with the environment variables ``TROUPE_MAX_SPEC_BYTES`` and ``TROUPE_MAX_YAML_NODES``.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any, NoReturn

import yaml

from engine.errors import printable

__all__ = [
    "DEFAULT_MAX_INSTANCES",
    "MAX_COUNT",
    "MAX_NAME_BYTES",
    "MAX_SECONDS",
    "Refused",
    "SpecLoader",
    "bounded_int",
    "bounded_number",
    "check_name",
    "check_spec_names",
    "max_spec_bytes",
    "max_yaml_nodes",
    "name_problem",
]

MAX_SPEC_BYTES = 16 * 1024 * 1024
MAX_YAML_NODES = 1_000_000
DEFAULT_MAX_INSTANCES = 1_000_000
#: Step, instance and study names: a script is ``<name>.restart.slurm.sh`` and an exit file
#: ``<name>.<job id>.exit``; 200 bytes leaves room for those suffixes in a 255-byte file name
#: (and, hex-escaped, at most 600 bytes in a NATS subject token).
MAX_NAME_BYTES = 200
#: Counts (throttles, attempts, limits, resources): anything a C int or a scheduler takes.
MAX_COUNT = 2**31 - 1
#: Durations in seconds (delays, caps, grace periods): about 31 years.
MAX_SECONDS = 1e9

_TEXT_BAD = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # free text: tab and newline allowed
_NAME_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # names: no control character at all
_MERGE = "tag:yaml.org,2002:merge"
_BASE = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Fail = Callable[[str, str], NoReturn]


def _env_limit(name: str, default: int) -> int:
    raw = os.environ.get(name, "")
    return int(raw) if raw.isdigit() and int(raw) > 0 else default


def max_spec_bytes() -> int:
    """The spec size limit: ``TROUPE_MAX_SPEC_BYTES`` if set, else 16 MiB."""
    return _env_limit("TROUPE_MAX_SPEC_BYTES", MAX_SPEC_BYTES)


def max_yaml_nodes() -> int:
    """The node limit after alias expansion: ``TROUPE_MAX_YAML_NODES`` if set, else 1,000,000."""
    return _env_limit("TROUPE_MAX_YAML_NODES", MAX_YAML_NODES)


class Refused(Exception):
    """Raised by :class:`SpecLoader` when the YAML breaks a rule; the loader turns it into a
    ``SpecError`` for its file.

    Attributes:
        field: The field path of the offending node (``study[0].run.cmd``), "" for the root.
        message: What is wrong, including the line.
    """

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


class SpecLoader(_BASE):  # type: ignore[misc, valid-type]
    """``yaml.safe_load``'s loader (libyaml's when available) that inspects the composed node
    graph before building any Python object: alias-expanded size, recursive aliases,
    duplicate keys and control characters. Construction is unchanged, so the data are
    exactly what ``safe_load`` returns."""

    def construct_document(self, node: yaml.Node) -> Any:
        _inspect(self, node, max_yaml_nodes())
        return super().construct_document(node)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        try:
            return super().construct_yaml_int(node)
        except ValueError as exc:  # Python refuses int() of more than 4300 digits
            raise yaml.constructor.ConstructorError(
                None, None, f"integer with {len(node.value)} characters is too large",
                node.start_mark) from exc


SpecLoader.add_constructor("tag:yaml.org,2002:int", SpecLoader.construct_yaml_int)


def _child(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _inspect(loader: SpecLoader, root: yaml.Node, limit: int) -> None:
    """Walk every distinct node once (iteratively: deep nesting must not recurse).

    ``size`` of a node is the node count of its subtree with aliases expanded; a shared
    node's size is computed once, so the work is linear in the file, not in the expansion.
    Invariant: a node popped while still open (state 1) is its own descendant, a cycle.

    Raises:
        Refused: a rule is broken (the first node found).
    """
    size: dict[int, int] = {}  # id -> alias-expanded size, once done
    open_: set[int] = set()
    search = _TEXT_BAD.search
    stack: list[tuple[yaml.Node, str, list[yaml.Node] | None]] = [(root, "", None)]
    while stack:
        node, path, kids = stack.pop()
        nid = id(node)
        if kids is not None:  # every child is done: this node is too
            total = 1 + sum(size[id(k)] for k in kids)
            if total > limit:
                raise Refused(path, f"the YAML has more than {limit} YAML nodes once aliases are "
                              f"expanded (line {node.start_mark.line + 1}); raise the limit with "
                              "the environment variable TROUPE_MAX_YAML_NODES")  # fmt: skip
            size[nid] = total
            open_.discard(nid)
            continue
        if nid in size:
            continue
        if nid in open_:
            raise Refused(path, f"the alias at line {node.start_mark.line + 1} refers to itself")
        if isinstance(node, yaml.ScalarNode):
            bad = search(node.value)
            if bad:
                raise Refused(path, f"control character '{printable(bad.group())}' in "
                              f"'{printable(node.value[:80])}' at line {node.start_mark.line + 1}"
                              " (only tab and newline are allowed, and only in free text)")
            size[nid] = 1
            continue
        if isinstance(node, yaml.MappingNode):
            _check_keys(loader, node, path)
        children = _children(node, path)
        open_.add(nid)
        stack.append((node, path, [k for k, _ in children]))
        stack.extend((k, p, None) for k, p in reversed(children))


def _children(node: yaml.Node, path: str) -> list[tuple[yaml.Node, str]]:
    if isinstance(node, yaml.SequenceNode):
        return [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
    if isinstance(node, yaml.MappingNode):
        out: list[tuple[yaml.Node, str]] = []
        for key, value in node.value:
            sub = path if key.tag == _MERGE else _child(
                path, key.value if isinstance(key, yaml.ScalarNode) else "?")
            out += [(key, sub), (value, sub)]
        return out
    return []


def _check_keys(loader: SpecLoader, node: yaml.MappingNode, path: str) -> None:
    """Refuse a key given twice in one mapping (keys merged with ``<<`` may be overridden)."""
    seen: dict[Any, int] = {}
    for key, _ in node.value:
        if key.tag == _MERGE or not isinstance(key, yaml.ScalarNode):
            continue
        value = loader.construct_object(key)  # cached: construction reuses it
        line = key.start_mark.line + 1
        try:
            first = seen.get(value)
        except TypeError:  # unhashable: construction reports it
            continue
        if first is not None:
            raise Refused(_child(path, str(key.value)), f"duplicate key '{printable(str(key.value))}'"
                          f" at line {line} (first given at line {first}); a second one would "
                          "silently replace the first")  # fmt: skip
        seen[value] = line


def name_problem(value: str) -> str | None:
    """Say why ``value`` cannot be a name (a file name, subject token, header value), or None."""
    bad = _NAME_BAD.search(value)
    if bad:
        return f"must not contain the control character '{printable(bad.group())}'"
    if len(value.encode()) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes ({len(value.encode())})"
    return None


def check_name(value: Any, field: str, fail: Fail, what: str = "name") -> None:
    """Fail if a string that becomes a name or path is not one short line.

    Raises (through ``fail``):
        SpecError: a control character, or more than ``MAX_NAME_BYTES`` bytes.
    """
    if isinstance(value, str):
        problem = name_problem(value)
        if problem:
            fail(field, f"{what} '{printable(value[:80])}' {problem}")


def bounded_int(value: Any, low: int, high: int = MAX_COUNT) -> bool:
    """True for an int (not a bool) in ``[low, high]``."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def bounded_number(value: Any, low: float, high: float = MAX_SECONDS) -> bool:
    """True for a finite int or float (not a bool) in ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    return low <= value <= high


_ONE_LINE_RUN_KEYS = ("walltime", "reservation", "qos", "bind", "bind gpus", "group", "race",
                      "shell", "task_queue", "nodes", "procs", "gpus", "cores per task",
                      "tasks per rs", "rs per node", "cpus per rs", "exclusive")  # fmt: skip


def check_spec_names(top: dict[str, Any], fail: Fail) -> None:
    """Check every spec string that becomes a name, a path or a scheduler header value.

    Names (the study's, steps', parameters' and their values and labels, variables',
    ``depends`` entries) must be one line of at most ``MAX_NAME_BYTES``; paths and header
    values (``OUTPUT_PATH``, dependencies, one-line ``run`` keys, ``batch``) must be one line.
    Free text (``cmd``, ``restart``, descriptions, variable values) was already checked for
    control characters other than tab and newline while parsing. Call it after the
    structure is validated.

    Raises (through ``fail``):
        SpecError: the first offending string, named by its field path.
    """
    check_name(top["description"]["name"], "description.name", fail, "study name")
    for i, step in enumerate(top["study"]):
        check_name(step["name"], f"study[{i}].name", fail, "step name")
        run = step["run"]
        for j, dep in enumerate(run.get("depends", [])):
            check_name(dep, f"study[{i}].run.depends[{j}]", fail, "dependency")
        for key in _ONE_LINE_RUN_KEYS:
            _check_line(run.get(key), f"study[{i}].run.{key}", fail)
    for key, param in (top.get("global.parameters") or {}).items():
        field = f"global.parameters.{key}"
        check_name(key, field, fail, "parameter name")
        for j, value in enumerate(param["values"]):
            check_name(str(value), f"{field}.values[{j}]", fail, "parameter value")
        check_name(param["label"], f"{field}.label", fail, "label")
    env = top.get("env") or {}
    for block in ("variables", "labels"):
        for name in env.get(block) or {}:
            check_name(name, f"env.{block}.{name}", fail, "name")
    _check_line((env.get("variables") or {}).get("OUTPUT_PATH"), "env.variables.OUTPUT_PATH", fail)
    for kind in ("paths", "git"):
        for i, item in enumerate((env.get("dependencies") or {}).get(kind, [])):
            for key, value in item.items():
                _check_line(value, f"env.dependencies.{kind}[{i}].{key}", fail)
    _check_line(top.get("batch"), "batch", fail)
    troupe = top.get("troupe") or {}
    for block in ("throttles", "groups", "races"):
        for name in troupe.get(block) or {}:
            check_name(str(name), f"troupe.{block}.{name}", fail, "name")


def _check_line(value: Any, field: str, fail: Fail) -> None:
    """Every string in ``value`` (walked through mappings and lists) is one line."""
    if isinstance(value, str):
        bad = _NAME_BAD.search(value)
        if bad:
            fail(field, f"'{printable(value[:80])}' must be one line, without the control "
                 f"character '{printable(bad.group())}'")  # fmt: skip
    elif isinstance(value, dict):
        for key, sub in value.items():
            _check_line(sub, f"{field}.{key}", fail)
    elif isinstance(value, list):
        for i, sub in enumerate(value):
            _check_line(sub, f"{field}[{i}]", fail)
