"""examples/sir_samples: a Merlin samples study (1,000 samples, one funnel) through enginectl.

The study generates ``merlin_info/samples.csv`` with ``merlin.samples.generate.cmd``, runs
``simulate`` once per sample in ``simulate/<sample path>`` (Merlin's hierarchy: 1,000
samples at ``level_max_dirs`` 25 give three levels, ``00/00/00`` .. ``01/14/24``), and a
``collect`` step that waits for every sample and gathers the results through
``$(simulate.workspace)/$(MERLIN_GLOB_PATH)``. Every number is checked against the
example's own scripts, imported from the example directory.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import random
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from types import ModuleType

import pytest

from engine.status import read_status
from tests.conftest import REPO, enginectl

EXAMPLE = REPO / "examples" / "sir_samples"
N = 1000
SVG = "{http://www.w3.org/2000/svg}"


def load(name: str) -> ModuleType:
    """Import one of the example's scripts (they are not a package)."""
    spec = importlib.util.spec_from_file_location(f"sir_example_{name}", EXAMPLE / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def merlin_sample_paths(n: int, level_max_dirs: int = 25) -> list[str]:
    """Merlin's sample directories, in sample order (uniform_directories + create_hierarchy).

    The directory sizes are powers of level_max_dirs below n, largest first (1,000 samples:
    625, 25, 1); sample i lives at ``i // 625 / (i % 625) // 25 / i % 25``, each level
    zero-padded to len(str(level_max_dirs)) digits.
    """
    sizes = [1]
    while sizes[0] < n:
        sizes.insert(0, sizes[0] * level_max_dirs)
    del sizes[0]
    width = len(str(level_max_dirs))
    paths = []
    for i in range(n):
        parts, rest = [], i
        for size in sizes:
            parts.append(str(rest // size).zfill(width))
            rest %= size
        paths.append("/".join(parts))
    return paths


def test_merlin_sample_paths_match_merlins_documented_layout() -> None:
    assert ["00", "01", "02"] == merlin_sample_paths(3)
    hundred = merlin_sample_paths(100)
    assert ("00/00", "00/24", "01/00", "03/24") == (hundred[0], hundred[24], hundred[25],
                                                    hundred[99])
    thousand = merlin_sample_paths(N)
    assert ("00/00/00", "00/24/24", "01/00/00", "01/14/24") == (
        thousand[0], thousand[624], thousand[625], thousand[999])
    assert N == len(set(thousand))


Run = tuple[subprocess.CompletedProcess[str], Path]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """Run the example once for every test of this module; each test checks the exit."""
    out = tmp_path_factory.mktemp("sir") / "study"
    # The steps run `python3`: put this interpreter's directory first, so a slow shim
    # (pyenv) does not cost each of the 1,000 samples its start-up.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = enginectl("run", str(EXAMPLE / "sir.yaml"), "-o", str(out), timeout=900,
                       env={"PATH": path})
    return result, out


def finished(run: Run) -> Path:
    """The study directory of a run that exited 0 (else the test fails, saying why)."""
    result, out = run
    assert 0 == result.returncode, (
        f"enginectl run exited {result.returncode}; stderr (last 3000 characters):\n"
        f"{result.stderr[-3000:]}")
    return out


@pytest.mark.slow
def test_every_step_finished(run: Run) -> None:
    study = finished(run)
    rows = read_status(study / "status.csv")
    assert rows
    unfinished = [(r["Step Name"], r["State"]) for r in rows if r["State"] != "FINISHED"]
    assert not unfinished, unfinished[:10]


@pytest.mark.slow
def test_samples_file_is_generated_in_merlin_info(run: Run) -> None:
    study = finished(run)
    make_samples = load("make_samples")
    rows = list(csv.reader((study / "merlin_info" / "samples.csv").open()))
    expected = [list(r) for r in make_samples.samples(N, make_samples.SEED)]
    assert expected == rows, "samples.csv is not make_samples.py's output for the spec's n"


@pytest.mark.slow
def test_each_sample_ran_once_in_its_own_directory(run: Run) -> None:
    study = finished(run)
    simulate = study / "simulate"
    found = sorted(p.parent.relative_to(simulate).as_posix()
                   for p in simulate.rglob("result.json"))
    expected = merlin_sample_paths(N)
    assert sorted(expected) == found, (
        f"{len(found)} result.json files; missing {sorted(set(expected) - set(found))[:5]}, "
        f"unexpected {sorted(set(found) - set(expected))[:5]}")
    for sample_id, rel in enumerate(expected):
        result = json.loads((simulate / rel / "result.json").read_text())
        assert sample_id == result["sample_id"], f"{rel} holds sample {result['sample_id']}"


@pytest.mark.slow
def test_spot_checked_results_match_a_recomputation_from_their_row(run: Run) -> None:
    study = finished(run)
    sir = load("sir")
    rows = list(csv.reader((study / "merlin_info" / "samples.csv").open()))
    paths = merlin_sample_paths(N)
    for sample_id in random.Random(7).sample(range(N), 20):
        beta, gamma = (float(v) for v in rows[sample_id])
        result = json.loads((study / "simulate" / paths[sample_id] / "result.json").read_text())
        expected = {"sample_id": sample_id, **sir.simulate(beta, gamma)}
        assert expected.keys() == result.keys()
        for key, value in expected.items():
            assert value == pytest.approx(result[key], abs=1e-8), (
                f"sample {sample_id} ({paths[sample_id]}), {key}: ran {result[key]}, "
                f"recomputed {value}")


@pytest.mark.slow
def test_collect_gathered_every_result_into_the_csv(run: Run) -> None:
    study = finished(run)
    with (study / "collect" / "results.csv").open() as f:
        table = list(csv.DictReader(f))
    assert N == len(table)
    assert list(range(N)) == [int(r["sample_id"]) for r in table]
    paths = merlin_sample_paths(N)
    for sample_id in random.Random(11).sample(range(N), 20):
        result = json.loads((study / "simulate" / paths[sample_id] / "result.json").read_text())
        row = table[sample_id]
        for key in ("beta", "gamma", "r0", "peak_infected", "peak_day", "final_recovered"):
            assert float(row[key]) == result[key], f"sample {sample_id}, {key}"


@pytest.mark.slow
def test_collect_drew_one_point_per_sample(run: Run) -> None:
    study = finished(run)
    root = ET.parse(study / "collect" / "peak_vs_r0.svg").getroot()
    assert f"{SVG}svg" == root.tag
    circles = list(root.iter(f"{SVG}circle"))
    assert N == len(circles)
    titles = sorted(int(c.find(f"{SVG}title").text.split()[-1]) for c in circles)
    assert list(range(N)) == titles
    for c in circles:  # every point lies inside the 720 x 480 canvas
        assert 0 <= float(c.get("cx")) <= 720 and 0 <= float(c.get("cy")) <= 480
