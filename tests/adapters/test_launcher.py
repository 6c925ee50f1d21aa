"""``$(LAUNCHER)`` expansion, checked case by case and differentially against maestrowf 1.2.1."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.launcher import (
    LauncherError, expand_flux_run, expand_srun, flux_run_command, srun_command,
)  # fmt: skip
from engine.spec.graph import Resources


def srun(cmd: str, **res: Any) -> str:
    return expand_srun(cmd, Resources(**res), step="s")


def test_bare_token_gets_the_steps_procs_and_nodes() -> None:
    assert "srun -n 27 -N 2 lulesh\n" == srun("$(LAUNCHER) lulesh\n", nodes=2, procs=27)


def test_bare_token_adds_cores_per_task() -> None:
    assert "srun -n 4 -c 2 a" == srun("$(LAUNCHER) a", procs=4, cores_per_task=2)


def test_bare_token_of_a_nodes_only_step_prints_maestros_empty_procs() -> None:
    assert "srun -n  -N 2 a" == srun("$(LAUNCHER) a", nodes=2)


def test_new_format_in_either_order() -> None:
    cmd = '$(LAUNCHER)[1p, 1n] echo "1"\n$(LAUNCHER)[1n, 1p] echo "2"\n'
    assert 'srun -n 1 -N 1 echo "1"\nsrun -n 1 -N 1 echo "2"\n' == srun(cmd, nodes=2, procs=2)


def test_legacy_format_is_nodes_then_procs() -> None:
    assert "srun -n 3 -N 1 a" == srun("$(LAUNCHER)[1,3] a", nodes=2, procs=4)


def test_legacy_format_keeps_the_space_after_the_comma_as_maestro_does() -> None:
    assert "srun -n  3 -N 1 a" == srun("$(LAUNCHER)[1, 3] a", nodes=2, procs=4)


def test_bare_tokens_stay_when_a_bracketed_token_is_present() -> None:
    cmd = "$(LAUNCHER)[1p] a\n$(LAUNCHER) b\n"
    assert "srun -n 1 a\n$(LAUNCHER) b\n" == srun(cmd, procs=2)


def test_a_command_without_a_token_is_unchanged() -> None:
    assert 'echo "Test print #1"\n' == srun('echo "Test print #1"\n', nodes=1, procs=1)


def test_bracket_is_greedy_to_the_last_bracket_on_the_line() -> None:
    with pytest.raises(LauncherError, match=r"^step 's': .*must only be specified once$"):
        srun("$(LAUNCHER)[1p] x $(LAUNCHER)[1p] y", procs=2)


def test_asking_for_more_procs_than_the_step_has_names_the_step() -> None:
    with pytest.raises(LauncherError, match=(
        r"^step 's': \$\(LAUNCHER\)\[3p\] attempting to allocate 3 procs for a parallel "
        r"call with a maximum allocation of 2$"
    )):  # fmt: skip
        srun("$(LAUNCHER)[3p] a", procs=2)


def test_totals_over_all_commands_are_checked() -> None:
    with pytest.raises(LauncherError, match=(
        r"^step 's': total processors \(4\) requested exceeds the maximum requested \(3\)$"
    )):  # fmt: skip
        srun("$(LAUNCHER)[2p] a\n$(LAUNCHER)[2p] b\n", procs=3)


def test_node_request_on_a_step_without_nodes_is_an_error() -> None:
    with pytest.raises(LauncherError, match=(
        r"^step 's': \$\(LAUNCHER\)\[1n, 1p\] asks for nodes, but the step sets no numeric "
        r"'nodes' \(got None\)$"
    )):  # fmt: skip
        srun("$(LAUNCHER)[1n, 1p] a", procs=2)


def test_new_format_without_procs_is_an_error() -> None:
    with pytest.raises(LauncherError, match=(
        r"^step 's': \$\(LAUNCHER\)\[1n\]: processors/tasks \(Np\) must be specified$"
    )):  # fmt: skip
        srun("$(LAUNCHER)[1n] a", nodes=1, procs=1)


def test_launcher_error_is_a_value_error() -> None:
    assert issubclass(LauncherError, ValueError)


def test_flux_run_puts_nodes_before_procs_and_adds_gpus() -> None:
    res = Resources(nodes=2, procs=4, cores_per_task=2, gpus=1)
    assert "flux run -N 2 -n 4 -c 2 -g 1 app" == expand_flux_run("$(LAUNCHER) app", res, step="s")


def test_flux_run_exclusive_drops_per_task_cores_and_gpus() -> None:
    assert "flux run -N 1 -n 2 --exclusive" == flux_run_command(
        2, 1, cores_per_task=2, gpus=1, exclusive=True)


def test_flux_run_renders_batch_args_as_setopt() -> None:
    assert "flux run -n 1 --setopt=mpi=spectrum --setopt=gpu-affinity=false" == flux_run_command(
        1, launcher_args={"o": {"mpi": "spectrum", "gpu-affinity": False}})


def test_srun_command_omits_missing_nodes_and_cores() -> None:
    assert "srun -n 4" == srun_command(4)


# --- differential against maestrowf ------------------------------------------------

_PIECES = st.sampled_from([
    "$(LAUNCHER) ", "$(LAUNCHER)", "echo x", " ", "\n", "]", "[", "p", ",",
    "$(LAUNCHER)[1p] ", "$(LAUNCHER)[2p, 1n] ", "$(LAUNCHER)[1n,2p] ", "$(LAUNCHER)[1,1] ",
    "$(LAUNCHER)[2, 3] ", "$(LAUNCHER)[3p]", "$(LAUNCHER)[1n] ", "$(LAUNCHER)[p] ",
    "$(LAUNCHER)[1p 1p] ", "$(LAUNCHER)[] ",
])  # fmt: skip
_COUNTS = st.one_of(st.none(), st.integers(min_value=1, max_value=4))


def _maestro_run(cmd: str, nodes: Any, procs: Any, cpt: Any, gpus: Any = None) -> dict[str, Any]:
    run = {"cmd": cmd, "depends": "", "pre": "", "post": "", "restart": "", "nodes": "",
           "procs": "", "gpus": "", "cores per task": "", "walltime": "", "reservation": ""}
    for key, value in (("nodes", nodes), ("procs", procs), ("cores per task", cpt),
                       ("gpus", gpus)):
        if value is not None:
            run[key] = value
    return run


def _ours_or_error(fn: Any) -> str:
    try:
        return fn()
    except LauncherError:
        return "<error>"


def _maestro_or_error(fn: Any) -> str:
    try:
        return fn()
    except (ValueError, TypeError):  # Maestro crashes on int > "" with a TypeError
        return "<error>"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(_PIECES, max_size=8), nodes=_COUNTS, procs=_COUNTS,
       cpt=st.sampled_from([None, 1, 2]))
def test_srun_expansion_matches_maestro(pieces: list[str], nodes: Any, procs: Any,
                                        cpt: Any) -> None:
    """Any mix of tokens expands as maestrowf's SlurmScriptAdapter does (or both refuse)."""
    from maestrowf.interfaces.script.slurmscriptadapter import SlurmScriptAdapter

    if not (nodes or procs):
        return  # Maestro only expands scheduled steps
    cmd = "".join(pieces)
    maestro = SlurmScriptAdapter(host="h", bank="b", queue="q")
    run = _maestro_run(cmd, nodes, procs, cpt)
    expected = _maestro_or_error(lambda: maestro._substitute_parallel_command(cmd, **run))
    res = Resources(nodes=nodes, procs=procs, cores_per_task=cpt)
    assert expected == _ours_or_error(lambda: expand_srun(cmd, res, step="s"))


@pytest.fixture
def maestro_flux(monkeypatch: pytest.MonkeyPatch) -> Any:
    """maestrowf's FluxScriptAdapter without a broker (version and queues stubbed)."""
    from maestrowf.interfaces.script._flux.flux0_49_0 import FluxInterface_0490
    from maestrowf.interfaces.script.fluxscriptadapter import FluxScriptAdapter

    monkeypatch.setattr(FluxInterface_0490, "get_flux_version", classmethod(lambda c: "0.49.0"))
    monkeypatch.setattr(FluxInterface_0490, "get_broker_queues", classmethod(lambda c: []))
    return lambda **batch: FluxScriptAdapter(**batch)


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(_PIECES, max_size=6), nodes=_COUNTS, procs=_COUNTS,
       cpt=st.sampled_from([None, 1, 2]), gpus=st.sampled_from([None, 1]))
def test_flux_run_expansion_matches_maestro(maestro_flux: Any, pieces: list[str], nodes: Any,
                                            procs: Any, cpt: Any, gpus: Any) -> None:
    """Any mix of tokens expands as maestrowf's flux adapter (0.49.0) does."""
    if not (nodes or procs):
        return
    cmd = "".join(pieces)
    adapter = maestro_flux()
    run = _maestro_run(cmd, nodes, procs, cpt, gpus)
    expected = _maestro_or_error(lambda: adapter._substitute_parallel_command(cmd, **run))
    res = Resources(nodes=nodes, procs=procs, cores_per_task=cpt, gpus=gpus)
    assert expected == _ours_or_error(lambda: expand_flux_run(cmd, res, step="s"))


def test_flux_run_with_batch_args_matches_maestro(maestro_flux: Any) -> None:
    adapter = maestro_flux(args={"mpi": "spectrum"}, launcher_args={"o": {"cpu-affinity": "per-task"}})
    run = _maestro_run("$(LAUNCHER) a", 1, 2, None)
    from adapters.launcher import merge_flux_args

    merged = merge_flux_args({"o": {"cpu-affinity": "per-task"}}, {"mpi": "spectrum"})
    ours = expand_flux_run("$(LAUNCHER) a", Resources(nodes=1, procs=2), step="s",
                           launcher_args=merged)
    assert adapter._substitute_parallel_command("$(LAUNCHER) a", **run) == ours
