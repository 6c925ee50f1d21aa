"""Unit tests for engine.spec.expand, naming and pgen: instances, names, workspaces and edges."""

from __future__ import annotations

import datetime
import importlib.util
import os
import string
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import ConfigError, SpecError
from engine.spec import StudyGraph, load_spec, load_study, make_safe_path, study_dir_for
from engine.spec.expand import maestro_topological_order
from engine.spec.pgen import ParameterGenerator, parse_pargs

PEER = Path(os.environ.get("TROUPE_PEER_SPECS", "/work/shared/peer-specs")) / "maestro"
DATA = Path(__file__).resolve().parents[1] / "data" / "specs"
needs_peer = pytest.mark.skipif(not PEER.is_dir(), reason=f"peer specs not found at {PEER}")
NOW = datetime.datetime(2024, 1, 2, 3, 4, 5)
STUDY = "/s"


def expand(tmp_path: Path, text: str, **kwargs) -> StudyGraph:
    """Write a spec (a standard description block is prepended) and expand it into /s."""
    path = tmp_path / "spec.yaml"
    path.write_text("description: {name: t, description: d}\n" + textwrap.dedent(text))
    return load_study(path, out_dir=STUDY, now=NOW, cwd=str(tmp_path), **kwargs)


def peer(name: str) -> StudyGraph:
    return load_study(PEER / name, out_dir=STUDY, now=NOW, cwd="/tmp")


def names(graph: StudyGraph, step: str | None = None) -> list[str]:
    return [s.name for s in graph.steps if step is None or s.step == step]


def rel(graph: StudyGraph, name: str) -> str:
    return os.path.relpath(graph.by_name[name].workspace, graph.study_dir)


# -- parameters ---------------------------------------------------------------------------


@needs_peer
def test_parameters_are_zipped_not_crossed():
    graph = peer("hello_world_multiparam.yaml")
    assert [
        "hello_GREETING.Hello.NAME.Pam", "hello_GREETING.Ciao.NAME.Jim",
        "hello_GREETING.Hey.NAME.Michael", "hello_GREETING.Hi.NAME.Dwight",
    ] == names(graph)  # fmt: skip
    assert 'echo "Ciao, Jim!" > Ciao_Jim.txt\n' == graph.steps[1].cmd


@needs_peer
def test_only_used_parameters_name_an_instance():
    graph = peer("hello_world_multi.yaml")
    assert ["say_hi_NAME.Pam", "say_hi_NAME.Jim", "say_hi_NAME.Michael", "say_hi_NAME.Dwight"] == (
        names(graph))  # fmt: skip
    assert (("NAME", "Jim"),) == graph.by_name["say_hi_NAME.Jim"].params


def test_a_parameter_used_only_in_the_description_or_restart_still_expands_the_step(tmp_path):
    graph = expand(tmp_path, """\
        study:
            - {name: a, description: hello $(P), run: {cmd: echo}}
            - {name: b, description: d, run: {cmd: echo, restart: echo $(P.label)}}
            - {name: c, description: d, run: {cmd: echo $(PX)}}
        global.parameters:
            P: {values: [1, 2], label: P.%%}
        """)  # fmt: skip
    assert ["a_P.1", "a_P.2", "b_P.1", "b_P.2", "c"] == names(graph)
    assert ("hello 2", "echo P.2") == (graph.by_name["a_P.2"].description,
                                       graph.by_name["b_P.2"].restart)  # fmt: skip


def test_label_value_and_name_tokens_are_replaced_in_maestro_order(tmp_path):
    graph = expand(tmp_path, """\
        study:
            - {name: a, description: d, run: {cmd: "$(P.label) $(P) $(P.name) $(Q.label)"}}
        global.parameters:
            P: {values: [.75, 0.5], label: X2.%%}
            Q: {values: [yes, "a b"], label: "%%"}
        """)  # fmt: skip
    assert ["a_X2.0.75.True", "a_X2.0.5.a b"] == names(graph)
    assert ["X2.0.75 0.75 P True", "X2.0.5 0.5 P a b"] == [s.cmd for s in graph.steps]
    assert ["a/X2.0.75.True", "a/X2.0.5.a_b"] == [rel(graph, n) for n in names(graph)]


@needs_peer
def test_combinations_with_the_same_labels_collapse_into_one_instance():
    graph = peer("lulesh_sample1_unix.yaml")
    assert 23 == len(graph.steps)
    assert [f"post-process-lulesh-size_SIZE.{n}" for n in (10, 20, 30)] == names(
        graph, "post-process-lulesh-size")
    assert "run-lulesh_ITER.10.SIZE.10" == graph.steps[1].name  # ITERATIONS sorts before SIZE


@needs_peer
def test_workspaces_are_sanitised_but_names_keep_raw_characters():
    graph = peer("hello_bye_parameterized_funnel.yaml")
    name = "say-bye_FAREWELL.So long.GREETING.Hey.NAME.Michael"
    assert "say-bye/FAREWELL.So_long.GREETING.Hey.NAME.Michael" == rel(graph, name)
    assert (("FAREWELL", "So long"), ("GREETING", "Hey"), ("NAME", "Michael")) == (
        graph.by_name[name].params)  # fmt: skip


def test_unsafe_characters_are_dropped_from_workspaces_and_a_shared_one_is_refused(tmp_path):
    graph = expand(tmp_path, """\
        study:
            - {name: a, description: d, run: {cmd: echo $(P)}}
        global.parameters:
            P: {values: [a/b, "a:c"], label: P.%%}
        """)  # fmt: skip
    assert ["a_P.a/b", "a_P.a:c"] == names(graph)
    assert ["a/P.ab", "a/P.ac"] == [rel(graph, n) for n in names(graph)]
    with pytest.raises(SpecError, match=r"^.*: study\[0\]: instances 'a_P.a/b' and 'a_P.a:b' "
                       r"would share the workspace a/P.ab .*$"):  # fmt: skip
        expand(tmp_path, """\
            study:
                - {name: a, description: d, run: {cmd: echo $(P)}}
            global.parameters:
                P: {values: [a/b, "a:b"], label: P.%%}
            """)  # fmt: skip


def test_a_combination_that_would_leave_its_step_directory_is_rejected(tmp_path):
    with pytest.raises(SpecError, match=r"^.*: global\.parameters: step 'a': combination '\.\.' "
                       r"would put the workspace outside its parent directory$"):  # fmt: skip
        expand(tmp_path, """\
            study:
                - {name: a, description: d, run: {cmd: echo $(P)}}
            global.parameters:
                P: {values: [x, ..], label: "%%"}
            """)  # fmt: skip


def test_an_instance_name_clashing_with_another_step_is_rejected(tmp_path):
    # Maestro stages later siblings first, so step 'a_P.1' takes the name before 'a' does.
    with pytest.raises(SpecError, match=r"^.*: study\[0\]\.name: instance name 'a_P\.1' is already "
                       r"taken by an instance of step 'a_P\.1'$"):  # fmt: skip
        expand(tmp_path, """\
            study:
                - {name: a, description: d, run: {cmd: echo $(P)}}
                - {name: a_P.1, description: d, run: {cmd: echo}}
            global.parameters:
                P: {values: [1], label: P.%%}
            """)  # fmt: skip


# -- dependencies and funnels ----------------------------------------------------------------


@needs_peer
def test_a_child_inherits_its_parameterised_parents_parameters():
    graph = peer("hello_bye_parameterized.yaml")
    child = graph.by_name["bye_world_GREETING.Ciao.NAME.Jim"]
    assert ("hello_world_GREETING.Ciao.NAME.Jim",) == child.parents
    assert 8 == len(graph.steps)


@pytest.mark.parametrize("dep", ["a_*", "a*"])
def test_a_funnel_waits_for_every_instance_and_does_not_inherit_parameters(tmp_path, dep):
    graph = expand(tmp_path, f"""\
        study:
            - {{name: a, description: d, run: {{cmd: echo $(P)}}}}
            - {{name: b, description: d, run: {{cmd: echo $(Q), depends: ["{dep}"]}}}}
            - {{name: c, description: d, run: {{cmd: ls $(a.workspace), depends: ["{dep}"]}}}}
        global.parameters:
            P: {{values: [1, 2], label: P.%%}}
            Q: {{values: [x, y], label: Q.%%}}
        """)  # fmt: skip
    assert ["a_P.1", "a_P.2", "b_Q.x", "b_Q.y", "c"] == names(graph)
    assert all(("a_P.1", "a_P.2") == graph.by_name[n].parents for n in ("b_Q.x", "b_Q.y", "c"))
    assert (("a",), "ls /s/a") == (graph.by_name["c"].funnel_parents, graph.by_name["c"].cmd)


def test_workspace_references_follow_maestros_rules(tmp_path):
    graph = expand(tmp_path, """\
        study:
            - {name: root, description: d, run: {cmd: echo}}
            - name: post
              description: d
              run:
                  cmd: ls $(sim.workspace)/x:$(root.workspace) $(WORKSPACE)
                  restart: cd $(sim.workspace) && cd $(WORKSPACE)
                  depends: [root]
            - {name: sim, description: d, run: {cmd: echo $(P), depends: [root]}}
        global.parameters:
            P: {values: [1, 2], label: P.%%}
        """)  # fmt: skip
    post = graph.by_name["post_P.2"]
    assert ("ls /s/sim/P.2/x:/s/root /s/post/P.2", "cd /s/sim/P.2 && cd /s/post/P.2") == (
        post.cmd, post.restart)  # fmt: skip
    # A reference adds parameters, not an edge; it works because Maestro's depth-first order
    # stages the later sibling 'sim' before 'post'.
    assert ("root",) == post.parents


@pytest.mark.parametrize(
    ("ref", "message"),
    [("gone", r"\$\(gone\.workspace\) names no step"),
     ("first", r"\$\(first\.workspace\) is used before step 'first' would be generated .*")],
)  # fmt: skip
def test_a_workspace_that_is_not_generated_yet_is_rejected(tmp_path, ref, message):
    """Maestro stages the second root before the first, so it cannot read the first's."""
    with pytest.raises(SpecError, match=r"^.*: study\[1\]\.run\.restart: " + message + "$"):
        expand(tmp_path, f"""\
            study:
                - {{name: first, description: d, run: {{cmd: echo}}}}
                - {{name: second, description: d, run: {{cmd: echo, restart: ls $({ref}.workspace)}}}}
            """)  # fmt: skip


def test_maestros_topological_order_is_reproduced(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("description: {name: t, description: d}\nstudy:\n" + "".join(
        f"  - {{name: {n}, description: d, run: {{cmd: echo, depends: {d}}}}}\n"
        for n, d in [("a", "[]"), ("b", "[a]"), ("c", "[a]"), ("d", "[]"), ("e", "[b, d]")]))
    assert ["d", "a", "c", "b", "e"] == [
        load_spec(path).study[i].name for i in maestro_topological_order(load_spec(path).study)]


def test_steps_come_in_file_order_with_parents_first(tmp_path):
    graph = expand(tmp_path, """\
        study:
            - {name: a, description: d, run: {cmd: echo}}
            - {name: b, description: d, run: {cmd: echo $(P), depends: [a]}}
            - {name: c, description: d, run: {cmd: echo, depends: [b_*, a]}}
        global.parameters:
            P: {values: [1, 2], label: P.%%}
        """)  # fmt: skip
    seen: set[str] = set()
    for step in graph.steps:
        assert set(step.parents) <= seen
        seen.add(step.name)
    assert ("b_P.1", "b_P.2", "a") == graph.by_name["c"].parents


# -- resources, batch, troupe ----------------------------------------------------------------


def test_resources_batch_and_troupe_block_are_carried_over(tmp_path):
    graph = expand(tmp_path, """\
        batch: {type: slurm, queue: q}
        troupe: {rlimit: 2}
        env:
            variables: {N: 3}
        study:
            - name: a
              description: d
              run:
                  cmd: $(LAUNCHER) echo
                  nodes: $(N)
                  procs: $(P)
                  "cores per task": 2
                  exclusive: {allocation: true, launcher: false}
                  walltime: "00:10:00"
        global.parameters:
            P: {values: [4], label: P.%%}
        """)  # fmt: skip
    res = graph.steps[0].resources
    assert (3, 4, 2, True, "00:10:00") == (
        res.nodes, res.procs, res.cores_per_task, res.exclusive, res.walltime)
    assert ({"type": "slurm", "queue": "q"}, {"rlimit": 2}) == (graph.batch, graph.troupe)
    assert graph.steps[0].is_scheduled


def test_batch_type_defaults_to_local(tmp_path):
    graph = expand(tmp_path, "study:\n  - {name: a, description: d, run: {cmd: echo}}\n")
    assert {"type": "local"} == graph.batch


# -- study directory and make_safe_path ------------------------------------------------------


def test_study_dir_rules(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text("description: {name: my study, description: d}\n"
                    "env: {variables: {OUTPUT_PATH: out/$(X)}}\n"
                    "study: [{name: a, description: d, run: {cmd: echo}}]\n")  # fmt: skip
    spec = load_spec(path)
    assert "/cwd/out/$(X)/my_study_20240102-030405" == study_dir_for(
        spec, out_dir=None, now=NOW, cwd="/cwd")
    assert "/cwd/given" == study_dir_for(spec, out_dir="given", now=NOW, cwd="/cwd")
    assert "/abs" == study_dir_for(spec, out_dir="/abs", now=NOW, cwd="/cwd")
    path.write_text("description: {name: n, description: d}\n"
                    "study: [{name: a, description: d, run: {cmd: echo}}]\n")  # fmt: skip
    assert "/cwd/n_20240102-030405" == study_dir_for(load_spec(path), out_dir=None, now=NOW,
                                                     cwd="/cwd")  # fmt: skip


def test_load_study_uses_the_study_dir_for_output_path_and_the_spec_dir_for_specroot(tmp_path):
    (tmp_path / "specs").mkdir()
    path = tmp_path / "specs" / "spec.yaml"
    path.write_text("description: {name: n, description: d}\nenv: {variables: {OUTPUT_PATH: o}}\n"
                    "study: [{name: a, description: d, run: {cmd: '$(OUTPUT_PATH) $(SPECROOT)'}}]\n")
    graph = load_study("specs/spec.yaml", now=NOW, cwd=str(tmp_path))
    study = f"{tmp_path}/o/n_20240102-030405"
    assert (study, f"{study}/a", f"{study} {tmp_path}/specs", str(path)) == (
        graph.study_dir, graph.steps[0].workspace, graph.steps[0].cmd, graph.spec_path)


@pytest.mark.parametrize(
    ("raw", "safe"),
    [("FAREWELL.So long", "FAREWELL.So_long"), ("P.a/b", "P.ab"), ("P.a:b", "P.ab"),
     ("FOOBAR.--foobar 9:2/5(1)", "FOOBAR.--foobar_925(1)"), ("../x", "..x")],
)  # fmt: skip
def test_make_safe_path_examples(raw, safe):
    assert safe == make_safe_path(raw)


@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=40) | st.text(string.printable))
def test_make_safe_path_keeps_only_safe_characters_and_is_idempotent(raw):
    safe = make_safe_path(raw)
    assert set(safe) <= set("-_.()" + string.ascii_letters + string.digits)
    assert safe == make_safe_path(safe)


# -- custom parameter generators --------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:the load_module:DeprecationWarning")  # maestrowf's imports
def test_pgen_replaces_global_parameters_and_receives_pargs_and_env(tmp_path):
    graph = load_study(DATA / "pgen_study.yaml", out_dir=STUDY, now=NOW, cwd=str(tmp_path),
                       pgen=str(DATA / "pgen_cross.py"), pargs=["smin:5", "iters: 7,8"])  # fmt: skip
    assert ["run_IT.7.SIZE.5", "run_IT.8.SIZE.5", "run_IT.7.SIZE.10", "run_IT.8.SIZE.10"] == (
        names(graph, "run"))  # fmt: skip
    assert ["by-size_SIZE.5", "by-size_SIZE.10"] == names(graph, "by-size")
    assert "echo 5 7 size" == graph.steps[0].cmd


def write_pgen(tmp_path: Path, body: str) -> str:
    path = tmp_path / "gen.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_pgen_files_run_without_maestrowf_installed(tmp_path, monkeypatch):
    """The shim makes 'from maestrowf.datastructures.core import ...' give our class."""
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "maestrowf" else real_find_spec(name, *a))
    for name in [m for m in sys.modules if m == "maestrowf" or m.startswith("maestrowf.")]:
        monkeypatch.delitem(sys.modules, name)
    pgen = write_pgen(tmp_path, """\
        from maestrowf.datastructures.core import ParameterGenerator

        def get_custom_generator(env, **kwargs):
            assert kwargs["SPECROOT"].value == kwargs["SPECROOT"]
            gen = ParameterGenerator()
            gen.add_parameter("P", [kwargs["OUTPUT_PATH"].count("/")], None)
            gen.add_parameter("Q", ["x"], ["custom-label"])
            return gen
        """)  # fmt: skip
    graph = expand(tmp_path, "study: [{name: a, description: d, run: {cmd: '$(P) $(Q)'}}]\n",
                   pgen=pgen)  # fmt: skip
    assert ["a_P.1.custom-label"] == names(graph)
    assert "maestrowf" not in sys.modules


def test_a_failing_pgen_is_a_spec_error_naming_the_pgen_file(tmp_path):
    pgen = write_pgen(tmp_path, "def get_custom_generator(env, **kwargs):\n    raise KeyError('X')\n")
    with pytest.raises(SpecError, match=rf"^{pgen}: pgen failed: KeyError: 'X'$"):
        expand(tmp_path, "study: [{name: a, description: d, run: {cmd: echo}}]\n", pgen=pgen)


def test_a_pgen_without_the_entry_point_is_a_spec_error(tmp_path):
    pgen = write_pgen(tmp_path, "x = 1\n")
    with pytest.raises(SpecError, match=r"^.*gen\.py: defines no get_custom_generator"):
        expand(tmp_path, "study: [{name: a, description: d, run: {cmd: echo}}]\n", pgen=pgen)


def test_pargs_without_pgen_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"^--pargs needs --pgen: .*$"):
        expand(tmp_path, "study: [{name: a, description: d, run: {cmd: echo}}]\n", pargs=["a:b"])


def test_pargs_split_on_the_first_colon():
    assert {"URL": "http://x:1", "N": "2"} == parse_pargs(["URL:http://x:1", " N : 2 "])
    with pytest.raises(ConfigError, match=r"^--pargs 'novalue': expected KEY:VALUE$"):
        parse_pargs(["novalue"])


def test_parameter_generator_keeps_maestros_api():
    gen = ParameterGenerator()
    gen.add_parameter("A", [1, 2])
    gen.add_parameter("B", (3, 4), "B-%%", "bee")
    assert ({"A": [1, 2], "B": [3, 4]}, {"A": "A.%%", "B": "B-%%"}, {"A": "A", "B": "bee"}) == (
        gen.parameters, gen.labels, gen.names)  # fmt: skip
    with pytest.raises(ValueError, match=r"^parameter 'C' has 1 values, the others have 2$"):
        gen.add_parameter("C", [1])
