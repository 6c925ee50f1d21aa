"""Merlin samples through ``enginectl run``: real processes, an embedded nats-server.

Each test runs a real study and checks what every sample wrote, where Merlin puts it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from engine.status import read_status
from tests.conftest import PEER_SPECS, enginectl, needs_peer_specs

MERLIN = PEER_SPECS / "merlin"

MAKE_SAMPLES = """\
import argparse
p = argparse.ArgumentParser()
p.add_argument("--filepath")
p.add_argument("--number", type=int)
a = p.parse_args()
open(a.filepath, "w").write("\\n".join(f"name{i}" for i in range(a.number)))
"""


def hello_samples(tmp_path: Path, generator: str = MAKE_SAMPLES) -> Path:
    spec = tmp_path / "hello_samples.yaml"
    shutil.copy(MERLIN / "hello_samples.yaml", spec)
    (tmp_path / "make_samples.py").write_text(generator)
    return spec


@needs_peer_specs
def test_hello_samples_generates_its_samples_and_greets_each_once(tmp_path: Path) -> None:
    study = tmp_path / "study"
    result = enginectl("run", str(hello_samples(tmp_path)), "-o", str(study))
    assert 0 == result.returncode, result.stderr
    info = study / "merlin_info"
    assert ["name0", "name1", "name2"] == (info / "samples.csv").read_text().split()
    assert (info / "cmd.sh").read_text().startswith("python3 ")
    assert {"hello_samples.orig.yaml", "hello_samples.partial.yaml",
            "hello_samples.expanded.yaml"} <= {p.name for p in info.iterdir()}
    for greet in ("hello", "hola"):
        for i in range(3):
            ws = study / "step_1" / f"GREET.{greet}" / f"{i:02d}"
            out = (ws / f"step_1_GREET.{greet}.out").read_text()
            assert f"{greet}, name{i}!\n" == out
            assert (ws / "MERLIN_FINISHED").exists()
    assert "Hurrah, we did it!\n" == (study / "step_2" / "step_2.out").read_text()
    assert (study / "step_2" / "MERLIN_FINISHED").exists()
    rows = read_status(study / "status.csv")
    assert [("step_1_GREET.hello", "3 samples", "FINISHED"),
            ("step_1_GREET.hola", "3 samples", "FINISHED")] == [
        (r["Step Name"], r["Job ID"], r["State"]) for r in rows[:2]]


@needs_peer_specs
def test_a_failing_generate_command_fails_the_study_before_any_step(tmp_path: Path) -> None:
    study = tmp_path / "study"
    spec = hello_samples(tmp_path, "import sys\nprint('no names today', file=sys.stderr)\n"
                                   "sys.exit(4)\n")
    result = enginectl("run", str(spec), "-o", str(study))
    assert 2 == result.returncode
    err = (study / "merlin_info" / "cmd.err")
    assert "no names today\n" == err.read_text()
    assert f"error: merlin.samples.generate.cmd exited 4 (see {err})" in result.stderr
    assert not (study / "step_1").exists()
    assert "Traceback" not in result.stderr


SWEEP = """
description: {{name: sweep, description: a sampled step, some samples fail, then a collector}}
study:
  - name: sim
    description: fails for odd X
    run:
      cmd: |
        echo "$(X) $(Y) $(MERLIN_SAMPLE_ID) $(MERLIN_SAMPLE_PATH)" > result.txt
        test $(( $(X) % 2 )) = 0 || exit {code}
  - name: collect
    description: reads every sample
    run:
      cmd: cat $(sim.workspace)/$(MERLIN_GLOB_PATH)result.txt | wc -l > count.txt
      depends: [sim]
merlin:
  samples: {{file: samples.npy, column_labels: [X, Y], level_max_dirs: 10}}
"""


def sweep(tmp_path: Path, n: int, code: int) -> tuple[Path, Path]:
    spec = tmp_path / "sweep.yaml"
    spec.write_text(SWEEP.format(code=code))
    np.save(tmp_path / "samples.npy", np.array([[i, 10 * i] for i in range(n)]))
    return spec, tmp_path / "samples.npy"


def test_every_sample_runs_in_merlins_directory_and_the_collector_waits_for_all(
        tmp_path: Path) -> None:
    spec, samples = sweep(tmp_path, 120, 0)  # every sample succeeds
    study = tmp_path / "study"
    result = enginectl("run", str(spec), "-o", str(study), "--samplesfile", str(samples),
                       "-t", "4")
    assert 0 == result.returncode, result.stderr
    for i in (0, 7, 99, 119):
        path = f"{i // 100:02d}/{i // 10 % 10:02d}/{i % 10:02d}"
        assert f"{i} {10 * i} {i} {path}\n" == (study / "sim" / path / "result.txt").read_text()
    assert "120\n" == (study / "collect" / "count.txt").read_text()


def test_failed_samples_fail_the_step_alone_and_status_lists_them(tmp_path: Path) -> None:
    spec, samples = sweep(tmp_path, 10, 3)
    study = tmp_path / "study"
    result = enginectl("run", str(spec), "-o", str(study), "--samplesfile", str(samples))
    assert 2 == result.returncode
    rows = {(r["Step Name"], r["State"]): r["Job ID"] for r in read_status(study / "status.csv")}
    assert {("sim", "FAILED"): "5 samples", ("sim", "FINISHED"): "5 samples",
            ("collect", "FAILED"): "--"} == rows
    listed = enginectl("status", str(study), "--step", "sim", "--state", "failed", "--json")
    assert 0 == listed.returncode, listed.stderr
    failed = json.loads(listed.stdout)
    assert [1, 3, 5, 7, 9] == [r["sample"] for r in failed]
    assert {"X": "3", "Y": "30"} == failed[1]["values"]
    table = enginectl("status", str(study), "--step", "sim", "--state", "FAILED")
    assert ["sim", "9", "09", "FAILED", "9", "90"] == table.stdout.splitlines()[-1].split()


def test_a_merlin_soft_fail_of_some_samples_lets_the_collector_run(tmp_path: Path) -> None:
    spec, samples = sweep(tmp_path, 6, 101)  # $(MERLIN_SOFT_FAIL) for odd X
    study = tmp_path / "study"
    result = enginectl("run", str(spec), "-o", str(study), "--samplesfile", str(samples))
    assert 2 == result.returncode  # a failure state remains: FAILURE, as documented
    assert "6\n" == (study / "collect" / "count.txt").read_text()
    rows = {(r["Step Name"], r["State"]) for r in read_status(study / "status.csv")}
    assert ("collect", "FINISHED") in rows
