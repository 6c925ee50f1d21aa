"""Keys beyond Maestro's: the top-level ``troupe:`` block, Troupe's step keys, Merlin's.

Engine settings live in a top-level ``troupe:`` block, which Maestro ignores, so the spec
stays valid for Maestro. Step keys Maestro does not know go in ``run:``, where Maestro's
schema rejects them, so Maestro can never misread an extended spec:

* Troupe's step keys: ``group`` (a throttle group), ``restart_limit`` (restarts after a
  timeout; 0 = unlimited), ``retry`` (a retry policy for failed exits), ``when`` (a
  condition over the dependencies' states, ``engine.spec.conditions``), ``group_by``
  (parameters that split a funnel: one instance per value, waiting only for the matching
  parent instances), ``race`` (a race group: the first member to finish wins and the
  others are cancelled; ``$(race.<group>)`` is the winner's workspace), ``inputs``
  (files, relative to the spec's directory, whose content enters the step's cache key);
* Merlin's step keys, accepted only in a Merlin spec: ``max_retries``, ``retry_delay``,
  ``shell`` (the script's shebang, e.g. ``/usr/bin/env python3``) and ``task_queue``
  (recorded; Troupe has no Celery queues), ``batch: {type: ...}`` (this step runs on that
  batch type's adapter, the others on the study's). A spec is a Merlin spec when it has a
  ``merlin:`` block, or a step uses one of these keys or a ``$(MERLIN_...)`` token.

The checks report ``SpecError``-style problems through a ``fail(field, message)`` callback
so the loader keeps one error format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

import re

import msgspec

from engine.spec.conditions import ConditionError, references
from engine.spec.conditions import parse as parse_condition
from engine.spec.policy import RetryPolicy
from engine.spec.safety import (
    DEFAULT_MAX_INSTANCES,
    MAX_COUNT,
    MAX_SECONDS,
    bounded_int,
    bounded_number,
)

__all__ = [
    "MERLIN_RUN_KEYS",
    "TROUPE_RUN_KEYS",
    "TroupeSettings",
    "check_run_extensions",
    "check_troupe_block",
]

TROUPE_RUN_KEYS = ("group", "restart_limit", "retry", "when", "group_by", "race", "inputs", "queue")
MERLIN_RUN_KEYS = ("max_retries", "retry_delay", "shell", "task_queue", "batch")

_RETRY_KEYS = {"max_attempts": 1, "initial_delay": 0, "factor": 1, "cap": 0, "jitter": 0}
_TROUPE_KEYS = ("throttle", "throttles", "groups", "rlimit", "attempts", "retry", "kill_grace",
                "hw_limit", "races", "cache", "limits", "executor", "worker_timeout")  # fmt: skip
EXECUTORS = ("local", "workers")
_LIMIT_KEYS = ("max_instances",)

Fail = Callable[[str, str], NoReturn]


class TroupeSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The ``troupe:`` block, validated. Command-line options override these.

    Attributes:
        throttle: Global limit on steps in progress (0 = unlimited).
        throttles: Per-adapter limits (``local``, ``slurm``, ``flux``).
        groups: Per-group limits; steps join a group with ``run: {group: NAME}``.
        rlimit: Restarts after a timeout (Maestro's ``--rlimit``; 0 = unlimited).
        attempts: Runs of a step that fails (Maestro's ``--attempts``).
        retry: The retry policy (its ``max_attempts`` is overridden by ``attempts``).
        kill_grace: Seconds between SIGTERM and SIGKILL when a local step is stopped.
        hw_limit: Resubmissions after a hardware failure.
        cache: A cache directory shared by runs of this spec (memoized steps).
        races: Per race group, ``{check: CMD}``: a finished racer wins only if CMD exits 0
            in its workspace (default: exit code 0 alone wins).
        limits: Bounds on what the spec may cause: ``max_instances`` (step instances after
            expansion, default 1,000,000; see ``engine.spec.safety``).
        worker_timeout: Seconds without a heartbeat after which a task a worker started
            is lost and run again as a new attempt (default 30).
        executor: Who runs the local steps: ``local`` (this engine's processes, the
            default) or ``workers`` (tasks in a JetStream queue for ``enginectl worker``;
            a step's Merlin ``task_queue`` names its queue, else ``default``).
    """

    throttle: int | None = None
    throttles: dict[str, int] = {}
    groups: dict[str, int] = {}
    rlimit: int | None = None
    attempts: int | None = None
    retry: RetryPolicy | None = None
    kill_grace: float | None = None
    hw_limit: int | None = None
    races: dict[str, dict[str, str]] = {}
    cache: str = ""
    limits: dict[str, int] = {}
    executor: str = "local"
    worker_timeout: float = 30.0

    @property
    def max_instances(self) -> int:
        """The most step instances the study may expand to."""
        return self.limits.get("max_instances", DEFAULT_MAX_INSTANCES)


def _is_int(v: Any, low: int) -> bool:
    return bounded_int(v, low, MAX_COUNT)


def _is_num(v: Any, low: float) -> bool:
    return bounded_number(v, low, MAX_SECONDS)


def _shown(v: Any) -> str:
    """A value for a message: long numbers are cut (a 4,000-digit int is one line too)."""
    text = repr(v)
    return text if len(text) <= 40 else f"{text[:20]}...({len(text)} characters)"


def _check_retry(value: Any, field: str, fail: Fail) -> None:
    if not isinstance(value, dict):
        fail(field, "must be a mapping with max_attempts, initial_delay, factor, cap, jitter")
    for key, val in value.items():
        if key not in _RETRY_KEYS:
            fail(f"{field}.{key}", f"unknown key '{key}' (allowed: {', '.join(_RETRY_KEYS)})")
        low = _RETRY_KEYS[key]
        ok = _is_int(val, low) if key == "max_attempts" else _is_num(val, low)
        if key == "jitter":
            ok = ok and val <= 1
        if not ok:
            high = 1 if key == "jitter" else MAX_COUNT if key == "max_attempts" else MAX_SECONDS
            fail(f"{field}.{key}", f"must be a finite number from {low} to {high:g}, "
                 f"not {_shown(val)}")  # fmt: skip


def _check_limits(value: Any, field: str, fail: Fail) -> None:
    if not isinstance(value, dict):
        fail(field, "must be a mapping of names to limits")
    for name, limit in value.items():
        if not isinstance(name, str) or not name:
            fail(field, f"names must be non-empty strings, not {name!r}")
        if not _is_int(limit, 0):
            fail(f"{field}.{name}", f"must be an integer from 0 (unlimited) to {MAX_COUNT}, "
                 f"not {_shown(limit)}")


def _check_limit_block(value: Any, field: str, fail: Fail) -> None:
    if not isinstance(value, dict):
        fail(field, f"must be a mapping ({', '.join(_LIMIT_KEYS)}), not {_shown(value)}")
    for key, val in value.items():
        if key not in _LIMIT_KEYS:
            fail(f"{field}.{key}", f"unknown key '{key}' (allowed: {', '.join(_LIMIT_KEYS)})")
        if not _is_int(val, 1):
            fail(f"{field}.{key}", f"must be an integer from 1 to {MAX_COUNT}, not {_shown(val)}")


def check_troupe_block(block: dict[str, Any], fail: Fail) -> TroupeSettings:
    """Validate the ``troupe:`` block and return it typed.

    Raises (through ``fail``):
        SpecError: an unknown key or a value of the wrong type, naming ``troupe.<key>``.
    """
    for key, value in block.items():
        field = f"troupe.{key}"
        if key not in _TROUPE_KEYS:
            fail(field, f"unknown key '{key}' (allowed: {', '.join(_TROUPE_KEYS)})")
        if key in ("throttle", "rlimit", "hw_limit") and not _is_int(value, 0):
            fail(field, f"must be an integer from 0 to {MAX_COUNT}, not {_shown(value)}")
        if key == "attempts" and not _is_int(value, 1):
            fail(field, f"must be an integer from 1 to {MAX_COUNT}, not {_shown(value)}")
        if key == "kill_grace" and not _is_num(value, 0):
            fail(field, f"must be a number of seconds from 0 to {MAX_SECONDS:g}, "
                 f"not {_shown(value)}")
        if key == "limits":
            _check_limit_block(value, field, fail)
        if key in ("throttles", "groups"):
            _check_limits(value, field, fail)
        if key == "retry":
            _check_retry(value, field, fail)
        if key == "worker_timeout" and not (_is_num(value, 0) and value > 0):
            fail(field, f"must be a number of seconds above 0, not {_shown(value)}")
        if key == "executor" and value not in EXECUTORS:
            fail(field, f"must be one of {', '.join(EXECUTORS)}, not {_shown(value)}")
        if key == "cache" and not (isinstance(value, str) and value):
            fail(field, f"must be a directory path, not {value!r}")
        if key == "races":
            if not isinstance(value, dict):
                fail(field, "must map race group names to {check: CMD}")
            for name, cfg in value.items():
                if not isinstance(cfg, dict) or set(cfg) - {"check"} or not all(
                        isinstance(v, str) and v for v in cfg.values()):
                    fail(f"{field}.{name}", "must be {check: CMD} (a non-empty command)")
    return msgspec.convert(block, TroupeSettings)


def check_run_extensions(run: dict[str, Any], field: str, fail: Fail) -> None:
    """Validate Troupe's and Merlin's step keys in one ``run`` block (when present).

    Raises (through ``fail``):
        SpecError: a value of the wrong type, naming ``<field>.<key>``.
    """
    for key in ("group", "queue"):
        if key in run and not (isinstance(run[key], str) and run[key]):
            fail(f"{field}.{key}", f"must be a non-empty string, not {run[key]!r}")
    if "restart_limit" in run and not _is_int(run["restart_limit"], 0):
        fail(f"{field}.restart_limit", f"must be an integer >= 0 (0 = unlimited), "
             f"not {_shown(run['restart_limit'])}")  # fmt: skip
    if "retry" in run:
        _check_retry(run["retry"], f"{field}.retry", fail)
    if "when" in run:
        _check_when(run, field, fail)
    if "race" in run and not (isinstance(run["race"], str) and run["race"].strip()):
        fail(f"{field}.race", f"must be a race group name, not {run['race']!r}")
    if "inputs" in run:
        files = run["inputs"]
        if not isinstance(files, list) or not all(isinstance(f, str) and f for f in files):
            fail(f"{field}.inputs", f"must be a list of file paths, not {files!r}")
    if "group_by" in run:
        keys = run["group_by"]
        if not isinstance(keys, list) or not keys or not all(isinstance(k, str) and k for k in keys):
            fail(f"{field}.group_by", f"must be a list of parameter names, not {keys!r}")
    if "max_retries" in run and not _is_int(run["max_retries"], 0):
        fail(f"{field}.max_retries", f"must be an integer >= 0, not {_shown(run['max_retries'])}")
    if "retry_delay" in run and not _is_num(run["retry_delay"], 0):
        fail(f"{field}.retry_delay", f"must be a number of seconds >= 0, not {_shown(run['retry_delay'])}")
    for key in ("shell", "task_queue"):
        if key in run and not (isinstance(run[key], str) and run[key].strip()):
            fail(f"{field}.{key}", f"must be a non-empty string, not {run[key]!r}")
    if "batch" in run:
        batch = run["batch"]
        if not isinstance(batch, dict) or set(batch) - {"type"}:
            fail(f"{field}.batch", f"must be a mapping with only 'type' (Merlin's step "
                 f"override), not {_shown(batch)}")
        if batch.get("type") not in ("local", "slurm", "flux"):
            fail(f"{field}.batch.type", f"unknown batch type {_shown(batch.get('type'))} "
                 "(local, slurm or flux)")


def _check_when(run: dict[str, Any], field: str, fail: Fail) -> None:
    """A ``when:`` condition parses and mentions only the step's dependencies."""
    text = run["when"]
    if not isinstance(text, str) or not text.strip():
        fail(f"{field}.when", f"must be a condition such as 'a.completed', not {text!r}")
    try:
        expr = parse_condition(text)
    except ConditionError as exc:
        fail(f"{field}.when", str(exc))
    named = run.get("depends") or []
    named = [named] if isinstance(named, str) else named if isinstance(named, list) else []
    deps = [d for d in named if isinstance(d, str)]  # (a bad depends: refused on its own)
    plain = {d for d in deps if "*" not in d}
    funnels = {funnel_base(d) for d in deps if "*" in d}
    for ref in sorted(references(expr)):
        ok = ref in plain or ref in funnels or ("*" in ref and funnel_base(ref) in funnels)
        if not ok:
            fail(f"{field}.when", f"'{ref}' is not one of this step's dependencies "
                 f"({', '.join(deps) or 'none'})")

def funnel_base(dep: str) -> str:
    """The step a funnel dependency names (Maestro: ``re.sub(r"_\\*|\\*", "", dep)``)."""
    return re.sub(r"_\*|\*", "", dep)
