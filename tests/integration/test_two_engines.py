"""Two ``serve`` engines on one bus: a submit is taken by exactly one of them (the API's
queue group), and a cancel reaches the engine that hosts the study, whichever engine
the request reached first. A real nats-server, two real engines."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import wait_for_path
from tests.engine_proc import Engine


def test_one_submit_makes_one_study_and_cancel_reaches_its_host(
        nats_server: str, tmp_path: Path) -> None:
    engines = [Engine(tmp_path / name, "--nats-url", nats_server, "--drain-timeout", "5").start()
               for name in ("e1", "e2")]
    try:
        gate = tmp_path / "gate"
        spec = tmp_path / "wait.yaml"
        spec.write_text(
            "description: {name: waits, description: w}\nstudy:\n"
            f"  - {{name: w, description: w, run: {{cmd: 'touch {tmp_path}/on; "
            f"while [ ! -e {gate} ]; do sleep 0.02; done'}}}}\n")
        ids = []
        for i in range(4):  # each submit is taken by one engine: no 'directory exists'
            result = engines[0].ctl("submit", str(spec), "-o", str(tmp_path / f"s{i}"))
            assert 0 == result.returncode, result.stderr
            ids.append(result.stdout.strip())
        assert 4 == len(set(ids))
        wait_for_path(tmp_path / "on")
        for i, study_id in enumerate(ids):  # through either engine: the host answers
            cancel = engines[i % 2].ctl("cancel", study_id)
            assert 0 == cancel.returncode, cancel.stderr
        for study_id in ids:
            assert 3 == engines[0].ctl("watch", study_id).returncode
    finally:
        for engine in engines:
            engine.stop()


def test_a_standby_engine_takes_over_the_studies_of_an_engine_that_died(
        nats_server: str, tmp_path: Path) -> None:
    import json

    from tests.ledger import ledger_cmd, read_ledger

    engines = {name: Engine(tmp_path / name, "--nats-url", nats_server, "--drain-timeout", "5")
               .start() for name in ("e1", "e2")}
    try:
        gate, ledger = tmp_path / "gate", tmp_path / "ledger"
        body = ledger_cmd(ledger, f"touch {tmp_path}/on; while [ ! -e {gate} ]; do sleep 0.02; "
                                  "done").replace("\n", "\n        ")
        spec = tmp_path / "wait.yaml"
        spec.write_text(
            "description: {name: waits, description: w}\nstudy:\n"
            f"  - name: w\n    description: w\n    run:\n      cmd: |\n        {body}\n"
            "  - {name: after, description: a, run: {cmd: 'echo after', depends: [w]}}\n")
        result = engines["e1"].ctl("submit", str(spec), "-o", str(tmp_path / "s"))
        assert 0 == result.returncode, result.stderr
        study_id = result.stdout.strip()
        wait_for_path(tmp_path / "on")
        got = engines["e1"].ctl("db", "get", "study", study_id, "--json")
        host = json.loads(got.stdout)[0]["host"]
        ids = {name: (e.state / "engine.id").read_text().strip() for name, e in engines.items()}
        [dead] = [name for name, engine_id in ids.items() if engine_id == host]
        [standby] = [name for name in engines if name != dead]
        engines[dead].kill()  # SIGKILL: its lease runs out; its step's process goes on
        gate.touch()
        watched = engines[standby].ctl("watch", study_id, timeout=120)
        assert 0 == watched.returncode, watched.stderr
        got = engines[standby].ctl("db", "get", "study", study_id, "--json")
        assert ids[standby] == json.loads(got.stdout)[0]["host"]
        runs = [e for e in read_ledger(ledger) if e.step == "w"]
        assert 1 == sum(1 for e in runs if e.end is None)  # started once, never twice
    finally:
        for engine in engines.values():
            engine.stop()
