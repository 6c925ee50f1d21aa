"""Generated hostile specs: whatever the text, ``enginectl validate`` answers in one line.

Hypothesis builds Maestro-shaped documents (description, env, batch, study,
global.parameters, troupe, merlin) with hostile values mixed in (control characters,
``../``, long strings, huge and non-finite numbers, wrong types, duplicate keys, bounded
aliases, unknown keys, cycles, unknown steps, ``$(...)`` tokens, tags), and raw text that
is not YAML at all. Every case goes through ``enginectl validate`` in process
(``click.testing.CliRunner``); a sample through the installed command and, for specs that
are valid by construction, through ``enginectl run --dry``.

The rule enforced on every answer (``engine/cli.py``: warnings, then at most one error):

* the exit code is 0 or 1, and any exception is ``SystemExit``;
* stderr is empty or ends in a newline, and each of its lines starts with ``warning: `` or
  ``error: ``; with exit 1 there is exactly one ``error: `` line and it is the last; with
  exit 0 there is none;
* stderr holds no control character but those line ends (``printable`` escapes the rest,
  so a hostile name cannot forge a line), no ``Traceback`` and no ``internal error``;
* ``validate`` writes no file; each case ends within ``DEADLINE_MS`` (hypothesis) and a
  hang is cut at ``HANG_S`` (SIGALRM); the process's peak RSS grows by at most
  ``RSS_GROWTH_KB`` in one case (``ru_maxrss`` is a high-water mark, so this bounds only
  cases that push the peak up, which is the blow-up we look for).

Per run: 2,000 structured and 1,000 raw cases in process, 100 valid-by-construction specs
validated and dry-run, 100 structured cases through the installed command (3,200 in all,
about 80 s on two cores). With ``CI=true`` the examples are derandomized (the same cases
every run); locally they are random, and ``TROUPE_GENERATED_SCALE=5`` runs five times as
many. Nothing is written to a hypothesis database.
"""

from __future__ import annotations

import datetime
import os
import re
import resource
import shutil
import signal
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

import engine.runner  # noqa: F401  # imported here so no example pays for the first import
import engine.spec  # noqa: F401
from engine.cli import main
from tests.conftest import REPO, enginectl

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SCALE = float(os.environ.get("TROUPE_GENERATED_SCALE", "1"))  # more or fewer cases locally
DEADLINE_MS = 2000
HANG_S = 20
RSS_GROWTH_KB = 256 * 1024
CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


def _settings(examples: int, deadline: int | None = DEADLINE_MS) -> settings:
    return settings(
        max_examples=max(1, int(examples * SCALE)), derandomize=CI, database=None, deadline=deadline,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                               HealthCheck.large_base_example, HealthCheck.filter_too_much],
    )


# -- values ---------------------------------------------------------------------------------

STEPS = ["prep", "sim", "post", "plot", "a", "b"]
PARAMS = ["P", "Q"]
CONTROLS = [chr(c) for c in (*range(0x20), 0x7F, 0x85, 0x9F, 0x2028, 0x2029, 0xFEFF)]
TOKENS = ["$(P)", "$(Q)", "$(V)", "$(L)", "$(SPECROOT)", "$(OUTPUT_PATH)", "$(WORKSPACE)",
          "$(LAUNCHER)", "$(prep.workspace)", "$(sim.workspace)", "$(race.r)", "$(P.label)",
          "$(nope)", "$()", "$(", "$($(P))", "$(LAUNCHER)[2n, 4p]", "$(P)$(P)$(P)"]
PATHS = ["../", "../../../../etc/passwd", "..", ".", "/", "/tmp/x", "a/../../b", "~", "-rf",
         "$HOME", "*", "a b", "a:b", "a\\b"]

control = st.sampled_from(CONTROLS)
token = st.sampled_from(TOKENS)
path_piece = st.sampled_from(PATHS)
long_text = st.builds(lambda ch, n: ch * n, st.sampled_from(["s", "é", "𝔸", "_", "../"]),
                      st.sampled_from([199, 200, 201, 255, 256, 1000, 5000]))
piece = st.one_of(st.sampled_from(STEPS + PARAMS + ["x", "V", "L"]), control, token, path_piece,
                  st.text(max_size=8), long_text)
hostile_text = st.lists(piece, min_size=1, max_size=4).map("".join)
numbers = st.one_of(
    st.integers(-5, 5),
    st.sampled_from([2**31 - 1, 2**31, 2**63, -(2**63), 10**30, 10**400, -(10**400)]),
    st.floats(allow_nan=True, allow_infinity=True),
)
scalar = st.one_of(hostile_text, numbers, st.booleans(), st.none(),
                   st.sampled_from([b"\x00bytes", datetime.date(2024, 1, 1), {"set"}]))


class Pairs(list):  # type: ignore[type-arg]
    """A mapping as (key, value) pairs: YAML with duplicate or unhashable keys."""


class Dumper(yaml.SafeDumper):
    pass


Dumper.add_representer(Pairs, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data))
Dumper.add_representer(set, lambda d, data: d.represent_mapping("tag:yaml.org,2002:set",
                                                                {k: None for k in data}))

anything = st.recursive(
    scalar,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(hostile_text, kids, max_size=3),
    max_leaves=6,
)


class Chaos:
    """Draws a spec's parts: each is hostile with probability ``rate`` percent (0: never)."""

    def __init__(self, draw: st.DrawFn, rate: int) -> None:
        self.draw = draw
        self.rate = rate

    def roll(self) -> bool:
        return self.rate > 0 and self.draw(st.integers(0, 99)) < self.rate

    def pick(self, good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any] | None = None) -> Any:
        """Mostly ``good``; now and then ``bad`` (default: anything, often a wrong type)."""
        return self.draw(bad if bad is not None else anything) if self.roll() else self.draw(good)

    def keep(self, value: Any) -> Any:
        return self.pick(st.just(value))

    def mapping(self, items: dict[Any, Any]) -> Any:
        """``items``, now and then with an unknown, a duplicate or an odd key."""
        if not self.roll():
            return items
        kind = self.draw(st.integers(0, 2))
        if kind == 0:
            items[self.draw(hostile_text)] = self.draw(anything)
            return items
        if kind == 1 and items:
            key = self.draw(st.sampled_from(sorted(items, key=repr)))
            return Pairs([*items.items(), (key, self.draw(anything))])
        odd = self.draw(st.one_of(numbers, st.none(), st.booleans(), st.just(["list", "key"]),
                                  st.just(Pairs([("k", 1)]))))
        return Pairs([*items.items(), (odd, self.draw(scalar))])


# -- specs ----------------------------------------------------------------------------------

legal_name = st.text(alphabet=st.characters(categories=("L", "Nd"), max_codepoint=0x2FFFF),
                     min_size=1, max_size=12)
ascii_name = st.text(alphabet=string.ascii_letters + string.digits + "-_.", min_size=1, max_size=12)
legal_text = st.lists(st.one_of(legal_name, st.sampled_from(["../", " ", "-", "_", "\t", "\n"]),
                                st.sampled_from(["$(P)", "$(V)", "$(L)", "$(WORKSPACE)", "$(LAUNCHER)",
                                                 "$(SPECROOT)", "$(nope)"])),
                      min_size=1, max_size=6).map("".join)
CONDITIONS = ["count(sim_*.failed) >= 1e999", "fraction(a_*.completed) > nan", "a.completed and",
              "((((((((((a.completed))))))))))" * 50, "not " * 2000 + "a.completed", "*.completed",
              "a.exploded", "any(a)", "count(a_*.failed) > 99999999999999999999999"]
RUN_EXTRAS: list[tuple[str, st.SearchStrategy[Any], st.SearchStrategy[Any]]] = [
    ("walltime", st.sampled_from(["00:01:00", "1:00", 60]), st.one_of(hostile_text, numbers)),
    ("procs", st.integers(1, 64), numbers),
    ("nodes", st.integers(1, 4), numbers),
    ("restart", st.just("echo again"), hostile_text),
    ("priority", st.sampled_from(["HIGH", "low", 0.5]), hostile_text),
    ("exclusive", st.booleans(), st.one_of(hostile_text, numbers)),
    ("retry", st.just({"max_attempts": 2}), anything),
    ("restart_limit", st.integers(0, 3), numbers),
    ("group_by", st.nothing(), st.lists(hostile_text, max_size=2)),
    ("race", st.nothing(), hostile_text),
    ("group", st.nothing(), hostile_text),
    ("inputs", st.nothing(), anything),
]


@st.composite
def steps(draw: st.DrawFn, chaos: Chaos) -> list[Any]:
    names = draw(st.lists(st.sampled_from(STEPS), min_size=1, max_size=4, unique=not chaos.roll()))
    out = []
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        if chaos.roll():  # unknown steps, later steps (cycles), itself, funnels, junk
            deps += draw(st.lists(st.one_of(st.sampled_from(STEPS), st.sampled_from(STEPS).map(
                lambda s: s + "_*"), hostile_text), min_size=1, max_size=3))
        run: dict[str, Any] = {"cmd": chaos.pick(legal_text, hostile_text)}
        if deps or draw(st.booleans()):
            run["depends"] = chaos.keep(deps)
        if deps and draw(st.integers(0, 3)) == 0:
            run["when"] = chaos.pick(st.just(f"{deps[0]}.completed or not ({deps[0]}.failed)"),
                                     st.one_of(hostile_text, st.sampled_from(CONDITIONS)))
        for key, good, bad in RUN_EXTRAS:
            if draw(st.integers(0, 7)) == 0 and (chaos.rate or not good.is_empty):
                run[key] = chaos.pick(good, bad) if not good.is_empty else draw(bad)
        step = {"name": chaos.pick(st.just(name), hostile_text),
                "description": chaos.pick(legal_text, hostile_text), "run": chaos.mapping(run)}
        step["run"] = chaos.keep(step["run"])
        if chaos.roll():
            del step[draw(st.sampled_from(sorted(step)))]
        out.append(chaos.mapping(step))
    return out


@st.composite
def specs(draw: st.DrawFn, wild: bool = True) -> Any:
    """A Maestro-shaped document; with ``wild=False`` one that is valid by construction."""
    chaos = Chaos(draw, draw(st.sampled_from([2, 5, 10, 25, 60])) if wild else 0)
    spec: dict[Any, Any] = {}
    spec["description"] = chaos.keep(chaos.mapping({
        "name": chaos.pick(st.one_of(legal_name, legal_name.map(lambda n: "../" + n)), hostile_text),
        "description": chaos.pick(legal_text, hostile_text)}))
    if draw(st.booleans()):
        variables = {"V": chaos.pick(legal_name, st.one_of(hostile_text, numbers))}
        if chaos.roll():
            variables["OUTPUT_PATH"] = draw(st.one_of(path_piece, hostile_text))
        env: dict[str, Any] = {"variables": chaos.mapping(variables),
                               "labels": {"L": chaos.pick(legal_name, scalar)}}
        if chaos.roll():
            env["dependencies"] = {"paths": [{"name": draw(hostile_text), "path": draw(path_piece)}]}
        if chaos.roll():
            env["sources"] = draw(anything)
        spec["env"] = chaos.keep(chaos.mapping(env))
    if draw(st.booleans()):
        spec["batch"] = chaos.keep(chaos.mapping({
            "type": chaos.pick(st.just("local"), st.one_of(st.sampled_from(
                ["slurm", "flux", "lsf", "LOCAL"]), hostile_text)),
            "host": chaos.pick(legal_name, hostile_text)}))
    spec["study"] = chaos.keep(draw(steps(chaos)))
    if draw(st.booleans()):
        n = draw(st.integers(1, 4))
        values = chaos.pick(st.lists(st.one_of(st.integers(-10**9, 10**9), ascii_name),
                                     min_size=n, max_size=n, unique_by=lambda v: str(v).lower()),
                            st.lists(scalar, min_size=1, max_size=4))
        params: dict[str, Any] = {"P": chaos.mapping({"values": values,
                                                      "label": chaos.pick(st.just("P.%%"), hostile_text)})}
        if draw(st.booleans()):
            params["Q"] = {"values": chaos.keep(list(range(len(values)))), "label": "Q.%%"}
        spec["global.parameters"] = chaos.keep(chaos.mapping(params))
    if draw(st.booleans()):
        good = st.fixed_dictionaries({}, optional={
            "throttle": st.integers(0, 100), "kill_grace": st.floats(0, 60),
            "retry": st.fixed_dictionaries({"max_attempts": st.integers(1, 5),
                                            "factor": st.floats(1, 3)}),
            "limits": st.just({"max_instances": 1000}),
        })
        bad = st.dictionaries(st.sampled_from(["throttle", "throttles", "groups", "rlimit",
                                               "attempts", "retry", "kill_grace", "hw_limit",
                                               "races", "cache", "limits", "nope"]),
                              st.one_of(numbers, anything, st.just({"max_instances": 1})), max_size=3)
        spec["troupe"] = chaos.pick(good, bad)
    if chaos.roll():
        spec["merlin"] = draw(anything)
    if chaos.roll():  # shared nodes: the Dumper writes anchors and aliases
        shared = spec.get("study")
        spec["user"] = {"one": shared, "two": shared, "three": [shared, shared]}
    return chaos.keep(chaos.mapping(spec))


def alias_bomb(levels: int, width: int) -> str:
    lines = ["  a0: &a0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"  a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


@st.composite
def spec_texts(draw: st.DrawFn) -> bytes:
    """A wild spec dumped to YAML, then sometimes damaged or extended as text."""
    doc = draw(specs(wild=True))
    flow = draw(st.sampled_from([False, False, None, True]))
    text = yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=draw(st.booleans()),
                     default_flow_style=flow, width=draw(st.sampled_from([80, 20, 10**6])))
    roll = draw(st.integers(0, 14))
    if roll in (0, 1, 4) and (flow is not False or not isinstance(doc, (dict, Pairs))):
        roll = 2  # a block appended to a flow mapping is merely malformed
    if roll == 0:  # a bounded alias bomb (at most 10**9 nodes expanded, ~700 bytes)
        text += f"{draw(st.sampled_from(['user', 'batch', 'merlin']))}:\n" + alias_bomb(
            draw(st.integers(1, 9)), draw(st.integers(1, 10)))
    elif roll == 1:  # a duplicate top-level block
        text += draw(st.sampled_from(["study: []\n", "description: {name: x, description: y}\n",
                                      "global.parameters: {}\n", "env: [1]\n"]))
    elif roll == 2:  # damaged text
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.one_of(control, st.sampled_from(
            [":", "- ", "[", "{", "&x ", "*x", "!!", "!!python/object/apply:os.system [id]", "<<: *x",
             "\t", "%", "@", "`", "'", '"', "\n---\n", "\n...\n", "? "]), st.text(max_size=5))) + text[at:]
    elif roll == 3:  # truncated
        text = text[: draw(st.integers(0, len(text)))]
    elif roll == 4:  # huge numbers the Dumper cannot write
        text += f"troupe: {{throttle: {'9' * draw(st.sampled_from([4300, 4301, 5000, 20000]))}}}\n"
    encoding = draw(st.sampled_from(["utf-8"] * 18 + ["utf-16", "latin-1"]))
    return text.encode(encoding, "surrogatepass" if encoding == "utf-8" else "replace")


YAML_BITS = ["description:", "study:", "env:", "batch:", "global.parameters:", "troupe:",
             "merlin:", "name: a", "run:", "cmd: echo", "depends: [a]", "values: [1]",
             "label: P.%%", " ", "  ", "\n", "\t", "- ", "{", "}", "[", "]", ":", ",", "&a ", "*a",
             "<<: *a", "!!str ", "!!binary ", "!!set ", "!!omap ", "!!python/name:os.system ",
             "!foo ", "---", "...", "%YAML 1.1\n", "%TAG ! tag:x,2002:\n", "#", "'", '"', "|",
             ">-", "? ", "~", "null", ".inf", ".nan", "0x1F", "0o7", "1_000", "2001-12-14",
             "\\0", "\x00", "\ufeff", "\r", "\x85", "\u2028", "\U0001F600", "$(P)", "../"]
EXAMPLES = sorted((REPO / "examples").rglob("*.yaml"))

raw_texts = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300).map(lambda t: t.encode("utf-8", "surrogatepass")),
    st.lists(st.sampled_from(YAML_BITS), max_size=40).map(lambda b: "".join(b).encode()),
    st.sampled_from(["", "---", "---\n...\n", "# nothing\n", "~", "null", "[]", "{}", "42", "'x'",
                     "- a\n- b\n", "a: 1\n---\nb: 2\n", "!!binary aGk=", "!!set {a}", "2001-12-14",
                     "description: {name: x, description: y}\nstudy: ~\n", "\ufeff", "\x00",
                     "description:\n" + "  " * 5000 + "x", "[" * 10000, "{a: " * 3000,
                     "[" * 3000 + "]" * 3000, "a: " + "{b: " * 2000 + "c" + "}" * 2000]).map(str.encode),
    st.builds(lambda src, at, junk: src[:at] + junk + src[at:],
              st.sampled_from([p.read_bytes() for p in EXAMPLES] or [b""]),
              st.integers(0, 4000), st.binary(min_size=1, max_size=8)),
)


# -- running --------------------------------------------------------------------------------


class Hung(BaseException):
    """Raised by SIGALRM inside a case that ran past ``HANG_S`` (not an Exception, so the
    CLI's last line of defence cannot turn it into an error message)."""


def _alarm(signum: int, frame: Any) -> None:
    raise Hung(f"a case ran for more than {HANG_S} s")


@pytest.fixture(scope="module")
def box() -> Iterator[Path]:
    """A scratch directory: ``spec/`` holds the spec, ``cwd/`` is the working directory."""
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="troupe-gen-") as tmp:
        root = Path(tmp)
        (root / "spec").mkdir()
        (root / "cwd").mkdir()
        os.chdir(root / "cwd")
        previous = signal.signal(signal.SIGALRM, _alarm)
        try:
            yield root
        finally:
            signal.signal(signal.SIGALRM, previous)
            os.chdir(old)


def write(box: Path, data: bytes) -> Path:
    path = box / "spec" / "spec.yaml"
    path.write_bytes(data)
    return path


def invoke(*args: str) -> Result:
    """``enginectl ARGS`` in process, with a hang guard and the RSS bound."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    signal.alarm(HANG_S)
    try:
        result = CliRunner().invoke(main, list(args), env={"TROUPE_DEBUG": None})
    finally:
        signal.alarm(0)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown < RSS_GROWTH_KB, f"peak RSS grew by {grown} KiB in one case"
    return result


def check_answer(exit_code: int, stderr: str, exception: BaseException | None = None) -> None:
    """The CLI's error contract (see the module docstring)."""
    assert exception is None or isinstance(exception, SystemExit), repr(exception)
    assert exit_code in (0, 1), (exit_code, stderr)
    assert "Traceback" not in stderr and "internal error" not in stderr, stderr
    assert stderr == "" or stderr.endswith("\n"), repr(stderr)
    lines = stderr.split("\n")[:-1]
    assert not any(CONTROL.search(line) for line in lines), repr(stderr)
    assert all(line.startswith(("warning: ", "error: ")) for line in lines), repr(stderr)
    errors = [i for i, line in enumerate(lines) if line.startswith("error: ")]
    assert ([len(lines) - 1] if exit_code == 1 else []) == errors, repr(stderr)


def validate(box: Path, data: bytes, *extra: str) -> Result:
    path = write(box, data)
    result = invoke("validate", str(path), *extra)
    check_answer(result.exit_code, result.stderr, result.exception)
    assert [] == os.listdir(box / "cwd") and ["spec.yaml"] == os.listdir(box / "spec")
    return result


# -- the properties -------------------------------------------------------------------------


@_settings(2000)
@given(text=spec_texts(), out=st.booleans(), explain=st.booleans())
# Found by this test: a `when:` beside a `depends:` that is not a list.
@example(text=b"description: {name: n, description: d}\nstudy:\n- name: prep\n"
         b"  description: prep\n  run:\n    cmd: prep\n    depends: 1\n"
         b"    when: prep.completed\n", out=False, explain=False)
def test_generated_maestro_shaped_specs_are_answered_in_one_line(
    box: Path, text: bytes, out: bool, explain: bool
) -> None:
    extra = [*(["-o", str(box / "study")] if out else []), *(["--explain"] if explain else [])]
    result = validate(box, text, *extra)
    event(f"exit {result.exit_code}")  # --hypothesis-show-statistics: how many were valid


@_settings(1000)
@given(text=raw_texts)
def test_raw_text_that_is_barely_yaml_is_answered_in_one_line(box: Path, text: bytes) -> None:
    result = validate(box, text)
    if not text.strip(b" \t\r\n"):
        assert 1 == result.exit_code, result.stdout


@_settings(100, deadline=None)
@given(doc=specs(wild=False))
def test_specs_valid_by_construction_validate_and_dry_run_inside_their_directory(
    box: Path, doc: dict[str, Any]
) -> None:
    """Exotic but legal values (unicode names, ``../`` in text, tabs and newlines in a cmd,
    unresolved tokens) must not be refused, and a dry run writes only its study directory."""
    text = yaml.dump(doc, Dumper=Dumper, sort_keys=False, allow_unicode=True).encode()
    study = box / "study"
    shutil.rmtree(study, ignore_errors=True)  # a failed example may leave one
    result = validate(box, text, "-o", str(study))
    assert 0 == result.exit_code, result.stderr
    signal.alarm(HANG_S)
    try:
        dry = CliRunner().invoke(main, ["run", "--dry", str(box / "spec" / "spec.yaml"), "-o",
                                        str(study)], env={"TROUPE_DEBUG": None})
    finally:
        signal.alarm(0)
    assert dry.exception is None or isinstance(dry.exception, SystemExit), repr(dry.exception)
    assert 0 == dry.exit_code, dry.stderr
    *warnings, last = dry.stderr.splitlines()
    assert all(w.startswith("warning: ") for w in warnings), dry.stderr
    assert ": FINISHED in " in last and last.endswith(f" ({study})"), dry.stderr
    assert [] == os.listdir(box / "cwd") and {"cwd", "spec", "study"} == set(os.listdir(box))
    for path in study.rglob("*"):  # nothing links out of the study directory either
        assert path.resolve().is_relative_to(study.resolve()), path
    shutil.rmtree(study)


@_settings(100, deadline=None)
@given(text=spec_texts())
def test_the_installed_command_gives_the_same_answer_as_the_in_process_one(
    box: Path, text: bytes
) -> None:
    inproc = validate(box, text)
    real = enginectl("validate", str(box / "spec" / "spec.yaml"), cwd=box / "cwd", timeout=60,
                     env={"TROUPE_DEBUG": ""})
    check_answer(real.returncode, real.stderr)
    assert (inproc.exit_code, inproc.stderr) == (real.returncode, real.stderr)
