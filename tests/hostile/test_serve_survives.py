"""One ``enginectl serve`` takes every named hostile spec of ``test_spec_defects.py`` from a
client and refuses each in one line, while a study submitted before them runs on, ends
FINISHED, and the engine keeps answering ``list``. Submissions go through the real
``enginectl submit`` (a subprocess), as a user's would."""

from __future__ import annotations

import json
import time
from pathlib import Path


from tests.engine_proc import Engine
from tests.hostile.test_spec_defects import HEAD, ONE_STEP, _alias_bomb

STEP = ONE_STEP.replace("$(P)", "")
#: (name, spec text, a fragment the error must contain): one per defect family.
HOSTILE = [
    ("nul_value", HEAD + ONE_STEP + 'global.parameters:\n  P: {values: ["a\\0b", "c"], label: "P.%%"}\n',
     "global.parameters.P.values[0]"),
    ("alias_bomb", HEAD + _alias_bomb() + STEP, "TROUPE_MAX_YAML_NODES"),
    ("traversal_step_name", HEAD + "study:\n  - {name: '../../etc', description: x, run: {cmd: 'true'}}\n",
     "study[0].name"),
    ("colliding_workspaces", HEAD + ONE_STEP + "global.parameters:\n  P: {values: ['1/2', '12', '1:2'], label: 'P.%%'}\n",
     "would share the workspace"),
    ("huge_number", HEAD + ONE_STEP + f"global.parameters:\n  P: {{values: [{'9' * 5000}], label: 'P.%%'}}\n",
     "is too large"),
    ("duplicate_keys", HEAD + ONE_STEP + "global.parameters:\n  P: {values: [1], label: 'P.%%'}\n"
     "global.parameters:\n  Q: {values: [1], label: 'Q.%%'}\n", "duplicate key 'global.parameters'"),
    ("newline_in_name", HEAD + 'study:\n  - {name: "a\\nerror: forged", description: x, run: {cmd: "true"}}\n',
     "study[0].name"),
    ("bad_walltime", HEAD + "study:\n  - {name: a, description: x, run: {cmd: 'true', walltime: banana}}\n",
     "study[0].run.walltime"),
    ("over_long_name", HEAD + f"study:\n  - {{name: {'s' * 300}, description: x, run: {{cmd: 'true'}}}}\n",
     "200 bytes"),
    ("control_in_description", 'description: {name: "evil\\nname", description: x}\n' + STEP,
     "description.name"),
    ("huge_setting", HEAD + STEP + f"troupe: {{throttle: {10**400}}}\n", "troupe.throttle"),
    ("dependency_cycle", HEAD + "study:\n  - {name: a, description: x, run: {cmd: 'true', depends: [b]}}\n"
     "  - {name: b, description: x, run: {cmd: 'true', depends: [a]}}\n", "dependency cycle"),
    ("python_tag", HEAD + "user: !!python/object/apply:os.system ['touch pwned']\n" + STEP,
     "is not allowed"),
    ("not_a_mapping", "- just\n- a list\n", "must be a mapping"),
    ("empty", "", "the spec is empty"),
]


def wait_for_step_state(engine: Engine, study_id: str, state: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        steps = {s["step"]: s["state"] for s in engine.status(study_id)["steps"]}
        if set(steps.values()) == {state}:
            return
        assert time.monotonic() < deadline, steps
        time.sleep(0.1)


def test_serve_refuses_every_named_hostile_spec_in_one_line_and_its_neighbour_finishes(
    engine: Engine, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    neighbour = tmp_path / "neighbour.yaml"
    neighbour.write_text(
        "description: {name: neighbour, description: waits for the test}\nstudy:\n"
        "  - name: wait\n    description: runs until the file appears\n    run:\n"
        f"      cmd: while [ ! -f {go} ]; do sleep 0.05; done; echo done > out.txt\n"
    )
    sub = engine.ctl("submit", str(neighbour), "-o", str(tmp_path / "neighbour"))
    assert 0 == sub.returncode, sub.stderr
    study_id = sub.stdout.strip()
    wait_for_step_state(engine, study_id, "RUNNING")

    for name, text, fragment in HOSTILE:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        result = engine.ctl("submit", str(path), "-o", str(tmp_path / name), timeout=60)
        assert 1 == result.returncode, (name, result.stdout, result.stderr)
        assert "" == result.stdout, name  # no study id: nothing was created
        assert 1 == len(result.stderr.splitlines()), (name, result.stderr)
        assert result.stderr.startswith("error: ") and fragment in result.stderr, (name, result.stderr)
        assert "Traceback" not in result.stderr and "internal error" not in result.stderr
        assert not (tmp_path / name).exists(), name
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()

    assert engine.proc is not None and engine.proc.poll() is None, "the engine died"
    wait_for_step_state(engine, study_id, "RUNNING")  # the neighbour is still at work
    listed = engine.ctl("list", "--json")
    assert 0 == listed.returncode, listed.stderr
    studies = json.loads(listed.stdout)["studies"]
    assert [(study_id, "RUNNING")] == [(s["study_id"], s["state"]) for s in studies]

    go.touch()
    watched = engine.ctl("watch", study_id, timeout=120)
    assert 0 == watched.returncode, watched.stderr
    assert "FINISHED" == engine.status(study_id)["studies"][0]["state"]
    assert "done\n" == (tmp_path / "neighbour" / "wait" / "out.txt").read_text()
    listed = engine.ctl("list", "--state", "finished")
    assert 0 == listed.returncode and study_id in listed.stdout, listed.stderr
