"""Hand-off latency on a real Slurm: a chain of 10 trivial Slurm steps.

For Troupe (``enginectl run``), the latency of an edge is the time from the parent's job
ending (the mtime of the exit file its trailer writes, ns resolution) to the child's
``sbatch`` (its PENDING event, which the engine publishes as it submits). For Maestro
(``maestro run -fg -s S``) it is sacct's ``Submit`` of the child minus ``End`` of the
parent (1 s resolution, ample for Maestro). Needs a running Slurm (tests/slurm/slurm-up.sh).

    .venv/bin/python bench/slurm_chain.py [--maestro-sleep 1 60]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

N = 10


def spec_text(name: str) -> str:
    lines = [f"description: {{name: {name}, description: chain of {N} slurm steps}}",
             'batch: {type: slurm, queue: debug, bank: "", host: local}', "study:"]
    for i in range(N):
        dep = f", depends: [c{i - 1}]" if i else ""
        lines.append(f"  - {{name: c{i}, description: step {i}, run: {{cmd: 'true', procs: 1{dep}}}}}")
    return "\n".join(lines) + "\n"


def troupe(work: Path) -> list[float]:
    spec = work / "troupe.yaml"
    spec.write_text(spec_text("troupe_chain"))
    study = work / "troupe"
    run = subprocess.run([sys.executable, "-m", "engine", "-vv", "run", str(spec), "-o", str(study)],
                         check=True, capture_output=True, text=True)
    submitted = {}
    for line in run.stderr.splitlines():
        if not line.startswith("{"):
            continue
        rec = json.loads(line)
        if rec.get("event") == "step_state_changed" and rec.get("state") == "PENDING":
            submitted[rec["step"]] = datetime.fromisoformat(rec["timestamp"]).timestamp()
    lat = []
    for i in range(1, N):
        parent, child = f"c{i - 1}", f"c{i}"
        ended = next((study / parent).glob(f"{parent}.*.exit")).stat().st_mtime
        lat.append(submitted[child] - ended)
    return lat


def maestro(work: Path, sleep: int) -> list[float]:
    spec = work / f"maestro{sleep}.yaml"
    spec.write_text(spec_text(f"maestro_chain_{sleep}"))
    out = work / f"maestro{sleep}"
    exe = shutil.which("maestro") or str(Path(sys.executable).parent / "maestro")
    subprocess.run([exe, "run", "-fg", "-y", "-s", str(sleep), "-o", str(out), str(spec)],
                   check=True, capture_output=True)
    ids = {r.split(",")[0]: r.split(",")[1] for r in (out / "status.csv").read_text().splitlines()[1:]}
    times = {}
    for step, job in ids.items():
        row = subprocess.run(["sacct", "-X", "-P", "-n", "-j", job, "-o", "Submit,End"],
                             capture_output=True, text=True, check=True).stdout.split("|")
        times[step] = (datetime.fromisoformat(row[0]).timestamp(),
                       datetime.fromisoformat(row[1].strip()).timestamp())
    return [times[f"c{i}"][0] - times[f"c{i - 1}"][1] for i in range(1, N)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--maestro-sleep", type=int, nargs="*", default=[1])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="slurm-chain-"))
    try:
        t0 = time.perf_counter()
        lat = troupe(work)
        print(f"troupe: median edge latency {statistics.median(lat):.3f} s, max {max(lat):.3f} s, "
              f"wall {time.perf_counter() - t0:.1f} s")
        for s in args.maestro_sleep:
            t0 = time.perf_counter()
            lat = maestro(work, s)
            print(f"maestro -s {s}: median edge latency {statistics.median(lat):.1f} s, "
                  f"wall {time.perf_counter() - t0:.1f} s")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
