"""when: conditions through the real CLI: a quorum aggregator runs despite a failed
instance, an unsatisfiable condition SKIPs its step, and a bad condition is one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.status import read_status
from tests.conftest import REPO, alive, enginectl
from tests.ledger import ledger_cmd, read_ledger


def states(study: Path) -> dict[str, str]:
    return {r["Step Name"]: r["State"] for r in read_status(study / "status.csv")}


def test_one_failing_instance_does_not_stop_a_quorum_aggregator(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    sim = ledger_cmd(ledger, '[ "$(X)" != 3 ]').replace("\n", "\n        ")
    spec = tmp_path / "q.yaml"
    spec.write_text(
        "description: {name: quorum, description: q}\nstudy:\n"
        f"  - name: sim\n    description: one of them fails\n    run:\n      cmd: |\n        {sim}\n"
        "  - name: agg\n    description: quorum\n    run:\n"
        "      cmd: echo agg > agg.txt\n      depends: [sim_*]\n"
        "      when: fraction(sim_*.completed) >= 0.8\n"
        "global.parameters:\n  X: {values: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9], label: X.%%}\n"
    )
    study = tmp_path / "s"
    result = enginectl("run", str(spec), "-o", str(study), "--throttle", "0")
    assert 2 == result.returncode, result.stderr  # a failed instance still fails the study
    got = states(study)
    assert "FAILED" == got["sim_X.3"]
    assert 9 == sum(1 for k, v in got.items() if k.startswith("sim") and v == "FINISHED")
    assert "FINISHED" == got["agg"]
    assert (study / "agg" / "agg.txt").exists()
    assert 10 == len([e for e in read_ledger(ledger) if e.end is not None])


def test_unsatisfiable_condition_skips_and_the_study_finishes(tmp_path: Path) -> None:
    spec = tmp_path / "k.yaml"
    spec.write_text(
        "description: {name: skip, description: s}\nstudy:\n"
        "  - {name: a, description: a, run: {cmd: 'true'}}\n"
        "  - {name: cleanup, description: only on failure, run: {cmd: 'touch ran', depends: [a], when: a.failed}}\n"
        "  - {name: after, description: after cleanup, run: {cmd: 'touch ran', depends: [cleanup]}}\n"
    )
    study = tmp_path / "s"
    result = enginectl("run", str(spec), "-o", str(study))
    assert 0 == result.returncode, result.stderr
    assert {"a": "FINISHED", "cleanup": "SKIPPED", "after": "SKIPPED"} == states(study)
    assert not (study / "cleanup" / "ran").exists()


def test_condition_naming_a_non_dependency_is_rejected_in_one_line(tmp_path: Path) -> None:
    spec = tmp_path / "b.yaml"
    spec.write_text(
        "description: {name: bad, description: b}\nstudy:\n"
        "  - {name: a, description: a, run: {cmd: 'true'}}\n"
        "  - {name: b, description: b, run: {cmd: 'true', depends: [a], when: 'c.completed'}}\n"
    )
    result = enginectl("validate", str(spec))
    assert 1 == result.returncode
    assert [f"error: {spec}: study[1].run.when: 'c' is not one of this step's dependencies (a)"] \
        == result.stderr.strip().splitlines()


def test_group_by_gives_one_aggregator_per_group_that_starts_when_its_group_is_done(
    tmp_path: Path,
) -> None:
    """The SIZE=20 simulations wait for the SIZE=10 aggregator's output: the study can
    only finish if that aggregator started before the other group was done."""
    flag = tmp_path / "agg10.done"
    spec = tmp_path / "g.yaml"
    spec.write_text(
        "description: {name: grouped, description: g}\nstudy:\n"
        "  - name: sim\n    description: s\n    run:\n      cmd: |\n"
        f"        if [ $(SIZE) = 20 ]; then for t in $(seq 300); do [ -e {flag} ] && break; sleep 0.02; done; [ -e {flag} ]; fi\n"
        "        echo $(SEED) > seed.txt\n"
        "  - name: agg\n    description: a\n    run:\n      cmd: |\n"
        "        cat $(sim.workspace)/*SIZE.$(SIZE)/seed.txt | sort > seeds.txt\n"
        f"        touch {tmp_path}/agg$(SIZE).done\n"
        "      depends: [sim_*]\n      group_by: [SIZE]\n"
        "global.parameters:\n  SIZE: {values: [10, 10, 20, 20], label: SIZE.%%}\n"
        "  SEED: {values: [1, 2, 3, 4], label: SEED.%%}\n"
    )
    study = tmp_path / "s"
    result = enginectl("run", str(spec), "-o", str(study), "--throttle", "0")
    assert 0 == result.returncode, result.stderr
    got = states(study)
    assert {"agg_SIZE.10", "agg_SIZE.20"} == {k for k in got if k.startswith("agg")}
    assert "1\n2\n" == (study / "agg" / "SIZE.10" / "seeds.txt").read_text()
    assert "3\n4\n" == (study / "agg" / "SIZE.20" / "seeds.txt").read_text()


def test_group_by_a_parameter_the_funnel_does_not_use_is_rejected(tmp_path: Path) -> None:
    spec = tmp_path / "b.yaml"
    spec.write_text(
        "description: {name: bad, description: b}\nstudy:\n"
        "  - {name: sim, description: s, run: {cmd: 'echo $(SEED)'}}\n"
        "  - {name: agg, description: a, run: {cmd: 'true', depends: [sim_*], group_by: [SIZE]}}\n"
        "global.parameters:\n  SIZE: {values: [1, 2], label: SIZE.%%}\n"
        "  SEED: {values: [1, 2], label: SEED.%%}\n"
    )
    result = enginectl("validate", str(spec))
    assert 1 == result.returncode
    assert "study[1].run.group_by[0]: funnel parent 'sim' does not use parameter 'SIZE'" in result.stderr




def test_race_of_four_first_finisher_wins_the_rest_are_cancelled_and_gone(tmp_path: Path) -> None:
    spec = tmp_path / "r.yaml"
    spec.write_text(
        "description: {name: race, description: r}\nstudy:\n"
        "  - name: solver\n    description: four solvers race\n    run:\n      cmd: |\n"
        "        echo $$ > pid\n"
        "        if [ $(ALGO) = quick ]; then while [ $(ls ../*/pid 2>/dev/null | wc -l) -lt 4 ]; do sleep 0.02; done; echo $(ALGO) > answer.txt; exit 0; fi\n"
        "        sleep 300\n"
        "      race: solve\n"
        "  - name: report\n    description: uses the winner\n    run:\n"
        "      cmd: cat $(race.solve)/answer.txt > report.txt\n"
        "      depends: [solver_*]\n      when: any(solver_*.completed)\n"
        "global.parameters:\n  ALGO: {values: [slow1, quick, slow2, slow3], label: ALGO.%%}\n"
    )
    study = tmp_path / "s"
    result = enginectl("run", str(spec), "-o", str(study), "--throttle", "0", "--kill-grace", "1")
    assert 0 == result.returncode, result.stderr
    got = states(study)
    assert "FINISHED" == got["solver_ALGO.quick"]
    assert {"CANCELLED"} == {v for k, v in got.items() if k.startswith("solver_ALGO.slow")}
    assert "quick\n" == (study / "report" / "report.txt").read_text()
    for name in ("slow1", "slow2", "slow3"):
        pid = int((study / "solver" / f"ALGO.{name}" / "pid").read_text())
        assert not alive(pid)


def _memo_spec(path: Path, ledger: Path, b_cmd: str) -> Path:
    def step(name: str, body: str, deps: str = "") -> str:
        cmd = ledger_cmd(ledger, body).replace("\n", "\n        ")
        extra = f"      depends: [{deps}]\n" if deps else ""
        return f"  - name: {name}\n    description: {name}\n    run:\n      cmd: |\n        {cmd}\n{extra}"

    path.write_text(
        "description: {name: memo, description: m}\nstudy:\n"
        + step("a", "echo a > out.txt")
        + step("b", b_cmd, "a")
        + step("c", "cat $(b.workspace)/out.txt > out.txt", "b")
        + step("d", "echo d > out.txt")
    )
    return path


def test_rerun_with_reuse_runs_only_the_edited_step_and_its_descendants(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    first = tmp_path / "first"
    spec = _memo_spec(tmp_path / "m.yaml", ledger, "echo b1 > out.txt")
    assert 0 == enginectl("run", str(spec), "-o", str(first)).returncode
    assert {"a", "b", "c", "d"} == {e.step for e in read_ledger(ledger)}
    ledger.unlink()
    _memo_spec(spec, ledger, "echo b2 > out.txt")  # fix one step
    second = tmp_path / "second"
    result = enginectl("run", str(spec), "-o", str(second), "--reuse", str(first))
    assert 0 == result.returncode, result.stderr
    assert {"b", "c"} == {e.step for e in read_ledger(ledger)}, "only b and its descendant ran"
    assert {"a": "CACHED", "b": "FINISHED", "c": "FINISHED", "d": "CACHED"} == states(second)
    assert "a\n" == (second / "a" / "out.txt").read_text(), "the cached workspace is reproduced"
    assert "b2\n" == (second / "c" / "out.txt").read_text()
    ledger.unlink()
    third = tmp_path / "third"
    assert 0 == enginectl("run", str(spec), "-o", str(third), "--reuse", str(first),
                          "--no-cache").returncode
    assert {"a", "b", "c", "d"} == {e.step for e in read_ledger(ledger)}, "--no-cache reuses nothing"


def test_a_cache_directory_in_troupe_memoizes_across_runs_without_reuse(tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    spec = _memo_spec(tmp_path / "m.yaml", ledger, "echo b1 > out.txt")
    spec.write_text(spec.read_text() + "troupe: {cache: cache}\n")
    assert 0 == enginectl("run", str(spec), "-o", str(tmp_path / "one")).returncode
    ledger.unlink()
    assert 0 == enginectl("run", str(spec), "-o", str(tmp_path / "two")).returncode
    assert not ledger.exists(), "nothing ran again"
    assert {"CACHED"} == set(states(tmp_path / "two").values())


@pytest.mark.parametrize("throttle", [["-t", "0"], []], ids=["unthrottled", "default"])
def test_the_documented_race_example_reports_the_checked_winner_every_time(
        tmp_path: Path, throttle: list[str]) -> None:
    # examples/race: greedy ends first with an empty answer (the check refuses it), so
    # the report waits for the check of the next finisher; 10 runs, each must pass.
    for run in range(10):
        study = tmp_path / f"s{run}"
        result = enginectl("run", str(REPO / "examples/race/race.yaml"), "-o", str(study),
                           *throttle)
        assert 0 == result.returncode, result.stderr
        rows = {r["Step Name"]: r for r in read_status(study / "status.csv")}
        answers = {s: (study / r["Workspace"] / "answer.txt").read_text()
                   for s, r in rows.items() if s.startswith("solver_") and r["State"] == "FINISHED"}
        report = next((study / "report").glob("report*.out")).read_text()
        assert "" == answers.get("solver_ALGO.greedy", "")  # (no answer: it never wins)
        assert report in {a for a in answers.values() if a}, (run, report, answers)
