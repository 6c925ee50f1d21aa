"""Bad input through the real CLI: one line naming file and field, exit 1, no traceback;
warnings for unresolved tokens; custom parameter generators end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.status import read_status
from tests.conftest import REPO, enginectl

HEAD = "description: {name: bad, description: bad spec}\n"
BAD = {
    "malformed": ("study: [\n  - name: a\n", "line"),
    "python_tag": (
        HEAD + "study:\n  - name: a\n    description: x\n    run:\n"
        "      cmd: !!python/object/apply:os.system ['touch /tmp/troupe-pwned']\n",
        "tag",
    ),
    "later_dep": (
        HEAD + "study:\n  - {name: a, description: x, run: {cmd: 'true', depends: [b]}}\n"
        "  - {name: b, description: x, run: {cmd: 'true'}}\n",
        "study[0].run.depends",
    ),
    "self_dep": (
        HEAD + "study:\n  - {name: a, description: x, run: {cmd: 'true', depends: [a]}}\n",
        "study[0].run.depends",
    ),
    "duplicate": (
        HEAD + "study:\n  - {name: a, description: x, run: {cmd: 'true'}}\n"
        "  - {name: a, description: y, run: {cmd: 'true'}}\n",
        "study[1].name",
    ),
    "escape": (HEAD + "study:\n  - {name: '..', description: x, run: {cmd: 'true'}}\n", "study[0].name"),
    "lengths": (
        HEAD + "study:\n  - {name: a, description: x, run: {cmd: 'echo $(P) $(Q)'}}\n"
        "global.parameters:\n  P: {values: [1, 2], label: P.%%}\n  Q: {values: [1], label: Q.%%}\n",
        "global.parameters.Q",
    ),
    "label": (
        HEAD + "study:\n  - {name: a, description: x, run: {cmd: 'echo $(P)'}}\n"
        "global.parameters:\n  P: {values: [1, 2], label: P}\n",
        "global.parameters.P.label",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec_is_one_line_naming_file_and_field(case: str, tmp_path: Path) -> None:
    body, field = BAD[case]
    spec = tmp_path / f"{case}.yaml"
    spec.write_text(body)
    result = enginectl("run", str(spec), "-o", str(tmp_path / "s"))
    assert 1 == result.returncode
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert 1 == len(lines), result.stderr
    assert lines[0].startswith(f"error: {spec}: ")
    assert field in lines[0]
    assert not Path("/tmp/troupe-pwned").exists()
    assert not (tmp_path / "s").exists()


def test_missing_spec_file_is_a_clear_error(tmp_path: Path) -> None:
    result = enginectl("validate", str(tmp_path / "nope.yaml"))
    assert 1 == result.returncode
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


def test_unresolved_token_is_a_warning_naming_step_and_token(tmp_path: Path) -> None:
    spec = tmp_path / "warn.yaml"
    spec.write_text(HEAD + "study:\n  - {name: a, description: x, run: {cmd: 'echo $(NOPE) > o.txt'}}\n")
    result = enginectl("run", str(spec), "-o", str(tmp_path / "s"))
    assert 0 == result.returncode, result.stderr
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert 1 == len(warnings)
    assert "'a'" in warnings[0] and "$(NOPE)" in warnings[0]


def test_custom_parameter_generator_drives_the_run(tmp_path: Path) -> None:
    pgen = tmp_path / "gen.py"
    pgen.write_text(
        "from maestrowf.datastructures.core import ParameterGenerator\n\n"
        "def get_custom_generator(env, **kwargs):\n"
        "    n = int(kwargs.get('COUNT', '2'))\n"
        "    p = ParameterGenerator()\n"
        "    p.add_parameter('X', list(range(n)), 'X.%%')\n"
        "    return p\n"
    )
    spec = tmp_path / "p.yaml"
    spec.write_text(HEAD + "study:\n  - {name: a, description: x, run: {cmd: 'echo $(X) > x.txt'}}\n")
    study = tmp_path / "s"
    result = enginectl("run", str(spec), "-o", str(study), "--pgen", str(pgen), "--pargs", "COUNT:3")
    assert 0 == result.returncode, result.stderr
    assert ["a_X.0", "a_X.1", "a_X.2"] == sorted(r["Step Name"] for r in read_status(study / "status.csv"))
    assert "2\n" == (study / "a" / "X.2" / "x.txt").read_text()
    assert (study / "gen.py").exists(), "the generator is kept with the study"


def test_pargs_without_pgen_is_refused(tmp_path: Path) -> None:
    result = enginectl("validate", str(REPO / "examples/hello/hello.yaml"), "--pargs", "A:1")
    assert 1 == result.returncode
    assert "--pgen" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "{tmp}"], "is a directory"),
    (["run", "--bogus", "x.yaml"], "No such option '--bogus'"),
    (["run"], "Missing argument 'SPEC'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["run", "x.yaml", "-t", "-3"], "Invalid value for '-t'"),
    (["status", "--state-dir", "{tmp}", "--bogus"], "No such option"),
    (["list", "--state", "BOGUS"], "'BOGUS' is not one of 'running', 'finished'"),
])
def test_usage_errors_are_one_line_and_exit_1_like_any_bad_input(
        tmp_path: Path, args: list[str], needle: str) -> None:
    result = enginectl(*(a.format(tmp=tmp_path) for a in args))
    assert 1 == result.returncode  # never 2: that is "the study failed"
    lines = result.stderr.strip().splitlines()
    assert 1 == len(lines), result.stderr
    assert lines[0].startswith("error: ") and needle in lines[0], lines[0]


def test_no_command_prints_the_help_and_exits_1() -> None:
    result = enginectl()
    assert 1 == result.returncode
    assert "Commands:" in result.stderr


def test_help_and_version_exit_0() -> None:
    assert 0 == enginectl("run", "--help").returncode
    assert 0 == enginectl("--version").returncode
