"""Settings precedence: command line > step keys > troupe: block > Maestro's defaults."""

from __future__ import annotations

import os

import pytest

from engine.errors import SpecError
from engine.settings import CliOverrides, step_policies, throttle_limits
from engine.spec.graph import Resources, StepInstance, StudyGraph


def graph(troupe: dict, *steps: StepInstance, batch: dict | None = None) -> StudyGraph:
    return StudyGraph(name="g", description="g", spec_path="/s.yaml", study_dir="/st",
                      steps=steps, troupe=troupe, batch=batch or {"type": "local"})


def step(name: str = "a", **kw) -> StepInstance:  # type: ignore[no-untyped-def]
    return StepInstance(name=name, step=name, description="", workspace=f"/st/{name}", cmd="true", **kw)


def test_defaults_are_maestros_and_local_steps_are_limited_to_the_cpus() -> None:
    g = graph({}, step())
    pol = step_policies(g, CliOverrides())["a"]
    assert (1, 1, ("global", "adapter:local")) == (pol.restart_limit, pol.retry.max_attempts, pol.scopes)
    assert {"global": 0, "adapter:local": os.cpu_count()} == throttle_limits(g, CliOverrides())


def test_cli_throttle_sets_the_global_limit_and_lifts_the_local_default() -> None:
    g = graph({"throttles": {"slurm": 5}}, step())
    assert {"global": 3, "adapter:local": 0, "adapter:slurm": 5} == throttle_limits(g, CliOverrides(throttle=3))


def test_step_keys_beat_the_troupe_block_and_the_cli_beats_both_for_the_study() -> None:
    g = graph({"rlimit": 4, "attempts": 2, "groups": {"sims": 1}},
              step("a", restart_limit=7, group="sims", retry={"max_attempts": 5}), step("b"))
    pols = step_policies(g, CliOverrides(rlimit=9, attempts=3))
    assert (7, 5, ("global", "adapter:local", "group:sims")) == (
        pols["a"].restart_limit, pols["a"].retry.max_attempts, pols["a"].scopes)
    assert (9, 3) == (pols["b"].restart_limit, pols["b"].retry.max_attempts)


def test_scheduler_steps_use_their_adapter_scope_and_no_local_walltime() -> None:
    g = graph({}, step("a", resources=Resources(procs=2, walltime="00:10:00")),
              step("b", resources=Resources(walltime="00:00:05")), batch={"type": "slurm"})
    pols = step_policies(g, CliOverrides())
    assert (("global", "adapter:slurm"), None) == (pols["a"].scopes, pols["a"].walltime)
    assert (("global", "adapter:local"), 5.0) == (pols["b"].scopes, pols["b"].walltime)


def test_undeclared_group_and_bad_walltime_are_spec_errors() -> None:
    with pytest.raises(SpecError, match=r"^/s\.yaml: a\.run\.group: group 'x' is not declared"):
        step_policies(graph({}, step(group="x")), CliOverrides())
    with pytest.raises(SpecError, match=r"^/s\.yaml: a\.run\.walltime: "):
        step_policies(graph({}, step(resources=Resources(walltime="soon"))), CliOverrides())
