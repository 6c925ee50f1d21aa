"""Hostile specs: what a spec may make the engine do is bounded and checked at validation.

Each test names one hardening defect (control characters, alias bombs, path traversal,
workspace collisions, validation gaps) and failed on the code before it was fixed. Specs
are loaded with ``load_study``/``load_spec`` or through the real ``enginectl`` CLI.
"""

from __future__ import annotations

import datetime
import os
import time
from pathlib import Path

import pytest

from engine.errors import ConfigError, SpecError
from engine.spec import load_spec, load_study
from engine.spec.naming import contained_path
from tests.conftest import enginectl

NOW = datetime.datetime(2024, 5, 6, 7, 8, 9)
HEAD = "description: {name: hostile, description: a hostile spec}\n"


def spec(tmp_path: Path, body: str, head: str = HEAD) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(head + body)
    return path


def expand(path: Path, tmp_path: Path):
    return load_study(path, out_dir=str(tmp_path / "study"), now=NOW, cwd=str(tmp_path))


def refused(path: Path, tmp_path: Path, field: str) -> SpecError:
    with pytest.raises(SpecError) as info:
        expand(path, tmp_path)
    assert field == info.value.field, str(info.value)
    assert "\n" not in str(info.value)
    return info.value


ONE_STEP = "study:\n  - {name: a, description: x, run: {cmd: 'echo $(P)'}}\n"


# -- 1. control characters ----------------------------------------------------------------


def test_nul_in_a_parameter_value_is_refused_at_validation(tmp_path: Path) -> None:
    """It used to reach subprocess, which raised 'embedded null byte' and killed `run`."""
    path = spec(tmp_path, ONE_STEP + 'global.parameters:\n  P: {values: ["a\\0b", "c"], label: "P.%%"}\n')
    err = refused(path, tmp_path, "global.parameters.P.values[0]")
    assert "'a\\x00b'" in err.message


def test_newline_in_a_parameter_value_is_refused_at_validation(tmp_path: Path) -> None:
    path = spec(tmp_path, ONE_STEP + 'global.parameters:\n  P: {values: ["a\\nb", "c"], label: "P.%%"}\n')
    refused(path, tmp_path, "global.parameters.P.values[0]")


@pytest.mark.parametrize(
    ("body", "head", "field"),
    [
        ('study:\n  - {name: "a\\tb", description: x, run: {cmd: "true"}}\n', HEAD, "study[0].name"),
        ("study:\n  - {name: a, description: x, run: {cmd: 'echo $(P)'}}\n"
         'global.parameters:\n  "P\\x01": {values: [1], label: "P.%%"}\n', HEAD,
         'global.parameters.P\\x01'),
        ("study:\n  - {name: a, description: x, run: {cmd: 'echo $(P)'}}\n"
         'global.parameters:\n  P: {values: [1], label: "P.\\r%%"}\n', HEAD,
         "global.parameters.P.label"),
        ("study:\n  - {name: a, description: x, run: {cmd: 'true'}}\n",
         'description: {name: "evil\\nname", description: x}\n', "description.name"),
        ("env:\n  variables:\n    OUTPUT_PATH: \"out\\nerror: forged\"\n" + ONE_STEP.replace("$(P)", ""),
         HEAD, "env.variables.OUTPUT_PATH"),
        ('env:\n  variables:\n    "V\\0": x\n' + ONE_STEP.replace("$(P)", ""), HEAD,
         "env.variables.V\\x00"),
        ('env:\n  labels:\n    "L\\n": x\n' + ONE_STEP.replace("$(P)", ""), HEAD,
         "env.labels.L\\n"),
        ('study:\n  - {name: a, description: x, run: {cmd: "echo \\0 hi"}}\n', HEAD,
         "study[0].run.cmd"),
    ],
    ids=["step_name_tab", "param_name", "label_cr", "description_name", "output_path",
         "variable_name_nul", "env_label_name", "cmd_nul"],
)
def test_control_characters_in_names_and_paths_are_refused(
    tmp_path: Path, body: str, head: str, field: str
) -> None:
    refused(spec(tmp_path, body, head), tmp_path, field)


def test_a_multi_line_cmd_with_tabs_is_still_valid(tmp_path: Path) -> None:
    body = "study:\n  - {name: a, description: x, run: {cmd: \"echo one\\n\\techo two\\n\"}}\n"
    graph = expand(spec(tmp_path, body), tmp_path)
    assert "echo one\n\techo two\n" == graph.steps[0].cmd


def test_a_newline_in_a_name_cannot_forge_a_second_error_line(tmp_path: Path) -> None:
    """Names in error messages are escaped, so stderr holds exactly one line."""
    path = spec(tmp_path, 'study:\n  - {name: "a\\nerror: forged", description: x, run: {cmd: "true"}}\n'
                '  - {name: "a\\nerror: forged", description: x, run: {cmd: "true"}}\n')
    result = enginectl("validate", str(path), cwd=tmp_path)
    assert 1 == result.returncode
    assert 1 == len(result.stderr.splitlines()), result.stderr
    assert "\\n" in result.stderr and "Traceback" not in result.stderr


# -- 2. bounded work: alias bombs, file size, instances ---------------------------------------


def _alias_bomb() -> str:
    levels = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, 9):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    return "batch:\n" + "".join(f"  {line}\n" for line in levels)


def test_a_billion_laughs_alias_bomb_is_refused_fast_naming_the_limit(tmp_path: Path) -> None:
    body = _alias_bomb()
    assert len(body) < 800
    path = spec(tmp_path, body + ONE_STEP.replace("$(P)", ""))
    start = time.monotonic()
    with pytest.raises(SpecError, match=r"more than 1000000 YAML nodes.*TROUPE_MAX_YAML_NODES") as info:
        load_spec(path)
    assert time.monotonic() - start < 2.0
    assert "batch" in info.value.field


def test_a_recursive_alias_is_refused(tmp_path: Path) -> None:
    path = spec(tmp_path, "user: &loop [*loop]\n" + ONE_STEP.replace("$(P)", ""))
    with pytest.raises(SpecError, match=r"refers to itself"):
        load_spec(path)


def test_a_spec_file_over_the_size_limit_is_refused_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TROUPE_MAX_SPEC_BYTES", "1000")
    path = spec(tmp_path, ONE_STEP.replace("$(P)", "") + "# " + "x" * 2000 + "\n")
    with pytest.raises(SpecError, match=r"larger than 1000 bytes.*TROUPE_MAX_SPEC_BYTES"):
        load_spec(path)


def test_more_step_instances_than_max_instances_is_refused_and_the_limit_can_be_raised(
    tmp_path: Path,
) -> None:
    params = "global.parameters:\n  P: {values: [1, 2, 3, 4, 5], label: 'P.%%'}\n"
    path = spec(tmp_path, ONE_STEP + params + "troupe: {limits: {max_instances: 4}}\n")
    err = refused(path, tmp_path, "troupe.limits.max_instances")
    assert "more than 4 step instances" in err.message
    path = spec(tmp_path, ONE_STEP + params + "troupe: {limits: {max_instances: 5}}\n")
    assert 5 == len(expand(path, tmp_path).steps)


def test_max_instances_must_be_a_sane_integer(tmp_path: Path) -> None:
    path = spec(tmp_path, ONE_STEP.replace("$(P)", "") + "troupe: {limits: {max_instances: 0}}\n")
    refused(path, tmp_path, "troupe.limits.max_instances")


# -- 3. path traversal ---------------------------------------------------------------------


def test_a_dot_dot_study_name_cannot_write_its_log_outside_the_study_directory(tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    head = 'description: {name: "../../../../escaped_x", description: x}\n'
    path = spec(deep, "study:\n  - {name: s, description: x, run: {cmd: 'true'}}\n", head)
    result = enginectl("run", str(path), "-o", str(deep / "study"), cwd=deep)
    assert 0 == result.returncode, result.stderr
    outside = [p for p in tmp_path.rglob("*") if "study" not in p.relative_to(tmp_path).parts
               and p.is_file() and p != path]
    assert [] == outside
    assert (deep / "study" / "logs" / "........escaped_x.log").is_file()


def test_contained_path_sanitises_each_component_and_refuses_escape(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert os.path.join(root, "FAREWELL.So_long") == contained_path(root, "FAREWELL.So long")
    assert os.path.join(root, "lulesh sample1.log") == contained_path(
        root, "lulesh sample1.log", keep_spaces=True)
    assert os.path.join(root, "..etc", "passwd") == contained_path(root, "../etc", "passwd")
    for bad in ("..", ".", "/", ""):
        with pytest.raises(ConfigError, match=r"^path component"):
            contained_path(root, bad)


# -- 4. workspace collisions ----------------------------------------------------------------


def test_instances_whose_workspaces_would_collide_are_a_validation_error(tmp_path: Path) -> None:
    """'1/2', '12' and '1:2' all sanitise to the workspace 'P.12'."""
    path = spec(tmp_path, ONE_STEP + "global.parameters:\n  P: {values: ['1/2', '12', '1:2'], label: 'P.%%'}\n")
    err = refused(path, tmp_path, "study[0]")
    assert "'a_P.1/2' and 'a_P.12'" in err.message and "P.12" in err.message


# -- 5. validation gaps -----------------------------------------------------------------------


@pytest.mark.parametrize("walltime", ["3 minutes", "banana"])
def test_validate_rejects_walltimes_run_would_reject(tmp_path: Path, walltime: str) -> None:
    path = spec(tmp_path, f"study:\n  - {{name: a, description: x, run: {{cmd: 'true', walltime: '{walltime}'}}}}\n")
    refused(path, tmp_path, "study[0].run.walltime")
    result = enginectl("validate", str(path), cwd=tmp_path)
    assert 1 == result.returncode and "study[0].run.walltime" in result.stderr


def test_validate_rejects_an_undeclared_throttle_group(tmp_path: Path) -> None:
    path = spec(tmp_path, "study:\n  - {name: a, description: x, run: {cmd: 'true', group: g}}\n")
    result = enginectl("validate", str(path), cwd=tmp_path)
    assert 1 == result.returncode and "troupe.groups" in result.stderr, result.stderr


def test_a_name_too_long_for_a_file_name_is_refused(tmp_path: Path) -> None:
    long = "s" * 300
    path = spec(tmp_path, f"study:\n  - {{name: {long}, description: x, run: {{cmd: 'true'}}}}\n")
    err = refused(path, tmp_path, "study[0].name")
    assert "200 bytes" in err.message
    path = spec(tmp_path, ONE_STEP + f"global.parameters:\n  P: {{values: [{'v' * 250}], label: 'P.%%'}}\n")
    with pytest.raises(SpecError, match="200 bytes"):
        expand(path, tmp_path)


def test_a_5000_digit_integer_is_a_spec_error_not_a_traceback(tmp_path: Path) -> None:
    path = spec(tmp_path, ONE_STEP + f"global.parameters:\n  P: {{values: [{'9' * 5000}], label: 'P.%%'}}\n")
    with pytest.raises(SpecError, match=r"line 5, .*integer with 5000 characters is too large$"):
        expand(path, tmp_path)
    result = enginectl("validate", str(path), cwd=tmp_path)
    assert 1 == result.returncode and "Traceback" not in result.stderr
    assert 1 == len(result.stderr.splitlines())


@pytest.mark.parametrize(
    ("troupe", "field"),
    [
        ("{retry: {cap: 1.0e+400}}", "troupe.retry.cap"),
        ("{retry: {factor: .inf}}", "troupe.retry.factor"),
        (f"{{throttle: {10**400}}}", "troupe.throttle"),
        (f"{{kill_grace: {10**400}}}", "troupe.kill_grace"),
        (f"{{groups: {{g: {10**30}}}}}", "troupe.groups.g"),
    ],
)
def test_numeric_settings_beyond_sane_ranges_are_refused(tmp_path: Path, troupe: str, field: str) -> None:
    path = spec(tmp_path, ONE_STEP.replace("$(P)", "") + f"troupe: {troupe}\n")
    refused(path, tmp_path, field)


def test_a_huge_resource_count_is_refused(tmp_path: Path) -> None:
    path = spec(tmp_path, f"study:\n  - {{name: a, description: x, run: {{cmd: 'true', procs: {10**400}}}}}\n")
    refused(path, tmp_path, "study[0].run.procs")


def test_a_duplicate_top_level_key_is_refused_naming_key_and_line(tmp_path: Path) -> None:
    """A second global.parameters used to replace the first silently."""
    body = (ONE_STEP + "global.parameters:\n  P: {values: [1], label: 'P.%%'}\n"
            "global.parameters:\n  Q: {values: [1], label: 'Q.%%'}\n")
    err = refused(spec(tmp_path, body), tmp_path, "global.parameters")
    assert "duplicate key 'global.parameters'" in err.message and "line 6" in err.message


def test_a_duplicate_nested_key_is_refused(tmp_path: Path) -> None:
    body = "study:\n  - name: a\n    description: x\n    run:\n      cmd: 'true'\n      cmd: 'false'\n"
    err = refused(spec(tmp_path, body), tmp_path, "study[0].run.cmd")
    assert "line 7" in err.message


def test_merge_keys_may_still_be_overridden(tmp_path: Path) -> None:
    body = ("user:\n  base: &base {cmd: 'echo base', procs: 1}\n"
            "study:\n  - name: a\n    description: x\n    run:\n      <<: *base\n      cmd: 'echo own'\n")
    graph = expand(spec(tmp_path, body), tmp_path)
    assert "echo own" == graph.steps[0].cmd
