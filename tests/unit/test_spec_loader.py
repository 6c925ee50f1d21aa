"""Unit tests for engine.spec.loader: safe YAML loading and Maestro-strict validation."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest

from engine.errors import ConfigError, SpecError
from engine.spec import load_spec

PEER = Path(os.environ.get("TROUPE_PEER_SPECS", "/work/shared/peer-specs")) / "maestro"
needs_peer = pytest.mark.skipif(not PEER.is_dir(), reason=f"peer specs not found at {PEER}")

HEADER = """\
description:
    name: t
    description: A test study.
"""
STEP = """\
study:
    - name: hello
      description: Say hello.
      run:
          cmd: echo hello
"""


def write(tmp_path: Path, body: str | tuple[str, ...], *, header: bool = True) -> Path:
    """Write a spec from YAML parts, each dedented (the standard description block first)."""
    parts = (body,) if isinstance(body, str) else body
    path = tmp_path / "spec.yaml"
    path.write_text((HEADER if header else "") + "".join(textwrap.dedent(p) for p in parts))
    return path


def rejects(path: Path, field: str, message: str) -> SpecError:
    """Assert that loading fails with exactly 'FILE: FIELD: <message regex>'."""
    prefix = re.escape(f"{path}: {field}: " if field else f"{path}: ")
    with pytest.raises(SpecError, match=f"^{prefix}{message}$") as info:
        load_spec(path)
    assert (str(path), field) == (info.value.file, info.value.field)
    return info.value


@needs_peer
def test_hello_world_loads_as_in_maestros_own_test():
    spec = load_spec(PEER / "hello_world.yaml")
    assert ("hello_world", "A simple 'Hello World' study.") == (
        spec.description.name, spec.description.description)  # fmt: skip
    assert "./sample_output/hello_world" == spec.env.variables["OUTPUT_PATH"]
    assert ["hello_world"] == [s.name for s in spec.study]
    assert 'echo "Hello, World!" > hello_world.txt\n' == spec.study[0].run.cmd


@needs_peer
def test_a_spec_without_env_has_empty_variables():
    assert {} == load_spec(PEER / "empty_output_path.yml").env.variables


@needs_peer
@pytest.mark.parametrize(
    ("name", "field", "message"),
    [
        ("duplicate_dependency.yml", "env.dependencies.git[1].name",
         r"Variable name 'LULESH' is already taken: .*"),
        ("empty_variables.yml", "env.variables.OUTPUT_PATH",
         r"must be a non-empty string or a number, not null"),
        ("error_parameterized.yml", "global.parameters.GREETING2.label",
         r"must be a string, not a list"),
        ("extra_study_params.yml", "study[0].run.bad",
         r"unknown key 'bad' in study step 'hello_world'"),
        ("missing_step.yml", "study", r"a study must contain at least one step"),
        ("missing_step_desc.yml", "study[0].description",
         r"required key 'description' is missing from study step 'hello_world'"),
    ],
)  # fmt: skip
def test_every_invalid_peer_spec_is_rejected_naming_the_problem(name, field, message):
    rejects(PEER / "invalid" / name, field, message)


BAD_SPECS = {
    "self_dependency": (
        """\
        study:
            - name: a
              description: d
              run: {cmd: echo, depends: [a]}
        """,
        "study[0].run.depends", r"step 'a' depends on itself",
    ),
    "funnel_on_itself": (
        """\
        study:
            - name: a
              description: d
              run: {cmd: echo, depends: [a_*]}
        """,
        "study[0].run.depends", r"step 'a' depends on itself",
    ),
    "cycle": (
        """\
        study:
            - name: a
              description: d
              run: {cmd: echo, depends: [c]}
            - name: b
              description: d
              run: {cmd: echo, depends: [a]}
            - name: c
              description: d
              run: {cmd: echo, depends: [b]}
        """,
        "study[0].run.depends", r"dependency cycle: a -> c -> b -> a",
    ),
    "unknown_dependency": (
        """\
        study:
            - name: hello
              description: d
              run: {cmd: echo}
            - name: bye
              description: d
              run: {cmd: echo, depends: [nope]}
        """,
        "study[1].run.depends", r"unknown step 'nope'",
    ),
    "unknown_funnel": (
        """\
        study:
            - name: hello
              description: d
              run: {cmd: echo, depends: [nope_*]}
        """,
        "study[0].run.depends", r"unknown step 'nope' \(from 'nope_\*'\)",
    ),
    "later_defined_dependency": (
        """\
        study:
            - name: hello
              description: d
              run: {cmd: echo, depends: [bye]}
            - name: bye
              description: d
              run: {cmd: echo}
        """,
        "study[0].run.depends", r"step 'bye' is defined later; .*",
    ),
    "duplicate_step_names": (
        """\
        study:
            - name: hello
              description: d
              run: {cmd: echo}
            - name: hello
              description: again
              run: {cmd: echo}
        """,
        "study[1].name", r"duplicate step name 'hello' \(first used by study\[0\]\)",
    ),
    "duplicate_depends_items": (
        """\
        study:
            - name: a
              description: d
              run: {cmd: echo}
            - name: b
              description: d
              run: {cmd: echo, depends: [a, a]}
        """,
        "study[1].run.depends", r"'a' is listed twice",
    ),
    "steps_sharing_a_directory": (
        """\
        study:
            - name: a b
              description: d
              run: {cmd: echo}
            - name: a_b
              description: d
              run: {cmd: echo}
        """,
        "study[1].name", r"steps 'a b' and 'a_b' would share the workspace directory 'a_b'",
    ),
    "params_of_different_lengths": (
        (STEP, """\
        global.parameters:
            A: {values: [1, 2], label: A.%%}
            B: {values: [1, 2, 3], label: B.%%}
        """),
        "global.parameters.B.values", r"has 3 values but 'A' has 2; .*",
    ),
    "label_without_value_marker": (
        (STEP, """\
        global.parameters:
            A: {values: [1, 2], label: A}
        """),
        "global.parameters.A.label", r"must contain '%%' .*",
    ),
    "param_with_a_name_key": (
        (STEP, """\
        global.parameters:
            A: {values: [1, 2], label: A.%%, name: alpha}
        """),
        "global.parameters.A.name", r"unknown key 'name' in parameter 'A' .*",
    ),
    "param_with_empty_values": (
        (STEP, """\
        global.parameters:
            A: {values: [], label: A.%%}
        """),
        "global.parameters.A.values", r"must be a non-empty list, not a list",
    ),
    "param_clashing_with_a_variable": (
        ("""\
        env:
            variables: {A: one}
        """, STEP, """\
        global.parameters:
            A: {values: [1], label: A.%%}
        """),
        "global.parameters.A", r"Variable name 'A' is already taken: .*",
    ),
    "label_clashing_with_a_variable": (
        ("""\
        env:
            variables: {A: one}
            labels: {A: two}
        """, STEP),
        "env.labels.A", r"Variable name 'A' is already taken: .*",
    ),
    "specroot_redefined": (
        ("""\
        env:
            variables: {SPECROOT: /x}
        """, STEP),
        "env.variables.SPECROOT", r"name 'SPECROOT' is reserved .*",
    ),
    "boolean_variable": (
        ("""\
        env:
            variables: {FLAG: true}
        """, STEP),
        "env.variables.FLAG", r"must be a non-empty string or a number, not a boolean \(True\)",
    ),
    "empty_variable": (
        ("""\
        env:
            variables: {X: ""}
        """, STEP),
        "env.variables.X", r"must be a non-empty string or a number, not an empty string",
    ),
    "unknown_env_key": (
        ("""\
        env:
            vars: {X: 1}
        """, STEP),
        "env.vars", r"unknown key 'vars' in env .*",
    ),
    "git_dependency_without_url": (
        ("""\
        env:
            dependencies:
                git: [{name: REPO, path: /tmp}]
        """, STEP),
        "env.dependencies.git[0].url", r"required key is missing",
    ),
    "git_dependency_with_tag_and_branch": (
        ("""\
        env:
            dependencies:
                git: [{name: REPO, path: /tmp, url: u, tag: t, branch: b}]
        """, STEP),
        "env.dependencies.git[0]", r"give at most one of tag, hash and branch",
    ),
    "missing_cmd": (
        """\
        study:
            - name: a
              description: d
              run: {depends: []}
        """,
        "study[0].run.cmd", r"required key 'cmd' is missing from study step 'a'",
    ),
    "unknown_step_key": (
        """\
        study:
            - name: a
              description: d
              shell: /bin/sh
              run: {cmd: echo}
        """,
        "study[0].shell", r"unknown key 'shell' in study step 'a'",
    ),
    "procs_not_a_number": (
        """\
        study:
            - name: a
              description: d
              run: {cmd: echo, procs: two}
        """,
        "study[0].run.procs", r"must be an integer >= 1 or exactly '\$\(VAR\)', not 'two'",
    ),
    "zero_nodes": (
        """\
        study:
            - name: a
              description: d
              run: {cmd: echo, nodes: 0}
        """,
        "study[0].run.nodes", r"must be an integer >= 1 .*",
    ),
    "resource_token_with_a_dot": (
        """\
        study:
            - name: a
              description: d
              run: {cmd: echo, "cores per task": $(P.label)}
        """,
        "study[0].run.cores per task", r"must be an integer >= 1 .*",
    ),
    "bad_priority": (
        """\
        study:
            - name: a
              description: d
              run: {cmd: echo, priority: urgent}
        """,
        "study[0].run.priority", r"must be one of HELD, .*",
    ),
    "bad_exclusive": (
        """\
        study:
            - name: a
              description: d
              run: {cmd: echo, exclusive: {allocation: maybe}}
        """,
        "study[0].run.exclusive.allocation", r"must be true, false or '\$\(VAR\)', not 'maybe'",
    ),
    "step_named_dotdot": (
        """\
        study:
            - name: ..
              description: d
              run: {cmd: echo}
        """,
        "study[0].name", r"step name '\.\.' would put the workspace outside its parent directory",
    ),
    "step_named_dot": (
        """\
        study:
            - name: "."
              description: d
              run: {cmd: echo}
        """,
        "study[0].name", r"step name '\.' is empty after sanitising, .*",
    ),
    "step_with_only_unsafe_characters": (
        """\
        study:
            - name: "???"
              description: d
              run: {cmd: echo}
        """,
        "study[0].name", r"step name '\?\?\?' is empty after sanitising, .*",
    ),
    "step_named_with_a_slash": (
        """\
        study:
            - name: ../../etc
              description: d
              run: {cmd: echo}
        """,
        "study[0].name", r"step name '\.\./\.\./etc' must not contain '/'",
    ),
    "step_named_logs": (
        """\
        study:
            - name: logs
              description: d
              run: {cmd: echo}
        """,
        "study[0].name", r"step name 'logs' would put the workspace onto the study's own "
        r"'logs' directory",
    ),
    "missing_description_name": (
        ("description: {description: d}\n", STEP),
        "description.name", r"required key is missing",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_SPECS), ids=list(BAD_SPECS))
def test_bad_spec_is_rejected_naming_the_field_and_problem(case, tmp_path):
    body, field, message = BAD_SPECS[case]
    header = not (body if isinstance(body, str) else body[0]).startswith("description")
    rejects(write(tmp_path, body, header=header), field, message)


def test_spec_error_is_a_config_error_with_a_one_line_message(tmp_path):
    path = write(tmp_path, "study: []\n")
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    assert "\n" not in str(info.value)


def test_malformed_yaml_is_reported_with_its_line(tmp_path):
    path = write(tmp_path, (STEP, "batch: [unclosed\ntroupe: {}\n"))
    # libyaml and the pure-Python parser word the problem differently; both name the place.
    rejects(path, "", r"malformed YAML at line 10, column 7: "
            r"(expected ',' or '\]', but got ':'|did not find expected ',' or '\]')")


def test_python_object_tag_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = write(tmp_path, (STEP, f'boom: !!python/object/apply:os.system ["touch {marker}"]\n'))
    rejects(path, "", r"YAML tag '!!python/object/apply:os.system' at line 9, column 7 is not "
            r"allowed: specs are loaded with yaml.safe_load, which builds only plain data")  # fmt: skip
    assert not marker.exists()


def test_anchors_and_merge_keys_still_work(tmp_path):
    path = write(tmp_path, """\
        user:
            base: &base {cmd: echo merged, procs: 2}
        study:
            - name: a
              description: d
              run:
                  <<: *base
                  restart: echo again
        """)  # fmt: skip
    run = load_spec(path).study[0].run
    assert ("echo merged", 2, "echo again") == (run.cmd, run.procs, run.restart)


def test_unknown_top_level_blocks_are_ignored_and_troupe_is_kept(tmp_path):
    path = write(tmp_path, (STEP, "merlin: {resources: {}}\ntroupe: {attempts: 3}\n"))
    spec = load_spec(path)
    assert {"attempts": 3} == spec.troupe
    assert {} == spec.batch


def test_run_keys_with_spaces_become_snake_case_fields(tmp_path):
    path = write(tmp_path, """\
        study:
            - name: a
              description: d
              run: {cmd: echo, "cores per task": 4, "bind gpus": none, exclusive: true,
                    priority: High, walltime: "01:00:00", nested: false}
        """)  # fmt: skip
    run = load_spec(path).study[0].run
    assert (4, "none", True, "High", "01:00:00", False) == (
        run.cores_per_task, run.bind_gpus, run.exclusive, run.priority, run.walltime, run.nested)


def test_missing_file_is_a_spec_error(tmp_path):
    path = tmp_path / "nope.yaml"
    rejects(path, "", r"cannot read spec: .*No such file.*")


@pytest.mark.parametrize(
    ("text", "message"),
    [("", r"the spec is empty"), ("- a\n- b\n", r"the top level must be a mapping, not a list")],
)
def test_a_spec_that_is_not_a_mapping_is_rejected(tmp_path, text, message):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    rejects(path, "", message)
