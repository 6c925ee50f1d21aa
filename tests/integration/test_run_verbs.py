"""Every verb on a study of ``enginectl run``: status, events, throttle and cancel by its
directory (through the run's own server, ``engine.runapi``), and Maestro's own
``maestro cancel DIR`` (its ``.cancel.lock``). Real processes, the real maestrowf."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from engine.status import read_status
from tests.conftest import ENGINECTL, alive, enginectl, wait_for_path
from tests.ledger import ledger_cmd, read_ledger

SPEC = """
description: {{name: verbs, description: a long step and its child}}
study:
  - name: long
    description: waits for a gate
    run: {{cmd: "touch {tmp}/started; while [ ! -e {tmp}/gate ]; do sleep 0.02; done"}}
  - name: after
    description: after it
    run: {{cmd: "echo after", depends: [long]}}
"""


def start(tmp_path: Path) -> tuple[subprocess.Popen[str], Path]:
    spec = tmp_path / "verbs.yaml"
    spec.write_text(SPEC.format(tmp=tmp_path))
    study = tmp_path / "study"
    proc = subprocess.Popen([*ENGINECTL, "run", str(spec), "-o", str(study)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for_path(tmp_path / "started", timeout=60)
    wait_for_path(study / "meta" / "client.json", timeout=30)
    return proc, study


def states(study: Path) -> dict[str, str]:
    return {r["Step Name"]: r["State"] for r in read_status(study / "status.csv")}


def test_a_run_study_answers_status_events_throttle_and_cancel_by_its_directory(
        tmp_path: Path) -> None:
    proc, study = start(tmp_path)
    try:
        assert 0o600 == (study / "meta" / "client.json").stat().st_mode & 0o777
        events = enginectl("events", str(study))
        assert 0 == events.returncode, events.stderr
        assert "study_started" == json.loads(events.stdout.splitlines()[0])["type"]
        throttled = enginectl("throttle", str(study), "1")
        assert 0 == throttled.returncode, throttled.stderr
        assert "throttle global = 1" in throttled.stdout
        cancel = enginectl("cancel", str(study), "--step", "long")
        assert 0 == cancel.returncode, cancel.stderr
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 3 == proc.returncode, err
    assert {"long": "CANCELLED", "after": "CANCELLED"} == states(study)
    gone = enginectl("events", str(study))  # the run is over: its server is gone
    assert 1 == gone.returncode
    assert "error: the 'enginectl run' of this study is over" in gone.stderr


def test_maestro_cancel_cancels_a_run_study(tmp_path: Path) -> None:
    proc, study = start(tmp_path)
    maestro = Path(sys.executable).parent / "maestro"
    try:
        subprocess.run([str(maestro), "cancel", str(study), "-y"], check=True,
                       capture_output=True, timeout=60)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert 3 == proc.returncode, err
    assert {"long": "CANCELLED", "after": "CANCELLED"} == states(study)
    assert not (study / ".cancel.lock").exists()


CHAIN = """
description: {{name: chain, description: three steps, the second waits for a gate}}
study:
  - name: one
    description: first
    run:
      cmd: |
{one}
  - name: two
    description: waits
    run:
      depends: [one]
      cmd: |
{two}
  - name: three
    description: last
    run:
      depends: [two]
      cmd: |
{three}
"""


def _indent(text: str) -> str:
    return "\n".join(f"        {line}" for line in text.splitlines())


def test_a_killed_run_is_restarted_in_its_directory_and_runs_no_finished_step_again(
        tmp_path: Path) -> None:
    ledger = tmp_path / "ledger"
    gate = tmp_path / "gate"
    two = ledger_cmd(ledger, f"echo $$ > {tmp_path}/two.$TROUPE_ATTEMPT.pid\n"
                             f"while [ ! -e {gate} ]; do sleep 0.02; done")
    spec = tmp_path / "chain.yaml"
    spec.write_text(CHAIN.format(one=_indent(ledger_cmd(ledger, "echo one")),
                                 two=_indent(two), three=_indent(ledger_cmd(ledger, "echo three"))))
    study = tmp_path / "study"
    proc = subprocess.Popen([*ENGINECTL, "run", str(spec), "-o", str(study)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_path(tmp_path / "two.1.pid", timeout=60)
    proc.kill()  # SIGKILL: no clean-up of its own
    proc.wait()
    orphan = int((tmp_path / "two.1.pid").read_text())
    deadline = time.monotonic() + 30
    while alive(orphan):  # the run's watchdog kills what its steps still run
        assert time.monotonic() < deadline, f"step two ({orphan}) survived the run"
        time.sleep(0.05)
    gate.touch()
    restarted = enginectl("restart", str(study))
    assert 0 == restarted.returncode, restarted.stderr
    assert {"one": "FINISHED", "two": "FINISHED", "three": "FINISHED"} == states(study)
    runs = [(e.step, e.exit) for e in read_ledger(ledger) if e.exit is not None]
    assert [("one", 0), ("two", 0), ("three", 0)] == runs  # one ran once, before the kill
    assert 1 == sum(1 for e in read_ledger(ledger) if e.step == "one" and e.exit is None)
    again = enginectl("restart", str(study))  # nothing left to run: all FINISHED again
    assert 0 == again.returncode, again.stderr
    assert 1 == sum(1 for e in read_ledger(ledger) if e.step == "one" and e.exit is not None)
