"""Every study in examples/ runs to FINISHED and produces what it promises."""

from __future__ import annotations

from pathlib import Path

from engine.status import read_status
from tests.conftest import REPO, enginectl


def run_example(rel: str, tmp_path: Path) -> Path:
    study = tmp_path / "study"
    result = enginectl("run", str(REPO / "examples" / rel), "-o", str(study))
    assert 0 == result.returncode, result.stderr
    rows = read_status(study / "status.csv")
    assert rows and {"FINISHED"} == {r["State"] for r in rows}
    return study


def test_hello_example(tmp_path: Path) -> None:
    study = run_example("hello/hello.yaml", tmp_path)
    assert "Hello, World!\n" == (study / "hello_world" / "hello_world.txt").read_text()


def test_sweep_example_funnels_every_instance(tmp_path: Path) -> None:
    study = run_example("sweep/sweep.yaml", tmp_path)
    lines = (study / "gather" / "all_greetings.txt").read_text().splitlines()
    assert ["Ciao, Grace!", "Hello, Ada!", "Hey, Alan!", "Hi, Barbara!"] == lines
    assert 4 == len(list((study / "greet").iterdir()))


def test_pipeline_example_tabulates_one_fit_per_noise_level(tmp_path: Path) -> None:
    study = run_example("pipeline/pipeline.yaml", tmp_path)
    table = (study / "table" / "results.md").read_text().splitlines()
    assert "| noise | fitted rate | error |" == table[0]
    rows = [line.split("|")[1:4] for line in table[2:]]
    assert ["0.0", "0.01", "0.05", "0.1"] == [r[0].strip() for r in rows]
    noiseless_rate = float(rows[0][1])
    assert abs(noiseless_rate - 0.7) < 1e-3, "a noiseless decay is fitted exactly"
