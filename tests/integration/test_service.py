"""``enginectl serve`` and its clients: submit, status, list, watch, cancel, restart,
events, two studies side by side, and access control."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tests.conftest import (
    ENGINECTL,
    REPO,
    claimed_pid,
    enginectl,
    wait_for_exit_recorded,
)
from tests.engine_proc import Engine


def test_submit_wait_then_status_list_and_events(engine: Engine, tmp_path: Path) -> None:
    result = engine.ctl("submit", str(REPO / "examples/sweep/sweep.yaml"), "-o",
                        str(tmp_path / "sweep"), "--wait")
    assert 0 == result.returncode, result.stderr
    study_id = result.stdout.strip()
    status = engine.status(study_id)
    assert "FINISHED" == status["studies"][0]["state"]
    assert {"FINISHED"} == {s["state"] for s in status["steps"]}
    assert 5 == len(status["steps"])
    listed = engine.ctl("list", "--state", "finished")
    assert study_id in listed.stdout
    events = [json.loads(line) for line in engine.ctl("events", study_id).stdout.splitlines()]
    assert "study_started" == events[0]["type"] and "study_ended" == events[-1]["type"]
    assert 5 * 4 == sum(1 for e in events if e["type"] == "step_state_changed")
    assert (tmp_path / "sweep" / "gather" / "all_greetings.txt").exists()


def test_unreachable_engine_is_reported_quickly(tmp_path: Path) -> None:
    result = enginectl("status", "--state-dir", str(tmp_path / "nothing"), timeout=10)
    assert 1 == result.returncode
    assert "no engine found" in result.stderr


def test_a_study_is_named_by_prefix_name_or_directory(engine: Engine, tmp_path: Path) -> None:
    spec = REPO / "examples/hello/hello.yaml"
    ids = []
    for out in ("h1", "h2"):
        result = engine.ctl("submit", str(spec), "-o", str(tmp_path / out), "--wait")
        assert 0 == result.returncode, result.stderr
        ids.append(result.stdout.strip())
    for ref, want in ((ids[0][:-2], ids[0]), (str(tmp_path / "h2"), ids[1]),
                      (ids[1], ids[1])):
        status = engine.status(ref)
        assert want == status["studies"][0]["study_id"], ref
    events = engine.ctl("events", ids[0][:-1])
    assert 0 == events.returncode and "study_ended" in events.stdout
    ambiguous = engine.ctl("status", "hello")  # the name of both
    assert 1 == ambiguous.returncode
    assert "ambiguous study 'hello': 2 match:" in ambiguous.stderr
    assert ids[0] in ambiguous.stderr and ids[1] in ambiguous.stderr


def test_verbs_on_an_unknown_study_are_one_error_line_and_exit_1(engine: Engine) -> None:
    for verb in ("cancel", "restart", "status", "events", "watch"):
        result = engine.ctl(verb, "no-such-study")
        assert 1 == result.returncode, (verb, result.stderr)
        assert result.stderr.startswith("error: ") and 1 == len(result.stderr.splitlines()), (
            verb, result.stderr)


def test_serve_says_it_is_ready_and_a_gone_engine_is_named_by_its_pid(
        engine: Engine) -> None:
    assert engine.proc is not None
    pid = engine.proc.pid
    said = engine.log.read_text()
    assert f"troupe engine ready (pid {pid}): NATS at nats://127.0.0.1:" in said
    assert f"through {engine.state / 'client.json'}" in said
    engine.kill()
    result = engine.ctl("list")
    assert 1 == result.returncode
    assert f"error: no engine is running (last seen pid {pid};" in result.stderr


def test_client_without_credentials_is_refused(engine: Engine) -> None:
    url = json.loads((engine.state / "client.json").read_text())["url"]
    for args in (["list"], ["status", "x"], ["cancel", "x"]):
        result = enginectl(*args, "--nats-url", url, timeout=10)
        assert 1 == result.returncode
        assert "Authorization Violation" in result.stderr
    assert 0o600 == (engine.state / "client.json").stat().st_mode & 0o777


def _waiting_spec(path: Path, gate: Path, name: str) -> Path:
    path.write_text(
        f"description: {{name: {name}, description: waits for a gate}}\n"
        "study:\n"
        f"  - {{name: sim, description: s, run: {{cmd: 'while [ ! -e {gate} ]; do sleep 0.02; done; echo $(X)'}}}}\n"
        "  - {name: post, description: p, run: {cmd: 'echo post', depends: [sim]}}\n"
        "  - {name: other, description: o, run: {cmd: 'echo other'}}\n"
        "global.parameters:\n  X: {values: [1, 2], label: X.%%}\n"
    )
    return path


def test_two_studies_from_two_clients_run_side_by_side(engine: Engine, tmp_path: Path) -> None:
    gate_a, gate_b = tmp_path / "gate_a", tmp_path / "gate_b"
    spec_a = _waiting_spec(tmp_path / "a.yaml", gate_a, "alpha")
    spec_b = _waiting_spec(tmp_path / "b.yaml", gate_b, "beta")
    clients = [
        subprocess.Popen([*ENGINECTL, "submit", str(spec), "-o", str(tmp_path / out),
                          "--throttle", "0", "--state-dir", str(engine.state)],
                         stdout=subprocess.PIPE, text=True)
        for spec, out in ((spec_a, "sa"), (spec_b, "sb"))
    ]
    id_a, id_b = (c.communicate(timeout=30)[0].strip() for c in clients)
    assert id_a and id_b and id_a != id_b
    running = engine.ctl("list", "--state", "RUNNING")
    assert id_a in running.stdout and id_b in running.stdout
    # Cancel alpha's simulations: they and their descendants, not 'other'.
    cancel = engine.ctl("cancel", id_a, "--step", "sim_*")
    assert 0 == cancel.returncode, cancel.stderr
    watch_a = engine.ctl("watch", id_a)
    assert 3 == watch_a.returncode, watch_a.stderr
    steps_a = {s["step"]: s["state"] for s in engine.status(id_a)["steps"]}
    assert {"sim_X.1": "CANCELLED", "sim_X.2": "CANCELLED", "post_X.1": "CANCELLED",
            "post_X.2": "CANCELLED", "other": "FINISHED"} == steps_a
    # Beta was untouched; let it finish.
    assert "RUNNING" == engine.status(id_b)["studies"][0]["state"]
    gate_b.touch()
    assert 0 == engine.ctl("watch", id_b).returncode
    # Restart alpha: its FINISHED step is kept, the cancelled ones run again.
    gate_a.touch()
    assert 0 == engine.ctl("restart", id_a).returncode
    assert 0 == engine.ctl("watch", id_a).returncode
    after = engine.status(id_a)["steps"]
    assert {"FINISHED"} == {s["state"] for s in after}
    other = next(s for s in after if s["step"] == "other")
    assert 1 == other["attempt"], "a FINISHED step is not run again by restart"


def test_bad_spec_submission_is_one_line_and_nothing_is_created(engine: Engine, tmp_path: Path) -> None:
    spec = tmp_path / "bad.yaml"
    spec.write_text("description: {name: b, description: b}\nstudy:\n"
                    "  - {name: a, description: a, run: {cmd: 'true', depends: [nope]}}\n")
    result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "s"))
    assert 1 == result.returncode
    assert 1 == len(result.stderr.strip().splitlines())
    assert "study[0].run.depends" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "s").exists()


def test_graceful_stop_exits_zero_and_the_next_engine_finishes_the_study(tmp_path: Path) -> None:
    eng = Engine(tmp_path / "state", "--drain-timeout", "1").start()
    gate = tmp_path / "gate"
    try:
        spec = _waiting_spec(tmp_path / "g.yaml", gate, "graceful")
        study_id = eng.ctl("submit", str(spec), "-o", str(tmp_path / "s"),
                           "--throttle", "0").stdout.strip()
        wait_for_exit_recorded(tmp_path / "s" / "other")
        assert 0 == eng.terminate()
        for x in (1, 2):  # the interrupted jobs were stopped, not left running
            pid = claimed_pid(tmp_path / "s" / "sim" / f"X.{x}")
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1][:3]
        gate.touch()
        eng.start()
        assert 0 == eng.ctl("watch", study_id).returncode
        final = eng.status(study_id)["steps"]
        assert {"FINISHED"} == {s["state"] for s in final}
        other = next(s for s in final if s["step"] == "other")
        assert 1 == other["attempt"], "a FINISHED step never runs again"
        sims = [s for s in final if s["step"].startswith("sim")]
        assert [2, 2] == [s["attempt"] for s in sims], "interrupted steps ran again, once"
    finally:
        eng.stop()



def test_every_client_command_fails_fast_when_no_engine_answers(nats_server: str) -> None:
    import time

    for args in (["list"], ["status", "x"], ["watch", "x"], ["cancel", "x"], ["restart", "x"]):
        started = time.monotonic()
        result = enginectl(*args, "--nats-url", nats_server, timeout=15)
        assert time.monotonic() - started < 5.0 + 1.0  # interpreter start included
        assert 1 == result.returncode, args
        assert "enginectl serve" in result.stderr and "Traceback" not in result.stderr


def test_race_winner_is_known_to_steps_submitted_after_an_engine_restart(
    engine: Engine, tmp_path: Path
) -> None:
    go = tmp_path / "go"
    spec = tmp_path / "race.yaml"
    spec.write_text(
        "description: {name: racer, description: r}\nstudy:\n"
        "  - name: solver\n    description: two solvers race\n    run:\n      cmd: |\n"
        "        if [ $(ALGO) = quick ]; then echo quick > answer.txt; exit 0; fi\n"
        "        sleep 300\n"
        "      race: solve\n"
        "  - name: gate\n    description: holds the report back\n    run:\n"
        f"      cmd: while [ ! -f {go} ]; do sleep 0.05; done\n"
        "  - name: report\n    description: uses the winner\n    run:\n"
        "      cmd: cat $(race.solve)/answer.txt > report.txt\n"
        "      depends: [gate]\n"
        "global.parameters:\n  ALGO: {values: [quick, slow], label: ALGO.%%}\n"
    )
    study = tmp_path / "study"
    sub = engine.ctl("submit", str(spec), "-o", str(study), "--throttle", "0")
    assert 0 == sub.returncode, sub.stderr
    study_id = sub.stdout.strip()
    deadline = time.monotonic() + 60
    while True:  # the race is decided: the slow solver was cancelled
        steps = {s["step"]: s["state"] for s in engine.status(study_id)["steps"]}
        if steps.get("solver_ALGO.slow") == "CANCELLED":
            break
        assert time.monotonic() < deadline, steps
        time.sleep(0.1)
    engine.kill()
    engine.start()
    go.touch()
    watched = engine.ctl("watch", study_id, timeout=120)
    assert 0 == watched.returncode, watched.stderr
    assert "quick\n" == (study / "report" / "report.txt").read_text()


def test_submit_reuse_runs_only_the_edited_step_and_a_restart_keeps_the_cached_ones(
    engine: Engine, tmp_path: Path
) -> None:
    from tests.integration.test_conditions_run import _memo_spec, states
    from tests.ledger import read_ledger

    ledger = tmp_path / "ledger"
    spec = _memo_spec(tmp_path / "m.yaml", ledger, "echo b1 > out.txt")
    first = tmp_path / "first"
    done = engine.ctl("submit", str(spec), "-o", str(first), "--wait")
    assert 0 == done.returncode, done.stderr
    ledger.unlink()
    _memo_spec(spec, ledger, "echo b2 > out.txt")  # fix one step
    second = tmp_path / "second"
    again = engine.ctl("submit", str(spec), "-o", str(second), "--reuse", str(first), "--wait")
    assert 0 == again.returncode, again.stderr
    assert {"b", "c"} == {e.step for e in read_ledger(ledger)}, "only b and its descendant ran"
    assert {"a": "CACHED", "b": "FINISHED", "c": "FINISHED", "d": "CACHED"} == states(second)
    assert "b2\n" == (second / "c" / "out.txt").read_text()
    # The cached steps are final in the store: restarting the study runs nothing again.
    study_id = again.stdout.strip().splitlines()[0]
    steps = {s["step"]: s["state"] for s in engine.status(study_id)["steps"]}
    assert {"a": "CACHED", "d": "CACHED"} == {k: v for k, v in steps.items() if k in "ad"}
    bad = engine.ctl("submit", str(spec), "--reuse", str(tmp_path))
    assert 1 == bad.returncode and "no cache record" in bad.stderr


def test_submit_no_cache_reuses_nothing(engine: Engine, tmp_path: Path) -> None:
    from tests.integration.test_conditions_run import _memo_spec
    from tests.ledger import read_ledger

    ledger = tmp_path / "ledger"
    spec = _memo_spec(tmp_path / "m.yaml", ledger, "echo b1 > out.txt")
    first = tmp_path / "first"
    assert 0 == engine.ctl("submit", str(spec), "-o", str(first), "--wait").returncode
    ledger.unlink()
    third = tmp_path / "third"
    result = engine.ctl("submit", str(spec), "-o", str(third), "--reuse", str(first),
                        "--no-cache", "--wait")
    assert 0 == result.returncode, result.stderr
    assert {"a", "b", "c", "d"} == {e.step for e in read_ledger(ledger)}
