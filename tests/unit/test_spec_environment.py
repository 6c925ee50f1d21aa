"""Unit tests for engine.spec.environment: Maestro's one-pass token substitution and its quirks."""

from __future__ import annotations

import datetime
import os
import textwrap
from pathlib import Path

import pytest

from engine.spec import load_spec, load_study
from engine.spec.environment import StudyEnvironment, build_environment, unresolved_tokens

PEER = Path(os.environ.get("TROUPE_PEER_SPECS", "/work/shared/peer-specs")) / "maestro"
needs_peer = pytest.mark.skipif(not PEER.is_dir(), reason=f"peer specs not found at {PEER}")
NOW = datetime.datetime(2024, 1, 2, 3, 4, 5)


def spec_file(tmp_path: Path, env: str, cmd: str = "echo hi", extra: str = "") -> Path:
    """A one-step spec: env block and cmd are dedented; ``extra`` follows cmd verbatim."""
    path = tmp_path / "spec.yaml"
    path.write_text(
        "description: {name: t, description: d}\n"
        + textwrap.dedent(env)
        + "study:\n  - name: s\n    description: d\n    run:\n      cmd: |\n"
        + textwrap.indent(textwrap.dedent(cmd).rstrip("\n") + "\n", "        ")
        + extra
    )
    return path


def environment(tmp_path: Path, env: str) -> StudyEnvironment:
    return build_environment(
        load_spec(spec_file(tmp_path, env)), study_dir="/study", spec_root="/specs", cwd="/cwd"
    )


def test_a_chain_of_variables_resolves_only_one_level(tmp_path):
    """Semantics 3.2: B and C are labels, so $(C) gives '$(B)-gamma' and bash sees $(B)."""
    env = environment(tmp_path, """\
        env:
            variables: {A: alpha, B: $(A)-beta, C: $(B)-gamma}
        """)  # fmt: skip
    assert ["alpha", "alpha-beta", "$(B)-gamma"] == [env.apply(f"$({n})") for n in "ABC"]
    assert ({"B", "C"}, {"A", "OUTPUT_PATH", "SPECROOT"}) == (
        set(env.labels), set(env.substitutions))  # fmt: skip


def test_a_label_sees_later_labels_but_not_earlier_ones(tmp_path):
    env = environment(tmp_path, """\
        env:
            variables: {A: alpha}
            labels: {FIRST: $(SECOND)+1, SECOND: two-$(A), THIRD: $(SECOND)+3}
        """)  # fmt: skip
    assert "two-alpha+1 two-alpha $(SECOND)+3" == env.apply("$(FIRST) $(SECOND) $(THIRD)")


def test_the_first_dollar_value_is_a_plain_substitution(tmp_path):
    """Before any substitution exists, a '$' value is not a label (Maestro's token set is empty)."""
    env = environment(tmp_path, """\
        env:
            variables: {X: $(Z), Z: $(W), W: w}
        """)  # fmt: skip
    assert ["X", "W", "OUTPUT_PATH", "SPECROOT"] == list(env.substitutions)
    assert "$(Z)" == env.apply("$(X)")  # Z, a label, was applied before X was replaced


def test_output_path_and_specroot_are_the_study_and_spec_directories(tmp_path):
    env = environment(tmp_path, """\
        env:
            variables: {OUTPUT_PATH: ./out/$(SUB), SUB: x, N: 3}
        """)  # fmt: skip
    assert "/study /specs 3 $(WORKSPACE)" == env.apply("$(OUTPUT_PATH) $(SPECROOT) $(N) $(WORKSPACE)")


def test_dependencies_resolve_to_their_paths(tmp_path):
    env = environment(tmp_path, """\
        env:
            variables: {SUBDIR: data}
            dependencies:
                paths: [{name: DATA, path: ./$(SUBDIR)}]
                git: [{name: REPO, path: $(OUTPUT_PATH), url: https://x/r.git}]
        """)  # fmt: skip
    assert "/cwd/data /study/REPO" == env.apply("$(DATA) $(REPO)")


def test_find_returns_the_value_as_written_for_parameter_generators(tmp_path):
    env = environment(tmp_path, """\
        env:
            variables: {SMIN: 10, NAME: x}
        """)  # fmt: skip
    assert (10, "x", "/study") == tuple(env.find(n).value for n in ("SMIN", "NAME", "OUTPUT_PATH"))
    assert None is env.find("NOPE")


def test_unresolved_tokens_skip_launcher_and_shell_arithmetic():
    text = "$(LAUNCHER)[1p] $(A) $(A) $(b.c) $((1+2)) $(date +%s) $(LAUNCHER) $(X-y)"
    assert ["$(A)", "$(b.c)", "$(X-y)"] == unresolved_tokens(text)


def test_unknown_tokens_stay_for_the_shell_and_are_reported_once_per_step(tmp_path):
    path = spec_file(tmp_path, "", cmd="""\
        $(LAUNCHER) echo $(NOPE) $(NOPE)
        """, extra=(
            "      restart: echo $(ALSO)\n"
            "global.parameters:\n"
            "  P: {values: [1, 2], label: P.%%}\n"
        ))  # fmt: skip
    path.write_text(path.read_text().replace("echo $(NOPE) $(NOPE)", "echo $(NOPE) $(NOPE) $(P)"))
    graph = load_study(path, out_dir="out", now=NOW, cwd=str(tmp_path))
    assert "$(LAUNCHER) echo $(NOPE) $(NOPE) 1\n" == graph.steps[0].cmd
    assert (
        "step 's': unresolved token $(NOPE) is left for the shell",
        "step 's': unresolved token $(ALSO) is left for the shell",
    ) == graph.warnings


@needs_peer
def test_lulesh_warns_about_exactly_the_makefile_variables():
    graph = load_study(PEER / "lulesh_sample1_unix.yaml", out_dir="/tmp/o", now=NOW, cwd="/tmp")
    assert (
        "step 'make-lulesh': unresolved token $(MPICXX) is left for the shell",
        "step 'make-lulesh': unresolved token $(SERCXX) is left for the shell",
    ) == graph.warnings


@needs_peer
@pytest.mark.parametrize("name", ["hello_bye_parameterized_slurm.yaml", "launcher_tokens.yaml"])
def test_launcher_tokens_are_left_verbatim_without_warnings(name):
    graph = load_study(PEER / name, out_dir="/tmp/o", now=NOW, cwd="/tmp")
    assert () == graph.warnings
    assert all("$(LAUNCHER)" in s.cmd for s in graph.steps if "LAUNCHER" in s.cmd)


def test_graph_variables_are_the_resolved_plain_variables(tmp_path):
    path = spec_file(tmp_path, """\
        env:
            variables: {OUTPUT_PATH: out, A: alpha, B: $(A)-beta, C: $(B)-gamma, N: 4}
        """)  # fmt: skip
    graph = load_study(path, now=NOW, cwd=str(tmp_path))
    study = str(tmp_path / "out" / "t_20240102-030405")
    assert {
        "OUTPUT_PATH": study, "A": "alpha", "B": "alpha-beta", "C": "$(B)-gamma", "N": "4",
        "SPECROOT": str(tmp_path),
    } == graph.variables  # fmt: skip


def test_description_and_resources_are_substituted_too(tmp_path):
    path = spec_file(tmp_path, """\
        env:
            variables: {WHO: world, NPROC: 8}
        """, extra="      procs: $(NPROC)\n      walltime: $(NPROC)\n")  # fmt: skip
    path.write_text(path.read_text().replace("description: d\n    run", "description: hi $(WHO)\n    run"))
    (step,) = load_study(path, out_dir="o", now=NOW, cwd=str(tmp_path)).steps
    assert ("hi world", 8, "8") == (step.description, step.resources.procs, step.resources.walltime)
