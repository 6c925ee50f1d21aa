"""``enginectl db`` against a real ``serve``: get and list every kind, delete with
cleanup of references, and the refusal to delete a running study without --force."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path


from tests.conftest import ENGINECTL, REPO, wait_for_path
from tests.engine_proc import Engine


def db(engine: Engine, *args: str) -> list | dict:
    result = engine.ctl("db", *args, "--json")
    assert 0 == result.returncode, result.stderr
    return json.loads(result.stdout)


def test_get_list_and_delete_with_cleanup(engine: Engine, tmp_path: Path) -> None:
    spec = REPO / "examples/sweep/sweep.yaml"
    ids = []
    for out in ("a", "b"):
        result = engine.ctl("submit", str(spec), "-o", str(tmp_path / out), "--wait")
        assert 0 == result.returncode, result.stderr
        ids.append(result.stdout.strip())
    assert {ids[0], ids[1]} == {s["study_id"] for s in db(engine, "list", "study")}
    [study] = db(engine, "get", "study", str(tmp_path / "a"))  # by its directory
    assert ids[0] == study["study_id"] and "FINISHED" == study["state"]
    assert "spec_text" not in study
    runs = db(engine, "list", "run", "--study", ids[0])
    assert 1 == len(runs) and "FINISHED" == runs[0]["state"]
    assert runs[0]["started"] <= runs[0]["ended"]
    [by_workspace] = db(engine, "get", "run", str(tmp_path / "a"))
    assert runs[0]["run_id"] == by_workspace["run_id"]
    steps = db(engine, "list", "step", "--study", ids[0])
    assert 5 == len(steps) and {"FINISHED"} == {s["state"] for s in steps}
    [step] = db(engine, "get", "step", f"{ids[0]}:{steps[0]['step']}")
    assert steps[0]["step"] == step["step"]
    [worker] = db(engine, "list", "worker")
    assert engine.proc is not None and engine.proc.pid == worker["pid"]
    # Deleting a study deletes its runs and steps, and nothing of the other study.
    assert {"deleted": 1} == db(engine, "delete", "study", ids[0])
    assert [ids[1]] == [s["study_id"] for s in db(engine, "list", "study")]
    assert {r["study_id"] for r in db(engine, "list", "run")} == {ids[1]}  # its run went
    assert 5 == len(db(engine, "list", "step", "--study", ids[1]))
    gone = engine.ctl("db", "get", "study", ids[0])
    assert 1 == gone.returncode and f"unknown study {ids[0]}" in gone.stderr
    missing = engine.ctl("db", "list", "step")
    assert 1 == missing.returncode and "give --study" in missing.stderr


def test_a_running_study_is_deleted_only_with_force(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    spec = tmp_path / "wait.yaml"
    spec.write_text(
        "description: {name: waits, description: w}\nstudy:\n"
        f"  - {{name: w, description: w, run: {{cmd: 'touch {tmp_path}/on; "
        f"while [ ! -e {gate} ]; do sleep 0.02; done'}}}}\n")
    result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "w"))
    assert 0 == result.returncode, result.stderr
    study_id = result.stdout.strip()
    wait_for_path(tmp_path / "on")
    refused = engine.ctl("db", "delete", "study", study_id)
    assert 1 == refused.returncode
    assert f"error: study {study_id} is running: cancel it first, or delete with --force" \
        in refused.stderr
    assert "RUNNING" == engine.status(study_id)["studies"][0]["state"]
    forced = engine.ctl("db", "delete", "study", study_id, "--force")
    assert 0 == forced.returncode, forced.stderr
    assert "deleted 1 study(s)" in forced.stdout
    assert [] == db(engine, "list", "study")
    listed = subprocess.run([*ENGINECTL, "list", "--state-dir", str(engine.state)],
                            capture_output=True, text=True, timeout=30)
    assert study_id not in listed.stdout
