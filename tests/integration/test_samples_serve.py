"""Merlin samples under ``enginectl serve``: submit with --samplesfile, events in batches,
``status --step`` by study id, and an engine SIGKILLed while samples run."""

from __future__ import annotations

import json
import time
from pathlib import Path


from tests.engine_proc import Engine

SPEC = """
description: {{name: sweep, description: samples under serve}}
study:
  - name: sim
    description: one run per sample
    run:
      cmd: |
        echo "$(MERLIN_SAMPLE_ID) $$" >> {ledger}
        {body}
        echo $(X) > x.txt
  - name: total
    description: after every sample
    run:
      cmd: cat $(sim.workspace)/$(MERLIN_GLOB_PATH)x.txt | wc -l > n.txt
      depends: [sim]
merlin:
  samples: {{file: samples.csv, column_labels: [X]}}
"""


def write(tmp_path: Path, n: int, body: str = "true") -> tuple[Path, Path, Path]:
    ledger = tmp_path / "ledger"
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SPEC.format(ledger=ledger, body=body))
    samples = tmp_path / "samples.csv"
    samples.write_text("".join(f"{i * 3}\n" for i in range(n)))
    return spec, samples, ledger


def test_submitted_samples_run_report_in_batches_and_list_by_study_id(
        engine: Engine, tmp_path: Path) -> None:
    spec, samples, _ = write(tmp_path, 40)
    result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "study"), "--samplesfile",
                        str(samples), "--wait")
    assert 0 == result.returncode, result.stderr
    study_id = result.stdout.strip()
    assert "40\n" == (tmp_path / "study" / "total" / "n.txt").read_text()
    events = [json.loads(x) for x in engine.ctl("events", study_id).stdout.splitlines()]
    batches = [e for e in events if e["type"] == "samples_changed"]
    finished = sorted(i for e in batches if e["state"] == "FINISHED" for i in e["samples"])
    assert list(range(40)) == finished  # each sample's end, once
    assert len(batches) < 40 * 4  # in batches, not an event per sample and state
    assert not [e for e in events if e["type"] == "step_state_changed" and "\x1f" in e["step"]]
    listed = engine.ctl("status", study_id, "--step", "sim", "--state", "FINISHED", "--json")
    assert 0 == listed.returncode, listed.stderr
    assert {"X": "117"} == json.loads(listed.stdout)[39]["values"]


def test_a_sigkilled_engine_reruns_no_finished_sample(engine: Engine, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    # samples 0-9 finish at once; the others wait for the gate
    spec, samples, ledger = write(
        tmp_path, 30, body=f'[ $(MERLIN_SAMPLE_ID) -lt 10 ] || until [ -e {gate} ]; do sleep 0.05; done')
    result = engine.ctl("submit", str(spec), "-o", str(tmp_path / "study"), "--samplesfile",
                        str(samples), "--throttle", "4")
    assert 0 == result.returncode, result.stderr
    study_id = result.stdout.strip()
    markers = tmp_path / "study" / "sim"
    deadline = time.monotonic() + 60
    while len(list(markers.rglob("MERLIN_FINISHED"))) < 10:
        assert time.monotonic() < deadline, "the first ten samples never finished"
        time.sleep(0.05)
    engine.kill()
    gate.touch()
    engine.start()
    watched = engine.ctl("watch", study_id, timeout=300)
    assert 0 == watched.returncode, watched.stderr
    runs: dict[int, int] = {}
    for line in ledger.read_text().splitlines():
        sample = int(line.split()[0])
        runs[sample] = runs.get(sample, 0) + 1
    assert set(range(30)) == set(runs)
    assert {1} == {runs[i] for i in range(10)}  # finished before the crash: never again
    assert "30\n" == (tmp_path / "study" / "total" / "n.txt").read_text()
